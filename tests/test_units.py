"""sidecar.units: sizes (as SLURM's --mem writes them) and signal names."""

from __future__ import annotations

import signal
from typing import Union

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.units import RESERVED_SIGNALS, SIZE_FORMS, format_size, parse_signal, parse_size

G = 1 << 30


@pytest.mark.parametrize(
    ("written", "size"),
    [
        (0, 0),
        (4096, 4096),
        ("4096", 4096),
        ("4096B", 4096),
        ("4096 b", 4096),
        ("100k", 100 * 1024),
        ("100K", 100 * 1024),
        ("512M", 512 << 20),
        ("8G", 8 * G),
        ("8g", 8 * G),
        ("8GB", 8 * G),
        ("8GiB", 8 * G),
        ("8gib", 8 * G),
        (" 8 G ", 8 * G),
        ("1.5g", 3 * G // 2),
        (".5k", 512),
        ("2T", 2 << 40),
        (8e9, 8_000_000_000),
    ],
)
def test_sizes_are_bytes_with_1024_based_units(written: Union[int, float, str], size: int) -> None:
    """K/M/G/T are powers of 1024 (as in #SBATCH --mem), GB and GiB mean G, a bare number
    is bytes, any case, blanks allowed around the unit."""
    assert parse_size(written) == size


@pytest.mark.parametrize(
    ("written", "needle"),
    [
        ("-1", "cannot be negative"),
        (-5, "cannot be negative"),
        (-0.5, "cannot be negative"),
        ("8Q", "is not a size"),
        ("8 GBs", "is not a size"),
        ("1e9", "is not a size"),
        ("", "is not a size"),
        ("G", "is not a size"),
        (True, "not a boolean"),
        (float("inf"), "finite"),
        (float("nan"), "finite"),
        ("9" * 30, "too large"),
        (1 << 70, "too large"),
    ],
)
def test_bad_sizes_raise_value_error_naming_the_accepted_forms(
    written: Union[int, float, str], needle: str
) -> None:
    with pytest.raises(ValueError) as ei:
        parse_size(written)  # type: ignore[arg-type]
    assert needle in str(ei.value)
    if needle == "is not a size":
        assert SIZE_FORMS in str(ei.value)


def test_other_types_are_refused() -> None:
    with pytest.raises(ValueError, match="not list"):
        parse_size([1])  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30))
def test_any_text_is_a_size_or_a_value_error(text: str) -> None:
    """Bad input never raises anything but ValueError, and a size is never negative."""
    try:
        n = parse_size(text)
    except ValueError:
        return
    assert n >= 0


@pytest.mark.parametrize(
    ("n", "shown"),
    [(0, "0 B"), (512, "512 B"), (1536, "1.5 KiB"), (8 * G, "8.0 GiB"), (3 << 40, "3.0 TiB")],
)
def test_format_size(n: int, shown: str) -> None:
    assert format_size(n) == shown


@pytest.mark.parametrize(
    ("written", "name"),
    [("USR1", "USR1"), ("SIGUSR1", "USR1"), ("usr2", "USR2"), ("sigurg", "URG"),
     (" XCPU ", "XCPU"), ("RTMIN", "RTMIN")],
)
def test_signal_names_are_normalised(written: str, name: str) -> None:
    """With or without SIG, any case: the bare upper-case name."""
    assert parse_signal(written) == name


@pytest.mark.parametrize(
    ("written", "needle"),
    [
        ("KILL", "cannot be caught"),
        ("SIGSTOP", "cannot be caught"),
        ("TERM", "stops the sidecar"),
        ("int", "stops the sidecar"),
        ("HUP", "reload"),
        ("CHLD", "child"),
        ("CONT", "scancel"),
        ("SEGV", "kernel"),
        ("10", "not its number (signal 10 is USR1)"),
        ("999", "not its number"),
        ("USR3", "is not a signal name"),
        ("SIG", "is not a signal name"),
        ("", "is not a signal name"),
    ],
)
def test_signals_the_sidecar_cannot_wait_for_are_refused(written: str, needle: str) -> None:
    with pytest.raises(ValueError) as ei:
        parse_signal(written)
    assert needle in str(ei.value)


def test_reserved_signals_are_real_signal_names() -> None:
    """The refusal list names real signals (a typo there would let one through)."""
    for name in RESERVED_SIGNALS:
        assert hasattr(signal, "SIG" + name), name
