"""Find stage plugins: installed entry points (group ``tunepipe.stages``) or ``package.module:Name``.

Plugins are loaded lazily, on first use; built-ins register through the same entry-point group
as third-party packages, so there is one way in.

A ``module:Name`` plugin runs only code the user chose: its top-level package must lie in the
pipeline's folder or its project, in a folder of ``TUNEPIPE_PLUGIN_PATH``, or belong to an
installed distribution that declares ``tunepipe.stages`` entry points. Anything else (``this``,
``subprocess``, an unrelated installed package) is refused before it is imported, because
importing a module runs its code.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
import re
import sys
import sysconfig
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunepipe.errors import PluginError
from tunepipe.plugins import Port, StagePlugin

GROUP = "tunepipe.stages"
PLUGIN_PATH_ENV = "TUNEPIPE_PLUGIN_PATH"
_OWN = "tunepipe"  # our own modules: the built-ins are entry points of this very distribution
_ENV_DIRS = ("site-packages", "dist-packages")
_HOW_TO_ALLOW = ("put the module next to the pipeline file (or elsewhere in its project), install it as a "
                 f"package that declares a '{GROUP}' entry point, or add its folder to {PLUGIN_PATH_ENV}")


@dataclass(frozen=True)
class LoadedPlugin:
    """A plugin object plus where it came from (its identity enters the cache key)."""

    uses: str
    identity: str  # "module:qualname"
    module: str
    plugin: StagePlugin


def _entry_points() -> dict[str, Any]:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=GROUP)}


def project_root(folder: Path) -> Path:
    """The nearest folder at or above ``folder`` holding pyproject.toml or .git, else ``folder``:
    a project keeps its plugins beside its pipelines folder as often as inside it."""
    for d in (folder, *folder.parents):
        if (d / "pyproject.toml").exists() or (d / ".git").exists():
            return d
    return folder


def plugin_path() -> list[Path]:
    """The folders of ``TUNEPIPE_PLUGIN_PATH``: shared plugins the user trusts for every project."""
    raw = os.environ.get(PLUGIN_PATH_ENV, "")
    return [Path(p).expanduser().resolve() for p in raw.split(os.pathsep) if p.strip()]


def _unique(paths: Iterable[Path]) -> list[Path]:
    return list(dict.fromkeys(paths))


class Registry:
    """Resolves ``uses:`` names to plugin objects, caching each one."""

    def __init__(self, search_paths: list[Path] | None = None) -> None:
        self._eps: dict[str, Any] | None = None
        self._loaded: dict[str, LoadedPlugin] = {}
        self._plugin_tops: set[str] | None = None
        self.search_paths = [p.resolve() for p in (search_paths or [])]
        self.project_roots = _unique(project_root(p) for p in self.search_paths)

    def names(self) -> list[str]:
        """Names of installed plugins (entry points), sorted."""
        return sorted(self._entry_point_map())

    def _entry_point_map(self) -> dict[str, Any]:
        if self._eps is None:
            self._eps = _entry_points()
        return self._eps

    def load(self, uses: str) -> LoadedPlugin:
        """Load the plugin named by ``uses`` or raise :class:`PluginError` with a suggestion."""
        if uses in self._loaded:
            return self._loaded[uses]
        if ":" in uses:
            module, _, attr = uses.partition(":")
            self._check_trusted(uses, module)
            obj = self._import(uses, module, attr)
        else:
            ep = self._entry_point(uses)
            module, _, attr = ep.value.partition(":")
            module = module.strip()
            obj = self._import(uses, module, attr.strip())  # an installed plugin package: chosen by installing it
        plugin = _instantiate(uses, obj)
        check_contract(uses, plugin)
        qual = getattr(obj, "__qualname__", type(plugin).__qualname__)
        loaded = LoadedPlugin(uses=uses, identity=f"{module}:{qual}", module=module, plugin=plugin)
        self._loaded[uses] = loaded
        return loaded

    def _entry_point(self, uses: str) -> Any:
        eps = self._entry_point_map()
        if uses not in eps:
            close = difflib.get_close_matches(uses, list(eps), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise PluginError(
                f"unknown plugin '{uses}'. {hint}Installed plugins: {', '.join(sorted(eps)) or 'none'}; "
                "a plugin of your own is named as 'package.module:Name'")
        return eps[uses]

    def import_paths(self) -> list[Path]:
        """Folders put first on ``sys.path`` for ``module:Name``: the pipeline's, its project's, the plugin path."""
        return _unique([*self.search_paths, *self.project_roots, *plugin_path()])

    def _add_to_sys_path(self) -> None:
        # The pipeline's folder stays importable (as a script's folder is for Python), so a project
        # plugin's own lazy imports and its code fingerprint resolve the same way its import did.
        for p in reversed(self.import_paths()):
            if str(p) not in sys.path:
                sys.path.insert(0, str(p))

    def _check_trusted(self, uses: str, module: str) -> None:
        """Refuse, before importing it, a module the user did not put in the project or install as a plugin."""
        top = module.partition(".")[0]
        if top == _OWN:
            return
        self._add_to_sys_path()
        places = _locate_top(top)
        if places is None:
            raise PluginError(
                f"plugin '{uses}': no module named '{top}'. Install the package that provides it, "
                "or put the module next to the pipeline file")
        if places and all(self._chosen_place(p) for p in places):
            return
        if top in self._plugin_packages():
            return
        where = ", ".join(places) or "an unknown place"
        project = f"this project ({', '.join(map(str, self.project_roots))})" if self.project_roots else "a project"
        raise PluginError(
            f"plugin '{uses}': not importing '{top}', found at {where}: a 'module:Name' plugin must be in "
            f"{project} or in a package that provides tunepipe stages, since importing a module runs its "
            f"code. To use it, {_HOW_TO_ALLOW}")

    def _chosen_place(self, place: str) -> bool:
        """Whether a module file (or namespace folder) lies where the user keeps plugin code."""
        if place in ("built-in", "frozen") or not os.path.isabs(place):
            return False
        path = Path(place).resolve()
        if any(_inside(path, d) for d in plugin_path()):
            return True
        if _in_environment(path):
            return False  # a virtualenv inside the project is installed code, not the project's own
        return any(_inside(path, d) and not _under_env_dir(path, d)
                   for d in (*self.search_paths, *self.project_roots))

    def _plugin_packages(self) -> set[str]:
        if self._plugin_tops is None:
            self._plugin_tops = _plugin_package_tops()
        return self._plugin_tops

    def _import(self, uses: str, module: str, attr: str) -> Any:
        self._add_to_sys_path()
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and module.startswith(e.name):
                raise PluginError(
                    f"plugin '{uses}': no module named '{module}'. Install the package that provides it, "
                    "or put the module next to the pipeline file") from None
            raise PluginError(f"plugin '{uses}': importing '{module}' failed: {e}{_raised_at(e)}") from None
        except (Exception, SystemExit) as e:  # a plugin's own import-time bug must not look like ours
            raise PluginError(f"plugin '{uses}': importing '{module}' failed: "
                              f"{type(e).__name__}: {e}{_raised_at(e)}") from None
        try:
            return _attribute(uses, mod, module, attr)
        except PluginError:
            raise
        except (Exception, SystemExit) as e:  # a module __getattr__ or a descriptor that raises
            raise PluginError(f"plugin '{uses}': reading '{attr}' of '{module}' failed: "
                              f"{type(e).__name__}: {e}{_raised_at(e)}") from None


def _attribute(uses: str, mod: Any, module: str, attr: str) -> Any:
    obj: Any = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(mod) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=1)
            hint = f" Did you mean '{module}:{close[0]}'?" if close else ""
            raise PluginError(f"plugin '{uses}': module '{module}' has no attribute '{attr}'.{hint}")
        obj = getattr(obj, part)
    return obj


def _instantiate(uses: str, obj: Any) -> Any:
    """A plugin named by its class is created with no arguments; a failure is the plugin's, said plainly."""
    if not isinstance(obj, type):
        return obj
    try:
        return obj()
    except (Exception, SystemExit) as e:
        raise PluginError(f"plugin '{uses}': creating {obj.__qualname__}() failed: {type(e).__name__}: {e}"
                          f"{_raised_at(e)}. tunepipe creates a plugin class with no arguments; name an "
                          "object that follows the plugin contract, or a class that needs no arguments "
                          "(see docs/plugins.md)") from None


