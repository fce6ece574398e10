"""What each action does, given a Firing: either done at once (log_event, store_metric,
pause_watcher) or a process for the runner (run_command, cancel_job, resubmit, notify_*).

Notifications run as ``python -m sidecar.notify`` through the runner, so apprise is imported
only when a notification is actually sent, never in the daemon, and a slow mail server is
bounded by the same timeout and process-group kill as any command.

Captured log text never becomes shell syntax: commands get captures through the environment
(see ``sidecar.substitute.substitute_shell``), and the commands sidecar builds itself quote
every argument with ``shlex.quote``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from sidecar.model import ActionSpec, Settings
from sidecar.triggers import Firing
from sidecar.types import ActionResult, hostname


def _quote(s: str) -> str:
    """shlex.quote, with shlex imported by the actions that build a command line."""
    import shlex

    return shlex.quote(s)


#: environment variables that carry notification defaults (the ssync names accepted too)
EMAIL_VARS = ("SIDECAR_EMAIL", "SSYNC_EMAIL")
SLACK_VARS = ("SIDECAR_SLACK_WEBHOOK", "SSYNC_SLACK_WEBHOOK")
RESUBMIT_COUNT_VAR = "SIDECAR_RESUBMIT_COUNT"


@dataclass(frozen=True)
class JobContext:
    """What actions need to know about the job and the sidecar, fixed at start."""

    environ: Mapping[str, str]
    job_id: Optional[str]
    host: str
    cwd: str
    script: Optional[str] = None  # the batch script (for resubmit)
    submit_dir: Optional[str] = None
    resubmits_done: int = 0  # by earlier runs of this job (a requeued job keeps its count)

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, str], cwd: str, script: Optional[str] = None
    ) -> JobContext:
        job_id = environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID")
        if script is None:
            cmd = environ.get("SLURM_JOB_SCRIPT")  # not set by SLURM; allow users to hint
            script = cmd or None
        return cls(
            environ=dict(environ),
            job_id=job_id,
            host=hostname(),
            cwd=cwd,
            script=script,
            submit_dir=environ.get("SLURM_SUBMIT_DIR"),
        )


@dataclass(frozen=True)
class Immediate:
    """An action done at once. ``record`` holds the extra fields of its event-log record."""

    result: ActionResult
    record: Mapping[str, Any] = field(default_factory=dict)
    effect: Optional[Tuple[str, str]] = None  # ("pause", watcher) | ("stop", reason)


@dataclass(frozen=True)
class Process:
    """An action that runs a process through the runner."""

    command: str
    env: Mapping[str, str]
    cwd: Optional[str]
    timeout: float
    effect_on_success: Optional[Tuple[str, str]] = None
    shown: Optional[str] = None  # what to show in the record instead of the command


Prepared = Any  # Immediate | Process


def base_variables(firing: Firing, ctx: JobContext) -> Dict[str, str]:
    """Variables available to ``$name`` substitution: the job's environment (SLURM_* and all),
    JOB_ID, HOSTNAME, the Haskell Sidecar names, then the firing's own (captures, $0, $1..)."""
    v: Dict[str, str] = dict(ctx.environ)
    v["JOB_ID"] = ctx.job_id or ""
    v["HOSTNAME"] = ctx.host
    v.update(haskell_env(firing))
    v.update(firing.variables)
    return v


#: Linux refuses (E2BIG) an exec whose single environment string is over 128 KiB
ENV_VALUE_CAP = 100_000
ENV_CUT_MARKER = " [...cut]"


def _env_safe(v: str) -> str:
    """An environment value cannot hold a NUL byte (binary garbage in a log line), nor be
    longer than the kernel takes (a 1 MiB line, a long multi-line record): cut, marked."""
    if "\0" in v:
        v = v.replace("\0", "\ufffd")
    if len(v) > ENV_VALUE_CAP // 4:
        b = v.encode("utf-8", "surrogateescape")
        if len(b) > ENV_VALUE_CAP:
            v = b[:ENV_VALUE_CAP].decode("utf-8", "ignore") + ENV_CUT_MARKER
    return v


