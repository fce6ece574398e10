"""Real protocol peers for the notification tests: a local SMTP server and a local HTTP
webhook receiver, both on 127.0.0.1 with an ephemeral port, each serving from its own
threads and recording what it received.

Use them as pytest fixtures (``smtp_server``, ``webhook_server``) or as context managers
(``with SMTPPeer() as smtp: ...``), e.g. for a session-scoped peer or a peer reached from
a SLURM job (the one-node cluster runs jobs on this machine, so 127.0.0.1 works there).

The apprise URL forms that reach them are documented in docs/testing.md and produced by
``SMTPPeer.apprise_url`` / ``WebhookPeer.json_url`` / ``WebhookPeer.mattermost_url``.

SMTP: RFC 5321 subset -- EHLO/HELO, MAIL, RCPT, DATA (dot-unstuffing), RSET, NOOP, QUIT,
VRFY, HELP, AUTH PLAIN/LOGIN (any credentials accepted unless ``credentials`` is set);
STARTTLS is neither advertised nor implemented (plain SMTP only).  Replies can be forced
(``fail("RCPT", 550, ...)``) to test how the caller handles a refusing server.

HTTP: any method; records method, path, query, headers, body, parsed JSON/form; answers
200 "ok" (what Slack answers) unless responses were queued with ``respond()``.
"""

from __future__ import annotations

import base64
import binascii
import collections
import email
import email.message
import email.policy
import json
import socket
import socketserver
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Deque, Dict, Iterator, List, Optional, Tuple

import pytest

HOST = "127.0.0.1"
# RFC 5321 4.5.3.1: command line 512 octets, text line 1000 octets (both with CRLF).
# Commands are held to the limit; DATA lines get more room (we are a test peer, and
# we'd rather record an over-long line than fail a test on it).
MAX_COMMAND_LINE = 512
MAX_DATA_LINE = 64 * 1024
MAX_MESSAGE_SIZE = 10 * 1024 * 1024
CONNECTION_TIMEOUT = 30.0


