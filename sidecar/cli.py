"""The command line. It alone prints and exits; everything else is the library.

    sidecar CONFIG.toml [options]          run the watchers of a TOML config
    sidecar --from-script JOB.sh [options] run the #WATCHER lines of a batch script
    sidecar check CONFIG.toml | --from-script JOB.sh
                                           validate; exit 0, or 2 with every problem

Exit codes: 0 done, 1 a failure while running, 2 bad config / bad usage.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, List, Optional, Sequence, Tuple

from sidecar import __version__
from sidecar.cli_cockpit import COMMANDS as _COCKPIT  # the cockpit's subcommands

EXIT_OK, EXIT_FAIL, EXIT_CONFIG = 0, 1, 2

COMMANDS: Tuple[str, ...] = _COCKPIT + (
    "run",
    "check",
    "status",
    "pause",
    "resume",
    "trigger",
    "reload",
    "attach",
    "replay",
    "convert",
)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="a TOML config (or a batch script ending in .sh)")
    p.add_argument(
        "--from-script",
        "-s",
        metavar="SCRIPT",
        help="take the watchers from the #WATCHER lines of this batch script",
    )


def build_parser(run_only: bool = False) -> argparse.ArgumentParser:
    """The command line. ``run_only``: only the ``run`` command (what a job's sidecar
    parses; the other commands' parsers and the cockpit module cost ~3 ms of start-up)."""
    p = argparse.ArgumentParser(
        prog="sidecar",
        description="Watch a SLURM job's files from inside the job and act on what they say.",
    )
    p.add_argument("--version", action="version", version=f"sidecar {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    r = sub.add_parser("run", help="run the watchers (the default command)")
    _common(r)
    r.add_argument("--events", metavar="PATH", help="event log: .jsonl or .db/.sqlite")
    r.add_argument("--poll", action="store_true", help="use the polling backend, not inotify")
    r.add_argument(
        "--poll-interval", type=float, metavar="S", help="seconds between polls (default 1)"
    )
    r.add_argument(
        "--pid",
        type=int,
        help="stop when this process ends (default: the parent process, e.g. the batch script)",
    )
    r.add_argument("--no-follow", action="store_true", help="do not follow any process")
    r.add_argument(
        "--from-end",
        action="store_true",
        help="read files that already exist from their end (default: from their start)",
    )
    r.add_argument("--nice", type=int, help="niceness to add at start (default 10; 0 = none)")
    r.add_argument(
        "--script",
        metavar="JOB.sh",
        help="the batch script, for resubmit actions of a TOML config (--from-script sets it)",
    )
    r.add_argument("--log-level", default=os.environ.get("SIDECAR_LOG_LEVEL", "info"))
    r.add_argument("--log-json", action="store_true", help="JSON diagnostics even on a TTY")
    if run_only:
        return p

    c = sub.add_parser("check", help="validate a config or a script's #WATCHER lines")
    _common(c)

    s = sub.add_parser("status", help="what the sidecars writing to a directory are doing")
    s.add_argument("dir", nargs="?", default=".", help="the event log's directory (default .)")
    s.add_argument("--all", action="store_true", help="include stopped sidecars")
    s.add_argument("--json", action="store_true")
    for name, helptext in (
        ("pause", "pause a watcher of a running sidecar"),
        ("resume", "resume a paused (or triggered / disabled) watcher"),
        ("trigger", "run a watcher's actions now, with its last captures"),
    ):
        q = sub.add_parser(name, help=helptext)
        q.add_argument("watcher")
        q.add_argument("--dir", default=".", help="the event log's directory (default .)")
    q = sub.add_parser("reload", help="make running sidecars reload their config")
    q.add_argument("--dir", default=".")
    a = sub.add_parser("attach", help="add the watchers of a TOML file to running sidecars")
    a.add_argument("file")
    a.add_argument("--dir", default=".")
    rp = sub.add_parser(
        "replay", help="dry run: what the watchers would have done over existing logs"
    )
    _common(rp)
    rp.add_argument(
        "--log",
        "-l",
        dest="logs",
        action="append",
        required=True,
        metavar="FILE",
        help="a log to replay (repeatable)",
    )
    rp.add_argument("--all", action="store_true", help="also show matches that did not fire")
    rp.add_argument("--json", action="store_true", help="one JSON object per hit")
    cv = sub.add_parser("convert", help="a script's #WATCHER lines as a TOML config")
    cv.add_argument("script")
    cv.add_argument("-o", "--output", help="write here instead of standard output")
    try:
        from sidecar import cli_cockpit
    except ImportError:  # pragma: no cover
        pass
    else:
        cli_cockpit.register(sub)
    return p


def _normalise(argv: List[str]) -> List[str]:
    """``sidecar CONFIG`` and ``sidecar --from-script X`` mean ``sidecar run ...``."""
    if not argv:
        return argv
    first = argv[0]
    if first in COMMANDS or first in ("-h", "--help", "--version"):
        return argv
    return ["run"] + argv


def _load(args: argparse.Namespace) -> Any:
    from sidecar.model import ConfigError, Problem

    script = args.from_script
    cfg_path = args.config
    if script is None and cfg_path and cfg_path.endswith((".sh", ".bash", ".slurm", ".sbatch")):
        script, cfg_path = cfg_path, None
    if script and cfg_path:
        raise ConfigError([Problem(cfg_path, "give either a config or --from-script, not both")])
    if script:
        from sidecar.script import load_script

        return load_script(script)
    if not cfg_path:
        raise ConfigError(
            [
                Problem(
                    "sidecar", "no config given", hint="sidecar CONFIG.toml or --from-script JOB.sh"
                )
            ]
        )
    if not os.path.exists(cfg_path):
        raise ConfigError([Problem(cfg_path, "no such file")])
    from sidecar import configcache

    def validate(path: str) -> Any:
        from sidecar.config import load_config  # pydantic: only when the cache misses

        return load_config(path)

    if getattr(args, "command", None) == "check":
        cfg = validate(cfg_path)  # check always validates in full, and fills the cache
        configcache.store(cfg_path, cfg)
        return cfg
    return configcache.load_cached(cfg_path, validate)


def _print_problems(exc: Any) -> None:
    n = len(exc.problems)
    for prob in exc.problems:
        print(f"error: {prob}", file=sys.stderr)
    print(f"{n} problem{'s' if n != 1 else ''} found; nothing was started.", file=sys.stderr)


def cmd_check(args: argparse.Namespace) -> int:
    from sidecar.model import ConfigError

    try:
        cfg = _load(args)
    except ConfigError as exc:
        _print_problems(exc)
        return EXIT_CONFIG
    from sidecar.report import describe_config, describe_script_files

    ok, text = describe_config(cfg)
    print(text)
    if cfg.script:
        from sidecar.script import load_script_details

        details = load_script_details(cfg.script)
        print(describe_script_files(details))
    return EXIT_OK if ok else EXIT_CONFIG


def _lower_priority(nice: int, idle_io: bool) -> None:
    if nice:
        try:
            os.nice(nice)
        except OSError:
            pass
    if idle_io:
        _ioprio_idle()
    _short_slice()


def _short_slice() -> None:
    """Ask the scheduler for a short time slice (Linux >= 6.12, EEVDF: sched_setattr with
    sched_runtime for a normal task). The sidecar's CPU share stays that of its niceness,
    but its brief wake-ups are picked sooner on cores the job keeps busy, which is what
    write-to-action latency at nice 19 depends on. SIDECAR_SCHED_SLICE_US sets the slice
    (default 100 us, the kernel's minimum; 0 = leave the default). Older kernels ignore it."""
    try:
        us = int(os.environ.get("SIDECAR_SCHED_SLICE_US", "100"))
    except ValueError:
        return
    nr = {"x86_64": 314, "aarch64": 274}.get(os.uname().machine)
    if us <= 0 or nr is None:
        return
    try:
        import ctypes
        import struct

        nice = os.getpriority(os.PRIO_PROCESS, 0)
        # struct sched_attr (SCHED_ATTR_SIZE_VER1): size, policy, flags, nice, priority,
        # runtime, deadline, period, util_min, util_max
        attr = struct.pack("IIQiIQQQII", 56, 0, 0, nice, 0, us * 1000, 0, 0, 0, 0)
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall(nr, 0, ctypes.create_string_buffer(attr), 0)
    except Exception:
        pass


def _ioprio_idle() -> None:
    """The idle I/O class (``ionice -c 3``) for this process, through the ioprio_set system
    call (psutil would cost 15 ms of start-up for this one call)."""
    nr = {"x86_64": 251, "aarch64": 30, "ppc64le": 273, "ppc64": 273}.get(os.uname().machine)
    if nr is None:
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        ioprio_class_idle, ioprio_who_process = 3, 1
        libc.syscall(nr, ioprio_who_process, 0, ioprio_class_idle << 13)
    except Exception:
        pass


#: the cyclic garbage collector was turned off for this start (``_run_without_gc``)
_gc_held = False


def _run_without_gc(args: argparse.Namespace) -> int:
    """``cmd_run`` in the sidecar's own process, with the cyclic garbage collector off until
    the daemon is ready. A start makes some 30 000 (cached config) to 50 000 (pydantic)
    objects that live as long as the daemon - modules, classes, validators, watchers - and
    the collector would go over them some 30 to 55 times while they are made (about 4 ms of
    CPU, more with pydantic) to find a few hundred objects of garbage. At ready
    (``_gc_ready``) they are frozen (``gc.freeze``: no collection looks at them again, which
    also keeps the daemon's later collections short) and the collector is on again; the
    garbage of the start that is in reference cycles (about 500 objects, 100 kB) stays. A
    start that ends before ready turns it on again as it was."""
    global _gc_held
    import gc

    if not gc.isenabled():
        return cmd_run(args)
    gc.disable()
    _gc_held = True
    try:
        return cmd_run(args)
    finally:
        if _gc_held:
            _gc_held = False
            gc.enable()


def _gc_ready() -> None:
    global _gc_held
    if _gc_held:
        import gc

        _gc_held = False
        gc.freeze()
        gc.enable()


def cmd_run(args: argparse.Namespace) -> int:
    import dataclasses
    import signal

    early = _EARLY_SIGNALS

    from sidecar import log as slog
    from sidecar.model import ConfigError

    slog.configure(args.log_level, json=True if args.log_json else None)
    try:
        cfg = _load(args)
    except ConfigError as exc:
        _print_problems(exc)
        return EXIT_CONFIG
    st = cfg.settings
    changes: dict[str, Any] = {}
    if args.poll:
        changes["backend"] = "poll"
    if args.poll_interval:
        changes["poll_interval"] = args.poll_interval
    if args.nice is not None:
        changes["nice"] = args.nice
    if args.from_end:
        cfg = dataclasses.replace(
            cfg,
            watchers=tuple(
                dataclasses.replace(w, source=dataclasses.replace(w.source, start_at="end"))
                for w in cfg.watchers
            ),
        )
    if changes:
        st = dataclasses.replace(st, **changes)
        cfg = dataclasses.replace(cfg, settings=st)
    if args.script:
        cfg = dataclasses.replace(cfg, script=os.path.abspath(args.script))
    wrapped: List[str] = list(getattr(args, "wrapped", None) or [])
    if not wrapped:
        _lower_priority(st.nice, st.ionice_idle)
        st = dataclasses.replace(st, nice=0, ionice_idle=False)  # done

    follow: Optional[int] = None
    if not args.no_follow and not wrapped:
        follow = args.pid or os.getppid()
        if follow <= 1:
            follow = None
    from sidecar.engine import Engine

    log = slog.get_logger("sidecar")
    try:
        engine = Engine(cfg, event_log=args.events, follow_pid=follow)
        engine.start_hooks(
            reloader=_merged_loader(args, lambda: engine.dropin_dir),
            watch_config=tuple(p for p in (cfg.source_file, cfg.script) if p),
        )
        engine.start()
    except ConfigError as exc:
        _print_problems(exc)
        return EXIT_CONFIG
    except OSError as exc:
        print(f"sidecar: cannot start: {exc}", file=sys.stderr)
        return EXIT_FAIL
    child = None
    if wrapped:
        # wrapper mode: `sidecar CONFIG -- python train.py` runs the work as a child, once
        # the sidecar is watching; it stops when the child ends and exits with its status.
        import subprocess

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)  # the child must not inherit "ignored"
        try:
            child = subprocess.Popen(wrapped)
        except OSError as exc:
            print(f"sidecar: cannot run {wrapped[0]}: {exc}", file=sys.stderr)
            engine.request_stop(f"cannot run {wrapped[0]}")
        finally:
            engine.install_handlers()
        if child is not None:
            engine.follow(child.pid, child.poll)
    _lower_priority(st.nice, st.ionice_idle)
    for signum in early:
        if signum == signal.SIGHUP:
            engine.reload("SIGHUP")
        elif signum in (signal.SIGUSR1, signal.SIGUSR2):
            engine.deliver_signal(signum)
        else:
            engine.request_stop(f"signal {signal.Signals(signum).name}")
    log.info(
        "ready",
        watchers=len(cfg.watchers),
        files=len(engine.files),
        backend=getattr(engine.backend, "name", "?"),
        events=engine.event_log_path,
    )
    _gc_ready()
    rc = engine.run()
    if child is None:
        return rc
    if child.poll() is None:
        child.terminate()  # the sidecar alone was stopped (kill PID): stop the work too
    code = child.wait()
    return code if code >= 0 else 128 - code


def _dropins(directory: Optional[str]) -> List[Any]:
    """Watchers from the TOML files in a sidecar's drop-in directory (``sidecar attach``)."""
    if not directory or not os.path.isdir(directory):
        return []
    from sidecar.config import load_config

    out: List[Any] = []
    for n in sorted(os.listdir(directory)):
        if n.endswith(".toml") and not n.startswith("."):
            out.extend(load_config(os.path.join(directory, n)).watchers)
    return out


def _merged_loader(args: argparse.Namespace, dropin_dir: Callable[[], Optional[str]]) -> Any:
    import dataclasses

    from sidecar.model import ConfigError, Problem

    def load() -> Any:
        cfg = _load(args)
        extra = _dropins(dropin_dir())
        if extra:
            names = {w.name for w in cfg.watchers}
            clash = [w for w in extra if w.name in names]
            if clash:
                raise ConfigError(
                    [
                        Problem(
                            str(w.origin.file),
                            f"watcher name {w.name!r} is taken",
                            w.origin.line,
                            w.name,
                            "rename it",
                        )
                        for w in clash
                    ]
                )
            cfg = dataclasses.replace(cfg, watchers=tuple(cfg.watchers) + tuple(extra))
        return cfg

    return load


def _running(directory: str) -> List[Any]:
    from sidecar import control

    return control.find(directory)


def cmd_control(args: argparse.Namespace) -> int:
    from sidecar import control

    directory = getattr(args, "dir", ".")
    found = _running(directory)
    if not found:
        print(f"sidecar: no running sidecar found in {directory}", file=sys.stderr)
        return EXIT_FAIL
    if args.command == "attach":
        from sidecar.config import load_config
        from sidecar.model import ConfigError

        try:
            load_config(args.file)
        except ConfigError as exc:
            _print_problems(exc)
            return EXIT_CONFIG
        for sc in found:
            try:
                print(f"{control.attach(sc, args.file)}")
            except OSError as exc:
                print(f"sidecar: cannot attach to sidecar pid {sc.pid}: {exc}", file=sys.stderr)
                return EXIT_FAIL
        return EXIT_OK
    watcher = getattr(args, "watcher", None)
    targets = found
    if watcher is not None:
        targets = [sc for sc in found if watcher in (sc.data.get("watchers") or {})]
        if not targets:
            print(f"sidecar: no running sidecar has a watcher named {watcher!r}", file=sys.stderr)
            return EXIT_FAIL
    rc = EXIT_OK
    for sc in targets:
        try:
            path = control.send(sc, args.command, watcher)
        except OSError as exc:
            print(f"sidecar: cannot reach sidecar pid {sc.pid}: {exc}", file=sys.stderr)
            rc = EXIT_FAIL
            continue
        if control.wait_taken(path):
            print(
                f"{args.command} {watcher or ''}: taken by sidecar pid {sc.pid}".replace("  ", " ")
            )
        else:
            print(f"sidecar pid {sc.pid} has not taken the command yet ({path})", file=sys.stderr)
            rc = EXIT_FAIL
    return rc


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from sidecar import control

    rows = control.status_rows(control.find(args.dir, include_stopped=args.all))
    if args.json:
        for r in rows:
            print(json.dumps(r, default=str))
    else:
        print(control.format_status(rows))
    return EXIT_OK if rows else EXIT_FAIL


def cmd_replay(args: argparse.Namespace) -> int:
    import json

    from sidecar.model import ConfigError
    from sidecar.replay import ReplaySummary, replay

    try:
        cfg = _load(args)
    except ConfigError as exc:
        _print_problems(exc)
        return EXIT_CONFIG
    missing = [f for f in args.logs if not os.path.isfile(f)]
    if missing:
        print(f"sidecar: no such log: {', '.join(missing)}", file=sys.stderr)
        return EXIT_CONFIG
    summary = ReplaySummary()
    n = 0
    for hit in replay(cfg, list(args.logs), summary, show_all=args.all):
        n += hit.fired
        if args.json:
            print(json.dumps(hit.__dict__, default=str))
            continue
        caps = " ".join(f"{k}={v}" for k, v in hit.captures.items())
        verdict = "-> " + ", ".join(hit.actions) if hit.fired else "(not fired)"
        note = f"  [{hit.note}]" if hit.note else ""
        print(f"{hit.file}:{hit.lineno} [{hit.watcher}] {caps} {verdict}{note}".replace("  ", " "))
        print(f"    {hit.line}")
    if not args.json:
        print(
            f"{summary.lines} lines, {n} firing(s) "
            + ", ".join(f"{k}: {v}" for k, v in summary.firings.items())
            + (
                "; not replayable (stale / file events): " + ", ".join(summary.not_replayable)
                if summary.not_replayable
                else ""
            )
            + "; rate limits are not applied in a replay",
            file=sys.stderr,
        )
    for name, path, lineno in summary.timed_out:
        print(
            f"sidecar: {path}:{lineno} [{name}]: gave up after regex_time_limit "
            f"({cfg.settings.regex_time_limit:g} s of CPU) in Python re: taken as not matching",
            file=sys.stderr,
        )
    return EXIT_OK


def cmd_convert(args: argparse.Namespace) -> int:
    from sidecar.convert import to_toml
    from sidecar.model import ConfigError
    from sidecar.script import load_script

    try:
        cfg = load_script(args.script)
    except ConfigError as exc:
        _print_problems(exc)
        return EXIT_CONFIG
    text = to_toml(cfg)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text)
    return EXIT_OK


