"""Values both front ends read the same way: sizes in bytes (``8G``, ``512M``, ``4096``)
and signal names (``USR1``, ``SIGUSR1``).

Binary units, as SLURM's ``--mem`` reads them: K = 1024 bytes, M = 1024 K, G = 1024 M,
T = 1024 G. ``GB`` and ``GiB`` are read as ``G`` (that is what ``--mem=8G``, ``free -g`` and
the cgroup files mean; nobody sizes a job's memory in powers of 1000). A number without a
unit is bytes, whether it is an integer or a string; note that ``--mem=4096`` in SLURM means
4096 megabytes, so callers that expect a memory limit should refuse absurdly small values
(the front ends do: a memory limit under 1 MiB is an error that suggests ``4096M``).

Signal names: any name of Python's ``signal.Signals``, with or without ``SIG``, any case,
normalised to the bare upper-case name (``"sigusr1"`` -> ``"USR1"``). Refused: KILL and STOP
(they cannot be caught), TERM, INT and HUP (the sidecar's own stop and reload), CHLD and CONT
(every child's exit; SLURM sends CONT with every scancel) and PIPE and the fault signals
SEGV, BUS, FPE, ILL, TRAP, SYS (only the kernel sends those, to a faulting process).

Durations are parsed by each front end (``config.py`` takes bare seconds, ``script.py``
takes ``30s``/``5m``/``1h``); nothing here.
"""

from __future__ import annotations

import math
import re
from typing import Mapping, Union

__all__ = ["RESERVED_SIGNALS", "SIZE_FORMS", "format_size", "parse_signal", "parse_size"]

#: what the error messages say is accepted
SIZE_FORMS = (
    'a number of bytes (4096) or a number with a unit K, M, G or T (1024-based, as SLURM\'s '
    '--mem: "512M", "8G", "1.5G"; "8GB" and "8GiB" are the same as "8G")'
)

_SIZE = re.compile(
    r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(?:([kmgtKMGT])(?:[iI]?[bB])?|([bB]))?\s*\Z"
)
_FACTOR = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_MAX = 1 << 62  # far beyond any machine; keeps the result a sane int


def parse_size(value: Union[int, float, str]) -> int:
    """Bytes from ``value``: an int (bytes), a finite float (bytes, rounded down), or a
    string ``"4096"``, ``"4096B"``, ``"100k"``, ``"512M"``, ``"8G"``, ``"8GB"``, ``"8GiB"``,
    ``"1.5g"``, ``"2T"`` (K/M/G/T are powers of 1024, any case). Raises ``ValueError``
    naming the accepted forms; negative sizes and booleans are refused."""
    if isinstance(value, bool):
        raise ValueError(f"a size must be {SIZE_FORMS}, not a boolean")
    if isinstance(value, int):
        n = value
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"a size must be a finite number, not {value}")
        if value < 0:
            raise ValueError(f"a size cannot be negative, got {value:g}")
        n = int(value)
    elif isinstance(value, str):
        mo = _SIZE.match(value)
        if mo is None:
            shown = value if len(value) <= 40 else value[:37] + "..."
            if value.strip().startswith("-"):
                raise ValueError(f"a size cannot be negative, got {shown!r}")
            raise ValueError(f"{shown!r} is not a size: write {SIZE_FORMS}")
        number, unit = mo.group(1), mo.group(2)
        if len(number) > 24:
            raise ValueError(f"size {value.strip()[:40]!r} is too large")
        factor = _FACTOR[unit.lower()] if unit else 1
        n = int(float(number) * factor) if "." in number else int(number) * factor
    else:
        raise ValueError(f"a size must be {SIZE_FORMS}, not {type(value).__name__}")
    if n < 0:
        raise ValueError(f"a size cannot be negative, got {n}")
    if n > _MAX:
        raise ValueError(f"size {value!r} is too large")
    return n


def format_size(n: int) -> str:
    """``8589934592`` -> ``"8.0 GiB"``; below 1 KiB: ``"512 B"``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover - the loop always returns


#: signal names (without SIG) a trigger may not use, and why
RESERVED_SIGNALS: Mapping[str, str] = {
    "KILL": "it cannot be caught",
    "STOP": "it cannot be caught",
    "TERM": "it stops the sidecar (scancel, the end of the job)",
    "INT": "it stops the sidecar",
    "HUP": "it makes the sidecar reload its config",
    "CHLD": "every child process that exits sends it",
    "CLD": "every child process that exits sends it",
    "CONT": "SLURM sends it with every scancel",
    "PIPE": "a broken pipe raises it",
    "SEGV": "only the kernel sends it, to a crashing process",
    "BUS": "only the kernel sends it, to a crashing process",
    "FPE": "only the kernel sends it, to a crashing process",
    "ILL": "only the kernel sends it, to a crashing process",
    "TRAP": "only the kernel and debuggers send it",
    "SYS": "only the kernel sends it, to a crashing process",
}


def parse_signal(value: str) -> str:
    """``"USR1"``, ``"SIGUSR1"``, ``"usr1"`` -> ``"USR1"``: a signal the sidecar can wait
    for. Raises ``ValueError`` (saying what to write) for anything else."""
    import signal

    if not isinstance(value, str):
        raise ValueError(f"a signal is a name such as USR1, not {type(value).__name__}")
    text = value.strip().upper()
    if text.isdigit():
        try:
            name = signal.Signals(int(text)).name
        except ValueError:
            name = ""
        also = f" (signal {text} is {name[3:]})" if name else ""
        raise ValueError(f"write the signal's name, e.g. USR1, not its number{also}")
    bare = text[3:] if text.startswith("SIG") else text
    if not bare or ("SIG" + bare) not in signal.Signals.__members__:
        shown = value if len(value) <= 30 else value[:27] + "..."
        raise ValueError(
            f"{shown!r} is not a signal name: write e.g. USR1 or USR2 (what #SBATCH "
            "--signal=B:USR1@600 sends)"
        )
    why = RESERVED_SIGNALS.get(bare)
    if why is not None:
        raise ValueError(f"signal {bare} cannot be used here: {why}; use USR1 or USR2")
    return bare
