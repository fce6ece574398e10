"""``sidecar report``: one self-contained HTML file from an event log.

The page needs nothing from the network and no JavaScript: inline CSS, inline SVG drawn here
(a plot per metric name, a timeline of the watchers' activity), tables of the watchers, the
actions and the latest events. A Content-Security-Policy meta tag forbids every fetch, so
even a browser that wanted to load something could not.

Elements carry ``data-*`` attributes (``data-metric``, ``data-points``, ``data-kind`` ...)
so that tests and scripts can read the rendered page back.
"""

from __future__ import annotations

import html
import math
import time
from collections import deque
from typing import Any, Deque, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from sidecar.cockpit import (
    MetricPoint,
    RecordLike,
    SeriesKey,
    StatsAccumulator,
    _as_dict,
    clean_text,
    format_time,
    metric_point,
    parse_ts,
    summary,
    write_text_atomic,
)

__all__ = ["render_report", "write_report", "svg_line_plot"]

_PALETTE = (
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    "#7f7f7f", "#bcbd22",
)  # fmt: skip

#: most characters of a line shown in the events table
MAX_TEXT = 2000


def _e(s: Any) -> str:
    """Escaped, terminal-safe text for HTML (content and attribute values)."""
    return html.escape(clean_text("" if s is None else str(s)), quote=True)