#: variables of the newer triggers that commands also get as environment variables
EXPORTED_VARIABLES = (
    "EXIT_CODE",  # job_end
    "TIME_LEFT",  # time_limit: seconds left
    "END_TIME",  # time_limit: ISO 8601
    "SIGNAL",  # time_limit: the signal that fired it, if one did
    "RSS_BYTES",  # memory
    "LIMIT_BYTES",  # memory
    "FRACTION",  # memory: RSS / limit
    "CPU_PERCENT",  # stale with max_cpu: the job's CPU use over the quiet spell
    "RECORD",  # multi-line records: the whole record
    "RECORD_LINES",
    "COUNT",  # threshold: matches counted when it fired
    "SUPPRESSED",  # suppress: firings held back since the previous one of this key
    "KEY",  # track_by: the key's value
    "PROBE",  # probe: the command
)


def haskell_env(firing: Firing) -> Dict[str, str]:
    """NAME, FILE, DIRECTORY, MATCH, TIMEOUT, KIND as the Haskell Sidecar sets them (and
    the EXPORTED_VARIABLES a firing has)."""
    env = {"NAME": firing.watcher, "TRIGGER": firing.trigger}
    fv = firing.variables
    for k in EXPORTED_VARIABLES:
        if k in fv:
            env[k] = _env_safe(fv[k])
    if firing.file is not None:
        env["FILE"] = _env_safe(firing.file)
    if firing.directory is not None:
        env["DIRECTORY"] = _env_safe(firing.directory)
    if firing.line is not None:
        env["MATCH"] = _env_safe(firing.line)
    if firing.timeout is not None:
        env["TIMEOUT"] = _num(firing.timeout)
    if firing.event is not None:
        env["KIND"] = firing.event
    return env


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _text(spec: ActionSpec, key: str, variables: Mapping[str, str], default: str = "") -> str:
    from sidecar.substitute import substitute

    raw = spec.params.get(key, default)
    return substitute(str(raw), variables) if raw is not None else default


def _first_env(environ: Mapping[str, str], names: Tuple[str, ...]) -> Optional[str]:
    for n in names:
        if environ.get(n):
            return environ[n]
    return None


def prepare(spec: ActionSpec, firing: Firing, ctx: JobContext, settings: Settings) -> Prepared:
    """Turn one action of a firing into an Immediate result or a Process to run."""
    variables = base_variables(firing, ctx)
    timeout = spec.timeout if spec.timeout is not None else settings.action_timeout
    t = spec.type
    if t == "log_event":
        level = str(spec.params.get("level", "INFO")).upper()
        default_msg = f"{firing.watcher}: {firing.line or firing.event or firing.trigger}"
        message = _text(spec, "message", variables, default_msg) or default_msg
        return Immediate(ActionResult(t, True), {"kind": "log", "message": message, "level": level})
    if t == "store_metric":
        name = _text(spec, "name", variables, firing.watcher) or firing.watcher
        raw = _text(spec, "value", variables, variables.get("1", variables.get("0", "")))
        value: Any = raw
        try:
            value = float(raw)
            if value.is_integer() and "." not in raw and "e" not in raw.lower():
                value = int(raw)
        except ValueError:
            pass
        return Immediate(ActionResult(t, True), {"kind": "metric", "metric": name, "value": value})
    if t == "pause_watcher":
        target = _text(spec, "name", variables, firing.watcher) or firing.watcher
        return Immediate(ActionResult(t, True, detail={"paused": target}), {}, ("pause", target))
    if t == "run_command":
        from sidecar.substitute import substitute_shell

        template = str(spec.params.get("command", spec.params.get("cmd", "")))
        # only the firing's own names are rewritten; $HOME, $SLURM_JOB_ID ... stay the shell's
        own = {"JOB_ID": ctx.job_id or "", "HOSTNAME": ctx.host, **firing.variables}
        command, extra_env = substitute_shell(template, own)
        env = dict(ctx.environ)
        env.update(haskell_env(firing))
        env.update((k, _env_safe(v)) for k, v in extra_env.items())
        if ctx.job_id:
            env.setdefault("JOB_ID", ctx.job_id)
        return Process(command, env, ctx.cwd, timeout)
    if t == "cancel_job":
        if not ctx.job_id:
            return Immediate(
                ActionResult(t, False, error="not inside a SLURM job (SLURM_JOB_ID is not set)")
            )
        reason = _text(spec, "reason", variables, f"sidecar watcher {firing.watcher}")
        env = dict(ctx.environ)
        env["SIDECAR_CANCEL_REASON"] = _env_safe(reason)
        cmd = "scancel " + _quote(ctx.job_id)
        return Process(cmd, env, ctx.cwd, timeout, ("stop", f"cancel_job: {reason}"))
    if t == "resubmit":
        return _prepare_resubmit(spec, firing, ctx, settings, variables, timeout)
    if t in ("notify_email", "notify_slack", "notify"):
        return _prepare_notify(spec, firing, ctx, settings, variables, timeout)
    return Immediate(ActionResult(t, False, error=f"unknown action type {t!r}"))


