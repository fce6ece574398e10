"""sidecar.log: structlog is loaded by the first diagnostic, without running asyncio's import;
asyncio stays importable and structlog's async methods still work. Each case runs in a fresh
interpreter, since the point is what gets imported."""

from __future__ import annotations

import json

from tests.conftest import run_fresh as run


def test_first_diagnostic_loads_structlog_but_not_asyncio() -> None:
    """The JSON line is written, and asyncio's modules were never executed."""
    p = run(
        "import sys\n"
        "from sidecar.log import configure, get_logger\n"
        "configure(json=True)\n"
        "get_logger('t').info('ready', files=2)\n"
        "print(sorted(n for n in sys.modules if n == 'asyncio' or n.startswith('asyncio.')))\n"
        "print('structlog' in sys.modules)\n"
    )
    assert p.returncode == 0, p.stderr
    line = json.loads(p.stderr.strip().splitlines()[-1])
    assert line["event"] == "ready" and line["files"] == 2 and line["level"] == "info"
    assert p.stdout.split("\n")[:2] == ["[]", "True"]


def test_asyncio_imported_afterwards_is_the_real_module_and_async_logging_works() -> None:
    """A later ``import asyncio`` gets the real package (submodules too), and structlog's
    async method, which reaches asyncio through the stand-in, runs."""
    p = run(
        "from sidecar.log import configure, get_logger\n"
        "configure(json=True)\n"
        "get_logger('t').info('first')\n"
        "import asyncio, asyncio.subprocess, structlog\n"
        "assert hasattr(asyncio, '__path__') and asyncio.subprocess.PIPE == -1\n"
        "async def main():\n"
        "    await structlog.get_logger('t').ainfo('from a coroutine')\n"
        "asyncio.run(main())\n"
    )
    assert p.returncode == 0, p.stderr
    events = [json.loads(x)["event"] for x in p.stderr.strip().splitlines()]
    assert events == ["first", "from a coroutine"]


def test_a_failing_import_with_the_stand_in_falls_back_to_the_plain_import() -> None:
    """If structlog cannot be imported while asyncio is a stand-in, it is imported again
    the plain way (asyncio and all) and the diagnostic is still written."""
    p = run(
        "import sys\n"
        "class Refuse:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'structlog._native' and type(sys.modules.get('asyncio')).__name__"
        " == '_Deferred':\n"
        "            raise ImportError('needs the real asyncio')\n"
        "sys.meta_path.insert(0, Refuse())\n"
        "from sidecar.log import configure, get_logger\n"
        "configure(json=True)\n"
        "get_logger('t').info('still here')\n"
        "print('asyncio.base_events' in sys.modules)\n"
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stderr.strip().splitlines()[-1])["event"] == "still here"
    assert p.stdout.strip() == "True"


def test_with_asyncio_already_loaded_structlog_is_imported_plainly() -> None:
    """A program that imported asyncio itself gets structlog bound to that asyncio."""
    p = run(
        "import asyncio\n"
        "from sidecar.log import configure, get_logger\n"
        "configure(json=True)\n"
        "get_logger('t').info('x')\n"
        "import structlog._native as n\n"
        "print(n.asyncio is asyncio)\n"
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "True"


def test_structlog_is_loaded_without_colorama_which_stays_importable() -> None:
    """colorama (Windows colours only) is not imported with structlog; the console renderer
    still writes its plain line; a later ``import colorama`` gets the real package where it
    is installed (its absence is no error either)."""
    p = run(
        "import sys\n"
        "from sidecar.log import configure, get_logger\n"
        "configure(json=False)\n"
        "get_logger('t').info('ready', files=2)\n"
        "print('colorama' in sys.modules)\n"
        "try:\n"
        "    import colorama\n"
        "    print(hasattr(colorama, 'Fore'))\n"
        "except ImportError:\n"
        "    print('not installed')\n"
    )
    assert p.returncode == 0, p.stderr
    assert "ready" in p.stderr and "files=2" in p.stderr
    assert p.stdout.split("\n")[0] == "False"
    assert p.stdout.split("\n")[1] in ("True", "not installed")