def _raised_at(e: BaseException) -> str:
    """Where the error was raised (file:line), so a plugin author finds it without a traceback."""
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if f.filename != __file__ and not f.filename.startswith("<frozen")]  # ours and importlib's
    return f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""


def _locate_top(top: str) -> list[str] | None:
    """Where the top-level module ``top`` is (or would be) imported from, found without running its
    code: its file, or a namespace package's folders; ``["built-in"]`` and the like for modules with
    no file; None when there is no such module. Only a top-level name is looked up:
    ``find_spec("a.b")`` would import ``a``."""
    loaded = sys.modules.get(top)
    if loaded is not None:
        file = getattr(loaded, "__file__", None)
        if file:
            return [file]
        spec = getattr(loaded, "__spec__", None)
        return _spec_places(spec) if spec is not None else ["an unknown place"]
    try:
        spec = importlib.util.find_spec(top)
        if spec is None:  # created since the import system last looked at this folder?
            importlib.invalidate_caches()
            spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    return _spec_places(spec) if spec is not None else None


def _spec_places(spec: Any) -> list[str]:
    if spec.origin and spec.has_location:
        return [spec.origin]
    if spec.submodule_search_locations is not None and spec.origin in (None, "namespace"):
        return [str(p) for p in spec.submodule_search_locations]  # a namespace package
    return [spec.origin or "an unknown place"]


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _under_env_dir(path: Path, root: Path) -> bool:
    """Whether ``path`` sits in a site-packages folder below ``root`` (a virtualenv in the project)."""
    return any(part in _ENV_DIRS for part in path.relative_to(root).parts)