def _wait(cond: threading.Condition, pred: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        cond.wait(left)
    return True


# --------------------------------------------------------------------------- SMTP


@dataclass(frozen=True)
class ReceivedMail:
    """One message accepted by the SMTP peer."""

    sender: str                        # MAIL FROM address ("" for the null reverse-path)
    recipients: Tuple[str, ...]        # RCPT TO addresses, in order
    data: bytes                        # the message as received, dot-unstuffed, CRLF kept
    helo: str                          # the name given in EHLO/HELO
    auth: Optional[Tuple[str, str]]    # (user, password) when the client authenticated

    @property
    def message(self) -> email.message.EmailMessage:
        """The data parsed with the modern email policy."""
        msg = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(msg, email.message.EmailMessage)
        return msg

    @property
    def subject(self) -> str:
        return str(self.message.get("Subject", ""))

    def text(self) -> str:
        """The plain-text body (or the HTML one when there is no plain part), with
        CRLF line ends turned into ``\\n``."""
        body = self.message.get_body(preferencelist=("plain", "html"))
        if body is None:
            return ""
        assert isinstance(body, email.message.EmailMessage)
        content: Any = body.get_content()
        text = content if isinstance(content, str) else bytes(content).decode("utf-8", "replace")
        return text.replace("\r\n", "\n")


class _SMTPHandler(socketserver.StreamRequestHandler):
    server: _SMTPServer
    timeout = CONNECTION_TIMEOUT

    def setup(self) -> None:
        super().setup()
        self.helo: Optional[str] = None
        self.auth: Optional[Tuple[str, str]] = None
        self._reset()

    def _reset(self) -> None:
        self.sender: Optional[str] = None
        self.recipients: List[str] = []

    # -- io
    def reply(self, code: int, *lines: str) -> None:
        text = list(lines) or [""]
        out = []
        for i, line in enumerate(text):
            sep = " " if i == len(text) - 1 else "-"
            out.append(f"{code}{sep}{line}\r\n")
        self.wfile.write("".join(out).encode("utf-8"))
        self.wfile.flush()

    def _readline(self, limit: int) -> Optional[bytes]:
        """A line with its terminator; None at EOF; b"" (never returned otherwise) means
        the line was longer than ``limit`` and has been discarded up to its end."""
        line = self.rfile.readline(limit + 1)
        if not line:
            return None
        if len(line) > limit:
            while line and not line.endswith(b"\n"):
                line = self.rfile.readline(limit + 1)
            return b""
        return line

    def _forced(self, verb: str) -> bool:
        forced = self.server.peer._forced_reply(verb)
        if forced is None:
            return False
        self.reply(*forced)
        return True

    # -- session
    def handle(self) -> None:
        try:
            if self._forced("CONNECT"):
                return
            self.reply(220, f"{HOST} ESMTP sidecar-test-peer")
            while True:
                raw = self._readline(MAX_COMMAND_LINE)
                if raw is None:
                    return
                if raw == b"":
                    self.reply(500, "5.5.6 Line too long")
                    continue
                line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
                verb, _, arg = line.partition(" ")
                verb = verb.upper()
                arg = arg.strip()
                method = getattr(self, f"smtp_{verb}", None)
                if not verb or method is None:
                    self.reply(500, "5.5.2 Command not recognized")
                    continue
                if self._forced(verb):
                    continue
                if method(arg) is False:
                    return
        except (OSError, TimeoutError):  # client vanished or went silent
            return

    def smtp_EHLO(self, arg: str) -> None:
        if not arg:
            self.reply(501, "5.5.4 Syntax: EHLO hostname")
            return
        self.helo = arg
        self._reset()
        self.reply(
            250,
            f"{HOST} greets {arg}",
            "8BITMIME",
            f"SIZE {MAX_MESSAGE_SIZE}",
            "AUTH PLAIN LOGIN",
            "HELP",
        )

    def smtp_HELO(self, arg: str) -> None:
        if not arg:
            self.reply(501, "5.5.4 Syntax: HELO hostname")
            return
        self.helo = arg
        self._reset()
        self.reply(250, HOST)

    def smtp_NOOP(self, arg: str) -> None:
        self.reply(250, "2.0.0 OK")

    def smtp_RSET(self, arg: str) -> None:
        self._reset()
        self.reply(250, "2.0.0 OK")

    def smtp_QUIT(self, arg: str) -> bool:
        self.reply(221, "2.0.0 Bye")
        return False

    def smtp_VRFY(self, arg: str) -> None:
        self.reply(252, "2.0.0 Cannot VRFY user, but will accept message")

    def smtp_HELP(self, arg: str) -> None:
        self.reply(214, "EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY AUTH")

    @staticmethod
    def _path(arg: str, keyword: str) -> Optional[str]:
        """The address of 'FROM:<a@b> params' ('<>' -> ''), None on a syntax error."""
        if not arg.upper().startswith(keyword):
            return None
        rest = arg[len(keyword):].lstrip()
        if not rest.startswith("<"):
            return None
        end = rest.find(">")
        if end < 0:
            return None
        return rest[1:end]

    def smtp_MAIL(self, arg: str) -> None:
        if self.helo is None:
            self.reply(503, "5.5.1 Error: send HELO/EHLO first")
            return
        if self.sender is not None:
            self.reply(503, "5.5.1 Error: nested MAIL command")
            return
        addr = self._path(arg, "FROM:")
        if addr is None:
            self.reply(501, "5.5.4 Syntax: MAIL FROM:<address>")
            return
        self.sender = addr
        self.reply(250, "2.1.0 OK")

    def smtp_RCPT(self, arg: str) -> None:
        if self.sender is None:
            self.reply(503, "5.5.1 Error: need MAIL command")
            return
        addr = self._path(arg, "TO:")
        if not addr:
            self.reply(501, "5.5.4 Syntax: RCPT TO:<address>")
            return
        if addr in self.server.peer.reject_recipients:
            self.reply(550, "5.1.1 Recipient address rejected")
            return
        self.recipients.append(addr)
        self.reply(250, "2.1.5 OK")

    def smtp_DATA(self, arg: str) -> Optional[bool]:
        if self.sender is None:
            self.reply(503, "5.5.1 Error: need MAIL command")
            return None
        if not self.recipients:
            self.reply(554, "5.5.1 Error: no valid recipients")
            return None
        self.reply(354, "End data with <CR><LF>.<CR><LF>")
        chunks: List[bytes] = []
        size = 0
        too_big = too_long = False
        while True:
            line = self._readline(MAX_DATA_LINE)
            if line is None:
                return False                           # EOF inside DATA: nothing stored
            if line == b"":
                too_long = True
                continue
            if line in (b".\r\n", b".\n"):
                break
            if line.startswith(b"."):
                line = line[1:]                        # dot-unstuffing (RFC 5321 4.5.2)
            size += len(line)
            if size > MAX_MESSAGE_SIZE:
                too_big = True
            elif line:
                chunks.append(line)
        if too_big or too_long:
            self._reset()
            self.reply(552, "5.3.4 Message size exceeds fixed limit" if too_big
                       else "5.5.6 Line too long")
            return None
        forced = self.server.peer._forced_reply("DATA-END")
        if forced is not None:
            self._reset()
            self.reply(*forced)
            return None
        mail = ReceivedMail(
            sender=self.sender,
            recipients=tuple(self.recipients),
            data=b"".join(chunks),
            helo=self.helo or "",
            auth=self.auth,
        )
        n = self.server.peer._store(mail)
        self._reset()
        self.reply(250, f"2.0.0 OK queued as {n}")
        return None

    def smtp_AUTH(self, arg: str) -> Optional[bool]:
        if self.helo is None:
            self.reply(503, "5.5.1 Error: send HELO/EHLO first")
            return None
        if self.auth is not None:
            self.reply(503, "5.5.1 Error: already authenticated")
            return None
        mech, _, initial = arg.partition(" ")
        mech = mech.upper()
        try:
            if mech == "PLAIN":
                if not initial.strip():
                    self.reply(334, "")
                    got = self._readline(MAX_DATA_LINE)
                    if got is None:
                        return False
                    initial = got.decode("ascii", "replace")
                if initial.strip() == "*":
                    self.reply(501, "5.7.0 Authentication cancelled")
                    return None
                fields = base64.b64decode(initial.strip(), validate=True).split(b"\0")
                if len(fields) != 3:
                    raise ValueError("PLAIN needs authzid\\0authcid\\0passwd")
                user, password = fields[1].decode(), fields[2].decode()
            elif mech == "LOGIN":
                if initial.strip():
                    user = base64.b64decode(initial.strip(), validate=True).decode()
                else:
                    self.reply(334, base64.b64encode(b"Username:").decode())
                    got = self._readline(MAX_DATA_LINE)
                    if got is None:
                        return False
                    user = base64.b64decode(got.strip(), validate=True).decode()
                self.reply(334, base64.b64encode(b"Password:").decode())
                got = self._readline(MAX_DATA_LINE)
                if got is None:
                    return False
                password = base64.b64decode(got.strip(), validate=True).decode()
            else:
                self.reply(504, "5.5.4 Unrecognized authentication type")
                return None
        except (ValueError, binascii.Error, UnicodeDecodeError):
            self.reply(501, "5.5.2 Cannot decode response")
            return None
        expected = self.server.peer.credentials
        if expected is not None and (user, password) != expected:
            self.reply(535, "5.7.8 Authentication credentials invalid")
            return None
        self.auth = (user, password)
        self.reply(235, "2.7.0 Authentication successful")
        return None


class _SMTPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, peer: SMTPPeer) -> None:
        self.peer = peer
        super().__init__((HOST, 0), _SMTPHandler)


