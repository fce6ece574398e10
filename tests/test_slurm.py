"""sidecar.slurm: job environment, #SBATCH parsing, output file names, rewriting, commands."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import types
from pathlib import Path

import pytest

from sidecar.slurm import (
    NO_ARRAY_TASK,
    SlurmError,
    canonical_option,
    expand_filename,
    expand_hostlist,
    job_env,
    output_files,
    parse_sbatch_options,
    rewrite_sbatch,
    sbatch,
    scancel,
    submit_environment,
)

JOB = {
    "SLURM_JOB_ID": "7",
    "SLURM_JOB_NAME": "j.sh",
    "SLURM_JOB_USER": "alice",
    "SLURMD_NODENAME": "vm",
    "SLURM_SUBMIT_DIR": "/home/alice/run",
    "SLURM_JOB_NODELIST": "vm",
}
ARRAY = dict(JOB, SLURM_JOB_ID="9", SLURM_ARRAY_JOB_ID="8", SLURM_ARRAY_TASK_ID="1")


def script(body: str) -> str:
    return "#!/bin/bash\n" + textwrap.dedent(body).lstrip("\n")


# --------------------------------------------------------------------------- #SBATCH
def test_parse_all_option_forms_with_line_numbers():
    """-o FILE, -oFILE, --output=FILE, --output FILE, short clusters, values on the next
    word; canonical long names; 1-based line numbers."""
    text = script(
        """
        #SBATCH -o a.out
        #SBATCH -ob.out
        #SBATCH --output=c.out
        #SBATCH --output d.out
        #SBATCH -N2 -kO --mem 4G -t10
        #SBATCH -J "my job" --comment='x y'
        #SBATCH --exclusive --requeue
        """
    )
    assert parse_sbatch_options(text) == [
        (2, "output", "a.out"),
        (3, "output", "b.out"),
        (4, "output", "c.out"),
        (5, "output", "d.out"),
        (6, "nodes", "2"),
        (6, "no-kill", None),
        (6, "overcommit", None),
        (6, "mem", "4G"),
        (6, "time", "10"),
        (7, "job-name", "my job"),
        (7, "comment", "x y"),
        (8, "exclusive", None),
        (8, "requeue", None),
    ]


def test_parse_stops_at_the_first_command_like_sbatch():
    """Blank lines and comments are skipped; the first command ends the option block."""
    text = script(
        """
        # a comment

        #SBATCH --mem=1G
        echo hi
        #SBATCH --mem=2G
        """
    )
    assert parse_sbatch_options(text) == [(4, "mem", "1G")]


def test_parse_only_column_one_directives():
    """' #SBATCH' (indented) and '##SBATCH' / '# SBATCH' are comments (as sbatch)."""
    text = script(
        """
         #SBATCH -J indented
        ##SBATCH -J doubled
        # SBATCH -J spaced
        #SBATCH -J real
        """
    )
    assert parse_sbatch_options(text) == [(5, "job-name", "real")]


def test_parse_comments_quotes_and_backslashes_like_sbatch():
    """An unquoted # starts a comment; quotes group; a backslash escapes the next char."""
    text = script(
        r"""
        #SBATCH --output "o u t-%j.txt"  # a comment
        #SBATCH --comment="a # b"
        #SBATCH -e e\\rr-%j.txt
        #SBATCH -e err\-%j.txt
        #SBATCH --mem=1G#2G
        """
    )
    assert parse_sbatch_options(text) == [
        (2, "output", "o u t-%j.txt"),
        (3, "comment", "a # b"),
        (4, "error", "e\\rr-%j.txt"),
        (5, "error", "err-%j.txt"),
        (6, "mem", "1G"),
    ]


def test_parse_prefixes_unknown_options_and_slurm_magic():
    """Unambiguous prefixes resolve (--out), unknown options keep their name, #SLURM works,
    CRLF line ends are tolerated."""
    text = "#!/bin/bash\r\n#SBATCH --out=x\r\n#SLURM --partition gpu\r\n#SBATCH --bogus=1 -Z\r\n"
    assert parse_sbatch_options(text) == [
        (2, "output", "x"),
        (3, "partition", "gpu"),
        (4, "bogus", "1"),
        (4, "Z", None),
    ]


