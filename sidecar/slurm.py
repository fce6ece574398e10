"""SLURM knowledge: the job's environment, ``#SBATCH`` options, output file names, and the
``scancel``/``sbatch`` command lines.

Nothing here runs at import time. ``#SBATCH`` lines are read as ``sbatch`` reads them (checked
against SLURM 22.05 and its source): only lines starting with ``#SBATCH`` in column 1, only
before the first line that is neither blank nor a comment; each line is split into words
with double/single quotes grouping, a backslash escaping the next character and an unquoted
``#`` starting a comment; the words of all lines form one argument list parsed like
``getopt_long`` (``-oFILE``, ``-o FILE``, ``--output=FILE``, ``--output FILE``, unambiguous
prefixes of long names). The last occurrence of an option wins; the ``SBATCH_OUTPUT``,
``SBATCH_ERROR``, ``SBATCH_JOB_NAME`` and ``SBATCH_ARRAY_INX`` environment variables
override the script, as they do for ``sbatch``.

Output file names follow ``slurmstepd`` (the ``filename pattern`` of ``man sbatch``): ``%%``,
``%A`` (array master job id, else the job id), ``%a`` (array task id, 4294967294 outside an
array), ``%b`` (task id modulo 10), ``%j`` and ``%J`` (job id), ``%s`` (``batch``), ``%n``
and ``%t`` (0), ``%N`` (the batch node), ``%u`` (user), ``%x`` (job name); a number after
``%`` zero-pads numeric fields (at most 10); a name containing a backslash is used as it is
(the backslashes removed). Relative names are relative to ``--chdir`` or the submit
directory. Inside a job the result is cross-checked with what the batch script's stdout and
stderr really are (``/proc/$SLURM_TASK_PID/fd/1`` and ``2``), which also covers options given
on the ``sbatch`` command line.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

# ---------------------------------------------------------------------------- options
# arg: "r" required, "o" optional (only as --name=value), "n" none
_LONG: Dict[str, str] = {}
_SHORT: Dict[str, str] = {}


def _opts(arg: str, names: str) -> None:
    for item in names.split():
        long, _, short = item.partition("/")
        _LONG[long] = arg
        if short:
            _SHORT[short] = long


_opts(
    "r",
    "account/A acctg-freq array/a batch bb bbf begin/b chdir/D cluster-constraint "
    "clusters/M comment constraint/C container container-id core-spec/S cores-per-socket "
    "cpu-freq cpus-per-gpu cpus-per-task/c deadline delay-boot dependency/d "
    "distribution/m error/e export export-file extra extra-node-info/B gid gpu-bind "
    "gpu-freq gpus/G gpus-per-node gpus-per-socket gpus-per-task gres gres-flags hint "
    "input/i job-name/J jobid kill-on-invalid-dep licenses/L mail-type mail-user mcs-label "
    "mem mem-bind mem-per-cpu mem-per-gpu mincpus network nodefile/F nodelist/w nodes/N "
    "ntasks/n ntasks-per-core ntasks-per-gpu ntasks-per-node ntasks-per-socket open-mode "
    "output/o partition/p power prefer priority profile qos/q reservation segment signal "
    "sockets-per-node switches thread-spec threads-per-core time/t time-min tmp tres-bind "
    "tres-per-task uid wait-all-nodes wckey exclude/x wrap",
)
_opts("o", "exclusive get-user-env nice propagate no-kill/k oom-kill-step")
_opts(
    "n",
    "contiguous hold/H ignore-pbs immediate/I no-requeue overcommit/O oversubscribe/s "
    "parsable quiet/Q reboot requeue spread-job test-only use-min-nodes wait/W verbose/v "
    "help/h usage version/V stepmgr",
)
_ALIASES = {"workdir": "chdir"}  # old spelling

#: long sbatch option names sidecar knows (what ``rewrite_sbatch`` accepts)
SBATCH_OPTIONS = frozenset(_LONG)


def canonical_option(key: str) -> Optional[str]:
    """``"-t"``, ``"t"``, ``"--time"``, ``"time"``, ``"cpus_per_task"`` -> the long name, or
    None when it is not an sbatch option. Unambiguous prefixes are accepted, as getopt does."""
    k = key.strip()
    if k.startswith("--"):
        k = k[2:]
    elif k.startswith("-") and len(k) == 2:
        return _SHORT.get(k[1])
    if len(k) == 1:
        return _SHORT.get(k)
    k = k.replace("_", "-").lower()
    return _resolve_long(k)


def _resolve_long(name: str) -> Optional[str]:
    name = _ALIASES.get(name, name)
    if name in _LONG:
        return name
    hits = [n for n in _LONG if n.startswith(name)]
    return hits[0] if len(hits) == 1 else None


@dataclass(frozen=True)
class _Word:
    text: str
    line: int  # 0-based index into the script's lines
    start: int  # span in that line (start of the word, end after it)
    end: int


@dataclass(frozen=True)
class _Opt:
    name: str  # canonical long name, or the unknown name as written without dashes
    value: Optional[str]
    words: Tuple[_Word, ...]  # the words that make up this option (1 or 2)
    known: bool


_MAGIC = ("#SBATCH", "#SLURM")


def _split_words(line: str, lineno: int, offset: int) -> List[_Word]:
    """``sbatch``'s ``_get_argument`` applied over the rest of a ``#SBATCH`` line."""
    words: List[_Word] = []
    i, n = offset, len(line)
    while True:
        while i < n and line[i].isspace():
            i += 1
        if i >= n or line[i] == ":":  # ':' separates heterogeneous job components
            return words
        start = i
        buf: List[str] = []
        quote = ""
        escape = False
        while i < n and (quote or not line[i].isspace()):
            c = line[i]
            if escape:
                escape = False
            elif c == "\\":
                escape = True
                i += 1
                continue
            elif quote:
                if c == quote:
                    quote = ""
                    i += 1
                    continue
            elif c in "\"'":
                quote = c
                i += 1
                continue
            elif c == "#":  # an unquoted '#' starts a comment
                if buf or i > start:
                    words.append(_Word("".join(buf), lineno, start, i))
                return words
            buf.append(c)
            i += 1
        words.append(_Word("".join(buf), lineno, start, i))