_EARLY_SIGNALS: List[int] = []


def _note_early_signal(signum: int, frame: Any) -> None:
    _EARLY_SIGNALS.append(signum)


def main(argv: Optional[Sequence[str]] = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    if argv is None and (not raw or raw[0] in ("run",) or raw[0] not in COMMANDS):
        # A SIGTERM (scancel) may come while the sidecar is still starting: note it, start,
        # read what is there, and stop cleanly with a stop record, instead of dying silently.
        import signal

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, _note_early_signal)
        # SLURM's time-limit warning (--signal=B:USR1@N) may come right at the job's start:
        # it must not kill a sidecar still starting (USR1/USR2 terminate by default); it is
        # handed to the time_limit watchers once they are up, and ignored without them
        for sig in (signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(sig, _note_early_signal)
    wrapped: List[str] = []
    if "--" in raw:
        i = raw.index("--")
        raw, wrapped = raw[:i], raw[i + 1 :]
    args_list = _normalise(raw)
    parser = build_parser(run_only=args_list[:1] == ["run"])
    if not args_list:
        parser.print_help(sys.stderr)
        return EXIT_CONFIG
    try:
        args = parser.parse_args(args_list)
    except SystemExit as e:
        return int(e.code or 0) and EXIT_CONFIG
    args.wrapped = wrapped
    if wrapped and args.command not in (None, "run"):
        print("sidecar: `-- COMMAND` goes with running a config", file=sys.stderr)
        return EXIT_CONFIG
    try:
        if args.command == "check":
            return cmd_check(args)
        if args.command == "status":
            return cmd_status(args)
        if args.command in ("pause", "resume", "trigger", "reload", "attach"):
            return cmd_control(args)
        if args.command in (None, "run"):
            return cmd_run(args) if argv is not None else _run_without_gc(args)
        if args.command == "replay":
            return cmd_replay(args)
        if args.command == "convert":
            return cmd_convert(args)
        from sidecar import cli_cockpit

        return int(cli_cockpit.dispatch(args))
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
