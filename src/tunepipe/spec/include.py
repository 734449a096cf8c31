"""``include:``: assemble one pipeline from several files, keeping every value's file and line.

Each file is loaded and checked against the pipeline schema on its own (so a problem names the
file it is in), then the files are merged: the included files in order (a later one overrides
an earlier one), then the including file's own definitions on top. The rules:

* ``stages``: a stage of the same name is deep-merged: mappings merge key by key, lists and
  scalars replace, and ``null`` over an inherited key removes it (a parameter goes back to the
  plugin's default; ``name: null`` drops a whole stage). A stage that names a different
  ``uses`` or ``template`` than the inherited one replaces it whole.
* ``vars``: deep-merged the same way, except that ``null`` is a value, not a removal.
* ``templates``: a template of the same name replaces the inherited one whole.
* ``name`` and ``description`` are never inherited, nor ``executor`` and ``tracking`` (where this
  file's runs go and are logged).

An include is a path relative to the including file, or ``package:path/in/package.yaml`` for a
file an installed package ships (found with importlib.resources: importing the package runs its
``__init__``, nothing else). Relative paths written in a file (inputs, nested includes) are
relative to that file.
"""

from __future__ import annotations

import copy
import difflib
import functools
import hashlib
import os
import posixpath
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunepipe.errors import Position, Problem, SpecError
from tunepipe.spec import schema
from tunepipe.spec.limits import Refused, read_spec
from tunepipe.spec.yamlpos import Document, JsonPath, decode, load_text

MERGED = ("vars", "templates", "stages")
_PACKAGE_REF = re.compile(r"^([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):(?![/\\])(.+)$")


def where_top(rel: JsonPath) -> str:
    """How a message names a place in a pipeline file."""
    if len(rel) >= 2 and rel[0] == "stages":
        rest = ".".join(map(str, rel[2:]))
        return f"stage '{rel[1]}'" + (f" ({rest})" if rest else "")
    if len(rel) >= 2 and rel[0] == "templates":
        rest = ".".join(map(str, rel[2:]))
        return f"template '{rel[1]}'" + (f" ({rest})" if rest else "")
    return "the pipeline" if not rel else f"'{'.'.join(map(str, rel))}'"


@functools.cache
def _part_schema() -> dict[str, Any]:
    """The schema for one file of several: `stages: {}` is fine there, only the merged pipeline
    must have a stage (checked after merging)."""
    out = copy.deepcopy(schema.pipeline_schema())
    out["properties"]["stages"].pop("minProperties", None)
    return out


def package_ref(text: str) -> tuple[str, str] | None:
    """``("pkg.name", "path/in/package.yaml")`` for a package resource reference, else None."""
    m = _PACKAGE_REF.match(text)
    return (m.group(1), m.group(2)) if m else None


@dataclass(frozen=True)
class SpecFile:
    """One pipeline file: how messages name it, where it is, and what it is relative to."""

    display: str
    identity: str  # for cycle detection: the resolved path, or package:path
    path: Path | None = None  # on the file system (a package resource usually is)
    package: str = ""  # for a package resource: the package, and the path inside it
    inner: str = ""

    @property
    def base(self) -> Path | None:
        return self.path.parent if self.path is not None else None


@dataclass
class SourceStamp:
    """What the compiled-spec cache checks to know an included file is unchanged."""

    path: str
    size: int
    mtime_ns: int
    sha256: str

    def to_json(self) -> list[Any]:
        return [self.path, self.size, self.mtime_ns, self.sha256]


@dataclass
class _Layer:
    data: dict[str, Any] = field(default_factory=dict)
    values: dict[JsonPath, Position] = field(default_factory=dict)
    keys: dict[JsonPath, Position] = field(default_factory=dict)


@dataclass
class Assembled:
    """The merged pipeline document, the files it was made of, and the problems found."""

    doc: Document
    problems: list[Problem]
    stamps: list[SourceStamp]
    cacheable: bool  # False when an included file is not on the file system (a zipped package)
    has_includes: bool
    any_stages: bool = False  # some file defines a stage (all may be removed by `name: null`)


def assemble(doc: Document, path: Path) -> Assembled:
    """Resolve the includes of the loaded main file ``doc`` (at ``path``) and merge everything."""
    return _Assembler(doc, path).run()