class SMTPPeer:
    """A plain-SMTP server on 127.0.0.1 that keeps every message it accepts."""

    def __init__(self, credentials: Optional[Tuple[str, str]] = None) -> None:
        self.credentials = credentials          # None: any AUTH succeeds
        self.reject_recipients: set[str] = set()
        self.messages: List[ReceivedMail] = []
        self._cond = threading.Condition()
        self._forced: Dict[str, Tuple[int, str, int]] = {}
        self._server = _SMTPServer(self)
        self.host, self.port = HOST, int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
            name=f"smtp-peer-{self.port}", daemon=True,
        )
        self._thread.start()

    # -- control
    def fail(self, verb: str, code: int, text: str = "forced failure", times: int = 1) -> None:
        """Answer the next ``times`` uses of ``verb`` with ``code text``.  ``verb`` is an
        SMTP command (``"MAIL"``, ``"RCPT"``, ``"EHLO"``...), ``"CONNECT"`` (the greeting;
        the connection is then closed) or ``"DATA-END"`` (the reply after the message)."""
        with self._cond:
            self._forced[verb.upper()] = (code, text, times)

    def _forced_reply(self, verb: str) -> Optional[Tuple[int, str]]:
        with self._cond:
            got = self._forced.get(verb)
            if got is None:
                return None
            code, text, times = got
            if times <= 1:
                del self._forced[verb]
            else:
                self._forced[verb] = (code, text, times - 1)
            return code, text

    def _store(self, mail: ReceivedMail) -> int:
        with self._cond:
            self.messages.append(mail)
            self._cond.notify_all()
            return len(self.messages)

    def wait_for(self, count: int = 1, timeout: float = 10.0) -> List[ReceivedMail]:
        """Block until ``count`` messages arrived; fail the test after ``timeout`` s."""
        with self._cond:
            if not _wait(self._cond, lambda: len(self.messages) >= count, timeout):
                pytest.fail(f"SMTP peer: {len(self.messages)} message(s), expected {count} "
                            f"within {timeout}s")
            return list(self.messages)

    # -- addresses
    def apprise_url(self, to: str = "rcpt@example.com", sender: str = "sidecar@example.com",
                    user: Optional[str] = None, password: Optional[str] = None) -> str:
        """An apprise ``mailto://`` URL (plain SMTP, no STARTTLS) that reaches this peer."""
        cred = ""
        if user is not None:
            cred = urllib.parse.quote(user, safe="")
            if password is not None:
                cred += ":" + urllib.parse.quote(password, safe="")
            cred += "@"
        query = urllib.parse.urlencode({"from": sender, "to": to})
        return f"mailto://{cred}{self.host}:{self.port}?{query}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> SMTPPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- HTTP


