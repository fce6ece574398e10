"""Diagnostics on stderr through structlog: human-readable on a TTY, JSON lines otherwise.

Only structlog's own PrintLogger is used (its stdlib integration pulls in asyncio, which
costs start-up time at nice 19). Modules call ``get_logger(__name__)``; ``configure`` is
called once by the CLI.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

import structlog

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


def configure(level: str = "info", stream: TextIO | None = None, json: bool | None = None) -> None:
    stream = stream or sys.stderr
    if json is None:
        json = not (hasattr(stream, "isatty") and stream.isatty())
    renderer: Any
    if json:
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, 20)),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str = "sidecar", **bind: Any) -> Any:
    return structlog.get_logger(name, **bind)
