"""sidecar report: the self-contained HTML page (sidecar.htmlreport), checked as text and
rendered by a real headless Chromium (DOM dump + screenshot).

Chromium: the Debian package ``chromium`` (/usr/bin/chromium). Without it the browser tests
are skipped locally and fail under CI=true (CI installs it)."""

from __future__ import annotations

import datetime as dt
import math
import os
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from sidecar import cli_cockpit
from sidecar.htmlreport import (
    _decimate,
    _linear_ticks,
    _log_ticks,
    _time_ticks,
    render_report,
    svg_line_plot,
    write_report,
)

T0 = 1714557600.0  # 2024-05-01T10:00:00Z
CHROMIUM = "/usr/bin/chromium"


def iso(t: float) -> str:
    return (
        dt.datetime.fromtimestamp(t, dt.timezone.utc)
        .isoformat(timespec="microseconds")
        .replace("+00:00", "Z")
    )


def run_records(hosts: Tuple[str, ...] = ("gpu017",), n: int = 50) -> List[Dict[str, Any]]:
    """A training run per host: loss and gpu_mem metrics, matches, a failed action, a state
    change, a warning."""
    out: List[Dict[str, Any]] = []
    for h in hosts:
        out.append({"ts": iso(T0), "kind": "start", "job_id": "4242", "host": h,
                    "message": "sidecar started", "extra": {"watchers": ["loss", "oom"]}})
        for i in range(n):
            t = T0 + 60 * (i + 1)
            loss: Any = 5 * 0.93**i
            if i == 30:
                loss = "nan"
            out.append({"ts": iso(t), "kind": "match", "job_id": "4242", "host": h,
                        "watcher": "loss", "trigger": "regex", "file": "/w/train.log",
                        "line": f"epoch {i} loss={loss}", "lineno": i + 1})
            out.append({"ts": iso(t), "kind": "metric", "job_id": "4242", "host": h,
                        "watcher": "loss", "metric": "loss", "value": loss})
            out.append({"ts": iso(t), "kind": "metric", "job_id": "4242", "host": h,
                        "watcher": "gpu", "metric": "gpu_mem", "value": 30000 + 100 * i})
        t = T0 + 60 * (n + 1)
        out += [
            {"ts": iso(t), "kind": "match", "job_id": "4242", "host": h, "watcher": "oom",
             "trigger": "regex", "file": "/w/slurm-4242.out", "lineno": 812,
             "line": "torch.OutOfMemoryError: CUDA out of memory. <script>alert(1)</script>"},
            {"ts": iso(t + 1), "kind": "action", "job_id": "4242", "host": h, "watcher": "oom",
             "action": "notify_email", "ok": False, "message": "SMTP 554 refused"},
            {"ts": iso(t + 2), "kind": "state", "job_id": "4242", "host": h, "watcher": "oom",
             "state": "DISABLED", "previous_state": "ACTIVE", "reason": "5 failures"},
            {"ts": iso(t + 3), "kind": "warning", "job_id": "4242", "host": h,
             "message": "event queue overflow"},
        ]
    out.sort(key=lambda r: r["ts"])
    return out


def n_events(recs: List[Dict[str, Any]]) -> int:
    return sum(1 for r in recs if r["kind"] != "metric")


# ---------------------------------------------------------------------------------------------
# the page as text


def test_report_has_a_plot_per_metric_and_a_row_per_event() -> None:
    recs = run_records()
    page = render_report(recs, source="events.jsonl", now=T0 + 7200)
    figs = re.findall(r'<figure class="metric"[^>]*data-metric="([^"]+)" data-points="(\d+)"',
                      page)
    assert figs == [("gpu_mem", "50"), ("loss", "50")]
    assert len(re.findall(r'<tr class="ev ', page)) == n_events(recs)
    assert 'data-kind="state"' in page and "DISABLED" in page and "notify_email" in page
    assert page.count("<polyline") == 2
    assert 'class="nonfinite"' in page  # the NaN loss is marked, not dropped silently
    assert "1 non-finite" in page


