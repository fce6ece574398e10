"""Notifications end to end, without SLURM: a sidecar started from the command line (a
real process, real inotify) fires on a line, hands the notification to apprise (in its
``python -m sidecar.notify`` subprocess), and apprise delivers it over TCP to the local
SMTP peer and webhook peer of tests/peers.py. Checked: what arrived (sender, recipients,
subject, body, HTTP path and payload) and the action records; a refused mail and a
webhook answering 500 are recorded as failed with the reason, and the sidecar carries on.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional

import pytest

from tests.conftest import wait_until
from tests.peers import SMTPPeer, WebhookPeer

REPO = Path(__file__).resolve().parents[1]

# a Slack-shaped body ({"text": ...}) from apprise's json:// plugin (docs/testing.md)
SLACK_SHAPE = {":message": "text", ":title": "", ":version": "", ":attachments": "",
               ":type": ""}


# ----------------------------------------------------------------------------- helpers
def _env(extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """Our environment minus anything that would make the sidecar think it is in a job
    or give it notification defaults, plus the repository on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "SBATCH_", "SIDECAR_", "SSYNC_"))}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env.update(extra or {})
    return env


def _records(path: Path) -> List[Dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


class Sidecar:
    """``sidecar ARGS --no-follow --nice 0 --events EV`` as a subprocess in ``cwd``."""

    def __init__(self, args: List[str], cwd: Path,
                 env: Optional[Mapping[str, str]] = None) -> None:
        self.events = cwd / "events.jsonl"
        self.stderr_path = cwd / "sidecar.stderr"
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sidecar.cli", *args, "--no-follow", "--nice", "0",
                 "--events", str(self.events)],
                cwd=cwd, env=_env(env), stdout=subprocess.DEVNULL, stderr=err)
        wait_until(lambda: self.kinds("start") or self.proc.poll() is not None, timeout=30)
        assert self.proc.poll() is None, f"sidecar exited {self.proc.returncode}: {self.stderr()}"

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def records(self) -> List[Dict[str, Any]]:
        return _records(self.events)

    def kinds(self, kind: str, **fields: Any) -> List[Dict[str, Any]]:
        return [r for r in self.records() if r["kind"] == kind
                and all(r.get(k) == v for k, v in fields.items())]

    def wait_actions(self, count: int, timeout: float = 30.0) -> List[Dict[str, Any]]:
        wait_until(lambda: len(self.kinds("action")) >= count, timeout=timeout)
        return self.kinds("action")

    def stop(self) -> int:
        """SIGTERM; the sidecar writes its stop record and exits 0 (bounded wait)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
            pytest.fail(f"sidecar did not stop within 15 s after SIGTERM: {self.stderr()}")


@pytest.fixture
def sidecars() -> Iterator[List[Sidecar]]:
    """Sidecars a test started; any still running at the end are killed."""
    started: List[Sidecar] = []
    yield started
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait(timeout=5)


def _append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text)


class LocalMTA:
    """Stands in for the node's mail server on localhost:25 (where notify_email sends
    when no smtp_url is configured, as with #WATCHER scripts): every connection is piped
    to the SMTP peer."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind(("127.0.0.1", 25))
        except OSError as e:
            self.sock.close()
            pytest.skip(f"cannot listen on 127.0.0.1:25 to stand in for the local MTA: {e}")
        self.sock.listen(8)
        self.sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="local-mta", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def local_mta(smtp_server: SMTPPeer) -> Iterator[LocalMTA]:
    mta = LocalMTA(smtp_server.port)
    yield mta
    mta.close()


# ------------------------------------------------------------------------------- tests
def _toml(smtp: SMTPPeer, slack_webhook: str) -> str:
    return f"""
[notify]
email_to = "ops@example.com"
smtp_url = "mailto://127.0.0.1:{smtp.port}?from=sidecar@example.com"
slack_webhook = "{slack_webhook}"

[[regex_actions]]
name = "diverged"
directory = "."
filepath_regex = '^train\\.log$'
line_regex = 'epoch (\\d+) loss: ([0-9.]+)'
captures = ["epoch", "loss"]
condition = "float(loss) > 5"
actions = [
  {{ type = "notify_email", subject = "[$JOB_ID] loss $loss at epoch $epoch", message = "$MATCH" }},
  {{ type = "notify_slack", message = "loss $loss at epoch $epoch ($NAME)" }},
]
"""


