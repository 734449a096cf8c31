"""code_fingerprint follows a plugin's imports into its own code and hashes syntax trees.

Own code: the plugin's top-level package and, for a plugin outside site-packages, every module
found in the same sys.path folder. Libraries (other import roots) are left out.
"""

from __future__ import annotations

import importlib
import os
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tunepipe.cache.fingerprint import code_fingerprint


class Pkg:
    """A throw-away top-level package on sys.path, with a unique name."""

    def __init__(self, root: Path) -> None:
        self.name = f"tpfp_{uuid.uuid4().hex[:12]}"
        self.root = root
        (root / self.name).mkdir()
        (root / self.name / "__init__.py").write_text("")

    def write(self, rel: str, text: str) -> Path:
        path = self.root / self.name / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        existed = path.exists()
        old_ns = path.stat().st_mtime_ns if existed else 0
        path.write_text(textwrap.dedent(text).replace("PKG", self.name), encoding="utf-8")
        if existed:
            # The fingerprint memoises by (path, size, mtime_ns): make sure a rewrite shows.
            new_ns = max(old_ns + 10**9, path.stat().st_mtime_ns)
            os.utime(path, ns=(new_ns, new_ns))
        importlib.invalidate_caches()
        return path

    def fp(self, module: str = "plugin") -> str:
        return code_fingerprint(f"{self.name}.{module}" if module else self.name)


