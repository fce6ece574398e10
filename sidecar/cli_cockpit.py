"""The cockpit commands of the command line: reading what a sidecar did, and getting started.

    sidecar events PATH [--follow] [--job J] [--watcher W] [--kind K] [--since 10m]
                        [--limit N] [--json]
    sidecar stats PATH [--json]
    sidecar metrics PATH [NAME ...] [--json | --csv | --prometheus]
    sidecar report PATH [-o report.html]
    sidecar test-pattern REGEX [FILE|-] [--captures a,b] [--ignore-case] [--condition EXPR]
    sidecar schema [-o FILE]
    sidecar init [TEMPLATE ...] [-o sidecar.toml] [--force] | --list

``register(subparsers)`` adds these to the main parser (sidecar/cli.py), ``dispatch(args)``
runs one; ``main(argv)`` runs them standalone (``python -m sidecar.cli_cockpit``).
Exit codes: 0 done (test-pattern: something matched), 1 a failure (a log that cannot be
read; test-pattern: nothing matched), 2 bad usage (bad arguments, invalid regex, unknown
template, refusing to overwrite).

Importing this module costs only argparse: everything else is imported by the command that
needs it. Output that stops early (``| head``) ends quietly with exit 0.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import IO, Any, Callable, Dict, List, Optional, Sequence, Tuple

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2

#: the subcommands this module provides
COMMANDS: Tuple[str, ...] = (
    "events",
    "stats",
    "metrics",
    "report",
    "test-pattern",
    "schema",
    "init",
)

TEMPLATES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
#: what ``sidecar init`` writes without template names
DEFAULT_TEMPLATES: Tuple[str, ...] = (
    "oom",
    "nan_loss",
    "traceback",
    "segfault",
    "nccl",
    "disk_quota",
    "slurm_cancel",
    "hang",
    "progress",
)
DEFAULT_CONFIG_NAME = "sidecar.toml"


class _Usage(Exception):
    """A bad argument: the message is printed, exit 2."""


# ---------------------------------------------------------------------------------------------
# the parsers


def _csv_list(values: Optional[List[str]]) -> Tuple[str, ...]:
    out: List[str] = []
    for v in values or ():
        out.extend(x.strip() for x in v.split(",") if x.strip())
    return tuple(out)


def _filters(p: argparse.ArgumentParser, kinds: bool = True) -> None:
    g = p.add_argument_group("filters (repeat an option or separate values with commas; "
                             "shell globs like 'train*' work)")
    g.add_argument("--job", "-j", action="append", metavar="JOB_ID", help="only this job")
    g.add_argument("--watcher", "-w", action="append", metavar="NAME", help="only this watcher")
    if kinds:
        g.add_argument(
            "--kind", "-k", action="append", metavar="KIND",
            help="only these record kinds: start, stop, match, action, skipped, state, "
            "metric, log, warning, error",
        )
    g.add_argument("--host", action="append", metavar="HOST", help="only records of this host")
    g.add_argument(
        "--since", "-s", metavar="WHEN",
        help="only records at or after WHEN: a duration ago (30s, 10m, 2h, 1d) or a date/time "
        "(2024-05-01, 2024-05-01T10:00, 14:30; local time unless it ends in Z or +HH:MM)",
    )
    g.add_argument("--until", metavar="WHEN", help="only records at or before WHEN (as --since)")


def _path_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "path", metavar="PATH",
        help="an event log (.jsonl or .db/.sqlite), or a directory of them (merged by time)",
    )


def _add_parsers(sub: Any) -> None:
    e = sub.add_parser(
        "events", help="show the event log as a table (or JSON lines); --follow like tail -f",
        description="Show the records of an event log: time, job, host, watcher, kind and what "
        "happened (the line, the action and its outcome, the state change ...).",
    )
    _path_arg(e)
    _filters(e)
    e.add_argument("--follow", "-f", action="store_true",
                   help="keep reading: show records as they are written (Ctrl-C to stop); "
                   "waits for a log that does not exist yet")
    e.add_argument("--limit", "-n", type=int, metavar="N",
                   help="only the last N records (with --follow the default is 10, unless "
                   "--since is given; 0 = only new ones)")
    e.add_argument("--json", action="store_true", help="one JSON object per line")
    e.add_argument("--utc", action="store_true", help="times in UTC (default: local time)")
    e.add_argument("--width", type=int, metavar="COLUMNS",
                   help="cut lines to this width (default: the terminal's; none when not a "
                   "terminal)")
    e.add_argument("--no-header", action="store_true", help="no column header line")
    e.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                   help="colour the kind column (auto: on a terminal, unless NO_COLOR is set)")
    e.set_defaults(_cockpit=cmd_events)

    s = sub.add_parser(
        "stats", help="summary: watchers by state, actions ok/failed, last hour, busiest watchers",
    )
    _path_arg(s)
    _filters(s, kinds=False)
    s.add_argument("--json", action="store_true", help="the statistics as one JSON object")
    s.add_argument("--top", type=int, default=10, metavar="N", help="busiest watchers shown")
    s.add_argument("--utc", action="store_true", help="times in UTC (default: local time)")
    s.set_defaults(_cockpit=cmd_stats)

    m = sub.add_parser(
        "metrics", help="the values stored by store_metric: a summary, or the points of NAME",
        description="Without NAME: one line per series (metric, job, host, watcher) with the "
        "number of points, the last value, min and max. With NAME (exact or a glob): every "
        "point. --json and --csv always give the points.",
    )
    _path_arg(m)
    m.add_argument("names", nargs="*", metavar="NAME", help="metric name(s) or globs")
    _filters(m, kinds=False)
    fmt = m.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="points as JSON lines")
    fmt.add_argument("--csv", action="store_true", help="points as CSV (with a header line)")
    fmt.add_argument("--prometheus", action="store_true",
                     help="the last value of each series in the Prometheus text format")
    m.add_argument("--utc", action="store_true", help="times in UTC (default: local time)")
    m.set_defaults(_cockpit=cmd_metrics)

    r = sub.add_parser(
        "report", help="write one self-contained HTML file: metric plots, timeline, events",
    )
    _path_arg(r)
    _filters(r)
    r.add_argument("-o", "--output", default="sidecar-report.html", metavar="FILE",
                   help="where to write it (default: sidecar-report.html)")
    r.add_argument("--title", help="the page title")
    r.add_argument("--max-events", type=int, default=2000, metavar="N",
                   help="rows in the events table (the latest; default 2000)")
    r.add_argument("--utc", action="store_true", help="times in UTC (default: local time)")
    r.set_defaults(_cockpit=cmd_report)

    t = sub.add_parser(
        "test-pattern", help="try a regex on a file (or stdin) with the daemon's matcher",
        description="Show each line the regex matches (line number, line) and its captures, "
        "as the daemon would see them. Exit 0 if a line matched, 1 if none, 2 for an invalid "
        "regex.",
    )
    t.add_argument("regex", metavar="REGEX", help="Python re syntax (what line_regex takes)")
    t.add_argument("file", nargs="?", default="-", metavar="FILE",
                   help="the file to read; - or nothing for standard input")
    t.add_argument("--captures", "-c", action="append", metavar="NAMES",
                   help="names for the groups, in order: --captures epoch,loss")
    t.add_argument("--ignore-case", "-i", action="store_true", help="as ignore_case = true")
    t.add_argument("--condition", metavar="EXPR",
                   help='only count lines where this holds, e.g. "float(loss) > 5"')
    t.add_argument("--json", action="store_true", help="one JSON object per matching line")
    t.add_argument("--max-count", "-m", type=int, metavar="N", help="stop after N matching lines")
    t.add_argument("--quiet", "-q", action="store_true", help="print nothing; only the exit code")
    t.set_defaults(_cockpit=cmd_test_pattern)

    sc = sub.add_parser(
        "schema", help="print the JSON Schema of the TOML config (for editors)",
    )
    sc.add_argument("-o", "--output", metavar="FILE", help="write it to FILE instead")
    sc.set_defaults(_cockpit=cmd_schema)

    i = sub.add_parser(
        "init", help="write a starter config from the template library",
        description="Write a config combining templates (default: "
        + ", ".join(DEFAULT_TEMPLATES) + "). sidecar init --list shows them all.",
    )
    i.add_argument("templates", nargs="*", metavar="TEMPLATE", help="template names")
    i.add_argument("-o", "--output", default=DEFAULT_CONFIG_NAME, metavar="FILE",
                   help=f"where to write it (default: {DEFAULT_CONFIG_NAME}; - for stdout)")
    i.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    i.add_argument("--list", action="store_true", help="list the templates and exit")
    i.set_defaults(_cockpit=cmd_init)


def register(subparsers: Any) -> None:
    """Add the cockpit subcommands to ``subparsers`` (an ``add_subparsers()`` result)."""
    _add_parsers(subparsers)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sidecar", description="sidecar's cockpit commands")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    register(sub)
    return p


# ---------------------------------------------------------------------------------------------
# running them


def _err(msg: str) -> None:
    try:
        print(f"sidecar: {msg}", file=sys.stderr)
    except (OSError, ValueError):
        pass


def _silence_stdout() -> None:
    """After EPIPE: point stdout at /dev/null so that the flush at exit stays quiet."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(fd, sys.stdout.fileno())
        finally:
            os.close(fd)
    except (OSError, ValueError, AttributeError):
        pass