def _prepare_resubmit(
    spec: ActionSpec,
    firing: Firing,
    ctx: JobContext,
    settings: Settings,
    variables: Mapping[str, str],
    timeout: float,
) -> Prepared:
    t = "resubmit"
    if not ctx.job_id:
        return Immediate(ActionResult(t, False, error="not inside a SLURM job"))
    if not ctx.script or not os.path.isfile(ctx.script):
        return Immediate(
            ActionResult(
                t,
                False,
                error="the batch script is unknown: start the sidecar with --from-script "
                "JOB.sh, or with --script JOB.sh next to a TOML config, to allow resubmit",
            )
        )
    try:
        count = int(ctx.environ.get(RESUBMIT_COUNT_VAR, "0") or 0)
    except ValueError:
        count = 0
    count += ctx.resubmits_done
    limit = int(spec.params.get("max_resubmits", settings.resubmit_limit))
    if count >= limit:
        return Immediate(
            ActionResult(
                t,
                False,
                error=f"resubmit limit reached ({count} of {limit}); not resubmitting again",
            )
        )
    from sidecar.slurm import rewrite_sbatch

    mods_raw = spec.params.get("modifications") or {}
    mods = {str(k): _subst_value(v, variables) for k, v in dict(mods_raw).items()}
    with open(ctx.script, encoding="utf-8", errors="surrogateescape") as fh:
        text = fh.read()
    new_text = rewrite_sbatch(text, mods)
    outdir = os.path.join(ctx.submit_dir or ctx.cwd, ".sidecar")
    os.makedirs(outdir, exist_ok=True)
    new_script = os.path.join(outdir, f"resubmit-{ctx.job_id}-{count + 1}.sh")
    with open(new_script, "w", encoding="utf-8", errors="surrogateescape") as fh:
        fh.write(new_text)
    os.chmod(new_script, 0o755)
    env = dict(ctx.environ)
    # sbatch exports its environment into the new job: the counter travels with it.
    env[RESUBMIT_COUNT_VAR] = str(count + 1)
    env["SIDECAR_ORIGINAL_SCRIPT"] = ctx.environ.get("SIDECAR_ORIGINAL_SCRIPT", ctx.script)
    for k in list(env):
        # a job's own SLURM_* variables must not leak into the new submission's options
        if k.startswith(("SLURM_", "SBATCH_")) and k not in ("SLURM_CONF",):
            del env[k]
    cancel = _truthy(spec.params.get("cancel_original", True))
    cmd = "sbatch --parsable "
    name = ctx.environ.get("SLURM_JOB_NAME")
    if name and not any(k.lstrip("-") in ("J", "job-name", "job_name") for k in mods):
        # without this, a script with no --job-name would be named after the copy's file
        cmd += "--job-name=" + _quote(name) + " "
    cmd += _quote(new_script)
    if cancel:
        cmd = f"{cmd} && scancel {_quote(ctx.job_id)}"
    effect = ("stop", "resubmit: original job cancelled") if cancel else None
    return Process(cmd, env, ctx.submit_dir or ctx.cwd, timeout, effect)


def _subst_value(v: Any, variables: Mapping[str, str]) -> str:
    from sidecar.substitute import substitute

    return substitute(str(v), variables)