def _option_lines(script_text: str) -> Tuple[List[str], List[_Word]]:
    """The script's lines and the words of its ``#SBATCH`` block."""
    lines = script_text.split("\n")
    words: List[_Word] = []
    for idx, raw in enumerate(lines):
        line = raw[:-1] if raw.endswith("\r") else raw
        magic = next((m for m in _MAGIC if line.startswith(m)), None)
        if magic is None:
            stripped = line.strip()
            if stripped and not stripped.startswith("#"):
                break  # the first command: sbatch stops reading options here
            continue
        words.extend(_split_words(line, idx, len(magic)))
    return lines, words


def _parse_words(words: Sequence[_Word]) -> List[_Opt]:
    """getopt_long over the words."""
    opts: List[_Opt] = []
    i, n = 0, len(words)
    while i < n:
        w = words[i]
        t = w.text
        i += 1
        if t == "--":
            break
        if t.startswith("--"):
            name, eq, val = t[2:].partition("=")
            canon = _resolve_long(name)
            if canon is None:
                value: Optional[str] = val if eq else None
                used: Tuple[_Word, ...] = (w,)
                if not eq and i < n and not words[i].text.startswith("-"):
                    value, used = words[i].text, (w, words[i])
                    i += 1
                opts.append(_Opt(name, value, used, False))
                continue
            kind = _LONG[canon]
            if eq:
                opts.append(_Opt(canon, val if kind != "n" else None, (w,), True))
            elif kind == "r" and i < n:
                opts.append(_Opt(canon, words[i].text, (w, words[i]), True))
                i += 1
            else:
                opts.append(_Opt(canon, None, (w,), True))
            continue
        if t.startswith("-") and len(t) > 1:
            j = 1
            while j < len(t):
                ch = t[j]
                canon = _SHORT.get(ch)
                if canon is None:
                    opts.append(_Opt(ch, None, (w,), False))
                    j += 1
                    continue
                kind = _LONG[canon]
                if kind == "r":
                    if j + 1 < len(t):
                        opts.append(_Opt(canon, t[j + 1 :], (w,), True))
                    elif i < n:
                        opts.append(_Opt(canon, words[i].text, (w, words[i]), True))
                        i += 1
                    else:
                        opts.append(_Opt(canon, None, (w,), True))
                    break
                opts.append(_Opt(canon, None, (w,), True))
                j += 1
        # anything else is a stray word: sbatch ignores it too
    return opts