@pytest.fixture
def make_pkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """``make_pkg()`` makes a package in tmp_path (on sys.path); ``make_pkg(folder)`` one in
    another folder, which is put on sys.path too (another import root: a library's place)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    made: list[str] = []

    def make(root: Path | None = None) -> Pkg:
        if root is not None and str(root) not in sys.path:
            root.mkdir(parents=True, exist_ok=True)
            monkeypatch.syspath_prepend(str(root))
        pkg = Pkg(root or tmp_path)
        made.append(pkg.name)
        return pkg

    yield make
    for mod in list(sys.modules):
        if mod.split(".")[0] in made:
            del sys.modules[mod]


def test_fingerprint_is_stable_hex(make_pkg) -> None:
    pkg = make_pkg()
    pkg.write("helper.py", "def f():\n    return 1\n")
    pkg.write("plugin.py", "from PKG.helper import f\n\ndef run():\n    return f()\n")
    first = pkg.fp()
    assert len(first) == 64 and int(first, 16) >= 0
    assert pkg.fp() == first


def test_same_source_in_different_package_names_differs(make_pkg) -> None:
    """Module names are part of the fingerprint (a different plugin is not the same code)."""
    a, b = make_pkg(), make_pkg()
    for pkg in (a, b):
        pkg.write("plugin.py", "def run():\n    return 1\n")
    assert a.fp() != b.fp()


def test_changes_when_plugin_module_itself_changes(make_pkg) -> None:
    pkg = make_pkg()
    pkg.write("plugin.py", "RATE = 1\n")
    before = pkg.fp()
    pkg.write("plugin.py", "RATE = 2\n")
    assert pkg.fp() != before


def test_rewrite_with_identical_content_keeps_fingerprint(make_pkg) -> None:
    pkg = make_pkg()
    text = "def run():\n    return 1\n"
    pkg.write("plugin.py", text)
    before = pkg.fp()
    pkg.write("plugin.py", text)  # new mtime, same bytes
    assert pkg.fp() == before


@pytest.mark.parametrize("import_line", [
    "from PKG.helper import f",
    "from PKG import helper",
    "import PKG.helper",
    "import PKG.helper as h",
])
def test_changes_when_imported_helper_changes(make_pkg, import_line: str) -> None:
    pkg = make_pkg()
    pkg.write("helper.py", "def f():\n    return 1\n")
    pkg.write("plugin.py", f"{import_line}\n\ndef run():\n    return 0\n")
    before = pkg.fp()
    pkg.write("helper.py", "def f():\n    return 2\n")
    assert pkg.fp() != before


@pytest.mark.parametrize("import_line", [
    "from PKG.lazy import g",
    "import PKG.lazy",
    "from . import lazy",
    "from .lazy import g",
])
def test_changes_when_helper_imported_inside_function_changes(make_pkg, import_line: str) -> None:
    pkg = make_pkg()
    pkg.write("lazy.py", "def g():\n    return 'a'\n")
    pkg.write("plugin.py", f"""
        class Plugin:
            def run(self):
                if True:
                    {import_line}
                return None
    """)
    before = pkg.fp()
    pkg.write("lazy.py", "def g():\n    return 'b'\n")
    assert pkg.fp() != before


@pytest.mark.parametrize("import_line", ["from . import helper", "from .helper import f"])
def test_changes_when_relatively_imported_helper_changes(make_pkg, import_line: str) -> None:
    pkg = make_pkg()
    pkg.write("helper.py", "def f():\n    return 1\n")
    pkg.write("plugin.py", f"{import_line}\n")
    before = pkg.fp()
    pkg.write("helper.py", "def f():\n    return 1 + 1\n")
    assert pkg.fp() != before


def test_changes_through_parent_relative_import_in_subpackage(make_pkg) -> None:
    pkg = make_pkg()
    pkg.write("models/__init__.py", "")
    pkg.write("common/__init__.py", "")
    pkg.write("common/scale.py", "FACTOR = 3\n")
    pkg.write("models/plugin.py", "from ..common.scale import FACTOR\n")
    before = pkg.fp("models.plugin")
    pkg.write("common/scale.py", "FACTOR = 4\n")
    assert pkg.fp("models.plugin") != before


def test_changes_when_package_init_used_by_from_dot_import_changes(make_pkg) -> None:
    pkg = make_pkg()
    pkg.write("__init__.py", "DEFAULT = 1\n")
    pkg.write("plugin.py", "from . import DEFAULT\n")
    before = pkg.fp()
    pkg.write("__init__.py", "DEFAULT = 2\n")
    assert pkg.fp() != before


def test_changes_when_transitively_imported_module_changes(make_pkg) -> None:
    pkg = make_pkg()
    pkg.write("deep.py", "X = 1\n")
    pkg.write("middle.py", "def m():\n    from .deep import X\n    return X\n")
    pkg.write("plugin.py", "from .middle import m\n")
    before = pkg.fp()
    pkg.write("deep.py", "X = 100\n")
    assert pkg.fp() != before


def test_import_cycle_terminates_and_is_tracked(make_pkg) -> None:
    pkg = make_pkg()
    pkg.write("a.py", "from . import b\nA = 1\n")
    pkg.write("b.py", "from . import a\nB = 1\n")
    pkg.write("plugin.py", "from . import a\n")
    before = pkg.fp()
    pkg.write("b.py", "from . import a\nB = 2\n")
    assert pkg.fp() != before


def test_unchanged_by_comments_and_formatting(make_pkg) -> None:
    pkg = make_pkg()
    pkg.write("helper.py", """
        def f(x, y):
            return x + y
    """)
    pkg.write("plugin.py", """
        from .helper import f

        def run(values):
            total = f(values[0], values[1])
            return {"total": total, "n": len(values)}
    """)
    before = pkg.fp()
    pkg.write("helper.py", """
        # a comment about f


        def f(x,
              y):   # trailing comment
            return (x + y)
    """)
    pkg.write("plugin.py", """
        # leading comment
        from .helper import (
            f,
        )
        def run( values ):
            total = f( values[0],values[1] )   # comment
            return {'total': total,
                    'n': len(values)}
    """)
    assert pkg.fp() == before


def plugin_importing(other: Pkg) -> str:
    return f"""
        import {other.name}.helper
        from {other.name} import helper as other_helper
        from .helper import g

        def run():
            from {other.name}.helper import f
            return f() + g()
    """


def test_unchanged_by_edit_to_other_top_level_package(tmp_path_factory: pytest.TempPathFactory,
                                                      make_pkg) -> None:
    """A package from another import root (a library) is not the plugin's code."""
    mine, other = make_pkg(), make_pkg(tmp_path_factory.mktemp("libs"))
    other.write("helper.py", "def f():\n    return 1\n")
    mine.write("helper.py", "def g():\n    return 1\n")
    mine.write("plugin.py", plugin_importing(other))
    before = mine.fp()
    other.write("helper.py", "def f():\n    return 999\n")
    other.write("__init__.py", "CHANGED = True\n")
    assert mine.fp() == before
    # Control: the same kind of edit in the plugin's own package is noticed.
    mine.write("helper.py", "def g():\n    return 999\n")
    assert mine.fp() != before


def test_installed_plugin_tracks_only_its_own_top_level_package(tmp_path: Path, make_pkg) -> None:
    """For a plugin in site-packages, a neighbouring installed package is a library."""
    site = tmp_path / "env" / "lib" / "python3.11" / "site-packages"
    mine, other = make_pkg(site), make_pkg(site)
    other.write("helper.py", "def f():\n    return 1\n")
    mine.write("helper.py", "def g():\n    return 1\n")
    mine.write("plugin.py", plugin_importing(other))
    before = mine.fp()
    other.write("helper.py", "def f():\n    return 999\n")
    assert mine.fp() == before
    mine.write("helper.py", "def g():\n    return 999\n")
    assert mine.fp() != before


