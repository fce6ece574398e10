"""The local protocol peers (tests/peers.py) speak their protocols correctly, and apprise
really delivers to them through the URL forms documented in docs/testing.md."""

from __future__ import annotations

import base64
import json
import smtplib
import socket
import urllib.error
import urllib.request
from typing import List

import pytest

from tests import peers
from tests.peers import SMTPPeer, WebhookPeer, free_port

# The shared fixtures live in tests/peers.py.  Bind them here by assignment: importing a
# fixture by name and taking it as an argument would trip ruff's F811.  (Other modules
# can do the same, or the root conftest can declare pytest_plugins = ["tests.peers"].)
smtp_server = peers.smtp_server
webhook_server = peers.webhook_server


class Raw:
    """A line-level SMTP client, to check replies smtplib would hide."""

    def __init__(self, peer: SMTPPeer) -> None:
        self.sock = socket.create_connection((peer.host, peer.port), timeout=5)
        self.f = self.sock.makefile("rb")
        self.greeting = self.read()

    def read(self) -> List[str]:
        lines = []
        while True:
            line = self.f.readline().decode()
            assert line.endswith("\r\n"), f"reply line without CRLF: {line!r}"
            lines.append(line[:-2])
            if line[3] == " ":
                return lines

    def cmd(self, text: str) -> int:
        self.sock.sendall(text.encode() + b"\r\n")
        return int(self.read()[-1][:3])

    def close(self) -> None:
        self.f.close()
        self.sock.close()


# --------------------------------------------------------------------------- SMTP


def test_smtp_stores_message_with_envelope_and_dot_unstuffing(smtp_server: SMTPPeer) -> None:
    body = "Subject: hi\r\n\r\nline one\r\n.leading dot\r\n..two dots\r\n.\r\nlast\r\n"
    with smtplib.SMTP(smtp_server.host, smtp_server.port, timeout=5) as c:
        refused = c.sendmail("from@example.com", ["a@example.com", "b@example.com"], body)
    assert refused == {}
    (mail,) = smtp_server.wait_for(1)
    assert mail.sender == "from@example.com"
    assert mail.recipients == ("a@example.com", "b@example.com")
    # smtplib dot-stuffs; the peer must undo it exactly (a lone "." line is data too)
    assert mail.data == body.encode()
    assert mail.subject == "hi"
    assert mail.text() == "line one\n.leading dot\n..two dots\n.\nlast\n"
    assert mail.auth is None


def test_smtp_several_messages_on_one_connection(smtp_server: SMTPPeer) -> None:
    with smtplib.SMTP(smtp_server.host, smtp_server.port, timeout=5) as c:
        c.sendmail("a@example.com", ["x@example.com"], "Subject: 1\r\n\r\none\r\n")
        c.sendmail("b@example.com", ["y@example.com"], "Subject: 2\r\n\r\ntwo\r\n")
    mails = smtp_server.wait_for(2)
    assert [(m.sender, m.recipients, m.subject) for m in mails] == [
        ("a@example.com", ("x@example.com",), "1"),
        ("b@example.com", ("y@example.com",), "2"),
    ]