def test_toml_watcher_mails_and_posts_to_slack(
        smtp_server: SMTPPeer, webhook_server: WebhookPeer, tmp_path: Path,
        sidecars: List[Sidecar]) -> None:
    """A [[regex_actions]] watcher with notify_email and notify_slack, defaults from
    [notify]: one mail (sender, recipient, substituted subject, the line as body) and one
    Slack-shaped POST ({"text": ...}) arrive, and both actions are recorded ok, tied to
    the match; the line below the condition sends nothing."""
    hook = webhook_server.json_url("/services/T000/B000/XXXX", **SLACK_SHAPE)
    (tmp_path / "c.toml").write_text(_toml(smtp_server, hook))
    (tmp_path / "train.log").write_text("")
    sc = Sidecar(["c.toml"], tmp_path)
    sidecars.append(sc)
    _append(tmp_path / "train.log", "epoch 1 loss: 0.73\nepoch 2 loss: 7.25\n")

    (mail,) = smtp_server.wait_for(1, timeout=30)
    assert mail.sender == "sidecar@example.com"
    assert mail.recipients == ("ops@example.com",)
    assert mail.subject == "[] loss 7.25 at epoch 2"        # no job: JOB_ID is empty
    assert mail.text().strip() == "epoch 2 loss: 7.25"
    (req,) = webhook_server.wait_for(1, timeout=30)
    assert req.method == "POST" and req.path == "/services/T000/B000/XXXX"
    assert req.json == {"text": "loss 7.25 at epoch 2 (diverged)"}

    actions = sc.wait_actions(2)
    (match,) = sc.kinds("match")
    assert match["line"] == "epoch 2 loss: 7.25"
    assert [(a["action"], a["ok"], a["exit_code"]) for a in actions] == [
        ("notify_email", True, 0), ("notify_slack", True, 0)]
    assert all(a["firing"] == match["firing"] for a in actions)
    assert sc.stop() == 0
    assert len(sc.kinds("stop")) == 1
    # nothing more was sent (the first line did not pass the condition)
    assert len(smtp_server.messages) == 1 and len(webhook_server.requests) == 1


def test_slack_webhook_given_as_http_url_gets_a_slack_shaped_body(
        webhook_server: WebhookPeer) -> None:
    """notify_slack's webhook may be any http(s) URL of a Slack-compatible endpoint
    (sidecar/actions.py slack_url): such an endpoint (Slack, Mattermost, Rocket.Chat
    incoming webhooks) needs the message in "text"."""
    from sidecar.actions import slack_url

    url = slack_url(webhook_server.url("/hooks/abc"))
    cp = subprocess.run([sys.executable, "-m", "sidecar.notify"], capture_output=True,
                        text=True, timeout=60,
                        env=_env({"SIDECAR_NOTIFY_URLS": url, "SIDECAR_NOTIFY_TITLE": "t",
                                  "SIDECAR_NOTIFY_BODY": "job 42 diverged"}))
    (req,) = webhook_server.wait_for(1, timeout=10)
    assert req.path == "/hooks/abc"
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert isinstance(req.json, dict) and "job 42 diverged" in str(req.json.get("text"))


WATCHER_SCRIPT = """#!/bin/bash
#SBATCH --job-name=notify-demo
#SBATCH --output=job.out
#WATCHER name=diverged pattern="loss: ([0-9.]+)" captures=[loss] condition="float(loss) > 5" action=notify_email(to="lead@example.com", subject="Job ${JOB_ID} diverged", message="loss $loss on ${HOSTNAME}")
#WATCHER name=fatal pattern="FATAL: (.*)" captures=[what] action=notify_email(subject="fatal error in job ${JOB_ID}", message="$what")
python3 train.py
"""