def parse_sbatch_options(script_text: str) -> List[Tuple[int, str, Optional[str]]]:
    """The ``#SBATCH`` options of a batch script as sbatch reads them:
    ``(line number (1-based), long option name, value or None)``, in order. Unknown options
    keep the name they were written with (without dashes)."""
    _lines, words = _option_lines(script_text)
    return [(o.words[0].line + 1, o.name, o.value) for o in _parse_words(words)]


def _last(opts: Sequence[Tuple[int, str, Optional[str]]], name: str) -> Optional[Tuple[int, str]]:
    found: Optional[Tuple[int, str]] = None
    for line, n, v in opts:
        if n == name and v is not None:
            found = (line, v)
    return found


# ---------------------------------------------------------------------------- the job
@dataclass(frozen=True)
class JobInfo:
    """The job sidecar runs in, from the SLURM_* environment of the batch script."""

    job_id: str
    array_job_id: Optional[str] = None
    array_task_id: Optional[str] = None
    job_name: Optional[str] = None
    user: Optional[str] = None
    node: Optional[str] = None  # the node running the batch script (SLURMD_NODENAME)
    nodelist: Optional[str] = None  # SLURM_JOB_NODELIST, compressed ("n[01-04]")
    num_nodes: Optional[int] = None
    submit_dir: Optional[str] = None
    submit_host: Optional[str] = None
    partition: Optional[str] = None
    cluster: Optional[str] = None
    restart_count: int = 0  # SLURM_RESTART_COUNT: times the job was requeued
    task_pid: Optional[int] = None  # SLURM_TASK_PID: the batch script's process

    @property
    def is_array(self) -> bool:
        return self.array_job_id is not None and self.array_task_id is not None

    @property
    def nodes(self) -> List[str]:
        """The job's node names, expanded."""
        return expand_hostlist(self.nodelist) if self.nodelist else []


def _int_or(v: Optional[str], default: Optional[int]) -> Optional[int]:
    try:
        return int(v) if v is not None and v.strip() else default
    except ValueError:
        return default


def job_env(environ: Mapping[str, str]) -> Optional[JobInfo]:
    """The job described by ``environ``; None outside a SLURM job."""
    job_id = environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID")
    if not job_id:
        return None
    array_job = environ.get("SLURM_ARRAY_JOB_ID") or None
    array_task = environ.get("SLURM_ARRAY_TASK_ID") or None
    return JobInfo(
        job_id=job_id.strip(),
        array_job_id=array_job,
        array_task_id=array_task,
        job_name=environ.get("SLURM_JOB_NAME") or None,
        user=environ.get("SLURM_JOB_USER") or environ.get("USER") or environ.get("LOGNAME"),
        node=environ.get("SLURMD_NODENAME") or environ.get("SLURM_TOPOLOGY_ADDR") or None,
        nodelist=environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST") or None,
        num_nodes=_int_or(environ.get("SLURM_JOB_NUM_NODES") or environ.get("SLURM_NNODES"), None),
        submit_dir=environ.get("SLURM_SUBMIT_DIR") or None,
        submit_host=environ.get("SLURM_SUBMIT_HOST") or None,
        partition=environ.get("SLURM_JOB_PARTITION") or None,
        cluster=environ.get("SLURM_CLUSTER_NAME") or None,
        restart_count=_int_or(environ.get("SLURM_RESTART_COUNT"), 0) or 0,
        task_pid=_int_or(environ.get("SLURM_TASK_PID"), None),
    )