def test_smtp_command_sequence_errors_use_rfc5321_codes(smtp_server: SMTPPeer) -> None:
    r = Raw(smtp_server)
    try:
        assert r.greeting[-1].startswith("220 ")
        assert r.cmd("MAIL FROM:<a@example.com>") == 503     # before EHLO
        assert r.cmd("BOGUS") == 500
        assert r.cmd("EHLO") == 501                          # missing argument
        assert r.cmd("EHLO client.example") == 250
        assert r.cmd("RCPT TO:<b@example.com>") == 503       # before MAIL
        assert r.cmd("DATA") == 503                          # before MAIL
        assert r.cmd("MAIL FROM:a@example.com") == 501       # no angle brackets
        assert r.cmd("MAIL FROM:<a@example.com> SIZE=10") == 250
        assert r.cmd("MAIL FROM:<a@example.com>") == 503     # nested MAIL
        assert r.cmd("DATA") == 554                          # no recipients
        assert r.cmd("RCPT TO:<b@example.com>") == 250
        assert r.cmd("RSET") == 250
        assert r.cmd("RCPT TO:<b@example.com>") == 503       # RSET dropped the MAIL
        assert r.cmd("NOOP") == 250
        assert r.cmd("VRFY someone") == 252
        assert r.cmd("X" * 600) == 500                       # over-long command line
        assert r.cmd("NOOP") == 250                          # ...and the session goes on
        assert r.cmd("QUIT") == 221
        assert r.f.readline() == b""                         # server closed
    finally:
        r.close()
    assert smtp_server.messages == []


def test_smtp_null_sender_and_helo_are_accepted(smtp_server: SMTPPeer) -> None:
    r = Raw(smtp_server)
    try:
        assert r.cmd("HELO old.example") == 250
        assert r.cmd("MAIL FROM:<>") == 250
        assert r.cmd("RCPT TO:<b@example.com>") == 250
        assert r.cmd("DATA") == 354
        assert r.cmd("Subject: bounce\r\n\r\nx\r\n.") == 250
    finally:
        r.close()
    (mail,) = smtp_server.wait_for(1)
    assert (mail.sender, mail.helo, mail.subject) == ("", "old.example", "bounce")


def test_smtp_disconnect_inside_data_stores_nothing(smtp_server: SMTPPeer) -> None:
    r = Raw(smtp_server)
    assert r.cmd("EHLO c") == 250
    assert r.cmd("MAIL FROM:<a@example.com>") == 250
    assert r.cmd("RCPT TO:<b@example.com>") == 250
    assert r.cmd("DATA") == 354
    r.sock.sendall(b"Subject: cut\r\n\r\npartial")
    r.close()
    # a following complete message proves the server survived and kept only that one
    with smtplib.SMTP(smtp_server.host, smtp_server.port, timeout=5) as c:
        c.sendmail("a@example.com", ["b@example.com"], "Subject: whole\r\n\r\nok\r\n")
    assert [m.subject for m in smtp_server.wait_for(1)] == ["whole"]


def test_smtp_advertises_auth_but_not_starttls(smtp_server: SMTPPeer) -> None:
    with smtplib.SMTP(smtp_server.host, smtp_server.port, timeout=5) as c:
        c.ehlo()
        assert not c.has_extn("starttls")
        assert "PLAIN" in c.esmtp_features["auth"].split()
        assert "LOGIN" in c.esmtp_features["auth"].split()


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
def test_smtp_auth_records_credentials(smtp_server: SMTPPeer, mech: str) -> None:
    with smtplib.SMTP(smtp_server.host, smtp_server.port, timeout=5) as c:
        c.ehlo()
        c.esmtp_features["auth"] = mech          # make smtplib pick this mechanism
        code, _ = c.login("alice", "s3cr:et")
        assert code == 235
        c.sendmail("a@example.com", ["b@example.com"], "Subject: s\r\n\r\nx\r\n")
    assert smtp_server.wait_for(1)[0].auth == ("alice", "s3cr:et")


def test_smtp_auth_plain_on_continuation_line_and_rejection() -> None:
    with SMTPPeer(credentials=("bob", "pw")) as peer:
        r = Raw(peer)
        try:
            assert r.cmd("EHLO c") == 250
            assert r.cmd("AUTH PLAIN") == 334
            assert r.cmd(base64.b64encode(b"\0bob\0wrong").decode()) == 535
            assert r.cmd("AUTH PLAIN !!notbase64") == 501
            assert r.cmd("AUTH CRAM-MD5") == 504
            assert r.cmd("AUTH PLAIN " + base64.b64encode(b"\0bob\0pw").decode()) == 235
            assert r.cmd("AUTH PLAIN " + base64.b64encode(b"\0bob\0pw").decode()) == 503
        finally:
            r.close()