@pytest.mark.parametrize(
    "key, expected",
    [("mem", "mem"), ("--mem", "mem"), ("-t", "time"), ("t", "time"), ("time", "time"),
     ("cpus_per_task", "cpus-per-task"), ("--job-name", "job-name"), ("workdir", "chdir"),
     ("gres", "gres"), ("learning-rate", None), ("m", "distribution"), ("-Z", None),
     ("mem-per", None)],
)
def test_canonical_option(key, expected):
    """Option names in any form map to sbatch's long name (None when not an option)."""
    assert canonical_option(key) == expected


# --------------------------------------------------------------------------- job env
def test_job_env_outside_a_job_is_none():
    """No SLURM_JOB_ID: not in a job."""
    assert job_env({"HOME": "/x"}) is None


def test_job_env_reads_the_slurm_variables():
    """The job's identity, node, directories and counters come from SLURM_* variables."""
    env = dict(ARRAY, SLURM_RESTART_COUNT="2", SLURM_TASK_PID="123", SLURM_JOB_NUM_NODES="3",
               SLURM_JOB_NODELIST="n[01-03]", SLURM_JOB_PARTITION="debug",
               SLURM_CLUSTER_NAME="c", SLURM_SUBMIT_HOST="login1")
    j = job_env(env)
    assert j is not None
    assert (j.job_id, j.array_job_id, j.array_task_id, j.is_array) == ("9", "8", "1", True)
    assert (j.job_name, j.user, j.node, j.submit_dir) == ("j.sh", "alice", "vm", "/home/alice/run")
    assert (j.restart_count, j.task_pid, j.num_nodes) == (2, 123, 3)
    assert j.nodes == ["n01", "n02", "n03"]
    assert (j.partition, j.cluster, j.submit_host) == ("debug", "c", "login1")
    assert job_env({"SLURM_JOBID": "5"}).job_id == "5"  # type: ignore[union-attr]
    assert job_env({"SLURM_JOB_ID": "5", "SLURM_RESTART_COUNT": "x"}).restart_count == 0  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("vm", ["vm"]),
        ("n[01-03,7],gpu5", ["n01", "n02", "n03", "n7", "gpu5"]),
        ("r[1-2]-c[1-2]", ["r1-c1", "r1-c2", "r2-c1", "r2-c2"]),
        ("bad[x-y]", ["bad[x-y]"]),
        ("", []),
    ],
)
def test_expand_hostlist(spec, expected):
    """SLURM host lists expand (zero padding kept); malformed parts stay as written."""
    assert expand_hostlist(spec) == expected


# --------------------------------------------------------------------------- patterns
FIELDS = {"j": "7", "J": "7", "s": "batch", "n": "0", "t": "0", "N": "vm", "u": "root",
          "x": "j.sh", "A": "7", "a": NO_ARRAY_TASK, "b": "4"}


def test_expand_filename_matches_slurm_22_05():
    """Every field, padding (capped at 10), %% and unknown fields, as slurmstepd 22.05 named
    a real file (except %b, which newer SLURM versions expand)."""
    name, ok = expand_filename(
        "out-%j-%J-%s-%n-%t-%N-%u-%x-%A-%a-%b-%4j-%2t-%05j-%12j-%4q-%q-%%.txt", FIELDS
    )
    assert ok
    assert name == (
        "out-7-7-batch-0-0-vm-root-j.sh-7-4294967294-4-0007-00-00007-0000000007-4q-%q-%.txt"
    )


def test_expand_filename_backslash_disables_fields():
    """A name with a backslash is taken literally (backslashes removed), as slurmstepd does."""
    assert expand_filename("e\\rr-%j.txt", FIELDS) == ("err-%j.txt", True)


def test_expand_filename_unknown_values_stay_unresolved():
    """A field without a value is kept as written and the name is marked incomplete."""
    assert expand_filename("slurm-%j.out", {}) == ("slurm-%j.out", False)
    assert expand_filename("plain.log", {}) == ("plain.log", True)
    assert expand_filename("trailing%", {}) == ("trailing%", True)
    assert expand_filename("%3", {}) == ("%3", True)


# --------------------------------------------------------------------------- output files
def test_default_output_is_slurm_jobid_out_in_the_submit_dir():
    """No -o/-e: slurm-%j.out in SLURM_SUBMIT_DIR; stderr goes to the same file."""
    files = output_files("/spool/slurm_script", script(""), JOB, "both", proc_root=None)
    assert [(f.stream, f.path, f.resolved, f.source) for f in files] == [
        ("stdout", "/home/alice/run/slurm-7.out", True, "default"),
        ("stderr", "/home/alice/run/slurm-7.out", True, "default (stderr goes with stdout)"),
    ]