_HOSTLIST_MAX = 100_000


def expand_hostlist(spec: str) -> List[str]:
    """``"n[01-03,7],gpu5"`` -> ``["n01", "n02", "n03", "n7", "gpu5"]`` (SLURM hostlist
    syntax, several bracket groups allowed). Malformed parts are returned as written."""
    out: List[str] = []
    for part in _split_top(spec):
        out.extend(_expand_one(part))
        if len(out) > _HOSTLIST_MAX:
            raise ValueError("host list too long")
    return out


def _split_top(spec: str) -> List[str]:
    parts: List[str] = []
    depth = 0
    cur: List[str] = []
    for c in spec:
        if c == "[":
            depth += 1
        elif c == "]":
            depth = max(depth - 1, 0)
        if c == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


_BRACKET = re.compile(r"\[([^\[\]]*)\]")


def _expand_one(host: str) -> List[str]:
    m = _BRACKET.search(host)
    if m is None:
        return [host]
    values: List[str] = []
    for rng in m.group(1).split(","):
        lo, dash, hi = rng.strip().partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()):
            return [host]
        if not dash:
            values.append(lo)
            continue
        a, b = int(lo), int(hi)
        if b < a or b - a > _HOSTLIST_MAX:
            return [host]
        width = len(lo)
        values.extend(str(x).zfill(width) for x in range(a, b + 1))
    head, tail = host[: m.start()], host[m.end() :]
    out: List[str] = []
    for v in values:
        out.extend(_expand_one(head + v + tail))
        if len(out) > _HOSTLIST_MAX:
            raise ValueError("host list too long")
    return out


# ---------------------------------------------------------------------------- file names
NO_ARRAY_TASK = "4294967294"  # what slurmstepd prints for %a outside a job array


@dataclass(frozen=True)
class OutputFile:
    """One output stream of the batch script and the file it goes to.

    ``path`` is absolute. When ``resolved`` is False (outside a job, the name depends on
    the job id...), ``path`` still holds the ``%`` fields that could not be filled in."""

    stream: str  # "stdout" | "stderr"
    pattern: str  # as written (or SLURM's default)
    path: str
    resolved: bool
    source: str  # "#SBATCH (line N)" | "default" | "SBATCH_OUTPUT" | "/proc" ...
    line: Optional[int] = None

    @property
    def watchable(self) -> bool:
        return self.resolved and not self.path.startswith("/dev/")


def expand_filename(pattern: str, fields: Mapping[str, Optional[str]]) -> Tuple[str, bool]:
    """Expand SLURM filename pattern fields; ``(name, complete)``. A field whose value is
    None (unknown) is kept as written and makes ``complete`` False."""
    if "\\" in pattern:
        return pattern.replace("\\", ""), True
    out: List[str] = []
    complete = True
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c != "%" or i + 1 >= n:
            out.append(c)
            i += 1
            continue
        j = i + 1
        if pattern[j] == "%":
            out.append("%")
            i = j + 1
            continue
        k = j
        while k < n and pattern[k].isdigit():
            k += 1
        width = min(int(pattern[j:k]), 10) if k > j else 0
        if k >= n:
            out.append(pattern[i:])
            break
        spec = pattern[k]
        if spec not in "AabjJNnstux":
            # slurmstepd drops the '%' of an unknown field that has a width ("%4q" -> "4q")
            out.append(pattern[j : k + 1] if k > j else pattern[i : k + 1])
            i = k + 1
            continue
        value = fields.get(spec)
        if value is None:
            out.append(pattern[i : k + 1])
            complete = False
        elif spec in "AabjJnst" and value.isdigit() and width:
            out.append(value.zfill(width))
        else:
            out.append(value)
        i = k + 1
    return "".join(out), complete


