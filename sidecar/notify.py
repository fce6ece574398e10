"""``python -m sidecar.notify``: send one notification through apprise.

Run by the daemon's runner for notify_email / notify_slack / notify, so that apprise is
imported only when a notification is sent, and a slow server is bounded by the action
timeout. Input comes from the environment (never the command line, which ``ps`` shows):
SIDECAR_NOTIFY_URLS (one apprise URL per line), SIDECAR_NOTIFY_TITLE, SIDECAR_NOTIFY_BODY.
Exit 0 when every URL accepted the notification, 1 otherwise, 2 on bad input.
"""

from __future__ import annotations

import os
import sys


def send(urls: list[str], title: str, body: str) -> tuple[bool, str]:
    import apprise

    ap = apprise.Apprise()
    bad = [u for u in urls if not ap.add(u)]
    if bad:
        return False, "not a valid notification URL: " + ", ".join(_redact(u) for u in bad)
    with apprise.LogCapture(level=apprise.logging.DEBUG) as output:  # type: ignore[no-untyped-call]
        ok = bool(ap.notify(title=title, body=body))
        lines = output.getvalue().strip().splitlines()
    # on failure the server's own words (an SMTP 550, an HTTP 500) are only in apprise's
    # debug output: keep the lines that say what went wrong
    if ok:
        keep = [ln for ln in lines if "WARNING" in ln or "ERROR" in ln]
    else:
        keep = [ln for ln in lines if _telling(ln)]
    return ok, "\n".join(keep[-12:])


def _telling(line: str) -> bool:
    low = line.lower()
    words = ("error", "warn", "fail", "refus", "denied", "response", "reply", "status")
    return any(w in low for w in words)


def _redact(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://…" if rest else url


def main() -> int:
    urls = [u.strip() for u in os.environ.get("SIDECAR_NOTIFY_URLS", "").splitlines() if u.strip()]
    if not urls:
        print("sidecar.notify: SIDECAR_NOTIFY_URLS is empty", file=sys.stderr)
        return 2
    title = os.environ.get("SIDECAR_NOTIFY_TITLE", "sidecar")
    body = os.environ.get("SIDECAR_NOTIFY_BODY", "") or title
    ok, detail = send(urls, title, body)
    if detail:
        print(detail, file=sys.stderr)
    print("sent" if ok else "not sent", f"({len(urls)} target(s))")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
