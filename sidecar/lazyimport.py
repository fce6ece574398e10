"""Imports that leave out what sidecar does not use, for start-up CPU.

At nice 19 on a node whose cores the job saturates, every millisecond of start-up CPU becomes
much more wall time during which the job's output is not watched. Some libraries import, at
import time, modules that only serve paths sidecar never takes:

- structlog's package imports asyncio (about 10 ms, with ssl and socket), for its async
  logging methods;
- pydantic's plugin loader imports importlib.metadata (with email, csv ...) and reads the
  entry points of every installed distribution when the first model is built (about 10 ms),
  looking for pydantic plugins - of which the usual environment has none.

(pydantic itself used to pull in asyncio as well: ``typing_extensions.deprecated`` before
4.16 ran ``import asyncio.coroutines`` for every function it decorated, and pydantic
decorates functions at import. sidecar requires typing-extensions >= 4.16, which imports it
for coroutine functions only.)

The means is a stand-in (``_Deferred``): while the library is imported, the module's name in
``sys.modules`` is a stand-in whose first attribute use imports the real module. The library
keeps the stand-in as its reference, which works like the real module from then on; right
after the import the name is free again, so any later import gets the real module. If an
import fails with a stand-in in place, it is done again the plain way.
"""

from __future__ import annotations

import os
import sys
import types
from typing import Any, Optional


class _Deferred(types.ModuleType):
    """Stands in for a module while another one is imported, and imports the real one the
    first time one of its attributes is used (attributes set on it, such as
    ``entry_points`` in ``skip_plugin_search``, are its own)."""

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        import importlib

        release(self)
        real = importlib.import_module(self.__name__)
        return getattr(real, attr)


def _stand_in(name: str) -> _Deferred:
    stand_in = _Deferred(name)
    stand_in.__spec__ = None  # the import system reads it: "not being initialised"
    return stand_in


def release(stand_in: types.ModuleType) -> None:
    """Take the stand-in out of ``sys.modules``: the next import of the name runs the real
    import."""
    if sys.modules.get(stand_in.__name__) is stand_in:
        del sys.modules[stand_in.__name__]


def asyncio_stand_in() -> Optional[_Deferred]:
    """Put a stand-in for ``asyncio`` into ``sys.modules`` (the caller imports, then calls
    ``release``); None if asyncio is loaded already."""
    if "asyncio" in sys.modules:
        return None
    stand_in = _stand_in("asyncio")
    sys.modules["asyncio"] = stand_in
    return stand_in


def may_have_pydantic_plugins() -> bool:
    """False when no distribution that ``importlib.metadata.distributions()`` finds declares
    an entry point that mentions pydantic (pydantic's plugins are the entry points of group
    ``pydantic``). It looks where importlib.metadata looks - the ``*.dist-info`` and
    ``*.egg-info`` directories in each ``sys.path`` directory, found by the path finder - and
    reads their ``entry_points.txt``; anything else there (another finder that finds
    distributions, a zip file or an egg on ``sys.path``, a file it cannot read or decode)
    answers True."""
    from importlib.machinery import PathFinder

    for finder in sys.meta_path:
        if finder is not PathFinder and getattr(finder, "find_distributions", None) is not None:
            return True
    for entry in sys.path:
        if not isinstance(entry, str):
            return True
        root = entry or "."
        if os.path.basename(root).lower().endswith(".egg"):
            return True
        try:
            names = os.listdir(root)
        except FileNotFoundError:
            continue
        except OSError:  # a zip file, an unreadable directory
            return True
        for name in names:
            if not name.lower().endswith((".dist-info", ".egg-info")):
                continue
            try:
                with open(os.path.join(root, name, "entry_points.txt"), "rb") as fh:
                    data = fh.read()
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError:
                return True
            if b"pydantic" in data.lower():
                return True
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                return True
    return False


def _entry_points(*args: Any, **kwargs: Any) -> Any:
    """``importlib.metadata.entry_points``, imported when called: what pydantic >= 2.14's
    plugin loader imports by name (``from importlib.metadata import entry_points``), which
    a stand-in's ``__getattr__`` would answer with the real import."""
    import importlib.metadata

    return importlib.metadata.entry_points(*args, **kwargs)


def skip_plugin_search() -> None:
    """When ``may_have_pydantic_plugins()`` is False, import pydantic's plugin loader with
    ``importlib.metadata`` a stand-in (the loader only uses it to search), and record in the
    loader what its search would find: no plugins (``_plugins = {}``, its cache of loaded
    plugins). Models are then built exactly as after that search. Nothing is done if the
    loader is imported already, or does not have that cache (another pydantic)."""
    if "pydantic.plugin._loader" in sys.modules:
        return
    try:
        if may_have_pydantic_plugins():
            return
    except Exception:
        return
    stand_in = None
    if "importlib.metadata" not in sys.modules:
        stand_in = _stand_in("importlib.metadata")
        stand_in.entry_points = _entry_points  # type: ignore[attr-defined]
        sys.modules["importlib.metadata"] = stand_in
    try:
        from pydantic.plugin import _loader
    except Exception:
        return  # pydantic imports it the plain way when it needs it
    finally:
        if stand_in is not None:
            release(stand_in)
    if getattr(_loader, "_plugins", False) is None:
        _loader._plugins = {}