def _fields(
    job: Optional[JobInfo], job_name: Optional[str], user: Optional[str]
) -> Dict[str, Optional[str]]:
    f: Dict[str, Optional[str]] = {"s": "batch", "n": "0", "t": "0", "u": user, "x": job_name}
    if job is not None:
        task = job.array_task_id if job.is_array else NO_ARRAY_TASK
        f.update(
            {
                "j": job.job_id,
                "J": job.job_id,
                "A": job.array_job_id if job.is_array else job.job_id,
                "a": task,
                "b": str(int(task) % 10) if task and task.isdigit() else None,
                "N": job.node,
            }
        )
    return f


def _default_user(environ: Mapping[str, str]) -> Optional[str]:
    user = environ.get("SLURM_JOB_USER") or environ.get("USER") or environ.get("LOGNAME")
    if user:
        return user
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError, OSError):
        return None


def _getcwd() -> str:
    try:
        return os.getcwd()
    except OSError:  # the directory was removed under us
        return os.environ.get("PWD") or "/"


def _proc_stream(proc_root: str, job: JobInfo, fd: int) -> Optional[str]:
    """Where the batch script's ``fd`` really goes, if it is a file we can see."""
    if not job.task_pid:
        return None
    base = os.path.join(proc_root, str(job.task_pid))
    try:
        with open(os.path.join(base, "environ"), "rb") as fh:
            env = fh.read(1 << 20).split(b"\0")
        if f"SLURM_JOB_ID={job.job_id}".encode() not in env:
            return None  # another process (a step, or another job's pid on this node)
        target = os.readlink(os.path.join(base, "fd", str(fd)))
    except OSError:
        return None
    if not target.startswith("/") or target.endswith(" (deleted)"):
        return None  # pipe:[...], socket:[...], or a removed file
    return target


def output_files(
    script_path: Optional[str],
    script_text: str,
    environ: Mapping[str, str],
    output_type: str = "stdout",
    *,
    cwd: Optional[str] = None,
    proc_root: Optional[str] = "/proc",
) -> List[OutputFile]:
    """The batch script's output file(s) for ``output_type`` (stdout | stderr | both).

    Inside a job (``SLURM_JOB_ID`` set) the names are filled in from the environment;
    outside, what needs a job id stays unresolved. ``proc_root=None`` disables the
    ``/proc`` cross-check (tests)."""
    if output_type not in ("stdout", "stderr", "both"):
        raise ValueError(f"output_type must be stdout, stderr or both, not {output_type!r}")
    opts = parse_sbatch_options(script_text)
    job = job_env(environ)

    def setting(option: str, env_var: str) -> Tuple[Optional[str], str, Optional[int]]:
        if environ.get(env_var):
            return environ[env_var], env_var, None
        hit = _last(opts, option)
        if hit is not None:
            return hit[1], f"#SBATCH (line {hit[0]})", hit[0]
        return None, "", None

    out_pat, out_src, out_line = setting("output", "SBATCH_OUTPUT")
    err_pat, err_src, err_line = setting("error", "SBATCH_ERROR")
    name_opt, _s, _l = setting("job-name", "SBATCH_JOB_NAME")
    array_opt, _s, _l = setting("array", "SBATCH_ARRAY_INX")
    chdir_hit = _last(opts, "chdir")

    is_array = job.is_array if job is not None else array_opt is not None
    if out_pat is None:
        out_pat, out_src = ("slurm-%A_%a.out" if is_array else "slurm-%j.out"), "default"
    if err_pat is None:
        err_pat, err_src, err_line = out_pat, out_src + " (stderr goes with stdout)", out_line

    if job is not None and job.job_name:
        job_name: Optional[str] = job.job_name
    elif name_opt is not None:
        job_name = name_opt
    elif script_path:
        job_name = os.path.basename(script_path)
    else:
        job_name = None
    fields = _fields(job, job_name, _default_user(environ))

    base = (job.submit_dir if job is not None else None) or cwd or _getcwd()
    if chdir_hit is not None:
        base = os.path.join(base, chdir_hit[1])  # an absolute --chdir replaces base

    def one(stream: str, pattern: str, source: str, line: Optional[int]) -> OutputFile:
        resolved = True
        if pattern.lower() == "none":
            name = "/dev/null"
        else:
            name, resolved = expand_filename(pattern, fields)
        path = os.path.normpath(os.path.join(base, name))
        return OutputFile(stream, pattern, path, resolved, source, line)

    files = {
        "stdout": one("stdout", out_pat, out_src, out_line),
        "stderr": one("stderr", err_pat, err_src, err_line),
    }
    if job is not None and proc_root:
        for stream, fd in (("stdout", 1), ("stderr", 2)):
            real = _proc_stream(proc_root, job, fd)
            if real is not None and real != files[stream].path:
                if not real.startswith("/dev/"):
                    from sidecar.log import get_logger

                    get_logger(__name__).info(
                        "output file differs from the script's #SBATCH lines",
                        stream=stream,
                        expected=files[stream].path,
                        actual=real,
                    )
                files[stream] = OutputFile(stream, files[stream].pattern, real, True, "/proc")
    if output_type == "both":
        return [files["stdout"], files["stderr"]]
    return [files[output_type]]