def test_smtp_forced_failures_and_rejected_recipients(smtp_server: SMTPPeer) -> None:
    smtp_server.reject_recipients.add("nobody@example.com")
    with smtplib.SMTP(smtp_server.host, smtp_server.port, timeout=5) as c, \
            pytest.raises(smtplib.SMTPRecipientsRefused):
        c.sendmail("a@example.com", ["nobody@example.com"], "x")
    smtp_server.fail("DATA-END", 554, "5.6.0 no thanks")
    with smtplib.SMTP(smtp_server.host, smtp_server.port, timeout=5) as c:
        with pytest.raises(smtplib.SMTPDataError):
            c.sendmail("a@example.com", ["b@example.com"], "Subject: no\r\n\r\nx\r\n")
        # the failure was for one use only
        c.sendmail("a@example.com", ["b@example.com"], "Subject: yes\r\n\r\nx\r\n")
    assert [m.subject for m in smtp_server.wait_for(1)] == ["yes"]
    smtp_server.fail("CONNECT", 421, "4.3.2 going away")
    with pytest.raises(smtplib.SMTPConnectError):
        smtplib.SMTP(smtp_server.host, smtp_server.port, timeout=5)


def test_apprise_mailto_delivers_plain_smtp(smtp_server: SMTPPeer) -> None:
    apprise = pytest.importorskip("apprise")
    url = smtp_server.apprise_url(to="ops@example.com", sender="sidecar@example.com")
    ap = apprise.Apprise()
    assert ap.add(url), url
    assert bool(ap.notify(title="job 42: loss is nan", body="epoch 3: loss=nan")) is True
    (mail,) = smtp_server.wait_for(1)
    assert mail.sender == "sidecar@example.com"
    assert mail.recipients == ("ops@example.com",)
    assert mail.subject == "job 42: loss is nan"
    assert "epoch 3: loss=nan" in mail.text()
    assert mail.auth is None


@pytest.mark.parametrize("form", [
    "mailto://127.0.0.1:{port}?from=a@example.com&to=b@example.com&mode=insecure",
    "mailto://mail.example.org:{port}?smtp=127.0.0.1&from=a@example.com&to=b@example.com",
    "mailto://localhost?smtp=127.0.0.1&port={port}&from=a@example.com&to=b@example.com",
])
def test_apprise_mailto_other_plain_smtp_forms(smtp_server: SMTPPeer, form: str) -> None:
    """The other URL spellings docs/testing.md lists also reach the peer over plain SMTP."""
    apprise = pytest.importorskip("apprise")
    ap = apprise.Apprise()
    assert ap.add(form.format(port=smtp_server.port))
    assert bool(ap.notify(title="t", body="b")) is True
    assert smtp_server.wait_for(1)[0].recipients == ("b@example.com",)


def test_apprise_mailto_with_credentials_logs_in(smtp_server: SMTPPeer) -> None:
    apprise = pytest.importorskip("apprise")
    ap = apprise.Apprise()
    assert ap.add(smtp_server.apprise_url(user="u", password="p@ss/word"))
    assert bool(ap.notify(title="t", body="b")) is True
    assert smtp_server.wait_for(1)[0].auth == ("u", "p@ss/word")


def test_apprise_mailto_reports_a_refusing_server(smtp_server: SMTPPeer) -> None:
    apprise = pytest.importorskip("apprise")
    smtp_server.fail("DATA-END", 554, "5.6.0 rejected")
    ap = apprise.Apprise()
    assert ap.add(smtp_server.apprise_url())
    assert bool(ap.notify(title="t", body="b")) is False
    assert smtp_server.messages == []