def test_report_escapes_everything_from_the_log() -> None:
    recs = run_records()
    recs.append({"ts": iso(T0 + 9999), "kind": "metric", "watcher": '<b onmouseover="x">',
                 "metric": "<img src=x>", "value": 1})
    page = render_report(recs)
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img src=x>" not in page and "<b onmouseover" not in page


def test_report_is_self_contained_and_forbids_fetches() -> None:
    page = render_report(run_records())
    assert not re.search(r'\b(?:src|href)\s*=\s*"(?!#)', page)  # only in-page anchors
    assert "@import" not in page and "url(" not in page
    assert "<script" not in page
    assert "Content-Security-Policy" in page and "default-src 'none'" in page


def test_report_shows_hosts_when_there_are_several_and_limits_the_event_table() -> None:
    recs = run_records(("gpu017", "gpu018"))
    page = render_report(recs, max_events=10)
    assert len(re.findall(r'<tr class="ev ', page)) == 10
    m = re.search(r'id="events-count" data-total="(\d+)" data-shown="(\d+)"', page)
    assert m and int(m.group(1)) == n_events(recs) and m.group(2) == "10"
    assert "<th>host</th>" in page
    assert 'data-series="loss / gpu017"' in page and 'data-series="loss / gpu018"' in page


def test_report_of_an_empty_log_still_renders() -> None:
    page = render_report([])
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "No metrics in this log" in page and 'data-total="0"' in page


def test_write_report_writes_atomically_and_returns_the_size(tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    size = write_report(str(out), run_records(), title="my run")
    assert out.stat().st_size == size and "<title>my run</title>" in out.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]


def test_report_command_writes_the_file(tmp_path: Path, capsys: Any) -> None:
    import json

    log = tmp_path / "e.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in run_records()))
    out = tmp_path / "report.html"
    rc = cli_cockpit.main(["report", str(log), "-o", str(out), "--watcher", "loss"])
    stdout, _ = capsys.readouterr()
    assert rc == 0 and f"wrote {out}" in stdout
    page = out.read_text()
    assert 'data-metric="loss"' in page and 'data-metric="gpu_mem"' not in page


# ---------------------------------------------------------------------------------------------
# the plot


def _coords(svg: str) -> List[Tuple[float, float]]:
    m = re.search(r'points="([^"]+)"', svg)
    assert m
    return [tuple(map(float, p.split(","))) for p in m.group(1).split()]  # type: ignore[misc]


def test_plot_of_a_long_series_is_bounded_and_keeps_a_spike() -> None:
    pts = [(T0 + i, 1.0 + (i % 7) * 0.01) for i in range(100_000)]
    pts[54_321] = (T0 + 54_321, 50.0)
    svg = svg_line_plot([("s", pts)], max_points=1000)
    xy = _coords(svg)
    assert len(xy) <= 1000
    ys = sorted(y for _, y in xy)
    assert ys[0] < 30 < 200 < ys[1]  # the one spike reaches the top; the rest stays low
    assert "<circle" not in svg  # no per-point markers for long series
    assert len(_decimate(pts, 1000)) <= 1000 and max(v for _, v in _decimate(pts, 1000)) == 50.0


def test_plot_uses_a_log_axis_for_values_spanning_decades() -> None:
    pts = [(T0 + i, 10.0 ** (-i / 10)) for i in range(50)]  # 1 .. 1e-5
    svg = svg_line_plot([("loss", pts)])
    labels = re.findall(r'class="tick"[^>]*text-anchor="end">([^<]+)<', svg)
    assert "1" in labels and "1e-05" in labels


def test_plot_with_a_single_point_or_only_non_finite_values() -> None:
    one = svg_line_plot([("s", [(T0, 3.0)])])
    assert "<circle" in one and "<polyline" not in one
    bad = svg_line_plot([("s", [(T0, math.nan), (T0 + 5, math.inf)])])
    assert bad.count('class="nonfinite"') == 2
    assert "no data" in svg_line_plot([])