def _truthy(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes", "on")
    return bool(v)


def _prepare_notify(
    spec: ActionSpec,
    firing: Firing,
    ctx: JobContext,
    settings: Settings,
    variables: Mapping[str, str],
    timeout: float,
) -> Prepared:
    t = spec.type
    job = ctx.job_id or "-"
    default_title = f"sidecar: {firing.watcher} fired (job {job} on {ctx.host})"
    default_body = firing.line or firing.event or f"{firing.trigger} trigger"
    title = _text(spec, "subject", variables, "") or _text(spec, "title", variables, "")
    body = _text(spec, "message", variables, "") or _text(spec, "body", variables, "")
    given_title, given_body = bool(title), bool(body)
    title = title or default_title
    body = body or default_body
    urls: List[str] = []
    n = settings.notify
    if t == "notify_email":
        to = _text(spec, "to", variables, "") or n.email_to or _first_env(ctx.environ, EMAIL_VARS)
        if not to:
            return Immediate(
                ActionResult(
                    t,
                    False,
                    error="no recipient: give to=..., [notify] email_to, or SIDECAR_EMAIL",
                )
            )
        smtp = n.smtp_url or ctx.environ.get("SIDECAR_SMTP_URL") or None
        sender = n.email_from or ctx.environ.get("SIDECAR_EMAIL_FROM") or None
        urls.append(email_url(to, smtp, sender, ctx.host))
    elif t == "notify_slack":
        hook = (
            _text(spec, "webhook", variables, "")
            or n.slack_webhook
            or _first_env(ctx.environ, SLACK_VARS)
        )
        if not hook:
            return Immediate(
                ActionResult(
                    t,
                    False,
                    error="no webhook: give webhook=..., [notify] slack_webhook, "
                    "or SIDECAR_SLACK_WEBHOOK",
                )
            )
        channel = _text(spec, "channel", variables, "")
        url = slack_url(hook, channel)
        if url.startswith(("json://", "jsons://")) and given_title and not given_body:
            # a Slack-compatible endpoint shows only "text": keep a subject given alone
            body = f"{title}\n{body}"
        urls.append(url)
    else:
        url = _text(spec, "url", variables, "")
        if url:
            urls.append(url)
        urls.extend(n.urls)
        if not urls:
            return Immediate(ActionResult(t, False, error="no url: give url=... or [notify] urls"))
    env = dict(ctx.environ)
    env["SIDECAR_NOTIFY_URLS"] = "\n".join(urls)
    env["SIDECAR_NOTIFY_TITLE"] = _env_safe(title)
    env["SIDECAR_NOTIFY_BODY"] = _env_safe(body)
    cmd = _quote(sys.executable) + " -m sidecar.notify"
    return Process(cmd, env, ctx.cwd, timeout, shown=f"{t}: {title}")


def email_url(to: str, smtp_url: Optional[str], sender: Optional[str], host: str) -> str:
    """An apprise mailto:// URL for ``to``. Without a configured SMTP URL the local MTA on
    localhost:25 is used (what a cluster node normally offers)."""
    from urllib.parse import quote

    base = smtp_url or "mailto://localhost:25"
    sep = "&" if "?" in base else "?"
    url = f"{base}{sep}to={quote(to, safe='@,')}"
    if "from=" not in base:
        # a host name without a dot is no mail domain (apprise would turn it into root@...)
        domain = host if "." in host else "localhost"
        url += f"&from={quote(sender or ('sidecar@' + domain), safe='@')}"
    return url


def slack_url(hook: str, channel: str = "") -> str:
    """Slack webhooks may be given as https://hooks.slack.com/... (apprise parses those),
    as an apprise URL (slack://, json://, ...), or as any other http(s) URL, which is then
    posted to as JSON (a Slack-compatible endpoint such as Mattermost's)."""
    if (
        hook.startswith("https://hooks.slack.com/")
        or "://" in hook
        and not hook.startswith(("http://", "https://"))
    ):
        url = hook
        if channel and hook.startswith("slack://"):
            url = hook.rstrip("/") + "/" + channel.lstrip("/")
        return url
    # apprise's json:// posts {"version", "title", "message", ...}; the ':key=' arguments
    # rename or drop keys, giving Slack's {"text": ...}
    slack_shape = ":message=text&:title=&:version=&:attachments=&:type="
    for scheme, apprise_scheme in (("https://", "jsons://"), ("http://", "json://")):
        if hook.startswith(scheme):
            rest = hook[len(scheme) :]
            sep = "&" if "?" in rest else "?"
            return f"{apprise_scheme}{rest}{sep}{slack_shape}"
    return hook