@dataclass(frozen=True)
class ReceivedRequest:
    """One HTTP request received by the webhook peer."""

    method: str
    path: str                           # without the query string
    query: Dict[str, List[str]]
    headers: Dict[str, str]             # names lower-cased
    body: bytes

    @property
    def json(self) -> Any:
        """The body parsed as JSON; None when it is not JSON."""
        try:
            return json.loads(self.body.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            return None

    @property
    def form(self) -> Dict[str, List[str]]:
        """The body parsed as application/x-www-form-urlencoded."""
        return urllib.parse.parse_qs(self.body.decode("utf-8", "replace"))


@dataclass
class _Response:
    status: int = 200
    body: bytes = b"ok"
    content_type: str = "text/plain"
    delay: float = 0.0
    headers: Dict[str, str] = field(default_factory=dict)


class _WebhookHandler(BaseHTTPRequestHandler):
    server: _WebhookServer
    protocol_version = "HTTP/1.1"
    timeout = CONNECTION_TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def _body(self) -> Optional[bytes]:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts: List[bytes] = []
            while True:
                size_line = self.rfile.readline(1024)
                if not size_line:
                    return None
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                        pass                                   # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline(8)                         # CRLF after the chunk
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _handle(self) -> None:
        try:
            body = self._body()
        except ValueError:
            self.send_error(400, "bad request body")
            return
        if body is None:
            return
        url = urllib.parse.urlsplit(self.path)
        req = ReceivedRequest(
            method=self.command,
            path=url.path,
            query=urllib.parse.parse_qs(url.query),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        resp = self.server.peer._record(req)
        if resp.delay:
            time.sleep(resp.delay)
        self.send_response(resp.status)
        self.send_header("Content-Type", resp.content_type)
        self.send_header("Content-Length", str(len(resp.body)))
        for k, v in resp.headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(resp.body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle


class _WebhookServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, peer: WebhookPeer) -> None:
        self.peer = peer
        super().__init__((HOST, 0), _WebhookHandler)


class WebhookPeer:
    """An HTTP server on 127.0.0.1 that records every request (webhook receiver)."""

    def __init__(self) -> None:
        self.requests: List[ReceivedRequest] = []
        self._cond = threading.Condition()
        self._queued: Deque[_Response] = collections.deque()
        self._default = _Response()
        self._server = _WebhookServer(self)
        self.host, self.port = HOST, int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
            name=f"webhook-peer-{self.port}", daemon=True,
        )
        self._thread.start()

    def respond(self, status: int = 200, body: str | bytes = b"ok", *, times: int = 1,
                content_type: str = "text/plain", delay: float = 0.0,
                headers: Optional[Dict[str, str]] = None) -> None:
        """Queue the answer to the next ``times`` requests (then back to 200 "ok")."""
        data = body.encode("utf-8") if isinstance(body, str) else body
        with self._cond:
            for _ in range(times):
                self._queued.append(_Response(status, data, content_type, delay,
                                              dict(headers or {})))

    def _record(self, req: ReceivedRequest) -> _Response:
        with self._cond:
            self.requests.append(req)
            self._cond.notify_all()
            return self._queued.popleft() if self._queued else self._default

    def wait_for(self, count: int = 1, timeout: float = 10.0) -> List[ReceivedRequest]:
        """Block until ``count`` requests arrived; fail the test after ``timeout`` s."""
        with self._cond:
            if not _wait(self._cond, lambda: len(self.requests) >= count, timeout):
                pytest.fail(f"webhook peer: {len(self.requests)} request(s), expected "
                            f"{count} within {timeout}s")
            return list(self.requests)

    # -- addresses
    def url(self, path: str = "/hook") -> str:
        """The plain http:// URL of ``path`` (for sidecar's own webhook action)."""
        return f"http://{self.host}:{self.port}/{path.lstrip('/')}"

    def json_url(self, path: str = "/hook", **extra: str) -> str:
        """apprise ``json://`` URL: POSTs {"version","title","message","attachments",
        "type"} to ``path``.  ``extra`` adds query arguments, e.g. ``{":message": "text"}``
        renames a payload key (a Slack-style ``{"text": ...}`` body)."""
        q = ("?" + urllib.parse.urlencode(extra)) if extra else ""
        return f"json://{self.host}:{self.port}/{path.lstrip('/')}{q}"

    def mattermost_url(self, token: str = "sidecartoken") -> str:
        """apprise ``mmost://`` URL: POSTs a Slack-compatible incoming-webhook body
        ({"text", "username", "icon_url"?, "channel"?}) to ``/hooks/<token>``."""
        return f"mmost://{self.host}:{self.port}/{token}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> WebhookPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def smtp_server() -> Iterator[SMTPPeer]:
    """A fresh SMTP peer for one test (see ``SMTPPeer``)."""
    with SMTPPeer() as peer:
        yield peer


@pytest.fixture
def webhook_server() -> Iterator[WebhookPeer]:
    """A fresh HTTP webhook peer for one test (see ``WebhookPeer``)."""
    with WebhookPeer() as peer:
        yield peer


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (for connection-refused tests)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])