def _in_environment(path: Path) -> bool:
    """Whether ``path`` is in this interpreter's standard library or its installed packages."""
    paths = sysconfig.get_paths()
    dirs = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if paths.get(k)}
    return any(_inside(path, Path(d).resolve()) for d in dirs)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _plugin_package_tops() -> set[str]:
    """Top-level import names of the installed distributions that declare ``tunepipe.stages`` entry points
    (from their files, and from the entry points themselves, which also covers editable installs)."""
    from importlib.metadata import entry_points, packages_distributions

    tops: set[str] = set()
    dists: set[str] = set()
    for ep in entry_points(group=GROUP):
        tops.add(ep.value.partition(":")[0].strip().partition(".")[0])
        if ep.dist is not None:
            dists.add(_canonical(ep.dist.name))
    try:
        provided = packages_distributions()
    except Exception:  # noqa: BLE001 - a broken install's metadata: fall back to the entry points
        provided = {}
    tops.update(top for top, names in provided.items() if any(_canonical(n) in dists for n in names))
    return tops


def _get(plugin: Any, attr: str) -> Any:
    try:
        return getattr(plugin, attr, None)
    except Exception:  # noqa: BLE001 - a property that raises is a broken attribute, reported as such
        return None


def check_contract(uses: str, plugin: Any) -> None:
    """Fail with a precise message when an object does not honour the plugin contract."""
    wrong: list[str] = []
    for attr, kind in (("name", str), ("version", str), ("description", str)):
        if not isinstance(_get(plugin, attr), kind):
            wrong.append(f"'{attr}' must be a string")
    if not isinstance(_get(plugin, "params_schema"), Mapping):
        wrong.append("'params_schema' must be a JSON Schema mapping")
    for attr in ("inputs", "outputs"):
        ports = _get(plugin, attr)
        if not isinstance(ports, Mapping) or not all(isinstance(p, Port) for p in ports.values()):
            wrong.append(f"'{attr}' must map names to tunepipe.plugins.Port")
    pk = _get(plugin, "packages")
    if not isinstance(pk, (list, tuple)) or not all(isinstance(p, str) for p in pk):
        wrong.append("'packages' must be a tuple of distribution names (may be empty)")
    if not callable(_get(plugin, "run")):
        wrong.append("'run(ctx, inputs, params)' must be a method")
    if wrong:
        raise PluginError(f"plugin '{uses}' does not follow the plugin contract: {'; '.join(wrong)} "
                          "(see docs/plugins.md)")
