"""The validated pipeline: plain dataclasses that the graph, planner and runner work on.

They serialise to JSON so a validated spec can be reused (see :mod:`tunepipe.spec.compiled`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunepipe.errors import Position


@dataclass(frozen=True)
class InputRef:
    """One reference in a stage's ``inputs``: another stage's output, or a file path / glob."""

    kind: str  # "stage" | "file"
    text: str  # as written in the spec
    position: Position
    stage: str = ""
    output: str = ""

    def to_json(self) -> dict[str, Any]:
        p = self.position
        return {"kind": self.kind, "text": self.text, "stage": self.stage, "output": self.output,
                "pos": [p.source, p.line, p.column]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> InputRef:
        return cls(kind=d["kind"], text=d["text"], stage=d["stage"], output=d["output"],
                   position=Position(*d["pos"]))


@dataclass(frozen=True)
class StageSpec:
    """One stage after vars, overrides and plugin defaults have been applied."""

    name: str
    uses: str
    params: dict[str, Any]
    inputs: dict[str, list[InputRef]]
    multiple: dict[str, bool]  # input name -> the plugin port takes a list
    outputs: tuple[str, ...]
    position: Position
    group: str = ""  # for a branch of a matrix stage: the stage as written (``train``)
    matrix: dict[str, str] = field(default_factory=dict)  # its matrix values, as labels in the name
    resources: dict[str, Any] = field(default_factory=dict)  # cpus, gpus, memory (bytes); not in the key

    def upstream(self) -> list[str]:
        """Names of the stages this one reads from (in first-use order, no repeats)."""
        seen: dict[str, None] = {}
        for refs in self.inputs.values():
            for r in refs:
                if r.kind == "stage":
                    seen.setdefault(r.stage)
        return list(seen)

    def to_json(self) -> dict[str, Any]:
        p = self.position
        return {"name": self.name, "uses": self.uses, "params": self.params,
                "inputs": {k: [r.to_json() for r in v] for k, v in self.inputs.items()},
                "multiple": self.multiple, "outputs": list(self.outputs), "pos": [p.source, p.line, p.column],
                "group": self.group, "matrix": self.matrix, "resources": self.resources}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StageSpec:
        return cls(name=d["name"], uses=d["uses"], params=d["params"],
                   inputs={k: [InputRef.from_json(r) for r in v] for k, v in d["inputs"].items()},
                   multiple=d["multiple"], outputs=tuple(d["outputs"]), position=Position(*d["pos"]),
                   group=d.get("group", ""), matrix=d.get("matrix", {}), resources=d.get("resources", {}))


@dataclass
class Pipeline:
    """A validated pipeline: stages in a topological order, and where the spec lives."""

    name: str
    path: Path  # the spec file, absolute
    stages: dict[str, StageSpec]  # in topological order
    overrides: tuple[str, ...] = field(default=())
    # the included files as [path, size, mtime_ns, sha256] (None: one cannot be checked cheaply)
    sources: tuple[list[Any], ...] | None = field(default=())
    executor: dict[str, Any] = field(default_factory=dict)  # {type, address, max_retries} as written
    tracking: dict[str, dict[str, Any]] = field(default_factory=dict)  # tracker name -> its settings; not in keys

    @property
    def root(self) -> Path:
        """The folder file inputs are relative to: the spec's own folder."""
        return self.path.parent

    @property
    def order(self) -> list[str]:
        return list(self.stages)

    def groups(self) -> dict[str, list[str]]:
        """Matrix stages as written (``train``) -> their branches, in order."""
        out: dict[str, list[str]] = {}
        for name, s in self.stages.items():
            if s.group:
                out.setdefault(s.group, []).append(name)
        return out

    def expand_names(self, names: list[str] | tuple[str, ...]) -> list[str]:
        """Stage names with the name of a matrix stage as written replaced by all its branches."""
        groups = self.groups()
        out: list[str] = []
        for n in names:
            out.extend(groups[n] if n in groups and n not in self.stages else [n])
        return out

    def deps(self) -> dict[str, list[str]]:
        return {name: s.upstream() for name, s in self.stages.items()}

    def downstream(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {n: [] for n in self.stages}
        for name, s in self.stages.items():
            for up in s.upstream():
                out[up].append(name)
        return out

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "overrides": list(self.overrides),
                "stages": [s.to_json() for s in self.stages.values()],
                "sources": None if self.sources is None else [list(x) for x in self.sources],
                "executor": self.executor, "tracking": self.tracking}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Pipeline:
        stages = [StageSpec.from_json(s) for s in d["stages"]]
        sources = d.get("sources", [])
        return cls(name=d["name"], path=Path(d["path"]), overrides=tuple(d["overrides"]),
                   stages={s.name: s for s in stages},
                   sources=None if sources is None else tuple(list(x) for x in sources),
                   executor=d.get("executor", {}), tracking=d.get("tracking", {}))
