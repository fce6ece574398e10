"""Diagnostics on stderr through structlog: human-readable on a TTY, JSON lines otherwise.

structlog is imported when the first diagnostic is emitted, not at start: importing it costs
about 40 ms of CPU (its package imports its stdlib integration, which pulls in asyncio), and
at nice 19 on a node whose cores the job saturates every millisecond of start-up CPU turns
into much more wall time; asyncio itself is left out of that import (_import_structlog).
Modules call ``get_logger(__name__)`` at import time and get a small proxy; ``configure``
is called once by the CLI and applied when structlog is loaded.
"""

from __future__ import annotations

import sys
from typing import Any, Dict, Optional, TextIO

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
_settings: Dict[str, Any] = {"level": "info", "stream": None, "json": None}
_configured = False


def configure(
    level: str = "info", stream: Optional[TextIO] = None, json: Optional[bool] = None
) -> None:
    """Set the level and the output; takes effect at once if structlog is already loaded."""
    global _configured
    _settings.update(level=level, stream=stream, json=json)
    _configured = False
    if "structlog" in sys.modules:
        _apply()


class _Stderr:
    """sys.stderr as it is at each write, never raising: a closed or broken stderr (the
    job's output file gone, a pipe whose reader left) must not take the daemon down."""

    def write(self, s: str) -> int:
        try:
            return sys.stderr.write(s)
        except Exception:
            return 0

    def flush(self) -> None:
        try:
            sys.stderr.flush()
        except Exception:
            pass

    def isatty(self) -> bool:
        try:
            return sys.stderr.isatty()
        except Exception:
            return False


def _import_structlog() -> Any:
    """``import structlog``, without running asyncio's import (about 10 ms of CPU, with ssl
    and socket): structlog's package imports its stdlib and native modules, whose
    ``import asyncio`` serves only their async methods, which sidecar never calls. While
    structlog is imported, ``asyncio`` is a stand-in that imports the real module on first
    use; afterwards the name is free again, so any later ``import asyncio`` gets the real
    module (see sidecar.lazyimport). If the stand-in is not enough (a structlog that needs
    asyncio while it is imported), structlog is imported again the plain way."""
    from sidecar.lazyimport import asyncio_stand_in, release

    stand_in = None if "structlog" in sys.modules else asyncio_stand_in()
    if stand_in is None:
        import structlog

        return structlog
    # colorama (with ctypes: ~2.5 ms) serves structlog.dev's colours on Windows only; its
    # import is optional there (ImportError: its own ANSI codes), which a None entry gives
    no_colorama = "colorama" not in sys.modules
    if no_colorama:
        sys.modules["colorama"] = None  # type: ignore[assignment]
    try:
        import structlog

        return structlog
    except Exception:
        for name in [n for n in sys.modules if n == "structlog" or n.startswith("structlog.")]:
            del sys.modules[name]
    finally:
        release(stand_in)
        if no_colorama and "colorama" in sys.modules and sys.modules["colorama"] is None:
            del sys.modules["colorama"]
    import structlog

    return structlog


def _apply() -> None:
    global _configured
    structlog = _import_structlog()

    stream = _settings["stream"] or _Stderr()
    json = _settings["json"]
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
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(_settings["level"], 20)),
        logger_factory=structlog.PrintLoggerFactory(stream),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    _configured = True


class _LazyLogger:
    """Forwards to a structlog logger created on first use."""

    __slots__ = ("_name", "_bind", "_real")

    def __init__(self, name: str, bind: Dict[str, Any]) -> None:
        self._name = name
        self._bind = bind
        self._real: Any = None

    def _logger(self) -> Any:
        if not _configured:
            _apply()
        if self._real is None:
            self._real = _import_structlog().get_logger(self._name, **self._bind)
        return self._real

    def bind(self, **kw: Any) -> _LazyLogger:
        return _LazyLogger(self._name, {**self._bind, **kw})

    def debug(self, event: str, **kw: Any) -> None:
        self._logger().debug(event, **kw)

    def info(self, event: str, **kw: Any) -> None:
        self._logger().info(event, **kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._logger().warning(event, **kw)

    warn = warning

    def error(self, event: str, **kw: Any) -> None:
        self._logger().error(event, **kw)

    def exception(self, event: str, **kw: Any) -> None:
        self._logger().exception(event, **kw)

    def critical(self, event: str, **kw: Any) -> None:
        self._logger().critical(event, **kw)


def get_logger(name: str = "sidecar", **bind: Any) -> Any:
    return _LazyLogger(name, bind)
