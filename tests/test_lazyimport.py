"""sidecar.lazyimport and the start-up imports of sidecar.config: pydantic is imported without
asyncio's import (typing-extensions >= 4.16) and without pydantic's plugin search when no
distribution declares a plugin; validation is the same, asyncio and importlib.metadata stay
importable, and a declared plugin is still loaded. The cases about what gets imported run in
a fresh interpreter."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path
from typing import Any, List, Optional

import pytest

from sidecar import lazyimport
from tests.conftest import run_fresh as run

CONFIG = (
    "[[regex_actions]]\nname = 'oom'\nfilepath_regex = 'log$'\nline_regex = 'OOM'\n"
    "cmd = 'true'\n"
)
LOAD = (
    "import sys\n"
    "import sidecar.config as C\n"
    f"cfg = C.load_config_text({CONFIG!r}, 'c.toml', check_dirs=False)\n"
    "assert [w.name for w in cfg.watchers] == ['oom']\n"
)


def loaded(prefix: str) -> str:
    return f"sorted(n for n in sys.modules if n == '{prefix}' or n.startswith('{prefix}.'))"


def test_config_validates_without_importing_asyncio_or_importlib_metadata() -> None:
    """Importing sidecar.config and validating a config runs neither asyncio's import nor
    importlib.metadata's, and pydantic's plugin loader holds "no plugins"."""
    p = run(
        LOAD
        + f"print({loaded('asyncio')})\n"
        + f"print({loaded('importlib.metadata')})\n"
        + "from pydantic.plugin import _loader\n"
        + "print(list(_loader.get_plugins()))\n"
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.split("\n")[:3] == ["[]", "[]", "[]"]


def test_asyncio_imported_afterwards_is_the_real_package() -> None:
    """After validation, ``import asyncio`` is the real package with its own
    ``asyncio.coroutines`` as an attribute, asyncio runs a coroutine, and @deprecated applied
    now to a coroutine function keeps it one for asyncio."""
    p = run(
        LOAD
        + "import asyncio, asyncio.coroutines, asyncio.subprocess\n"
        "assert hasattr(asyncio, '__path__') and asyncio.subprocess.PIPE == -1\n"
        "assert asyncio.coroutines is sys.modules['asyncio.coroutines']\n"
        "import typing_extensions, warnings\n"
        "@typing_extensions.deprecated('old')\n"
        "async def old():\n"
        "    return 7\n"
        "assert asyncio.iscoroutinefunction(old)\n"
        "with warnings.catch_warnings(record=True):\n"
        "    warnings.simplefilter('always')\n"
        "    print(asyncio.run(old()))\n"
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "7"


def test_pydantic_deprecated_functions_still_warn() -> None:
    """The functions pydantic decorated with @deprecated warn as they should
    (BaseModel.dict), and none of them was marked a coroutine function."""
    p = run(
        LOAD
        + "import warnings, pydantic, pydantic_core, types\n"
        "class M(pydantic.BaseModel):\n"
        "    x: int = 1\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    assert M().dict() == {'x': 1}\n"
        "assert any('deprecated' in str(x.message) for x in w), w\n"
        "marked = []\n"
        "for name, mod in list(sys.modules.items()):\n"
        "    if name.split('.')[0] in ('pydantic', 'pydantic_core'):\n"
        "        for obj in list(vars(mod).values()) + [\n"
        "                v for c in vars(mod).values() if isinstance(c, type)\n"
        "                for v in vars(c).values()]:\n"
        "            if hasattr(obj, '__deprecated__') and '_is_coroutine' in getattr(\n"
        "                    obj, '__dict__', {}):\n"
        "                marked.append(repr(obj))\n"
        "print(marked)\n"
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


def test_with_asyncio_already_imported_nothing_stands_in() -> None:
    """A program that imported asyncio itself keeps that module."""
    p = run("import asyncio\n" + LOAD + "print(sys.modules['asyncio'] is asyncio)\n")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "True"


def test_importlib_metadata_imported_afterwards_is_the_real_module() -> None:
    """After validation, importlib.metadata is the real module, and pydantic's plugin loader
    reaches it through the stand-in it kept."""
    p = run(
        LOAD
        + "import importlib.metadata as md\n"
        "from pydantic.plugin import _loader\n"
        "mdl = vars(_loader).get('importlib_metadata')  # pydantic < 2.14\n"
        "found = list(mdl.distributions() if mdl else _loader.entry_points())\n"
        "print(hasattr(md, '__file__'), len(found) > 0)\n"
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "True True"


PLUGIN = '''
seen = []


class Plugin:
    def new_schema_validator(self, schema, schema_type, schema_type_path, schema_kind,
                             config, plugin_settings):
        seen.append(schema_type.__name__)
        return None, None, None


plugin = Plugin()
'''


def test_a_declared_pydantic_plugin_is_still_loaded(tmp_path: Path) -> None:
    """With a distribution declaring a pydantic plugin on the path, pydantic searches and
    loads it as usual: the plugin sees sidecar's models being built."""
    (tmp_path / "sidecarplug.py").write_text(PLUGIN)
    info = tmp_path / "sidecarplug-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sidecarplug\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[pydantic]\nsidecarplug = sidecarplug:plugin\n")
    p = run(LOAD + "import sidecarplug\nprint(sorted(set(sidecarplug.seen)))\n", [str(tmp_path)])
    assert p.returncode == 0, p.stderr
    assert "RegexActionModel" in p.stdout and "SettingsModel" in p.stdout