def test_project_plugin_tracks_sibling_top_level_modules_of_its_folder(make_pkg) -> None:
    """A plugin in a project folder (not site-packages) owns every module of that folder."""
    mine, sibling = make_pkg(), make_pkg()
    sibling.write("helper.py", "def f():\n    return 1\n")
    mine.write("helper.py", "def g():\n    return 1\n")
    mine.write("plugin.py", plugin_importing(sibling))
    before = mine.fp()
    sibling.write("helper.py", "def f():\n    return 2\n")
    assert mine.fp() != before


def test_library_in_project_local_venv_is_not_plugin_code(tmp_path: Path, make_pkg) -> None:
    venv_site = tmp_path / ".venv" / "lib" / "python3.11" / "site-packages"
    mine, library = make_pkg(), make_pkg(venv_site)
    library.write("helper.py", "def f():\n    return 1\n")
    mine.write("helper.py", "def g():\n    return 1\n")
    mine.write("plugin.py", plugin_importing(library))
    before = mine.fp()
    library.write("helper.py", "def f():\n    return 2\n")  # e.g. `pip install -U library`
    assert mine.fp() == before


def test_platform_only_module_of_library_in_project_local_venv_does_not_break_fingerprint(
        tmp_path: Path, make_pkg) -> None:
    venv_site = tmp_path / ".venv" / "lib" / "python3.11" / "site-packages"
    mine, library = make_pkg(), make_pkg(venv_site)
    library.write("_win.py", "from .winapi import console\n")
    library.write("winapi.py", "import sys\nif sys.platform != 'win32':\n    raise OSError('Windows only')\n")
    library.write("__init__.py", "import sys\nif sys.platform == 'win32':\n    from ._win import console\n")
    mine.write("plugin.py", f"def run():\n    import {library.name}\n")
    assert len(mine.fp()) == 64


def test_unchanged_by_edit_to_module_of_same_package_that_is_not_imported(make_pkg) -> None:
    pkg = make_pkg()
    pkg.write("unused.py", "Y = 1\n")
    pkg.write("helper.py", "X = 1\n")
    pkg.write("plugin.py", "from .helper import X\n")
    before = pkg.fp()
    pkg.write("unused.py", "Y = 2\n")
    assert pkg.fp() == before


def test_missing_imported_module_is_ignored(make_pkg) -> None:
    pkg = make_pkg()
    pkg.write("plugin.py", "def run():\n    from .not_there import z\n    import json\n")
    before = pkg.fp()
    assert pkg.fp() == before
    pkg.write("plugin.py", "def run():\n    from .not_there import z\n    import json\n    return 1\n")
    assert pkg.fp() != before


def test_analyses_are_remembered_across_runs_but_not_for_files_just_edited(tmp_path, monkeypatch) -> None:
    import os
    import time

    from tunepipe.cache import fingerprint as fp

    pkg = tmp_path / "memo_pkg_a1"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    mod = pkg / "stage.py"
    mod.write_text("X = 1\n")
    old = time.time() - 60
    os.utime(mod, (old, old))
    fresh = pkg / "fresh.py"
    fresh.write_text("Y = 2\n")  # modified just now: racy, must not be remembered
    monkeypatch.syspath_prepend(str(tmp_path))
    fp.code_fingerprint("memo_pkg_a1.stage")
    fp.code_fingerprint("memo_pkg_a1.fresh")
    memo = tmp_path / "fingerprints.json"
    fp.save_memo(memo)
    stored = memo.read_text()
    assert str(mod) in stored and str(fresh) not in stored
    monkeypatch.setattr(fp, "_by_file", {})
    fp.load_memo(memo)
    st = mod.stat()
    assert (str(mod), st.st_size, st.st_mtime_ns) in fp._by_file


def test_fingerprinting_imports_nothing(make_pkg) -> None:
    """Following ``from PKG.sub.heavy import name`` must not run ``PKG.sub``'s code: a cached
    rerun would pay for the heavy libraries that code imports (numpy, torch)."""
    pkg = make_pkg()
    pkg.write("sub/__init__.py", "raise RuntimeError('imported sub')\n")
    pkg.write("sub/heavy.py", "raise RuntimeError('imported heavy')\nX = 1\n")
    pkg.write("plugin.py", "from PKG.sub.heavy import X\n")
    first = pkg.fp()
    assert not any(m.startswith(f"{pkg.name}.") for m in sys.modules)
    pkg.write("sub/heavy.py", "raise RuntimeError('imported heavy')\nX = 2\n")
    assert pkg.fp() != first  # and the module was still followed


def test_namespace_subpackages_are_followed(make_pkg) -> None:
    """A folder without ``__init__.py`` inside the plugin's package is still its own code."""
    pkg = make_pkg()
    pkg.write("ns/helper.py", "RATE = 1\n")
    pkg.write("plugin.py", "from PKG.ns.helper import RATE\n")
    before = pkg.fp()
    pkg.write("ns/helper.py", "RATE = 2\n")
    assert pkg.fp() != before