class _Assembler:
    def __init__(self, doc: Document, path: Path) -> None:
        self.main = doc
        self.path = path
        self.problems: list[Problem] = []
        self.stamps: dict[str, SourceStamp] = {}
        self.cacheable = True
        self.merged = Document(source=doc.source, text=doc.text, data={})
        self.has_includes = False
        self.any_stages = False

    def run(self) -> Assembled:
        src = SpecFile(display=self.main.source, identity=str(self.path.resolve()), path=self.path)
        layer = self._layer(self.main, src, ())
        out = self.merged
        data = self.main.data if isinstance(self.main.data, dict) else {}
        merged: dict[str, Any] = {k: data[k] for k in ("name", "description") if isinstance(data.get(k), str)}
        for own in ("executor", "tracking"):  # where this file runs and is logged: not taken from includes
            if isinstance(data.get(own), (str, dict)):
                merged[own] = data[own]
        merged.update(layer.data)
        out.data = merged
        out.values.update(layer.values)
        out.keys.update(layer.keys)
        tops = {(), ("name",), ("description",), ("include",)}
        for table, into in ((self.main.values, out.values), (self.main.keys, out.keys)):
            for p, pos in table.items():  # the main file's own keys, nested ones too (a tracker's settings)
                if p in tops or p[:1] in (("executor",), ("tracking",)):
                    into.setdefault(p, pos)
        return Assembled(out, self.problems, list(self.stamps.values()), self.cacheable, self.has_includes,
                         self.any_stages)

    # -- one file ----------------------------------------------------------------------------------

    def _layer(self, doc: Document, src: SpecFile, chain: tuple[tuple[SpecFile, Position], ...]) -> _Layer:
        via = tuple(pos for _, pos in reversed(chain))
        doc.via.setdefault(doc.source, via)
        self.merged.texts.setdefault(doc.source, doc.text)
        self.merged.via.setdefault(doc.source, via)
        if src.base is not None:
            self.merged.bases.setdefault(doc.source, src.base)
        data = doc.data
        part = bool(chain) or (isinstance(data, dict) and "include" in data)
        self.problems.extend(schema.check(doc, data, _part_schema() if part else schema.pipeline_schema(), (),
                                          where_top))
        if not isinstance(data, dict):
            return _Layer()
        if isinstance(data.get("stages"), dict) and data["stages"]:
            self.any_stages = True
        acc = _Layer()
        includes = data.get("include")
        items: list[tuple[JsonPath, str]] = []
        if isinstance(includes, str):
            items = [(("include",), includes)]
        elif isinstance(includes, list):
            items = [(("include", i), t) for i, t in enumerate(includes) if isinstance(t, str)]
        for ipath, text in items:
            self.has_includes = True
            pos = doc.position(ipath)
            found = self._resolve(doc, src, text, ipath)
            if found is None:
                continue
            sub_src, sub_doc = found
            seen = [s.identity for s, _ in chain] + [src.identity]
            if sub_src.identity in seen:
                names = [s.display for s, _ in chain] + [src.display]
                loop = " → ".join(names[seen.index(sub_src.identity):] + [sub_src.display])
                self.problems.append(doc.problem(
                    ipath, f"include cycle: {loop}",
                    "a file must not include itself, directly or through other files: remove one of these includes"))
                continue
            if sub_doc is None:
                continue
            _merge(acc, self._layer(sub_doc, sub_src, chain + ((src, pos),)))
        own = _Layer(data={k: data[k] for k in MERGED if isinstance(data.get(k), dict)},
                     values=doc.values, keys=doc.keys)
        _merge(acc, own)
        return acc

    def _resolve(self, doc: Document, src: SpecFile, text: str,
                 ipath: JsonPath) -> tuple[SpecFile, Document | None] | None:
        pkg = package_ref(text)
        if pkg is not None:
            return self._package(doc, pkg[0], pkg[1], ipath)
        if src.package and not os.path.isabs(text):  # relative to a file inside a package
            inner = posixpath.normpath(posixpath.join(posixpath.dirname(src.inner), text.replace("\\", "/")))
            if inner.startswith("../") or inner == "..":
                self.problems.append(doc.problem(
                    ipath, f"the include '{text}' leaves the package '{src.package}'",
                    "an included file inside a package can include other files of the same package only"))
                return None
            return self._package(doc, src.package, inner, ipath)
        assert src.base is not None
        path = Path(os.path.normpath(src.base / text))
        display = text if os.path.isabs(text) else os.path.normpath(os.path.join(os.path.dirname(src.display), text))
        sub = SpecFile(display=display, identity=str(path.resolve()), path=path)
        try:
            raw = read_spec(path)
        except FileNotFoundError:
            near = []
            if path.parent.is_dir():
                yamls = [p.name for p in path.parent.iterdir()
                         if p.suffix in (".yaml", ".yml") and p != src.path]
                near = difflib.get_close_matches(path.name, yamls, n=1)
            hint = (f"did you mean '{near[0]}'? " if near else "") + (
                "paths in `include:` are relative to the file that includes them "
                f"(here {src.base}); a file an installed package ships is written package:path/in/package.yaml")
            self.problems.append(doc.problem(ipath, f"the included file '{text}' does not exist (looked for {path})",
                                             hint))
            return None
        except IsADirectoryError:
            self.problems.append(doc.problem(ipath, f"the include '{text}' is a folder, not a pipeline file",
                                             "name the YAML file itself"))
            return None
        except Refused as e:
            self.problems.append(doc.problem(ipath, f"the included file '{text}' is {e.what}", e.hint))
            return None
        except OSError as e:
            self.problems.append(doc.problem(ipath, f"cannot read the included file '{text}': {e.strerror}",
                                             "check the file's permissions"))
            return None
        self._stamp(path, raw)
        return sub, self._load(doc, raw, display, ipath)

    def _package(self, doc: Document, package: str, inner: str,
                 ipath: JsonPath) -> tuple[SpecFile, Document | None] | None:
        import importlib

        display = f"{package}:{inner}"
        here = str(self.path.parent)  # a package next to the pipeline, as for `module:Name` plugins
        if here not in sys.path:
            sys.path.insert(0, here)
        # Found on disk without importing it: an include reads a data file, it never runs the
        # package's code (importing `pkg` would run pkg/__init__.py).
        locations = _package_folders(package)
        if locations is None:
            importlib.invalidate_caches()  # created since the import system last looked at this folder?
            locations = _package_folders(package)
        if locations is None:
            self.problems.append(doc.problem(ipath, f"the include '{display}' names the package '{package}', "
                                                    "which is not installed",
                                             "install the package that ships it (pip install ...), or check "
                                             "the spelling"))
            return None
        if not locations:
            self.problems.append(doc.problem(ipath, f"the include '{display}': '{package}' is a module, not a package",
                                             "name the package (the folder with __init__.py) that holds the file"))
            return None
        root = next((d for d in locations if d.joinpath(*[p for p in inner.split("/") if p]).is_file()),
                    locations[0])
        res = root.joinpath(*[p for p in inner.split("/") if p])
        if not res.is_file():
            folder = root.joinpath(*[p for p in posixpath.dirname(inner).split("/") if p])
            names = sorted(c.name for c in folder.iterdir() if c.name.endswith((".yaml", ".yml"))) \
                if folder.is_dir() else []
            near = difflib.get_close_matches(posixpath.basename(inner), names, n=1)
            hint = (f"did you mean '{package}:{posixpath.join(posixpath.dirname(inner), near[0])}'? " if near else "")
            where = f" ({root})" if isinstance(root, Path) else ""
            hint += (f"YAML files there: {', '.join(names)}" if names else
                     f"the path is relative to the folder of the package '{package}'{where}, "
                     "and the package must ship the file as package data")
            self.problems.append(doc.problem(ipath, f"the package '{package}' has no file '{inner}'", hint))
            return None
        try:
            raw = read_spec(res) if isinstance(res, Path) else res.read_bytes()
        except (OSError, Refused) as e:
            what = f"is {e.what}" if isinstance(e, Refused) else f"cannot be read: {e.strerror}"
            self.problems.append(doc.problem(ipath, f"the include '{display}' {what}",
                                             e.hint if isinstance(e, Refused) else "reinstall the package"))
            return None
        path = res if isinstance(res, Path) else None
        if path is not None:
            self._stamp(path, raw)
        else:
            self.cacheable = False
        sub = SpecFile(display=display, identity=str(path.resolve()) if path else display, path=path,
                     package=package, inner=inner)
        return sub, self._load(doc, raw, display, ipath)

    def _load(self, doc: Document, raw: bytes, display: str, ipath: JsonPath) -> Document | None:
        via = (doc.position(ipath),) + doc.via.get(doc.source, ())
        lines = tuple(f"  included from {p}" for p in via)
        try:
            sub = load_text(decode(raw, display), display)
        except SpecError as e:
            self.problems.extend(Problem(p.position, p.message, p.hint, p.excerpt + lines) for p in e.problems)
            return None
        return sub

    def _stamp(self, path: Path, raw: bytes) -> None:
        try:
            st = path.stat()
        except OSError:
            return
        key = str(path)
        self.stamps[key] = SourceStamp(key, st.st_size, st.st_mtime_ns, hashlib.sha256(raw).hexdigest())