def test_axis_ticks_are_nice_and_inside_the_range() -> None:
    assert _linear_ticks(0.0, 10.0) == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    assert _linear_ticks(-0.3, 0.3) == pytest.approx([-0.2, 0.0, 0.2])
    assert _log_ticks(1e-5, 1.0)[0] == 1e-5 and _log_ticks(1e-5, 1.0)[-1] == 1.0
    for span in (5, 300, 7200, 86400 * 3, 86400 * 90):
        ticks, fmt = _time_ticks(T0, T0 + span, utc=True)
        assert 2 <= len(ticks) <= 12 and ticks == sorted(ticks)
        assert all(T0 <= t <= T0 + span for t in ticks)
    ticks, fmt = _time_ticks(T0, T0 + 3600, utc=True)
    assert fmt == "%H:%M" and all(t % 600 == 0 for t in ticks)


# ---------------------------------------------------------------------------------------------
# in a real browser


def _chromium() -> str:
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    if os.environ.get("CI") == "true":
        pytest.fail("chromium is not installed (CI must apt-get install chromium)")
    pytest.skip("chromium not installed (apt-get install chromium)")


def _run_chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    profile = tmp_path / "profile"
    cmd = [
        _chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={profile}", *args,
    ]
    env = dict(os.environ, HOME=str(tmp_path))
    try:
        return subprocess.run(cmd, capture_output=True, timeout=90, env=env, cwd=tmp_path)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def test_chromium_renders_the_report_with_its_data(tmp_path: Path) -> None:
    recs = run_records(("gpu017", "gpu018"))
    page = tmp_path / "report.html"
    write_report(str(page), recs)
    p = _run_chromium(tmp_path, "--dump-dom", page.as_uri())
    dom = p.stdout.decode("utf-8", "replace")
    assert p.returncode == 0 and "</html>" in dom, p.stderr.decode(errors="replace")[-2000:]
    figs = dict(re.findall(r'data-metric="([^"]+)" data-points="(\d+)"', dom))
    assert figs == {"gpu_mem": "100", "loss": "100"}
    assert len(re.findall(r'<tr class="ev ', dom)) == n_events(recs)
    assert len(re.findall(r"<polyline", dom)) == 4  # 2 metrics x 2 hosts
    assert dom.count('data-state="DISABLED"') == 2
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom


def test_chromium_screenshot_of_the_report_is_not_blank(tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    write_report(str(page), run_records())
    shot = tmp_path / "shot.png"
    p = _run_chromium(tmp_path, f"--screenshot={shot}", "--window-size=800,900",
                      "--hide-scrollbars", page.as_uri())
    assert p.returncode == 0 and shot.exists(), p.stderr.decode(errors="replace")[-2000:]
    width, height, pixels = decode_png(shot.read_bytes())
    assert (width, height) == (800, 900)
    colours: Dict[Tuple[int, int, int], int] = {}
    for px in pixels:
        colours[px] = colours.get(px, 0) + 1
    background = max(colours, key=lambda c: colours[c])
    assert background == (255, 255, 255)
    ink = sum(n for c, n in colours.items() if c != background)
    assert ink / (width * height) > 0.02  # text, tables, plot lines
    assert len(colours) > 50  # antialiased text and coloured series
    # the first series colour (#1f77b4) of the loss plot is on the page
    assert any(abs(r - 31) + abs(g - 119) + abs(b - 180) < 40 for (r, g, b) in colours)


def decode_png(data: bytes) -> Tuple[int, int, List[Tuple[int, int, int]]]:
    """Minimal PNG decoder: 8-bit RGB/RGBA, no interlace (what Chromium writes). Returns
    (width, height, RGB pixels)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, b""
    width = height = ctype = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        tag = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if tag == b"IHDR":
            width, height, depth, ctype, _c, _f, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and ctype in (2, 6) and interlace == 0, (depth, ctype, interlace)
        elif tag == b"IDAT":
            idat += body
        pos += 12 + length
    bpp = 4 if ctype == 6 else 3
    raw = zlib.decompress(idat)
    stride = width * bpp
    prev = bytearray(stride)
    pixels: List[Tuple[int, int, int]] = []
    for y in range(height):
        ftype = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        if ftype == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif ftype == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, prev))
        elif ftype == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif ftype == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b = prev[i]
                c = prev[i - bpp] if i >= bpp else 0
                pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 0xFF
        for x in range(0, stride, bpp):
            pixels.append((line[x], line[x + 1], line[x + 2]))
        prev = line
    return width, height, pixels
