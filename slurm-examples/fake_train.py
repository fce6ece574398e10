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
    fake_train.py hang     [--log FILE] [--steps N] [--interval S] [--after S] [--busy]
        a few lines, then silence for --after seconds (a hung job); with --busy the
        silence is spent computing (one core at 100 %), not sleeping
    fake_train.py metrics  [--steps N] [--interval S]
        "step S loss=X acc=Y%" lines, then exit 0
    fake_train.py task     [--steps N] [--interval S]
        lines tagged with the SLURM task rank (SLURM_PROCID), for srun
    fake_train.py exit     --code N [--steps N] [--interval S]
        a few steps, then exit with status N
    fake_train.py checkpoint --flag FILE [--interval S] [--after S]
        steps until FILE exists (someone asked for a checkpoint): then "checkpoint saved"
        and exit 0; exit 0 without a checkpoint after --after seconds
    fake_train.py memory   [--mb N] [--chunk-mb N] [--interval S] [--hold S]
        allocates (and touches) N MiB in chunks, then holds it for --hold seconds
    fake_train.py nccl     [--ranks R:N,R:N] [--interval S] [--after S]
        N "rank R: NCCL WARN Timeout ..." lines per rank R, interleaved, then keeps running
        for --after seconds
    fake_train.py crash    [--steps N] [--interval S]
        a few steps, then a chained exception (KeyError, then RuntimeError): a Python
        traceback on stderr and exit 1
    fake_train.py requeue  [--steps N] [--interval S] [--after S]
        for a job that SLURM requeues: the first run (SLURM_RESTART_COUNT unset or 0)
        prints "ERROR 1" and waits --after seconds for the requeue; a later run prints N
        step lines, waits --interval seconds, prints "ERROR 2" and "ERROR 3", exits 0

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
from typing import Dict, List, Optional, TextIO


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
        if args.busy:
            _spin(args.after)  # silent, but computing
        else:
            time.sleep(args.after)  # hung: nothing more is written
        _out(stream, "[fake_train] woke up")
    return 0


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    x = 0
    while time.monotonic() < end:
        for i in range(10000):
            x += i * i
    del x


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


def cmd_exit(args: argparse.Namespace) -> int:
    for step in range(1, args.steps + 1):
        _out(sys.stdout, f"step {step} loss={1.0 / step:.4f}")
        time.sleep(args.interval)
    _stamp(sys.stdout, "exit")
    _out(sys.stdout, f"[fake_train] exiting with status {args.code}")
    return int(args.code)


def cmd_checkpoint(args: argparse.Namespace) -> int:
    _stamp(sys.stdout, "start")
    end = time.monotonic() + args.after
    step = 0
    while time.monotonic() < end:
        if os.path.exists(args.flag):
            _stamp(sys.stdout, "checkpoint")
            _out(sys.stdout, f"[fake_train] checkpoint saved at step {step}")
            return 0
        step += 1
        _out(sys.stdout, f"step {step} loss={1.0 / step:.4f}")
        time.sleep(args.interval)
    _out(sys.stdout, "[fake_train] no checkpoint requested")
    return 0


def cmd_memory(args: argparse.Namespace) -> int:
    held: List[bytes] = []
    total = 0
    while total < args.mb:
        n = min(args.chunk_mb, args.mb - total)
        held.append(b"\x01" * (n << 20))  # filled, so every page is resident
        total += n
        _stamp(sys.stdout, f"allocated_{total}mb")
        time.sleep(args.interval)
    _out(sys.stdout, f"[fake_train] holding {total} MiB")
    time.sleep(args.hold)
    _out(sys.stdout, "[fake_train] training finished")
    return 0


def cmd_nccl(args: argparse.Namespace) -> int:
    plan: List[List[int]] = []
    for part in args.ranks.split(","):
        rank, _, n = part.partition(":")
        plan.append([int(rank), int(n or 1)])
    seq = 0
    while any(n > 0 for _r, n in plan):
        for entry in plan:
            if entry[1] <= 0:
                continue
            entry[1] -= 1
            seq += 1
            _out(sys.stdout, f"rank {entry[0]}: NCCL WARN Timeout waiting for collective "
                             f"(SeqNum={seq}, OpType=ALLREDUCE)")
            time.sleep(args.interval)
    _out(sys.stdout, "[fake_train] still training")
    time.sleep(args.after)
    _out(sys.stdout, "[fake_train] training finished")
    return 0


def _learning_rate(config: Dict[str, float]) -> float:
    return config["lr"]


def cmd_crash(args: argparse.Namespace) -> int:
    for step in range(1, args.steps + 1):
        _out(sys.stdout, f"step {step} loss={1.0 / step:.4f}")
        time.sleep(args.interval)
    _stamp(sys.stdout, "crash")
    try:
        _learning_rate({})
    except KeyError as exc:
        raise RuntimeError("bad config: no learning rate") from exc
    return 0


def cmd_requeue(args: argparse.Namespace) -> int:
    run = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    _out(sys.stdout, f"[fake_train] run {run} of job {os.environ.get('SLURM_JOB_ID', '-')}")
    if run == 0:
        _stamp(sys.stdout, "error1")
        _out(sys.stdout, "ERROR 1: NaN in gradients")
        time.sleep(args.after)  # the job is requeued meanwhile
        _out(sys.stdout, "[fake_train] not requeued")
        return 0
    # a few steps first: more bytes than the first run wrote, so that a file truncated by
    # the requeue is already longer than where the first run's sidecar stopped reading
    for step in range(1, args.steps + 1):
        _out(sys.stdout, f"step {step} loss={1.0 / step:.4f} (run {run})")
    time.sleep(args.interval)
    for n in (2, 3):
        _stamp(sys.stdout, f"error{n}")
        _out(sys.stdout, f"ERROR {n}: NaN in gradients")
        time.sleep(0.3)
    _out(sys.stdout, "[fake_train] training finished")
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
    sp.add_argument("--busy", action="store_true")
    add("metrics", steps=4)
    add("task", steps=3)
    sp = add("exit")
    sp.add_argument("--code", type=int, default=0)
    sp = add("checkpoint", interval=0.5)
    sp.add_argument("--flag", default="checkpoint-requested")
    sp.add_argument("--after", type=float, default=300.0)
    sp = add("memory", interval=0.05)
    sp.add_argument("--mb", type=int, default=200)
    sp.add_argument("--chunk-mb", type=int, default=20)
    sp.add_argument("--hold", type=float, default=5.0)
    sp = add("nccl", interval=0.02)
    sp.add_argument("--ranks", default="0:9,1:6")
    sp.add_argument("--after", type=float, default=2.0)
    add("crash")
    sp = add("requeue", steps=12, interval=0.5)
    sp.add_argument("--after", type=float, default=120.0)
    args = p.parse_args(argv)
    handler = {
        "oom": cmd_oom,
        "loss": cmd_loss,
        "hang": cmd_hang,
        "metrics": cmd_metrics,
        "task": cmd_task,
        "exit": cmd_exit,
        "checkpoint": cmd_checkpoint,
        "memory": cmd_memory,
        "nccl": cmd_nccl,
        "crash": cmd_crash,
        "requeue": cmd_requeue,
    }[args.mode]
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