# ---------------------------------------------------------------- may_have_pydantic_plugins


def scan(monkeypatch: pytest.MonkeyPatch, *path: Any) -> bool:
    monkeypatch.setattr(sys, "path", [str(p) for p in path])
    return lazyimport.may_have_pydantic_plugins()


def dist(where: Path, name: str, entry_points: Optional[bytes]) -> Path:
    d = where / name
    d.mkdir(parents=True)
    if entry_points is not None:
        (d / "entry_points.txt").write_bytes(entry_points)
    return d


def test_no_plugins_in_directories_without_pydantic_entry_points(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Distributions whose entry points do not mention pydantic, an egg-info file, other
    files and a missing directory on the path: no plugins."""
    dist(tmp_path, "tool-1.0.dist-info", b"[console_scripts]\ntool = tool:main\n")
    dist(tmp_path, "Other-2.egg-info", None)
    (tmp_path / "old-1.egg-info").write_text("Name: old\n")
    (tmp_path / "module.py").write_text("")
    assert scan(monkeypatch, tmp_path, tmp_path / "missing") is False


@pytest.mark.parametrize("name", ["plug-1.0.dist-info", "Plug-1.0.EGG-INFO"])
def test_a_pydantic_entry_point_means_maybe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """An entry_points.txt that mentions pydantic, in a dist-info or an egg-info directory
    (any case), answers True."""
    dist(tmp_path, name, b"[Pydantic]\nplug = plug:plugin\n")
    assert scan(monkeypatch, tmp_path) is True


def test_what_it_cannot_read_means_maybe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A zip file or an egg on the path, an entry_points.txt that is not UTF-8, or a finder
    of its own that finds distributions: True."""
    z = tmp_path / "lib.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("plug-1.0.dist-info/entry_points.txt", "[console_scripts]\n")
    assert scan(monkeypatch, z) is True
    egg = tmp_path / "thing-1.0.egg"
    egg.mkdir()
    assert scan(monkeypatch, egg) is True
    bad = tmp_path / "bad"
    dist(bad, "bad-1.0.dist-info", b"[console_scripts]\nx = \xff\n")
    assert scan(monkeypatch, bad) is True

    class Finder:
        def find_spec(self, *a: Any) -> None:
            return None

        def find_distributions(self, *a: Any) -> List[Any]:
            return []

    monkeypatch.setattr(sys, "meta_path", [Finder(), *sys.meta_path])
    assert scan(monkeypatch, tmp_path / "missing") is True