def test_default_output_of_an_array_task():
    """Array tasks default to slurm-%A_%a.out."""
    (f,) = output_files(None, script(""), ARRAY, "stdout", proc_root=None)
    assert f.path == "/home/alice/run/slurm-8_1.out"


def test_output_and_error_options_chdir_and_line_numbers():
    """-o/-e patterns resolve against --chdir (relative to the submit dir) with the job's
    fields; the source line is reported."""
    text = script(
        """
        #SBATCH -J train
        #SBATCH --chdir=sub
        #SBATCH -o logs/%x-%j.out
        #SBATCH --error=/abs/%u/%j.err
        """
    )
    out, err = output_files(None, text, JOB, "both", proc_root=None)
    assert (out.path, out.line, out.source) == ("/home/alice/run/sub/logs/j.sh-7.out", 4,
                                                 "#SBATCH (line 4)")
    assert (err.path, err.line) == ("/abs/alice/7.err", 5)
    assert out.resolved and err.resolved


def test_error_only_leaves_stdout_at_the_default():
    """-e without -o: stdout stays slurm-%j.out."""
    text = script("#SBATCH -e err-%j.txt\n")
    out, err = output_files(None, text, JOB, "both", proc_root=None)
    assert out.path.endswith("/slurm-7.out") and err.path.endswith("/err-7.txt")


def test_environment_overrides_the_script_like_sbatch():
    """SBATCH_OUTPUT / SBATCH_ERROR win over #SBATCH lines (as sbatch applies them)."""
    text = script("#SBATCH -o script.out\n")
    env = dict(JOB, SBATCH_OUTPUT="env-%j.out")
    (f,) = output_files(None, text, env, "stdout", proc_root=None)
    assert (f.path, f.source) == ("/home/alice/run/env-7.out", "SBATCH_OUTPUT")


def test_none_means_dev_null_and_is_not_watchable():
    """-o none sends output to /dev/null: resolved but nothing to watch."""
    (f,) = output_files(None, script("#SBATCH -o none\n"), JOB, "stdout", proc_root=None)
    assert f.path == "/dev/null" and not f.watchable


def test_outside_a_job_patterns_stay_unresolved():
    """Without a job, %j cannot be known: resolved=False, the path keeps the pattern;
    literal names resolve against cwd; %x uses -J or the script's name."""
    (f,) = output_files("/x/job.sh", script(""), {}, "stdout", cwd="/work", proc_root=None)
    assert (f.path, f.resolved) == ("/work/slurm-%j.out", False)
    (f,) = output_files("/x/job.sh", script("#SBATCH -o %x.log\n"), {"USER": "bob"}, "stdout",
                        cwd="/work", proc_root=None)
    assert (f.path, f.resolved) == ("/work/job.sh.log", True)
    (f,) = output_files("/x/job.sh", script("#SBATCH -o %x.log\n#SBATCH -J t\n"), {}, "stdout",
                        cwd="/work", proc_root=None)
    assert f.path == "/work/t.log"
    (f,) = output_files(None, script("#SBATCH --array=1-3\n"), {}, "stdout", cwd="/w",
                        proc_root=None)
    assert f.path == "/w/slurm-%A_%a.out"


def test_output_type_is_validated():
    """Only stdout, stderr and both exist."""
    with pytest.raises(ValueError):
        output_files(None, "", JOB, "all", proc_root=None)


def _fake_proc(root: Path, pid: int, job_id: str, fd1: str, fd2: str) -> None:
    d = root / str(pid)
    (d / "fd").mkdir(parents=True)
    (d / "environ").write_bytes(f"A=1\0SLURM_JOB_ID={job_id}\0".encode())
    os.symlink(fd1, d / "fd" / "1")
    os.symlink(fd2, d / "fd" / "2")


def test_proc_shows_where_output_really_goes(tmp_path):
    """Inside the job, /proc/$SLURM_TASK_PID/fd/1,2 wins (covers sbatch -o on the command
    line), but only for the batch script of this job and only for real files."""
    proc = tmp_path / "proc"
    _fake_proc(proc, 100, "7", "/real/cli-7.out", "pipe:[1234]")
    env = dict(JOB, SLURM_TASK_PID="100")
    out, err = output_files(None, script(""), env, "both", proc_root=str(proc))
    assert (out.path, out.source, out.resolved) == ("/real/cli-7.out", "/proc", True)
    assert err.path == "/home/alice/run/slurm-7.out"  # a pipe is not a file: keep the name
    _fake_proc(proc, 101, "8", "/other/job.out", "/other/job.out")
    env = dict(JOB, SLURM_TASK_PID="101")  # that pid belongs to another job
    (out,) = output_files(None, script(""), env, "stdout", proc_root=str(proc))
    assert out.path == "/home/alice/run/slurm-7.out"
    env = dict(JOB, SLURM_TASK_PID="999")  # no such process
    (out,) = output_files(None, script(""), env, "stdout", proc_root=str(proc))
    assert out.path == "/home/alice/run/slurm-7.out"


