"""Scan benchmark: sidecar's MultiMatcher against ``grep -cEf`` on the same big log.

    python3 -m benchmarks.scan [--size-mb 1024] [--keep] [--repeat 1] [--reader tailer]

Generates (or reuses) an ML-training-style log under /tmp (timestamps and INFO lines,
frequent ``loss:`` lines, tqdm progress bars updated with a lone ``\\r`` and drawn with ``█``,
NCCL INFO lines, rare alerts: CUDA OOM, tracebacks, NCCL watchdog timeouts, ...), then times

* the chunk producer alone (``sidecar.tailer.Tailer`` in 1 MiB chunks; ``--reader simple``:
  1 MiB blocks cut at the last ``\\n``),
* the same plus ``MultiMatcher.scan`` with the 10 rules below (building every LineMatch),
* ``grep -cEf patterns.txt FILE`` with LC_ALL=C, with the default locale (and with
  C.UTF-8 when that differs),

and prints MB/s, lines/s and the ratio to grep. Correctness check: for every rule, the number
of lines it matched must equal ``grep -cE PATTERN FILE`` (the generated tqdm segments never
match a rule, so grep's ``\\n``-only idea of a line gives the same counts). Exit status 1
when a count differs. The file is deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import resource
import subprocess
import sys
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

# (name, pattern for sidecar = Python re syntax, the same for grep -E)
PATTERNS: List[Tuple[str, str, str]] = [
    ("cuda_oom", r"CUDA out of memory", r"CUDA out of memory"),
    ("nan_loss", r"loss is (nan|NaN)|NaN loss", r"loss is (nan|NaN)|NaN loss"),
    ("traceback", r"Traceback \(most recent call last\)", r"Traceback \(most recent call last\)"),
    ("segfault", r"Segmentation fault", r"Segmentation fault"),
    (
        "nccl_timeout",
        r"NCCL.*[Tt]imeout|Watchdog caught collective operation timeout",
        r"NCCL.*[Tt]imeout|Watchdog caught collective operation timeout",
    ),
    ("disk_quota", r"Disk quota exceeded", r"Disk quota exceeded"),
    ("loss", r"loss: ([\d.]+)", r"loss: ([0-9.]+)"),
    ("error", r"ERROR.*", r"ERROR.*"),
    ("time_limit", r"DUE TO TIME LIMIT", r"DUE TO TIME LIMIT"),
    ("killed", r"(?i)killed", r"[Kk][Ii][Ll][Ll][Ee][Dd]"),
]

CAPTURES: Dict[str, Tuple[str, ...]] = {"loss": ("loss",)}

MiB = 1 << 20


# --------------------------------------------------------------------------- the log


def _alerts(rng: random.Random, ts: str, step: int) -> List[str]:
    rank = rng.randrange(8)
    k = rng.randrange(11)
    if k == 0:
        return [
            "Traceback (most recent call last):",
            '  File "/home/user/train.py", line 412, in <module>',
            "    main()",
            '  File "/home/user/train.py", line 388, in main',
            "    loss = model(batch)",
            "torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB "
            f"(GPU {rank}; 79.15 GiB total capacity; 74.02 GiB already allocated)",
        ]
    if k == 1:
        return [f"{ts} WARNING [train.py:301] step {step}: loss is NaN, skipping update"]
    if k == 2:
        return [f"{ts} WARNING [amp.py:77] NaN loss detected at step {step}, scaling down"]
    if k == 3:
        return [
            "/var/spool/slurmd/job123/slurm_script: line 42: 31337 Segmentation fault "
            "(core dumped) python train.py"
        ]
    if k == 4:
        return [
            f"[E ProcessGroupNCCL.cpp:828] [Rank {rank}] Watchdog caught collective operation "
            "timeout: WorkNCCL(SeqNum=99123, OpType=ALLREDUCE, Timeout(ms)=1800000) ran for "
            "1800321 milliseconds before timing out."
        ]
    if k == 5:
        return [f"OSError: [Errno 122] Disk quota exceeded: '/scratch/ckpt/step_{step}.pt'"]
    if k == 6:
        return [f"{ts} ERROR [checkpoint.py:120] could not write checkpoint for step {step}"]
    if k == 7:
        return [
            "slurmstepd: error: *** JOB 4242 ON node017 CANCELLED AT 2024-05-01T23:59:59 "
            "DUE TO TIME LIMIT ***"
        ]
    if k == 8:
        return ["/var/spool/slurmd/job123/slurm_script: line 42: 31337 Killed python train.py"]
    if k == 9:
        return [f"[rank{rank}]: worker process KILLED by signal 9"]
    return [f"node017:31337:31400 [{rank}] NCCL WARN Net : Connection timeout after 30s"]


def generate(path: str, size: int, seed: int, loss_rate: float, alert_rate: float) -> int:
    """Write about ``size`` bytes of log to ``path``; return the number of lines (every
    ``\\n`` and lone ``\\r`` ends one)."""
    rng = random.Random(seed)
    r = rng.random
    ri = rng.randrange
    written = 0
    lines = 0
    step = 0
    epoch = 1
    sec = 0
    bars = "█" * 40
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        while written < size:
            out: List[str] = []
            for _ in range(4096):
                step += 1
                if step % 100000 == 0:
                    epoch += 1
                sec += 1
                day, hour, minute = 1 + sec // 86400 % 28, sec // 3600 % 24, sec // 60 % 60
                ts = f"2024-05-{day:02d} {hour:02d}:{minute:02d}:{sec % 60:02d},{ri(1000):03d}"
                x = r()
                if x < alert_rate:
                    for ln in _alerts(rng, ts, step):
                        out.append(ln + "\n")
                        lines += 1
                elif x < alert_rate + loss_rate:
                    out.append(
                        f"{ts} INFO [train.py:233] epoch {epoch} step {step} | loss: {r() * 4:.4f}"
                        f" | lr: {r() * 1e-3:.2e} | grad_norm: {r() * 2:.3f}\n"
                    )
                    lines += 1
                elif x < 0.06:  # a tqdm bar: several \r updates then \n
                    n = 5 + ri(20)
                    total = 10000
                    done = ri(total - 500)
                    segs = []
                    for _j in range(n):
                        done += ri(1, 20)
                        pct = done * 100 // total
                        w = pct * 40 // 100
                        segs.append(
                            f"\rEpoch {epoch}: {pct:3d}%|{bars[:w]}{' ' * (40 - w)}| "
                            f"{done}/{total} [{sec // 60:02d}:{sec % 60:02d}<03:12, "
                            f"{r() * 9:.2f}it/s, loss={r():.3f}, v_num=3]"
                        )
                    out.append("".join(segs) + "\n")
                    lines += n + 1  # the empty line before the first \r counts too
                elif x < 0.065:
                    out.append(
                        f"node{ri(64):03d}:{ri(99999)}:{ri(99999)} [{ri(8)}] NCCL INFO Channel "
                        f"{ri(32):02d}/32 :    0   1   2   3   4   5   6   7 via P2P/IPC/read\n"
                    )
                    lines += 1
                elif x < 0.08:
                    out.append(
                        f"{ts} WARNING [dataloader.py:88] worker {ri(16)} slow: batch took "
                        f"{r() * 9:.2f}s (prefetch_factor=2)\n"
                    )
                    lines += 1
                elif x < 0.09:
                    out.append(
                        f"{ts} INFO [eval.py:51] step {step} val_accuracy={r():.4f} "
                        f"val_f1={r():.4f} val_samples={ri(99999)}\n"
                    )
                    lines += 1
                elif x < 0.5:
                    out.append(
                        f"{ts} INFO [trainer.py:412] step {step} tokens/s={ri(300000)} "
                        f"mem_alloc={r() * 80:.1f}GB mem_reserved={r() * 80:.1f}GB "
                        f"throughput={r() * 400:.1f} samples/s\n"
                    )
                    lines += 1
                else:
                    out.append(
                        f"[rank{ri(8)}]:[I{ts[5:]}] data/loader.py:{ri(400)} prefetched shard "
                        f"{ri(4096)} ({ri(9999)} samples, {r() * 5:.2f}s) queue={ri(64)}\n"
                    )
                    lines += 1
            block = "".join(out).encode("utf-8")
            f.write(block)
            written += len(block)
    os.replace(tmp, path)
    return lines


# --------------------------------------------------------------------------- chunks


def _simple_chunks(path: str) -> Iterator[Any]:
    """1 MiB blocks cut after the last \\n. Lines are counted as the tailer must, but a
    chunk is searched for \\r\\n with RE2 (~0.02 ms/MB) before bytes.count(b"\\r\\n")
    (~0.9 ms/MB) is paid: tqdm logs have many lone \\r and no \\r\\n."""
    import re2

    from sidecar.types import Chunk

    opts = re2.Options()
    opts.encoding = re2.Options.Encoding.LATIN1
    crlf = re2.compile(b"\\r\\n", opts)
    lineno = 1
    off = 0
    rest = b""
    with open(path, "rb", buffering=0) as f:
        while True:
            data = f.read(MiB)
            if not data:
                break
            block = rest + data if rest else data
            cut = block.rfind(b"\n") + 1
            if cut == 0:
                rest = block
                continue
            body = block[:cut]
            rest = block[cut:]
            yield Chunk(path, body, off, lineno)
            off += len(body)
            n = body.count(b"\n")
            if b"\r" in body:
                n += body.count(b"\r")
                if crlf.search(body) is not None:
                    n -= body.count(b"\r\n")
            lineno += n
    if rest:
        yield Chunk(path, rest, off, lineno, partial=True)


def _tailer_chunks(path: str) -> Iterator[Any]:
    from sidecar.tailer import Tailer

    t = Tailer(path, start_at="start", chunk_size=MiB, max_line=MiB)
    try:
        while True:
            chunks = t.read(budget=8 * MiB)
            yield from chunks
            if not chunks and not t.more:
                break
        last = t.flush()
        if last is not None:
            yield last
    finally:
        t.close()


def chunk_source(kind: str) -> Tuple[str, Callable[[str], Iterator[Any]]]:
    if kind in ("auto", "tailer"):
        try:
            from sidecar.tailer import Tailer  # noqa: F401

            return "sidecar.tailer.Tailer", _tailer_chunks
        except ImportError:
            if kind == "tailer":
                raise
    return "simple 1 MiB reader (see _simple_chunks)", _simple_chunks


# --------------------------------------------------------------------------- timing


def _cpu_children() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _cpu_self() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def time_grep(args: List[str], env: Dict[str, str]) -> Tuple[float, float, str]:
    c0 = _cpu_children()
    t0 = time.perf_counter()
    p = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if p.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(args)} failed: {p.stderr.strip()}")
    return wall, _cpu_children() - c0, p.stdout.strip()


def run_chunks_only(path: str, source: Callable[[str], Iterator[Any]]) -> Tuple[float, float, int]:
    c0 = _cpu_self()
    t0 = time.perf_counter()
    last = None
    n = 0
    for ch in source(path):
        n += 1
        last = ch
    wall = time.perf_counter() - t0
    del last
    return wall, _cpu_self() - c0, n


def run_matcher(
    path: str, source: Callable[[str], Iterator[Any]]
) -> Tuple[float, float, Dict[str, int], int]:
    """(wall s, cpu s, matches per rule, lines scanned) of MultiMatcher over ``source``."""
    from sidecar.matcher import MultiMatcher
    from sidecar.model import RegexTrigger

    mm = MultiMatcher(
        [(name, RegexTrigger(pat, captures=CAPTURES.get(name, ()))) for name, pat, _g in PATTERNS]
    )
    counts: Dict[str, int] = {name: 0 for name, _p, _g in PATTERNS}
    last = None
    c0 = _cpu_self()
    t0 = time.perf_counter()
    scan = mm.scan
    for ch in source(path):
        for key, _m in scan(ch):
            counts[key] += 1  # type: ignore[index]
        last = ch
    wall = time.perf_counter() - t0
    cpu = _cpu_self() - c0
    lines = 0
    if last is not None:
        d = last.data
        lines = last.lineno - 1 + d.count(b"\n") + d.count(b"\r") - d.count(b"\r\n")
        lines += 0 if d.endswith((b"\n", b"\r")) else 1
    return wall, cpu, counts, lines


# --------------------------------------------------------------------------- main


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size-mb", type=int, default=1024, help="log size (default 1024)")
    ap.add_argument("--dir", default="/tmp", help="where the log goes (default /tmp)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--loss-rate",
        type=float,
        default=0.05,
        help="fraction of log events that are 'loss:' lines (default 0.05)",
    )
    ap.add_argument(
        "--alert-rate",
        type=float,
        default=2e-5,
        help="fraction of log events that are alerts (default 2e-5)",
    )
    ap.add_argument("--reader", choices=("auto", "tailer", "simple"), default="auto")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each timing; best is kept")
    ap.add_argument("--keep", action="store_true", help="keep the generated log")
    ap.add_argument("--no-check", action="store_true", help="skip the per-pattern grep counts")
    a = ap.parse_args(argv)

    tag = hashlib.sha1(
        f"{a.size_mb}/{a.seed}/{a.loss_rate}/{a.alert_rate}/v1".encode()
    ).hexdigest()[:10]
    path = os.path.join(a.dir, f"sidecar-scan-bench-{a.size_mb}mb-{tag}.log")
    patfile = path + ".patterns.txt"
    try:
        t0 = time.perf_counter()
        if os.path.exists(path):
            print(f"reusing {path}")
        else:
            print(f"generating {a.size_mb} MiB of log in {path} ...", flush=True)
            generate(path, a.size_mb * MiB, a.seed, a.loss_rate, a.alert_rate)
            print(f"  generated in {time.perf_counter() - t0:.1f}s")
        with open(patfile, "w", encoding="utf-8") as pf:
            pf.write("".join(g + "\n" for _n, _p, g in PATTERNS))
        size = os.path.getsize(path)
        mb = size / 1e6
        with open(path, "rb") as f:  # warm the page cache, count lines the way sidecar does
            nl = cr = crlf = 0
            while True:
                b = f.read(8 * MiB)
                if not b:
                    break
                nl += b.count(b"\n")
                cr += b.count(b"\r")
                crlf += b.count(b"\r\n")
        lines = nl + cr - crlf
        print(f"file: {size:,} bytes, {lines:,} lines ({nl:,} \\n-lines as grep sees them)")

        src_name, source = chunk_source(a.reader)
        best_src = min(run_chunks_only(path, source) for _ in range(a.repeat))
        best_mm = min((run_matcher(path, source) for _ in range(a.repeat)), key=lambda x: x[0])
        mm_wall, mm_cpu, counts, scanned = best_mm
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        greps: List[Tuple[str, float, float, str]] = []
        base_env = dict(os.environ)
        locales = [("LC_ALL=C", {**base_env, "LC_ALL": "C"})]
        default_loc = (
            base_env.get("LC_ALL") or base_env.get("LC_CTYPE") or base_env.get("LANG") or "unset"
        )
        locales.append((f"default locale ({default_loc})", base_env))
        if "utf" not in default_loc.lower():
            locales.append(("LC_ALL=C.UTF-8", {**base_env, "LC_ALL": "C.UTF-8"}))
        for label, env in locales:
            runs = [time_grep(["grep", "-cEf", patfile, path], env) for _ in range(a.repeat)]
            w, c, out = min(runs)
            greps.append((label, w, c, out))

        print()
        print(f"chunks from: {src_name}; 10 rules; peak RSS {peak_mb:.0f} MB")
        hdr = f"{'':38s} {'wall s':>7s} {'cpu s':>7s} {'MB/s':>7s} {'Mlines/s':>9s}"
        print(hdr)

        def row(label: str, wall: float, cpu: float) -> None:
            print(f"{label:38s} {wall:7.2f} {cpu:7.2f} {mb / wall:7.0f} {lines / wall / 1e6:9.2f}")

        row("chunk production alone", best_src[0], best_src[1])
        row("sidecar MultiMatcher (incl. chunks)", mm_wall, mm_cpu)
        for label, w, c, _out in greps:
            row(f"grep -cEf, {label}", w, c)
        print()
        for label, w, c, out in greps:
            print(
                f"sidecar / grep ({label}): {w / mm_wall:.2f} by wall time, "
                f"{c / mm_cpu:.2f} by CPU time   (grep -cEf count {out})"
            )
        total = sum(counts.values())
        print(f"sidecar matches: {total:,} (lines x rules); lines scanned {scanned:,}")

        ok = True
        if not a.no_check:
            print()
            print(f"{'rule':14s} {'sidecar':>10s} {'grep -cE':>10s}")
            env_c = {**base_env, "LC_ALL": "C"}
            gsum = 0
            for name, _p, g in PATTERNS:
                out = subprocess.run(
                    ["grep", "-cE", g, path], env=env_c, capture_output=True, text=True, check=False
                ).stdout.strip()
                gc = int(out or 0)
                gsum += gc
                flag = "" if gc == counts[name] else "   <-- MISMATCH"
                ok = ok and not flag
                print(f"{name:14s} {counts[name]:10,d} {gc:10,d}{flag}")
            print(f"{'sum':14s} {total:10,d} {gsum:10,d}")
            print("counts: OK" if ok and total == gsum else "counts: MISMATCH")
        return 0 if ok else 1
    finally:
        if not a.keep:
            for p in (path, patfile, path + ".tmp"):
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass
        elif os.path.exists(patfile):
            os.unlink(patfile)


if __name__ == "__main__":
    sys.exit(main())