def test_apprise_mailto_reports_a_closed_port() -> None:
    apprise = pytest.importorskip("apprise")
    ap = apprise.Apprise()
    assert ap.add(f"mailto://127.0.0.1:{free_port()}?from=a@example.com&to=b@example.com")
    assert bool(ap.notify(title="t", body="b")) is False


# --------------------------------------------------------------------------- HTTP


def _post(url: str, data: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_webhook_records_json_post_and_answers_ok(webhook_server: WebhookPeer) -> None:
    status, body = _post(webhook_server.url("/services/T/B/X") + "?a=1",
                         json.dumps({"text": "hello"}).encode(),
                         {"Content-Type": "application/json", "X-Thing": "1"})
    assert (status, body) == (200, b"ok")
    (req,) = webhook_server.wait_for(1)
    assert (req.method, req.path, req.query) == ("POST", "/services/T/B/X", {"a": ["1"]})
    assert req.headers["content-type"] == "application/json"
    assert req.headers["x-thing"] == "1"
    assert req.json == {"text": "hello"}


def test_webhook_queued_responses_then_default(webhook_server: WebhookPeer) -> None:
    webhook_server.respond(500, "boom", times=2)
    results = [_post(webhook_server.url(), b"{}", {})[0] for _ in range(3)]
    assert results == [500, 500, 200]
    assert len(webhook_server.wait_for(3)) == 3


def test_webhook_decodes_chunked_and_form_bodies(webhook_server: WebhookPeer) -> None:
    with socket.create_connection((webhook_server.host, webhook_server.port), timeout=5) as s:
        s.sendall(b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                  b"Connection: close\r\n\r\n4\r\na=1&\r\n3\r\nb=2\r\n0\r\n\r\n")
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200")
    (req,) = webhook_server.wait_for(1)
    assert req.body == b"a=1&b=2"
    assert req.form == {"a": ["1"], "b": ["2"]}
    assert req.json is None


def test_apprise_json_url_posts_to_the_peer(webhook_server: WebhookPeer) -> None:
    apprise = pytest.importorskip("apprise")
    ap = apprise.Apprise()
    assert ap.add(webhook_server.json_url("/sidecar/events"))
    assert bool(ap.notify(title="T", body="B", notify_type=apprise.NotifyType.FAILURE)) is True
    (req,) = webhook_server.wait_for(1)
    assert (req.method, req.path) == ("POST", "/sidecar/events")
    assert req.json["title"] == "T"
    assert req.json["message"] == "B"
    assert req.json["type"] == "failure"


def test_apprise_json_url_can_produce_a_slack_style_body(webhook_server: WebhookPeer) -> None:
    apprise = pytest.importorskip("apprise")
    ap = apprise.Apprise()
    # ":key=new" renames a payload key, ":key=" drops it
    url = webhook_server.json_url("/services/T0/B0/XYZ", **{":message": "text", ":title": "",
                                                   ":version": "", ":attachments": "",
                                                   ":type": ""})
    assert ap.add(url)
    assert bool(ap.notify(body="disk almost full")) is True
    assert webhook_server.wait_for(1)[0].json == {"text": "disk almost full"}


def test_apprise_mattermost_url_posts_slack_compatible_webhook(webhook_server: WebhookPeer) -> None:
    apprise = pytest.importorskip("apprise")
    ap = apprise.Apprise()
    assert ap.add(webhook_server.mattermost_url("tok123"))
    assert bool(ap.notify(title="T", body="B")) is True
    (req,) = webhook_server.wait_for(1)
    assert (req.method, req.path) == ("POST", "/hooks/tok123")
    assert "B" in req.json["text"]
    assert "username" in req.json


def test_apprise_json_url_reports_http_errors(webhook_server: WebhookPeer) -> None:
    apprise = pytest.importorskip("apprise")
    webhook_server.respond(503, "down")
    ap = apprise.Apprise()
    assert ap.add(webhook_server.json_url())
    assert bool(ap.notify(body="x")) is False
    assert len(webhook_server.wait_for(1)) == 1