def _fmt_num(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e6 or a < 1e-3:
        return f"{v:.3g}"
    return f"{v:.6g}"


# ---------------------------------------------------------------------------------------------
# axes


def _nice_step(span: float, target: int = 5) -> float:
    raw = span / max(target, 1)
    if raw <= 0 or not math.isfinite(raw):
        return 1.0
    mag = 10.0 ** math.floor(math.log10(raw))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if m * mag >= raw:
            return m * mag
    return 10 * mag


def _linear_ticks(lo: float, hi: float) -> List[float]:
    step = _nice_step(hi - lo)
    first = math.ceil(lo / step) * step
    ticks: List[float] = []
    v = first
    while v <= hi + step * 1e-9 and len(ticks) < 20:
        ticks.append(0.0 if abs(v) < step * 1e-9 else v)
        v += step
    return ticks


def _log_ticks(lo: float, hi: float) -> List[float]:
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    mults = (1.0, 2.0, 5.0) if b - a <= 2 else (1.0,)
    step = max(1, (b - a) // 8)
    out = []
    for k in range(a, b + 1, step):
        for m in mults:
            v = m * 10.0**k
            if lo <= v <= hi:
                out.append(v)
    return out


_TIME_STEPS = (
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200,
    86400, 172800, 604800, 1209600, 2592000,
)  # fmt: skip


def _time_ticks(t0: float, t1: float, utc: bool) -> Tuple[List[float], str]:
    span = t1 - t0
    step = next((s for s in _TIME_STEPS if span / s <= 6), None)
    if step is None:
        step = int(math.ceil(span / 6 / 2592000.0)) * 2592000
    off = 0.0
    if not utc:
        off = float(time.localtime(t0).tm_gmtoff)
    first = math.ceil((t0 + off) / step) * step - off
    ticks: List[float] = []
    t = first
    while t <= t1 + 1e-6 and len(ticks) < 12:
        ticks.append(t)
        t += step
    if step >= 86400:
        fmt = "%m-%d"
    elif span >= 86400:
        fmt = "%m-%d %H:%M"
    elif step < 60:
        fmt = "%H:%M:%S"
    else:
        fmt = "%H:%M"
    return ticks, fmt


def _tfmt(t: float, fmt: str, utc: bool) -> str:
    return time.strftime(fmt, time.gmtime(t) if utc else time.localtime(t))


def _decimate(pts: Sequence[Tuple[float, float]], max_points: int) -> List[Tuple[float, float]]:
    """At most ~``max_points`` points keeping each bucket's min and max (spikes survive)."""
    n = len(pts)
    if n <= max_points:
        return list(pts)
    buckets = max(1, max_points // 2)
    out: List[Tuple[float, float]] = []
    for b in range(buckets):
        seg = pts[b * n // buckets : (b + 1) * n // buckets]
        if not seg:
            continue
        lo = min(seg, key=lambda p: p[1])
        hi = max(seg, key=lambda p: p[1])
        out.extend(sorted({lo, hi}, key=lambda p: p[0]))
    return out


# ---------------------------------------------------------------------------------------------
# one plot


def svg_line_plot(
    series: Sequence[Tuple[str, Sequence[Tuple[float, float]]]],
    *,
    width: int = 760,
    height: int = 260,
    max_points: int = 2000,
    utc: bool = False,
    title: str = "",
) -> str:
    """An SVG line plot of ``series`` = [(label, [(epoch_s, value) ...]) ...] (sorted by time).
    Non-finite values are drawn as red marks along the top edge. The y axis is logarithmic
    when every finite value is > 0 and they span at least two decades."""
    ml, mr, mt, mb = 64, 14, 12, 34
    pw, ph = width - ml - mr, height - mt - mb
    finite = [v for _, pts in series for _, v in pts if math.isfinite(v)]
    times = [t for _, pts in series for t, _ in pts]
    parts: List[str] = [
        f'<svg class="plot" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{_e(title)}" xmlns="http://www.w3.org/2000/svg">',
        f'<rect class="frame" x="{ml}" y="{mt}" width="{pw}" height="{ph}"/>',
    ]
    if not times:
        parts.append(
            f'<text x="{ml + pw / 2}" y="{mt + ph / 2}" text-anchor="middle">no data</text></svg>'
        )
        return "".join(parts)
    t0, t1 = min(times), max(times)
    if t1 - t0 < 1e-6:
        t0, t1 = t0 - 30.0, t1 + 30.0
    if finite:
        lo, hi = min(finite), max(finite)
    else:
        lo, hi = 0.0, 1.0
    logy = bool(finite) and lo > 0 and hi / lo >= 100.0
    if logy:
        ylo, yhi = math.log10(lo), math.log10(hi)
        pad_ = (yhi - ylo) * 0.05
        ylo, yhi = ylo - pad_, yhi + pad_
    else:
        if hi - lo < 1e-12:
            d = abs(hi) * 0.1 or 1.0
            lo, hi = lo - d, hi + d
        pad_ = (hi - lo) * 0.05
        ylo, yhi = lo - pad_, hi + pad_

    def X(t: float) -> float:
        return ml + (t - t0) / (t1 - t0) * pw

    def Y(v: float) -> float:
        y = math.log10(v) if logy else v
        return mt + ph - (y - ylo) / (yhi - ylo) * ph

    # grid and axes
    yticks = _log_ticks(10**ylo, 10**yhi) if logy else _linear_ticks(ylo, yhi)
    for v in yticks:
        y = Y(v)
        parts.append(f'<line class="grid" x1="{ml}" x2="{ml + pw}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(
            f'<text class="tick" x="{ml - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{_e(_fmt_num(v))}</text>"
        )
    xticks, fmt = _time_ticks(t0, t1, utc)
    for t in xticks:
        x = X(t)
        parts.append(f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="{mt}" y2="{mt + ph}"/>')
        parts.append(
            f'<text class="tick" x="{x:.1f}" y="{mt + ph + 16}" text-anchor="middle">'
            f"{_e(_tfmt(t, fmt, utc))}</text>"
        )
    # series
    for i, (label, pts) in enumerate(series):
        color = _PALETTE[i % len(_PALETTE)]
        good = [(t, v) for t, v in pts if math.isfinite(v)]
        shown = _decimate(good, max_points)
        if len(shown) >= 2:
            coords = " ".join(f"{X(t):.1f},{Y(v):.1f}" for t, v in shown)
            parts.append(
                f'<polyline class="series" data-series="{_e(label)}" '
                f'data-plotted="{len(shown)}" fill="none" stroke="{color}" '
                f'stroke-width="1.5" points="{coords}"/>'
            )
        if len(shown) <= 200:
            for t, v in shown:
                parts.append(
                    f'<circle cx="{X(t):.1f}" cy="{Y(v):.1f}" r="2.2" fill="{color}">'
                    f"<title>{_e(label)} {_e(_tfmt(t, '%Y-%m-%d %H:%M:%S', utc))}: "
                    f"{_e(_fmt_num(v))}</title></circle>"
                )
        bad = [(t, v) for t, v in pts if not math.isfinite(v)]
        seen: set[int] = set()
        for t, v in bad:
            x = X(t)
            if int(x) in seen:
                continue
            seen.add(int(x))
            parts.append(
                f'<path class="nonfinite" d="M{x - 4:.1f},{mt} L{x + 4:.1f},{mt} '
                f'L{x:.1f},{mt + 7}Z"><title>{_e(label)} '
                f"{_e(_tfmt(t, '%Y-%m-%d %H:%M:%S', utc))}: {_e(v)}</title></path>"
            )
    parts.append("</svg>")
    return "".join(parts)


# ---------------------------------------------------------------------------------------------
# the timeline of events


_TIMELINE_KINDS = {
    "match": ("m", "#1f77b4"),
    "failed": ("f", "#d62728"),
    "state": ("s", "#ff7f0e"),
    "skipped": ("k", "#999999"),
    "warning": ("w", "#bcbd22"),
    "error": ("e", "#d62728"),
}


class _Timeline:
    """Marks per (row, kind, pixel column): bounded whatever the number of records."""

    def __init__(self, max_rows: int = 24) -> None:
        self.max_rows = max_rows
        self.events: Dict[str, List[Tuple[float, str, str]]] = {}  # row -> (t, kind, title)
        self.lifecycle: List[Tuple[float, str]] = []
        self.counts: Dict[str, int] = {}
        self.t0: Optional[float] = None
        self.t1: Optional[float] = None

    def add(self, r: Mapping[str, Any], t: Optional[float]) -> None:
        if t is None:
            return
        self.t0 = t if self.t0 is None else min(self.t0, t)
        self.t1 = t if self.t1 is None else max(self.t1, t)
        kind = r.get("kind")
        if kind in ("start", "stop"):
            if len(self.lifecycle) < 200:
                self.lifecycle.append((t, f"{kind}: {summary(r)}"))
            return
        if kind == "action":
            if r.get("ok") is not False:
                return
            k = "failed"
        elif kind in _TIMELINE_KINDS:
            k = str(kind)
        else:
            return
        row = str(r.get("watcher") or "(sidecar)")
        self.counts[row] = self.counts.get(row, 0) + 1
        lst = self.events.setdefault(row, [])
        if len(lst) < 20000:
            lst.append((t, k, summary(r)[:200]))

    def svg(self, utc: bool, width: int = 760) -> str:
        if self.t0 is None or self.t1 is None or not self.events:
            return ""
        rows = sorted(self.counts, key=lambda n: (-self.counts[n], n))[: self.max_rows]
        rows.sort()
        ml, mr, mt, rh = 150, 14, 8, 18
        pw = width - ml - mr
        height = mt + rh * len(rows) + 28
        t0, t1 = self.t0, self.t1
        if t1 - t0 < 1e-6:
            t0, t1 = t0 - 30.0, t1 + 30.0

        def X(t: float) -> float:
            return ml + (t - t0) / (t1 - t0) * pw

        out = [
            f'<svg class="timeline" viewBox="0 0 {width} {height}" width="{width}" '
            f'height="{height}" role="img" aria-label="timeline of events" '
            'xmlns="http://www.w3.org/2000/svg">'
        ]
        ticks, fmt = _time_ticks(t0, t1, utc)
        bottom = mt + rh * len(rows)
        for t in ticks:
            x = X(t)
            out.append(f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="{mt}" y2="{bottom}"/>')
            out.append(
                f'<text class="tick" x="{x:.1f}" y="{bottom + 16}" text-anchor="middle">'
                f"{_e(_tfmt(t, fmt, utc))}</text>"
            )
        for t, title in self.lifecycle:
            x = X(t)
            out.append(
                f'<line class="life" x1="{x:.1f}" x2="{x:.1f}" y1="{mt}" y2="{bottom}">'
                f"<title>{_e(title)}</title></line>"
            )
        for i, row in enumerate(rows):
            y = mt + rh * i + rh / 2
            out.append(
                f'<text class="rowlabel" x="{ml - 6}" y="{y + 4:.1f}" text-anchor="end">'
                f"{_e(row[:22])}</text>"
            )
            out.append(f'<line class="lane" x1="{ml}" x2="{ml + pw}" y1="{y:.1f}" y2="{y:.1f}"/>')
            seen: Dict[Tuple[str, int], int] = {}
            for t, k, title in self.events.get(row, []):
                x = X(t)
                key = (k, int(x))
                if key in seen:
                    continue
                seen[key] = 1
                color = _TIMELINE_KINDS[k][1]
                tt = f"<title>{_e(_tfmt(t, '%Y-%m-%d %H:%M:%S', utc))} {_e(title)}</title>"
                if k == "match":
                    out.append(
                        f'<line class="ev-match" x1="{x:.1f}" x2="{x:.1f}" y1="{y - 6:.1f}" '
                        f'y2="{y + 6:.1f}" stroke="{color}">{tt}</line>'
                    )
                elif k == "state":
                    out.append(
                        f'<path d="M{x:.1f},{y - 6:.1f} L{x + 5:.1f},{y:.1f} L{x:.1f},'
                        f'{y + 6:.1f} L{x - 5:.1f},{y:.1f}Z" fill="{color}">{tt}</path>'
                    )
                else:
                    out.append(
                        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{color}">{tt}</circle>'
                    )
        out.append("</svg>")
        return "".join(out)


# ---------------------------------------------------------------------------------------------
# the page


_CSS = """
:root{color-scheme:light;font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
body{margin:0 auto;max-width:1100px;padding:16px 24px;color:#222;background:#fff}
h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
.meta{color:#555;font-size:.9em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{padding:2px 8px;text-align:left;vertical-align:top;border-bottom:1px solid #eee}
th{background:#f4f4f4}td.num,th.num{text-align:right}td.t{white-space:nowrap}
table.events td.what{font-family:ui-monospace,Menlo,Consolas,monospace;white-space:pre-wrap;
word-break:break-all}
tr.kind-error td,tr.failed td{background:#fde8e8}tr.kind-warning td{background:#fff8e1}
tr.kind-state td{background:#f3ecff}tr.kind-start td,tr.kind-stop td{background:#eef6ee}
.src{color:#888;font-size:.85em}
figure.metric{margin:1em 0 1.5em}figcaption{font-weight:600;margin-bottom:.3em}
svg{max-width:100%;height:auto;font-size:11px;font-family:inherit}
svg .frame{fill:none;stroke:#999}svg .grid{stroke:#e6e6e6}svg .tick{fill:#555}
svg .nonfinite{fill:#d62728}svg .lane{stroke:#eee}svg .life{stroke:#2ca02c;stroke-dasharray:3 3}
svg .ev-match{stroke-width:1.5}svg .rowlabel{fill:#333}
ul.legend{list-style:none;padding:0;margin:.2em 0;font-size:.85em}
ul.legend li{display:inline-block;margin-right:1.2em}
.sw{display:inline-block;width:.9em;height:.9em;margin-right:.3em;vertical-align:-.1em}
.note{color:#666;font-size:.85em}
nav a{margin-right:1em}
@media print{nav{display:none}}
"""


def _series_label(key: SeriesKey, multi_job: bool, multi_host: bool) -> str:
    parts = [key.watcher or "?"]
    if multi_job and key.job_id:
        parts.append(f"job {key.job_id}")
    if multi_host and key.host:
        parts.append(key.host)
    return " / ".join(parts)


def render_report(
    records: Iterable[RecordLike],
    *,
    title: Optional[str] = None,
    source: Optional[str] = None,
    now: Optional[float] = None,
    max_events: int = 2000,
    max_points: int = 2000,
    utc: bool = False,
) -> str:
    """The report page for ``records`` (oldest first) as one HTML string.

    One pass over the records; memory holds the metric points, the last ``max_events``
    other records (for the table) and bounded timeline marks. A plot shows at most about
    ``max_points`` points per series (min/max per bucket beyond that)."""
    acc = StatsAccumulator(now)
    points: Dict[str, Dict[SeriesKey, List[MetricPoint]]] = {}
    events: Deque[Mapping[str, Any]] = deque(maxlen=max(0, max_events))
    n_events = 0
    timeline = _Timeline()
    for rec in records:
        r = _as_dict(rec)
        t = parse_ts(r.get("ts"))
        acc.add(r, t)
        p = metric_point(r, t)
        if p is not None:
            points.setdefault(p.metric, {}).setdefault(p.key, []).append(p)
            continue
        n_events += 1
        events.append(r)
        timeline.add(r, t)
    st = acc.result()
    multi_job = len(st["jobs"]) > 1
    multi_host = len(st["hosts"]) > 1
    zone = "UTC" if utc else _zone_name()
    heading = title or ("sidecar report" + (f": {source}" if source else ""))

    o: List[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src data:\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(heading)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(heading)}</h1>",
        '<nav><a href="#summary">summary</a><a href="#metrics">metrics</a>'
        '<a href="#timeline">timeline</a><a href="#events">events</a></nav>',
    ]
    # -- summary ----------------------------------------------------------------------------
    span = ""
    if st["first"]:
        span = f"{format_time(st['first'], utc)} .. {format_time(st['last'], utc)} ({zone})"
    generated = format_time(
        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(acc.now)), utc
    )
    o.append('<section id="summary"><h2>Summary</h2><p class="meta">')
    o.append(
        f'<span id="n-records" data-value="{st["records"]}">{st["records"]} records</span>'
    )
    if span:
        o.append(f" &middot; {_e(span)}")
    if st["jobs"]:
        o.append(f" &middot; job(s) {_e(', '.join(st['jobs'][:20]))}")
    if st["hosts"]:
        o.append(f" &middot; host(s) {_e(', '.join(st['hosts'][:20]))}")
    o.append(f" &middot; generated {_e(generated)}")
    if source:
        o.append(f" from <code>{_e(source)}</code>")
    o.append("</p>")
    by_kind = ", ".join(f"{_e(k)} {v}" for k, v in st["by_kind"].items())
    o.append(f'<p class="meta">Records by kind: {by_kind or "none"}</p>')

    if st["watchers"]:
        o.append(
            '<table class="watchers"><thead><tr><th>watcher</th>'
            + ("<th>job</th>" if multi_job else "")
            + ("<th>host</th>" if multi_host else "")
            + '<th>state</th><th class="num">matches</th><th class="num">actions</th>'
            '<th class="num">failed</th><th class="num">skipped</th><th>last match</th>'
            "</tr></thead><tbody>"
        )
        for w in st["watchers"]:
            o.append(
                f'<tr data-watcher="{_e(w["watcher"])}" data-state="{_e(w["state"])}">'
                f"<td>{_e(w['watcher'])}</td>"
                + (f"<td>{_e(w['job_id'])}</td>" if multi_job else "")
                + (f"<td>{_e(w['host'])}</td>" if multi_host else "")
                + f"<td>{_e(w['state'])}</td><td class=\"num\">{w['matches']}</td>"
                f"<td class=\"num\">{w['actions']}</td><td class=\"num\">{w['failed']}</td>"
                f"<td class=\"num\">{w['skipped']}</td>"
                f"<td>{_e(format_time(w['last_match'], utc) if w['last_match'] else '-')}</td>"
                "</tr>"
            )
        o.append("</tbody></table>")
    if st["actions"]:
        o.append(
            '<table class="actions"><thead><tr><th>action</th><th class="num">total</th>'
            '<th class="num">ok</th><th class="num">failed</th><th class="num">timed out</th>'
            "</tr></thead><tbody>"
        )
        for a, c in st["actions"].items():
            o.append(
                f'<tr data-action="{_e(a)}"><td>{_e(a)}</td><td class="num">{c["total"]}</td>'
                f'<td class="num">{c["ok"]}</td><td class="num">{c["failed"]}</td>'
                f'<td class="num">{c["timed_out"]}</td></tr>'
            )
        o.append("</tbody></table>")
    if st["skipped"]:
        sk = ", ".join(f"{_e(k)} {v}" for k, v in st["skipped"].items())
        o.append(f'<p class="meta">Firings not acted on: {sk}</p>')
    o.append("</section>")

    # -- metrics ----------------------------------------------------------------------------
    o.append('<section id="metrics"><h2>Metrics</h2>')
    if not points:
        o.append('<p class="note">No metrics in this log (store_metric actions write them).</p>')
    for name in sorted(points):
        by_series = dict(sorted(points[name].items()))
        series: List[Tuple[str, List[Tuple[float, float]]]] = []
        legend: List[str] = []
        total = 0
        non_numeric = 0
        for i, (key, pts) in enumerate(by_series.items()):
            total += len(pts)
            xy: List[Tuple[float, float]] = []
            for p in pts:
                if p.num is None:
                    non_numeric += 1
                elif p.t is not None:
                    xy.append((p.t, p.num))
            xy.sort(key=lambda tv: tv[0])
            label = _series_label(key, multi_job, multi_host)
            series.append((label, xy))
            finite = [v for _, v in xy if math.isfinite(v)]
            nonfin = len(xy) - len(finite)
            last = pts[-1].value
            last_txt = _fmt_num(last) if isinstance(last, float) else clean_text(str(last))
            stats_txt = f"{len(pts)} points, last {last_txt}"
            if finite:
                stats_txt += f", min {_fmt_num(min(finite))}, max {_fmt_num(max(finite))}"
            if nonfin:
                stats_txt += f", {nonfin} non-finite"
            legend.append(
                f'<li data-series="{_e(label)}" data-points="{len(pts)}">'
                f'<span class="sw" style="background:{_PALETTE[i % len(_PALETTE)]}"></span>'
                f"{_e(label)}: {_e(stats_txt)}</li>"
            )
        plot = svg_line_plot(series, max_points=max_points, utc=utc, title=name)
        note = f" ({non_numeric} non-numeric values not plotted)" if non_numeric else ""
        logn = " (log scale)" if 'class="plot"' in plot and _is_log(series) else ""
        o.append(
            f'<figure class="metric" id="metric-{_e(_anchor(name))}" data-metric="{_e(name)}" '
            f'data-points="{total}" data-series="{len(series)}">'
            f"<figcaption>{_e(name)}<span class=\"note\"> &middot; {total} points in "
            f"{len(series)} series{_e(logn)}{_e(note)}</span></figcaption>{plot}"
            f'<ul class="legend">{"".join(legend)}</ul></figure>'
        )
    o.append("</section>")

    # -- timeline ---------------------------------------------------------------------------
    o.append('<section id="timeline"><h2>Timeline</h2>')
    tl = timeline.svg(utc)
    if tl:
        o.append(
            '<p class="note">One lane per watcher: <span style="color:#1f77b4">|</span> match, '
            '<span style="color:#d62728">&#9679;</span> failed action, '
            '<span style="color:#ff7f0e">&#9670;</span> state change, '
            '<span style="color:#999">&#9679;</span> skipped, dashed lines: sidecar start/stop. '
            "Hover a mark for details.</p>"
        )
        o.append(tl)
    else:
        o.append('<p class="note">Nothing to show.</p>')
    o.append("</section>")

    # -- events -----------------------------------------------------------------------------
    shown = len(events)
    o.append(
        f'<section id="events"><h2>Events</h2><p class="note" id="events-count" '
        f'data-total="{n_events}" data-shown="{shown}">'
    )
    if shown < n_events:
        o.append(f"The last {shown} of {n_events} events (metric records are in the plots).")
    else:
        o.append(f"{n_events} events (metric records are in the plots).")
    o.append("</p>")
    if events:
        o.append(
            '<table class="events"><thead><tr><th>time</th>'
            + ("<th>job</th>" if multi_job else "")
            + ("<th>host</th>" if multi_host else "")
            + "<th>watcher</th><th>kind</th><th>what</th></tr></thead><tbody>"
        )
        for r in events:
            kind = str(r.get("kind") or "?")
            cls = f"kind-{_e(kind)}"
            if kind == "action" and r.get("ok") is False:
                cls += " failed"
            what = summary(r)
            if len(what) > MAX_TEXT:
                what = what[:MAX_TEXT] + "…"
            src = ""
            if r.get("file") and kind in ("match", "skipped", "error"):
                f = str(r.get("file"))
                ln = f":{r.get('lineno')}" if r.get("lineno") is not None else ""
                src = f' <span class="src">{_e(f.rsplit("/", 1)[-1] + ln)}</span>'
            o.append(
                f'<tr class="ev {cls}" data-kind="{_e(kind)}">'
                f"<td class=\"t\">{_e(format_time(r.get('ts'), utc))}</td>"
                + (f"<td>{_e(r.get('job_id'))}</td>" if multi_job else "")
                + (f"<td>{_e(r.get('host'))}</td>" if multi_host else "")
                + f"<td>{_e(r.get('watcher') or '')}</td><td>{_e(kind)}</td>"
                f'<td class="what">{_e(what)}{src}</td></tr>'
            )
        o.append("</tbody></table>")
    o.append("</section>")
    o.append(f'<p class="note">Times are {_e(zone)}. Made by sidecar report.</p>')
    o.append("</body></html>\n")
    return "\n".join(o)


def _zone_name() -> str:
    name, off = time.strftime("%Z"), time.strftime("%z")
    if off in ("+0000", "-0000") and name in ("UTC", "GMT", ""):
        return "UTC"
    return f"{name} (UTC{off[:3]}:{off[3:]})" if name else f"UTC{off[:3]}:{off[3:]}"


def _is_log(series: Sequence[Tuple[str, Sequence[Tuple[float, float]]]]) -> bool:
    finite = [v for _, pts in series for _, v in pts if math.isfinite(v)]
    return bool(finite) and min(finite) > 0 and max(finite) / min(finite) >= 100.0


def _anchor(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:80] or "metric"


def write_report(path: str, records: Iterable[RecordLike], **kw: Any) -> int:
    """Render the report and write it to ``path`` atomically; returns its size in bytes.
    Keyword arguments are those of ``render_report``. Raises OSError."""
    text = render_report(records, **kw)
    write_text_atomic(path, text)
    return len(text.encode("utf-8", "replace"))