def test_watcher_script_mails_through_the_local_mta_with_env_defaults(
        smtp_server: SMTPPeer, local_mta: LocalMTA, tmp_path: Path,
        sidecars: List[Sidecar]) -> None:
    """#WATCHER lines run with --from-script outside SLURM: notify_email with to= goes
    to that address, without to= to $SIDECAR_EMAIL (not $SSYNC_EMAIL); both through the
    default mail server (localhost:25) from sidecar@<host>; ${JOB_ID} is empty outside
    a job."""
    (tmp_path / "job.sh").write_text(WATCHER_SCRIPT)
    (tmp_path / "job.out").write_text("")
    sc = Sidecar(["--from-script", "job.sh"], tmp_path,
                 env={"SIDECAR_EMAIL": "me@example.com", "SSYNC_EMAIL": "old@example.com"})
    sidecars.append(sc)
    _append(tmp_path / "job.out", "step 1 loss: 0.5\nstep 2 loss: 9.5\nFATAL: disk full\n")

    mails = smtp_server.wait_for(2, timeout=30)
    by_rcpt = {m.recipients: m for m in mails}
    assert set(by_rcpt) == {("lead@example.com",), ("me@example.com",)}
    host = socket.gethostname()
    lead, me = by_rcpt[("lead@example.com",)], by_rcpt[("me@example.com",)]
    # ${JOB_ID} is empty outside a job (a header's runs of blanks may be folded to one)
    assert " ".join(lead.subject.split()) == "Job diverged"
    assert lead.text().strip() == f"loss 9.5 on {host}"
    assert me.subject.strip() == "fatal error in job"
    assert me.text().strip() == "disk full"
    # the default sender is meant to be sidecar@<host>; apprise takes it as the address
    # only when <host> has a dot (else as the display name, with root@localhost)
    domain = host if "." in host else "localhost"  # a dotless host name is no mail domain
    assert all(f"sidecar@{domain}" in str(m.message["From"]) for m in mails)

    actions = sc.wait_actions(2)
    assert sorted((a["watcher"], a["action"], a["ok"]) for a in actions) == [
        ("diverged", "notify_email", True), ("fatal", "notify_email", True)]
    assert sc.stop() == 0


def test_watcher_script_falls_back_to_ssync_email(
        smtp_server: SMTPPeer, local_mta: LocalMTA, tmp_path: Path,
        sidecars: List[Sidecar]) -> None:
    """Without SIDECAR_EMAIL, notify_email without to= goes to $SSYNC_EMAIL (ssync's
    variable)."""
    (tmp_path / "job.sh").write_text(WATCHER_SCRIPT)
    (tmp_path / "job.out").write_text("")
    sc = Sidecar(["--from-script", "job.sh"], tmp_path, env={"SSYNC_EMAIL": "old@example.com"})
    sidecars.append(sc)
    _append(tmp_path / "job.out", "FATAL: out of disk\n")
    (mail,) = smtp_server.wait_for(1, timeout=30)
    assert mail.recipients == ("old@example.com",)
    assert mail.text().strip() == "out of disk"
    (action,) = sc.wait_actions(1)
    assert action["ok"] is True
    assert sc.stop() == 0


def test_failed_notifications_are_recorded_and_the_sidecar_carries_on(
        smtp_server: SMTPPeer, webhook_server: WebhookPeer, tmp_path: Path,
        sidecars: List[Sidecar]) -> None:
    """The SMTP peer refuses the recipient (550) and the webhook answers 500: both
    actions are recorded ok=false with exit code 1 and apprise's reason in the output;
    the sidecar keeps running, and the next firing is delivered and recorded ok."""
    hook = webhook_server.json_url("/services/T000/B000/XXXX", **SLACK_SHAPE)
    (tmp_path / "c.toml").write_text(_toml(smtp_server, hook))
    (tmp_path / "train.log").write_text("")
    smtp_server.fail("RCPT", 550, "5.1.1 no such user")
    webhook_server.respond(500, "internal error")
    sc = Sidecar(["c.toml"], tmp_path)
    sidecars.append(sc)

    _append(tmp_path / "train.log", "epoch 3 loss: 8.0\n")
    failed = sc.wait_actions(2)
    email, slack = failed
    assert (email["action"], email["ok"], email["exit_code"]) == ("notify_email", False, 1)
    assert "ops@example.com" in email["output"] and "failed" in email["output"]
    assert (slack["action"], slack["ok"], slack["exit_code"]) == ("notify_slack", False, 1)
    assert "500" in slack["output"]
    assert smtp_server.messages == []
    assert len(webhook_server.requests) == 1          # it was tried, and refused

    # still running, still acting
    assert sc.proc.poll() is None
    _append(tmp_path / "train.log", "epoch 4 loss: 9.0\n")
    actions = sc.wait_actions(4)
    assert [(a["action"], a["ok"]) for a in actions[2:]] == [
        ("notify_email", True), ("notify_slack", True)]
    (mail,) = smtp_server.wait_for(1, timeout=10)
    assert mail.subject == "[] loss 9.0 at epoch 4"
    reqs = webhook_server.wait_for(2, timeout=10)
    assert reqs[1].json == {"text": "loss 9.0 at epoch 4 (diverged)"}
    assert sc.kinds("state", state="DISABLED") == []
    assert sc.stop() == 0
    (stop,) = sc.kinds("stop")
    assert stop["extra"]["counts"]["firings"] == 2