def _safe_stdout() -> None:
    """Lines may hold anything (lone surrogates from undecodable bytes ...): never fail to
    print them."""
    reconf = getattr(sys.stdout, "reconfigure", None)
    if reconf is not None:
        try:
            reconf(errors="backslashreplace")
        except (ValueError, OSError):
            pass


def dispatch(args: argparse.Namespace) -> int:
    """Run the cockpit command ``args`` was parsed for; returns the exit code. Never raises
    (a broken pipe is a normal end, an unexpected error is reported in one line)."""
    fn: Optional[Callable[[argparse.Namespace], int]] = getattr(args, "_cockpit", None)
    if fn is None:
        _err(f"not a cockpit command: {getattr(args, 'command', None)!r}")
        return EXIT_USAGE
    _safe_stdout()
    try:
        rc = fn(args)
        sys.stdout.flush()
        return rc
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_OK
    except _Usage as exc:
        _err(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug or an odd file: one line, not a traceback
        _err(f"{getattr(args, 'command', 'command')}: {type(exc).__name__}: {exc}")
        return EXIT_FAIL


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    argl = list(sys.argv[1:] if argv is None else argv)
    if not argl:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        args = parser.parse_args(argl)
    except SystemExit as e:
        return EXIT_OK if not e.code else EXIT_USAGE
    return dispatch(args)


# ---------------------------------------------------------------------------------------------
# helpers shared by the commands


def _out() -> IO[str]:
    return sys.stdout


def _is_tty(f: Any) -> bool:
    try:
        return bool(f.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _record_filter(args: argparse.Namespace) -> Any:
    from sidecar.cockpit import KNOWN_KINDS, RecordFilter, parse_since

    since = until = None
    try:
        if getattr(args, "since", None):
            since = parse_since(args.since)
        if getattr(args, "until", None):
            until = parse_since(args.until)
    except ValueError as exc:
        raise _Usage(f"--since/--until: {exc}") from None
    kinds = _csv_list(getattr(args, "kind", None))
    for k in kinds:
        if k not in KNOWN_KINDS and not any(c in k for c in "*?["):
            _err(f"note: {k!r} is not a record kind sidecar writes ({', '.join(KNOWN_KINDS)})")
    return RecordFilter(
        jobs=_csv_list(getattr(args, "job", None)),
        watchers=_csv_list(getattr(args, "watcher", None)),
        kinds=kinds,
        hosts=_csv_list(getattr(args, "host", None)),
        since=since,
        until=until,
    )


def _report_problems(problems: Any) -> None:
    for e in problems.errors:
        _err(f"cannot read {e}")
    if problems.skipped_lines:
        n = problems.skipped_lines
        _err(f"note: {n} line{'s' if n != 1 else ''} that were not valid records skipped")


def _read_all(args: argparse.Namespace, flt: Any) -> Tuple[Any, Any]:
    """(iterator of records, problems). Raises _Usage for a missing path."""
    from sidecar.cockpit import ReadProblems, iter_records

    if not os.path.exists(args.path):
        raise _Usage(f"{args.path}: no such file or directory")
    if os.path.isdir(args.path):
        from sidecar.cockpit import LOG_SUFFIXES, log_files

        if not log_files(args.path):
            _err(f"note: no event logs ({', '.join('*' + x for x in LOG_SUFFIXES)}) in "
                 f"{args.path}")
    problems = ReadProblems()
    return iter_records(args.path, None if flt.empty else flt, problems), problems


def _guard_read(it: Any, path: str) -> Any:
    """Re-raise reading errors of a single log as one clean message (exit 1)."""
    try:
        yield from it
    except (OSError, ValueError) as exc:
        raise _ReadError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    except Exception as exc:  # sqlite3.Error and friends
        raise _ReadError(f"cannot read {path}: {exc}") from None


class _ReadError(Exception):
    pass


def _run_reading(fn: Callable[[], int]) -> int:
    try:
        return fn()
    except _ReadError as exc:
        _err(str(exc))
        return EXIT_FAIL


# ---------------------------------------------------------------------------------------------
# events


def cmd_events(args: argparse.Namespace) -> int:
    import json

    from sidecar.cockpit import Table, last_n

    flt = _record_filter(args)
    out = _out()
    tty = _is_tty(out)
    if args.limit is not None and args.limit < 0:
        raise _Usage("--limit must be 0 or more")
    width: Optional[int] = args.width
    if width is None and tty:
        import shutil

        width = shutil.get_terminal_size((120, 24)).columns
    color = args.color == "always" or (
        args.color == "auto" and tty and not os.environ.get("NO_COLOR")
        and os.environ.get("TERM") != "dumb"
    )

    def emit_json(rec: Dict[str, Any]) -> None:
        out.write(json.dumps(rec, ensure_ascii=False, separators=(",", ":"), default=str) + "\n")

    if args.follow:
        return _follow_events(args, flt, width, color, emit_json)

    def run() -> int:
        recs, problems = _read_all(args, flt)
        recs = _guard_read(recs, args.path)
        if args.limit is not None:
            recs = iter(last_n(recs, args.limit))
        if args.json:
            for r in recs:
                emit_json(r)
        else:
            head: List[Dict[str, Any]] = []
            for r in recs:  # fit the columns to the first records, then stream
                head.append(r)
                if len(head) >= 500:
                    break
            table = Table.fit(head, width, utc=args.utc, color=color)
            if not args.no_header and head:
                out.write(table.header() + "\n")
            for r in head:
                out.write(table.row(r) + "\n")
            for r in recs:
                out.write(table.row(r) + "\n")
        out.flush()
        _report_problems(problems)
        return EXIT_OK

    return _run_reading(run)


def _follow_events(
    args: argparse.Namespace,
    flt: Any,
    width: Optional[int],
    color: bool,
    emit_json: Callable[[Dict[str, Any]], None],
) -> int:
    from sidecar.cockpit import ReadProblems, Table, follow_path

    out = _out()
    backlog: Optional[int] = args.limit
    if backlog is None:
        backlog = None if args.since else 10
    problems = ReadProblems()
    reported = [0]

    def idle() -> None:
        out.flush()
        while reported[0] < len(problems.errors):
            _err(f"cannot read {problems.errors[reported[0]]}")
            reported[0] += 1

    table = Table(width, utc=args.utc, color=color)
    if not args.json and not args.no_header:
        out.write(table.header() + "\n")
    out.flush()
    try:
        for rec in follow_path(
            args.path, flt=None if flt.empty else flt, backlog=backlog, problems=problems,
            on_idle=idle,
        ):
            if args.json:
                emit_json(rec)
            else:
                out.write(table.row(rec) + "\n")
            out.flush()
    except KeyboardInterrupt:
        try:
            out.flush()
        except BrokenPipeError:
            _silence_stdout()
        return EXIT_OK
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# stats


def cmd_stats(args: argparse.Namespace) -> int:
    import json

    from sidecar.cockpit import compute_stats, format_stats

    flt = _record_filter(args)

    def run() -> int:
        recs, problems = _read_all(args, flt)
        st = compute_stats(_guard_read(recs, args.path), top=max(0, args.top))
        out = _out()
        if args.json:
            st["read_problems"] = {
                "errors": list(problems.errors), "skipped_lines": problems.skipped_lines,
            }
            out.write(json.dumps(st, indent=2, ensure_ascii=False, default=str) + "\n")
        else:
            out.write(format_stats(st, source=args.path, utc=args.utc) + "\n")
        out.flush()
        _report_problems(problems)
        return EXIT_OK

    return _run_reading(run)


# ---------------------------------------------------------------------------------------------
# metrics


def cmd_metrics(args: argparse.Namespace) -> int:
    import json

    from sidecar.cockpit import (
        clean_text,
        format_time,
        metric_points,
        metric_summary,
        pad,
        prometheus_text,
        text_width,
    )

    flt = _record_filter(args)
    names = _csv_list(args.names)

    def run() -> int:
        recs, problems = _read_all(args, flt)
        pts = metric_points(_guard_read(recs, args.path), names)
        out = _out()
        if args.prometheus:
            out.write(prometheus_text({**p.to_dict(), "kind": "metric"} for p in pts))
        elif args.json:
            for p in pts:
                out.write(json.dumps(p.to_dict(), ensure_ascii=False, default=str) + "\n")
        elif args.csv:
            import csv

            w = csv.writer(out, lineterminator="\n")
            w.writerow(["ts", "job_id", "host", "watcher", "metric", "value"])
            for p in pts:
                w.writerow([p.ts, p.job_id, p.host, p.watcher, p.metric,
                            "" if p.value is None else p.value])
        elif names:
            rows = [
                (format_time(p.ts, args.utc), clean_text(p.job_id), clean_text(p.host),
                 clean_text(p.watcher), clean_text(p.metric), clean_text(_value_text(p.value)))
                for p in pts
            ]
            _print_table(
                out, ("TIME", "JOB", "HOST", "WATCHER", "METRIC", "VALUE"), rows, pad, text_width
            )
        else:
            srows = []
            for s in metric_summary(pts):
                srows.append((
                    clean_text(s["metric"]), clean_text(s["job_id"] or ""),
                    clean_text(s["host"] or ""), clean_text(s["watcher"] or ""),
                    str(s["points"]), clean_text(_value_text(s["last"])),
                    _value_text(s["min"]) if s["min"] is not None else "-",
                    _value_text(s["max"]) if s["max"] is not None else "-",
                    format_time(s["last_ts"], args.utc),
                ))
            _print_table(
                out,
                ("METRIC", "JOB", "HOST", "WATCHER", "POINTS", "LAST", "MIN", "MAX", "LAST TIME"),
                srows, pad, text_width,
            )
            if not srows:
                _err("no metric records (store_metric actions write them)")
        out.flush()
        _report_problems(problems)
        return EXIT_OK

    return _run_reading(run)


def _value_text(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else str(v)


def _print_table(
    out: IO[str],
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    pad: Callable[[str, int], str],
    text_width: Callable[[str], int],
) -> None:
    if not rows:
        return
    keep = [i for i in range(len(header)) if any(r[i] for r in rows)]
    widths = {i: min(40, max([len(header[i])] + [text_width(r[i]) for r in rows])) for i in keep}
    out.write("  ".join(pad(header[i], widths[i]) for i in keep).rstrip() + "\n")
    for r in rows:
        out.write("  ".join(pad(r[i], widths[i]) for i in keep).rstrip() + "\n")


# ---------------------------------------------------------------------------------------------
# report


def cmd_report(args: argparse.Namespace) -> int:
    from sidecar.htmlreport import write_report

    flt = _record_filter(args)

    def run() -> int:
        recs, problems = _read_all(args, flt)
        try:
            size = write_report(
                args.output, _guard_read(recs, args.path), title=args.title,
                source=args.path, max_events=max(0, args.max_events), utc=args.utc,
            )
        except OSError as exc:
            _err(f"cannot write {args.output}: {exc.strerror or exc}")
            return EXIT_FAIL
        _report_problems(problems)
        _out().write(f"wrote {args.output} ({size // 1024 + 1} KiB)\n")
        return EXIT_OK

    return _run_reading(run)


# ---------------------------------------------------------------------------------------------
# test-pattern


def _chunks(f: Any, path: str, block: int = 1 << 20) -> Any:
    """Chunks of whole lines of a binary stream, with their first line numbers (the
    terminators the daemon knows: \\n, \\r\\n, lone \\r)."""
    from sidecar.types import Chunk

    lineno = 1
    offset = 0
    buf = b""
    while True:
        data = f.read(block)
        if data:
            buf += data
            cut = buf.rfind(b"\n") + 1
            if cut == 0:
                r = buf.rfind(b"\r", 0, len(buf) - 1)  # a final \r may be half of \r\n
                cut = r + 1
            if cut == 0 and len(buf) < (64 << 20):
                continue
            if cut == 0:
                cut = len(buf)  # a 64 MiB line: take it as it is
        else:
            cut = len(buf)
            if not cut:
                return
        piece, buf = buf[:cut], buf[cut:]
        yield Chunk(path=path, data=piece, offset=offset, lineno=lineno)
        lineno += piece.count(b"\n") + piece.count(b"\r") - piece.count(b"\r\n")
        offset += len(piece)
        if not data and not buf:
            return


def cmd_test_pattern(args: argparse.Namespace) -> int:
    import json
    import re

    from sidecar.cockpit import clean_text
    from sidecar.matcher import MultiMatcher, PatternError, compile_check
    from sidecar.model import RegexTrigger, Source, Watcher
    from sidecar.triggers import match_variables

    caps = _csv_list(args.captures)
    for c in caps:
        if not c.isidentifier():
            raise _Usage(f"--captures: {c!r} is not a valid name (letters, digits, _)")
    if len(set(caps)) != len(caps):
        raise _Usage("--captures: a name is given twice")
    trig = RegexTrigger(pattern=args.regex, captures=caps, ignore_case=args.ignore_case,
                        condition=args.condition)
    engine, msg = compile_check(trig)
    if engine == "invalid":  # compile_check's verdict for a pattern that does not compile
        text = str(msg or "does not compile")
        _err(text if text.lower().startswith("invalid regex") else f"invalid regex: {text}")
        return EXIT_USAGE
    if msg and not args.quiet:
        _err(f"note: {msg}")
    from sidecar.conditions import ConditionError, compile_condition

    cond = None
    if args.condition:
        try:
            cond = compile_condition(args.condition)
        except ValueError as exc:
            _err(f"invalid condition: {exc}")
            return EXIT_USAGE
    try:
        mm = MultiMatcher([("test-pattern", trig)])
    except PatternError as exc:
        _err(f"invalid regex: {exc}")
        return EXIT_USAGE
    try:
        pyrx = re.compile(args.regex, re.IGNORECASE if args.ignore_case else 0)
        group_names = {i: n for n, i in pyrx.groupindex.items()}
    except (re.error, RecursionError, OverflowError):
        group_names = {}
    w = Watcher(name="test-pattern", source=Source(), trigger=trig, actions=())

    if args.file == "-":
        f: Any = sys.stdin.buffer
        label = "<stdin>"
        if _is_tty(sys.stdin) and not args.quiet:
            _err("reading lines from standard input (end with Ctrl-D)")
    else:
        try:
            f = open(args.file, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            _err(f"cannot read {args.file}: {exc.strerror or exc}")
            return EXIT_USAGE
        label = args.file
    out = _out()
    counts = [0, 0]  # matching lines, lines

    def scan() -> None:
        for chunk in _chunks(f, label):
            d = chunk.data
            counts[1] += d.count(b"\n") + d.count(b"\r") - d.count(b"\r\n")
            if d and not d.endswith((b"\n", b"\r")):
                counts[1] += 1
            for _key, m in mm.scan(chunk):
                captures, _vars = match_variables(w, m)
                verdict: Optional[bool] = None
                why = ""
                if cond is not None:
                    try:
                        verdict = bool(cond.evaluate(captures))
                    except ConditionError as exc:
                        verdict, why = False, str(exc)
                    if not verdict:
                        if not args.quiet and not args.json:
                            out.write(f"{m.lineno}: {clean_text(m.line)}\n")
                            out.write(f"    condition false{': ' + why if why else ''}\n")
                        continue
                counts[0] += 1
                if args.json:
                    out.write(json.dumps({
                        "file": label, "lineno": m.lineno, "line": m.line, "match": m.text,
                        "groups": list(m.groups), "captures": dict(captures),
                        "condition": verdict,
                    }, ensure_ascii=False) + "\n")
                elif not args.quiet:
                    _show_match(out, m, caps, group_names, clean_text, verdict)
                if args.max_count is not None and counts[0] >= args.max_count:
                    return

    try:
        scan()
    except OSError as exc:
        _err(f"cannot read {label}: {exc.strerror or exc}")
        return EXIT_USAGE
    finally:
        if f is not sys.stdin.buffer:
            f.close()
    found, lines = counts
    out.flush()
    if not args.quiet and not args.json:
        plural = "s" if found != 1 else ""
        if args.max_count is not None and found >= args.max_count:
            _err(f"{found} matching line{plural} (stopped at --max-count; engine: {engine})")
        else:
            _err(f"{found} matching line{plural} of {lines} (engine: {engine})")
    return EXIT_OK if found else EXIT_FAIL


def _show_match(
    out: IO[str], m: Any, caps: Sequence[str], group_names: Dict[int, str],
    clean: Callable[[str], str], verdict: Optional[bool],
) -> None:
    import json

    def q(v: Optional[str]) -> str:
        return "(did not take part)" if v is None else clean(json.dumps(v, ensure_ascii=False))

    out.write(f"{m.lineno}: {clean(m.line)}\n")
    out.write(f"    $0  {q(m.text)}\n")
    for i, g in enumerate(m.groups, start=1):
        names = []
        if i <= len(caps):
            names.append(caps[i - 1])
        if i in group_names and group_names[i] not in names:
            names.append(group_names[i])
        label = f"  ({', '.join(names)})" if names else ""
        out.write(f"    ${i:<2} {q(g)}{label}\n")
    if verdict is not None:
        out.write("    condition true\n")


# ---------------------------------------------------------------------------------------------
# schema


def cmd_schema(args: argparse.Namespace) -> int:
    import json

    from sidecar.config import json_schema

    schema = dict(json_schema())
    if "$schema" not in schema:  # pydantic writes draft 2020-12 ($defs); say so for editors
        schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
    text = json.dumps(schema, indent=2, ensure_ascii=False) + "\n"
    if args.output and args.output != "-":
        from sidecar.cockpit import write_text_atomic

        try:
            write_text_atomic(args.output, text)
        except OSError as exc:
            _err(f"cannot write {args.output}: {exc.strerror or exc}")
            return EXIT_FAIL
        _err(f"wrote {args.output}")
        return EXIT_OK
    _out().write(text)
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# init and the template library


def available_templates() -> Dict[str, Tuple[str, str]]:
    """name -> (one-line summary, path) of every template in sidecar/templates/."""
    out: Dict[str, Tuple[str, str]] = {}
    try:
        names = sorted(os.listdir(TEMPLATES_DIR))
    except OSError:
        return out
    for fn in names:
        if not fn.endswith(".toml"):
            continue
        path = os.path.join(TEMPLATES_DIR, fn)
        summary = ""
        try:
            with open(path, encoding="utf-8") as fh:
                for line in fh:
                    if line.startswith("# summary:"):
                        summary = line[len("# summary:"):].strip()
                        break
                    if not line.startswith("#"):
                        break
        except OSError:
            continue
        out[fn[:-5]] = (summary, path)
    return out


def starter_config(names: Sequence[str], *, output: str = DEFAULT_CONFIG_NAME,
                   command: str = "") -> str:
    """The text of a config combining the templates ``names`` (in that order, each once).
    Raises _Usage for an unknown name."""
    import difflib

    avail = available_templates()
    chosen: List[str] = []
    for n in names:
        key = n[:-5] if n.endswith(".toml") else n
        if key not in avail:
            close = difflib.get_close_matches(key, list(avail), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise _Usage(
                f"unknown template {n!r}{hint}; sidecar init --list shows them "
                f"({', '.join(avail)})"
            )
        if key not in chosen:
            chosen.append(key)
    cfg_name = os.path.basename(output) if output not in ("", "-") else DEFAULT_CONFIG_NAME
    parts = [
        f"# sidecar config made from the templates: {', '.join(chosen)}",
        f"# (written by `{command or 'sidecar init'}`; each template's text follows, as in",
        "# sidecar/templates/; every key is described in docs/config.md).",
        "#",
        f"# Check it:    sidecar check {cfg_name}",
        "# Run it next to the job, in the batch script, before the real work:",
        f"#                sidecar {cfg_name} &",
        "#              it stops by itself when the batch script ends.",
        "# Watch it:    sidecar events sidecar-events.jsonl --follow",
        "#              sidecar stats sidecar-events.jsonl    sidecar report sidecar-events.jsonl",
        "#",
        "# The watchers only record what they see (log_event / store_metric). Uncomment the",
        "# notify_*, cancel_job or resubmit actions you want, and fill in [notify] below.",
        "",
        'event_log = "sidecar-events.jsonl"   # what sidecar saw and did, one JSON record per line',
        'start_at = "end"    # files already there when sidecar starts are read from their end,',
        "                    # so old outputs in this directory do not fire; files created later",
        "                    # are read from their start",
        "",
        "# [notify]",
        '# email_to = "you@example.org"',
        '# slack_webhook = "https://hooks.slack.com/services/T000/B000/XXXX"',
    ]
    for key in chosen:
        _summary, path = avail[key]
        with open(path, encoding="utf-8") as fh:
            text = fh.read().rstrip("\n")
        parts.append("")
        parts.append("# " + "=" * 90)
        parts.append(text)
    return "\n".join(parts) + "\n"


def cmd_init(args: argparse.Namespace) -> int:
    avail = available_templates()
    if args.list:
        out = _out()
        w = max((len(n) for n in avail), default=8)
        for n, (summary, _p) in avail.items():
            mark = "*" if n in DEFAULT_TEMPLATES else " "
            out.write(f"{mark} {n:<{w}}  {summary}\n")
        out.write(
            f"\n* = in the default set (sidecar init with no names); files in {TEMPLATES_DIR}\n"
        )
        return EXIT_OK
    names = list(args.templates) or list(DEFAULT_TEMPLATES)
    cmdline = "sidecar init" + "".join(f" {n}" for n in args.templates)
    text = starter_config(names, output=args.output, command=cmdline)
    if args.output == "-":
        _out().write(text)
        return EXIT_OK
    if os.path.exists(args.output) and not args.force:
        raise _Usage(f"{args.output} exists; not overwriting it (use --force, or -o another file)")
    from sidecar.cockpit import write_text_atomic

    try:
        if args.force:
            write_text_atomic(args.output, text)
        else:
            fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
    except FileExistsError:
        raise _Usage(f"{args.output} exists; not overwriting it (use --force)") from None
    except OSError as exc:
        _err(f"cannot write {args.output}: {exc.strerror or exc}")
        return EXIT_FAIL
    shown = ", ".join(n[:-5] if n.endswith(".toml") else n for n in dict.fromkeys(names))
    _out().write(f"wrote {args.output} ({shown}); check it with: sidecar check {args.output}\n")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