# --------------------------------------------------------------------------- rewriting
BASE = script(
    """
    #SBATCH --job-name=train   # the name
    #SBATCH -t 60 -p cpu
    #SBATCH --mem 8G
    #WATCHER pattern="OOM" action=resubmit(modifications={"mem": "16G"})

    python train.py
    #SBATCH --mem=1G
    """
)


def test_rewrite_changes_existing_options_in_every_form():
    """Long, short and space-separated forms are rewritten in place as --name=value; the
    rest of the line, #WATCHER lines and everything after the first command are kept."""
    out = rewrite_sbatch(BASE, {"mem": "16G", "--time": "120", "-p": "gpu", "job_name": "x"})
    assert out.splitlines() == [
        "#!/bin/bash",
        "#SBATCH --job-name=x   # the name",
        "#SBATCH --time=120 --partition=gpu",
        "#SBATCH --mem=16G",
        '#WATCHER pattern="OOM" action=resubmit(modifications={"mem": "16G"})',
        "",
        "python train.py",
        "#SBATCH --mem=1G",
    ]
    opts = {n: v for _l, n, v in parse_sbatch_options(out)}
    assert opts == {"job-name": "x", "time": "120", "partition": "gpu", "mem": "16G"}


def test_rewrite_adds_new_options_after_the_last_sbatch_line():
    """Options not in the script become new #SBATCH lines after the last one."""
    out = rewrite_sbatch(BASE, {"gres": "gpu:2", "cpus-per-task": "8"})
    lines = out.splitlines()
    assert lines[4:6] == ["#SBATCH --gres=gpu:2", "#SBATCH --cpus-per-task=8"]
    assert lines[6].startswith("#WATCHER")


def test_rewrite_without_sbatch_lines_adds_after_the_shebang():
    """A script without #SBATCH lines gets them right after #! (before any command)."""
    assert rewrite_sbatch("#!/bin/sh\necho hi\n", {"mem": "2G"}) == (
        "#!/bin/sh\n#SBATCH --mem=2G\necho hi\n"
    )
    assert rewrite_sbatch("echo hi", {"mem": "2G"}) == "#SBATCH --mem=2G\necho hi"


def test_rewrite_quotes_values_and_handles_flags_and_removal():
    """Values with spaces/quotes/# are quoted the way sbatch reads them back; flags get no
    value; None (or false for a flag) removes an option, and an emptied line goes."""
    out = rewrite_sbatch(BASE, {"comment": 'a "b" #c', "requeue": "true", "mem": None})
    opts = parse_sbatch_options(out)
    assert (9 - 1, "comment", 'a "b" #c') in [(ln, n, v) for ln, n, v in opts] or any(
        n == "comment" and v == 'a "b" #c' for _l, n, v in opts
    )
    assert any(n == "requeue" and v is None for _l, n, v in opts)
    assert not any(n == "mem" for _l, n, v in opts)
    assert "#SBATCH\n" not in out
    out = rewrite_sbatch("#SBATCH --requeue -t 5\necho\n", {"requeue": "false"})
    assert out == "#SBATCH -t 5\necho\n"


def test_rewrite_refuses_unknown_options_and_line_breaks():
    """Unknown option names and values that would inject lines are ValueErrors."""
    with pytest.raises(ValueError, match="learning-rate"):
        rewrite_sbatch(BASE, {"learning-rate": "0.1"})
    with pytest.raises(ValueError, match="line break"):
        rewrite_sbatch(BASE, {"mem": "1G\n#SBATCH --uid=0"})


# --------------------------------------------------------------------------- commands
class FakeRun:
    def __init__(self, returncode=0, stdout="", stderr="", exc=None):
        self.calls = []
        self.result = types.SimpleNamespace(returncode=returncode, stdout=stdout, stderr=stderr)
        self.exc = exc

    def __call__(self, argv, **kw):
        self.calls.append((argv, kw))
        if self.exc:
            raise self.exc
        return self.result


