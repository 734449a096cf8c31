"""Find stage plugins: installed entry points (group ``tunepipe.stages``) or ``package.module:Name``.

Plugins are loaded lazily, on first use; built-ins register through the same entry-point group
as third-party packages, so there is one way in.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunepipe.errors import PluginError
from tunepipe.plugins import Port, StagePlugin

GROUP = "tunepipe.stages"


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


class Registry:
    """Resolves ``uses:`` names to plugin objects, caching each one."""

    def __init__(self, search_paths: list[Path] | None = None) -> None:
        self._eps: dict[str, Any] | None = None
        self._loaded: dict[str, LoadedPlugin] = {}
        self.search_paths = [p.resolve() for p in (search_paths or [])]

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
            obj = self._import(uses, module, attr)
        else:
            eps = self._entry_point_map()
            if uses not in eps:
                close = difflib.get_close_matches(uses, list(eps), n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                raise PluginError(
                    f"unknown plugin '{uses}'. {hint}Installed plugins: {', '.join(sorted(eps)) or 'none'}; "
                    "a plugin of your own is named as 'package.module:Name'")
            ep = eps[uses]
            module, _, attr = ep.value.partition(":")
            obj = self._import(uses, module.strip(), attr.strip())
        plugin = obj() if isinstance(obj, type) else obj
        check_contract(uses, plugin)
        qual = getattr(obj, "__qualname__", type(plugin).__qualname__)
        loaded = LoadedPlugin(uses=uses, identity=f"{module}:{qual}", module=module, plugin=plugin)
        self._loaded[uses] = loaded
        return loaded

    def _import(self, uses: str, module: str, attr: str) -> Any:
        # The pipeline's folder stays importable (as a script's folder is for Python), so a project
        # plugin's own lazy imports and its code fingerprint resolve the same way its import did.
        for p in reversed(self.search_paths):
            if str(p) not in sys.path:
                sys.path.insert(0, str(p))
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and module.startswith(e.name):
                raise PluginError(
                    f"plugin '{uses}': no module named '{module}'. Install the package that provides it, "
                    "or put the module next to the pipeline file") from None
            raise PluginError(f"plugin '{uses}': importing '{module}' failed: {e}") from None
        except Exception as e:  # a plugin's own import-time bug must not look like ours
            raise PluginError(f"plugin '{uses}': importing '{module}' failed: {type(e).__name__}: {e}") from None
        obj: Any = mod
        for part in attr.split("."):
            if not hasattr(obj, part):
                names = [n for n in dir(mod) if not n.startswith("_")]
                close = difflib.get_close_matches(part, names, n=1)
                hint = f" Did you mean '{module}:{close[0]}'?" if close else ""
                raise PluginError(f"plugin '{uses}': module '{module}' has no attribute '{attr}'.{hint}")
            obj = getattr(obj, part)
        return obj


def check_contract(uses: str, plugin: Any) -> None:
    """Fail with a precise message when an object does not honour the plugin contract."""
    wrong: list[str] = []
    for attr, kind in (("name", str), ("version", str), ("description", str)):
        if not isinstance(getattr(plugin, attr, None), kind):
            wrong.append(f"'{attr}' must be a string")
    if not isinstance(getattr(plugin, "params_schema", None), Mapping):
        wrong.append("'params_schema' must be a JSON Schema mapping")
    for attr in ("inputs", "outputs"):
        ports = getattr(plugin, attr, None)
        if not isinstance(ports, Mapping) or not all(isinstance(p, Port) for p in ports.values()):
            wrong.append(f"'{attr}' must map names to tunepipe.plugins.Port")
    pk = getattr(plugin, "packages", None)
    if not isinstance(pk, (list, tuple)) or not all(isinstance(p, str) for p in pk):
        wrong.append("'packages' must be a tuple of distribution names (may be empty)")
    if not callable(getattr(plugin, "run", None)):
        wrong.append("'run(ctx, inputs, params)' must be a method")
    if wrong:
        raise PluginError(f"plugin '{uses}' does not follow the plugin contract: {'; '.join(wrong)} "
                          "(see docs/plugins.md)")