# -- merging -------------------------------------------------------------------------------------


def _drop(layer: _Layer, path: JsonPath) -> None:
    n = len(path)
    for table in (layer.values, layer.keys):
        for p in [p for p in table if p[:n] == path]:
            del table[p]


def _copy(dst: _Layer, src: _Layer, path: JsonPath) -> None:
    n = len(path)
    for d, s in ((dst.values, src.values), (dst.keys, src.keys)):
        for p, pos in s.items():
            if p[:n] == path:
                d[p] = pos


def _node(dst: _Layer, src: _Layer, path: JsonPath) -> None:
    for d, s in ((dst.values, src.values), (dst.keys, src.keys)):
        if path in s:
            d[path] = s[path]


def _same_kind(old: Any, new: Any) -> bool:
    """Whether a stage definition refines the inherited one (else it replaces it whole)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return False
    for key in ("uses", "template"):
        if key in new and new[key] != old.get(key):
            return False
    return True


def _merge(acc: _Layer, over: _Layer) -> None:
    """Put ``over`` on top of ``acc`` (in place), positions included."""
    for top in MERGED:
        if top not in over.data:
            continue
        _node(acc, over, (top,))
        if top not in acc.data:
            acc.data[top] = copy.deepcopy(over.data[top])
            _copy(acc, over, (top,))
            continue
        dst, src = acc.data[top], over.data[top]
        for name, value in src.items():
            path = (top, name)
            if top == "stages" and value is None and name in dst:
                del dst[name]
                _drop(acc, path)
            elif top == "templates" or name not in dst or (top == "stages" and not _same_kind(dst[name], value)):
                _drop(acc, path)
                dst[name] = copy.deepcopy(value)
                _copy(acc, over, path)
            elif isinstance(value, dict) and isinstance(dst[name], dict):
                _deep(acc, over, dst[name], value, path, null_removes=top == "stages")
            else:
                _drop(acc, path)
                dst[name] = copy.deepcopy(value)
                _copy(acc, over, path)


def _deep(acc: _Layer, over: _Layer, dst: dict[str, Any], src: dict[str, Any], path: JsonPath,
          null_removes: bool) -> None:
    _node(acc, over, path)
    for k, v in src.items():
        q = path + (k,)
        if v is None and null_removes and k in dst:
            del dst[k]
            _drop(acc, q)
        elif isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep(acc, over, dst[k], v, q, null_removes)
        else:
            _drop(acc, q)
            dst[k] = copy.deepcopy(v)
            _copy(acc, over, q)


def _package_folders(package: str) -> list[Path] | None:
    """The folders of an installed (or importable) package, found without importing anything:
    None when there is no such package, [] when the name is a plain module."""
    from importlib.machinery import PathFinder

    search: list[str] | None = None
    spec = None
    for part in package.split("."):
        if not part.isidentifier():
            return None
        spec = PathFinder.find_spec(part, search)
        if spec is None:
            return None
        if spec.submodule_search_locations is None:
            return [] if part == package.split(".")[-1] else None
        search = list(spec.submodule_search_locations)
    return [Path(p) for p in (search or [])]
