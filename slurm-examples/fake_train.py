#!/usr/bin/env python3
"""A stand-in for a training program, for the example batch scripts in this directory.

It prints what a PyTorch training prints, at a chosen pace, so that the sidecar watchers of
the examples have something to act on. Standard library only; Python 3.9+.

    fake_train.py oom      [--steps N] [--interval S]
        a few steps, then (first run only) a CUDA out-of-memory error and exit 1; a
        resubmitted run (SIDECAR_RESUBMIT_COUNT set by sidecar's resubmit) has "enough
        memory" and finishes (exit 0). FAKE_TRAIN_OOM=always makes every run fail.
    fake_train.py loss     --losses 2.1,1.5,7.3 [--interval S] [--after S]
        one "epoch E step S loss: X" line per value, then keeps running for --after seconds
        (a diverged training that nobody stops goes on burning its allocation)
    fake_train.py hang     [--log FILE] [--steps N] [--interval S] [--after S]
        a few lines, then silence for --after seconds (a hung job)
    fake_train.py metrics  [--steps N] [--interval S]
        "step S loss=X acc=Y%" lines, then exit 0
    fake_train.py task     [--steps N] [--interval S]
        lines tagged with the SLURM task rank (SLURM_PROCID), for srun

Every line is flushed as it is printed. Before a line a watcher is meant to react to, a
``[fake_train] <event>_at=<unix time>`` line gives the moment it was written, so that
reaction times can be measured from the outside.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from typing import List, Optional, TextIO


def _out(stream: TextIO, text: str) -> None:
    stream.write(text + "\n")
    stream.flush()


def _stamp(stream: TextIO, event: str) -> None:
    _out(stream, f"[fake_train] {event}_at={time.time():.6f}")


def cmd_oom(args: argparse.Namespace) -> int:
    count = os.environ.get("SIDECAR_RESUBMIT_COUNT", "")
    mem = os.environ.get("SLURM_MEM_PER_NODE", "?")
    _out(sys.stdout, f"[fake_train] job {os.environ.get('SLURM_JOB_ID', '-')} "
                     f"mem={mem}M resubmit_count={count or 'unset'}")
    for step in range(1, args.steps + 1):
        _out(sys.stdout, f"step {step} loss={1.0 / step:.4f}")
        time.sleep(args.interval)
    if not count or os.environ.get("FAKE_TRAIN_OOM") == "always":
        _stamp(sys.stdout, "oom")
        _out(sys.stderr, "Traceback (most recent call last):")
        _out(sys.stderr, '  File "train.py", line 42, in <module>')
        # PyTorch's message, as it appears in the job's output
        _out(sys.stdout, "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB "
                         "(GPU 0; 15.78 GiB total capacity; 13.10 GiB already allocated)")
        return 1
    _out(sys.stdout, "[fake_train] training finished")
    return 0


def cmd_loss(args: argparse.Namespace) -> int:
    losses = [x.strip() for x in args.losses.split(",") if x.strip()]
    for i, loss in enumerate(losses, 1):
        _stamp(sys.stdout, "loss")
        _out(sys.stdout, f"epoch {i} step {i * 100} loss: {loss}")
        time.sleep(args.interval)
    _out(sys.stdout, "[fake_train] still training")
    time.sleep(args.after)
    _out(sys.stdout, "[fake_train] training finished")
    return 0


def cmd_hang(args: argparse.Namespace) -> int:
    with contextlib.ExitStack() as stack:
        stream: TextIO = sys.stdout
        if args.log:
            stream = stack.enter_context(open(args.log, "a", encoding="utf-8"))
        for step in range(1, args.steps + 1):
            _out(stream, f"step {step} loss={1.0 / step:.4f}")
            time.sleep(args.interval)
        _stamp(stream, "last_write")
        time.sleep(args.after)  # hung: nothing more is written
        _out(stream, "[fake_train] woke up")
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    for step in range(1, args.steps + 1):
        loss = 2.0 / (step + 1)
        acc = 50 + 10 * step
        _out(sys.stdout, f"step {step} loss={loss:.4f} acc={acc}%")
        time.sleep(args.interval)
    _out(sys.stdout, "[fake_train] training finished")
    return 0


def cmd_task(args: argparse.Namespace) -> int:
    rank = os.environ.get("SLURM_PROCID", "0")
    for step in range(1, args.steps + 1):
        _out(sys.stdout, f"rank {rank} step {step} loss={(int(rank) + 1) / step:.4f}")
        time.sleep(args.interval)
    _out(sys.stdout, f"rank {rank} done")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="mode", required=True)

    def add(name: str, steps: int = 3, interval: float = 0.1) -> argparse.ArgumentParser:
        sp = sub.add_parser(name)
        sp.add_argument("--steps", type=int, default=steps)
        sp.add_argument("--interval", type=float, default=interval)
        return sp

    add("oom")
    sp = add("loss")
    sp.add_argument("--losses", default="2.3,1.7,1.2,6.8,9.1")
    sp.add_argument("--after", type=float, default=120.0)
    sp = add("hang")
    sp.add_argument("--log", default=None)
    sp.add_argument("--after", type=float, default=600.0)
    add("metrics", steps=4)
    add("task", steps=3)
    args = p.parse_args(argv)
    handler = {
        "oom": cmd_oom,
        "loss": cmd_loss,
        "hang": cmd_hang,
        "metrics": cmd_metrics,
        "task": cmd_task,
    }[args.mode]
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