# ---------------------------------------------------------------------------- rewriting
_NEEDS_QUOTES = re.compile(r"[\s\"'#\\]")


def _quote_value(value: str) -> str:
    """A value as an sbatch word: double-quoted (backslash-escaping ``"`` and ``\\``) when
    it holds whitespace, quotes, ``#`` or backslashes."""
    if value and not _NEEDS_QUOTES.search(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _option_text(name: str, value: Optional[str]) -> str:
    if value is None or (value == "" and _LONG.get(name) in ("n", "o")):
        return f"--{name}"
    return f"--{name}={_quote_value(value)}"


def rewrite_sbatch(script_text: str, modifications: Mapping[str, Optional[str]]) -> str:
    """The script with its ``#SBATCH`` options changed for a resubmission.

    Keys are sbatch option names in any form (``"mem"``, ``"--mem"``, ``"-t"``,
    ``"cpus_per_task"``). Existing occurrences are rewritten in place (``--name=value``,
    the rest of the line - other options, comments - kept); options not in the script are
    added as new ``#SBATCH`` lines after the last one (or after the ``#!`` line). A value of
    None removes the option; ``""`` writes a flag (``--requeue``). Everything else, the
    ``#WATCHER`` lines included, is kept byte for byte. ``ValueError`` for an unknown
    option or a value with a line break or NUL."""
    changes: Dict[str, Optional[str]] = {}
    bad: List[str] = []
    for key, value in modifications.items():
        canon = canonical_option(str(key))
        if canon is None:
            bad.append(str(key))
            continue
        if value is not None:
            value = str(value)
            if any(c in value for c in "\r\n\x00"):
                raise ValueError(f"sbatch option {canon}: the value contains a line break")
            if _LONG[canon] == "n" and value.strip().lower() in ("true", "yes", "1"):
                value = ""
            elif _LONG[canon] == "n" and value.strip().lower() in ("false", "no", "0"):
                value = None
        changes[canon] = value
    if bad:
        raise ValueError(
            "not sbatch options: "
            + ", ".join(repr(b) for b in bad)
            + " (see man sbatch for the option names)"
        )
    lines, words = _option_lines(script_text)
    opts = _parse_words(words)
    edits: Dict[int, List[Tuple[int, int, str]]] = {}  # line -> (start, end, replacement)
    present = set()
    last_option_line = -1
    for w in words:
        last_option_line = max(last_option_line, w.line)
    for o in opts:
        if not o.known or o.name not in changes:
            continue
        present.add(o.name)
        new = changes[o.name]
        first = o.words[0]
        text = "" if new is None else _option_text(o.name, new)
        edits.setdefault(first.line, []).append((first.start, first.end, text))
        for w in o.words[1:]:
            edits.setdefault(w.line, []).append((w.start, w.end, ""))
    for idx, spans in edits.items():
        line = lines[idx]
        for start, end, text in sorted(spans, reverse=True):
            if not text:  # removing: take the blank before it too
                while start > 0 and line[start - 1] in " \t" and start > len("#SBATCH"):
                    start -= 1
            line = line[:start] + text + line[end:]
        lines[idx] = line
    emptied = {
        idx for idx in edits if lines[idx].rstrip("\r").strip() in _MAGIC and _words_on(words, idx)
    }
    added = [
        "#SBATCH " + _option_text(name, value)
        for name, value in changes.items()
        if name not in present and value is not None
    ]
    if added:
        if last_option_line >= 0:
            at = last_option_line + 1
        else:
            at = 1 if lines and lines[0].startswith("#!") else 0
        lines[at:at] = added  # after every option line: the emptied indices still hold
    return "\n".join(line for idx, line in enumerate(lines) if idx not in emptied)


def _words_on(words: Sequence[_Word], idx: int) -> bool:
    return any(w.line == idx for w in words)


# ---------------------------------------------------------------------------- commands
class SlurmError(RuntimeError):
    """A SLURM command failed; the message holds its stderr."""


Runner = Callable[..., Any]  # subprocess.run-compatible


def _run(argv: List[str], run: Optional[Runner], **kw: Any) -> Any:
    if run is None:
        import subprocess

        run = subprocess.run
    try:
        return run(argv, capture_output=True, text=True, **kw)
    except FileNotFoundError:
        raise SlurmError(f"{argv[0]}: command not found (is SLURM installed here?)") from None
    except OSError as exc:
        raise SlurmError(f"{argv[0]}: {exc}") from None
    except Exception as exc:  # TimeoutExpired and friends
        raise SlurmError(f"{argv[0]}: {exc}") from None


def scancel_argv(job_id: str, signal: Optional[str] = None) -> List[str]:
    if not re.fullmatch(r"[0-9]+(_[0-9]+)?(\.[0-9A-Za-z]+)?", job_id):
        raise ValueError(f"not a job id: {job_id!r}")
    argv = ["scancel"]
    if signal:
        argv += ["--signal", signal]
    return argv + [job_id]


def scancel(
    job_id: str,
    reason: Optional[str] = None,
    *,
    signal: Optional[str] = None,
    timeout: float = 60.0,
    run: Optional[Runner] = None,
) -> None:
    """Cancel a job. ``reason`` is only logged (scancel has no field for it). Raises
    ``SlurmError`` when scancel fails."""
    from sidecar.log import get_logger

    argv = scancel_argv(job_id, signal)
    get_logger(__name__).info("scancel", job_id=job_id, reason=reason)
    res = _run(argv, run, timeout=timeout)
    if res.returncode != 0:
        raise SlurmError(f"scancel {job_id} failed: {(res.stderr or res.stdout or '').strip()}")


def sbatch_argv(script_path: str, extra: Sequence[str] = ()) -> List[str]:
    return ["sbatch", "--parsable", *extra, script_path]


def sbatch(
    script_path: str,
    env: Optional[Mapping[str, str]] = None,
    *,
    cwd: Optional[str] = None,
    extra: Sequence[str] = (),
    timeout: float = 60.0,
    run: Optional[Runner] = None,
) -> str:
    """Submit ``script_path``; returns the new job id. ``env`` is the whole environment
    (see ``submit_environment``). Raises ``SlurmError`` with sbatch's message."""
    argv = sbatch_argv(script_path, extra)
    res = _run(argv, run, env=dict(env) if env is not None else None, cwd=cwd, timeout=timeout)
    text = (res.stdout or "").strip()
    if res.returncode != 0 or not text:
        raise SlurmError(f"sbatch failed: {(res.stderr or res.stdout or '').strip()}")
    job_id = text.splitlines()[-1].split(";")[0].strip()
    if not job_id.isdigit():
        raise SlurmError(f"sbatch printed no job id: {text[:200]!r}")
    return job_id


def submit_environment(environ: Mapping[str, str]) -> Dict[str, str]:
    """``environ`` without the job's own SLURM_*/SBATCH_* variables, which would otherwise
    leak into the new submission's options (SLURM_CONF is kept)."""
    return {
        k: v
        for k, v in environ.items()
        if not (k.startswith(("SLURM_", "SBATCH_", "SLURMD_")) and k != "SLURM_CONF")
    }