def test_scancel_builds_an_argv_without_a_shell():
    """scancel JOB (optionally --signal); failures raise SlurmError with the message."""
    run = FakeRun()
    scancel("123", "loss diverged", run=run)
    assert run.calls[0][0] == ["scancel", "123"]
    scancel("123_4", signal="USR1", run=run)
    assert run.calls[1][0] == ["scancel", "--signal", "USR1", "123_4"]
    with pytest.raises(ValueError):
        scancel("123; rm -rf ~", run=run)
    with pytest.raises(SlurmError, match="Invalid job id"):
        scancel("1", run=FakeRun(1, stderr="scancel: error: Invalid job id"))
    with pytest.raises(SlurmError, match="not found"):
        scancel("1", run=FakeRun(exc=FileNotFoundError("scancel")))


def test_sbatch_returns_the_new_job_id():
    """sbatch --parsable SCRIPT with the given env/cwd; 'id;cluster' is understood."""
    run = FakeRun(stdout="456;cluster\n")
    assert sbatch("/x/job.sh", {"A": "1"}, cwd="/x", run=run) == "456"
    argv, kw = run.calls[0]
    assert argv == ["sbatch", "--parsable", "/x/job.sh"]
    assert kw["env"] == {"A": "1"} and kw["cwd"] == "/x"
    with pytest.raises(SlurmError, match="denied"):
        sbatch("/x", run=FakeRun(1, stderr="sbatch: error: denied"))
    with pytest.raises(SlurmError, match="no job id"):
        sbatch("/x", run=FakeRun(0, stdout="Submitted?"))


def test_submit_environment_drops_the_jobs_own_variables():
    """A resubmission must not inherit SLURM_*/SBATCH_* of the running job (SLURM_CONF kept)."""
    env = {"SLURM_JOB_ID": "1", "SBATCH_OUTPUT": "x", "SLURMD_NODENAME": "n", "SLURM_CONF": "/c",
           "PATH": "/bin"}
    assert submit_environment(env) == {"SLURM_CONF": "/c", "PATH": "/bin"}


def test_import_runs_no_subprocess():
    """Importing sidecar.slurm (and sidecar.script) runs no command."""
    code = (
        "import subprocess\n"
        "def boom(*a, **k):\n"
        "    raise SystemExit('a process was started at import')\n"
        "subprocess.Popen.__init__ = boom\n"
        "import sidecar.slurm, sidecar.script\n"
        "print('ok')\n"
    )
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=str(Path(__file__).resolve().parents[1]), check=False)
    assert out.stdout.strip() == "ok", out.stderr


# --------------------------------------------------------------------------- real SLURM
PROBE = """
import json, os, sys
from sidecar.slurm import output_files, job_env
text = open(sys.argv[1]).read()
files = output_files(sys.argv[1], text, os.environ, "both")
print("PROBE " + json.dumps([[f.stream, f.path, f.source] for f in files]))
"""


@pytest.mark.slurm
@pytest.mark.parametrize("cli", [[], ["-o", "cli-%A_%a.txt"]])
def test_output_files_inside_a_real_job(tmp_path, cli):
    """In a real job, output_files names the file the job's stdout really goes to: from
    the #SBATCH lines, and from /proc when sbatch got -o on its command line."""
    from tests.slurm import cluster

    problem = cluster.cluster_problem()
    if problem:
        pytest.skip(f"SLURM test cluster unavailable: {problem}")
    (tmp_path / "probe.py").write_text(PROBE)
    job = cluster.write_script(
        tmp_path / "job.sh",
        f"""
#SBATCH --output=sbatch-%x-%j.txt
#SBATCH -e err-%j.txt
#SBATCH --array=3
{sys.executable} {tmp_path / "probe.py"} "$0"
""",
    )
    job_id = cluster.submit(job, cwd=tmp_path, sbatch_args=cli)
    try:
        cluster.wait_gone_or_done(job_id, timeout=60)
    finally:
        if cluster.job_state(job_id) not in cluster.TERMINAL_STATES | {cluster.GONE}:
            cluster.cancel(job_id)
    outs = [p for p in tmp_path.iterdir() if p.name.startswith(("sbatch-", "cli-"))]
    assert len(outs) == 1, sorted(os.listdir(tmp_path))
    text = cluster.read_output(outs[0])
    line = next(x for x in text.splitlines() if x.startswith("PROBE "))
    files = json.loads(line[len("PROBE "):])
    assert files[0][1] == str(outs[0])
    assert files[1][1] == str(tmp_path / f"err-{job_id}.txt")
    assert os.path.exists(files[1][1])
    if cli:
        assert files[0][2] == "/proc"
