"""Plan: for each stage its key, whether the cache already holds it, and why it must run.

Reasons are data (a list of strings per stage), as in pydoit: ``--dry-run``, ``--explain`` and
``status`` all print them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from tunepipe.cache.atomic import canonical_json
from tunepipe.cache.fingerprint import code_fingerprint, load_memo, save_memo
from tunepipe.cache.keys import diff, key_parts, operational_changes, split_operational, stage_key
from tunepipe.cache.store import Store
from tunepipe.errors import TunepipeError, UserError
from tunepipe.plugins import Artifact
from tunepipe.records import PipelineState
from tunepipe.redact import find_secret
from tunepipe.registry import Registry
from tunepipe.spec.files import expand
from tunepipe.spec.model import Pipeline, StageSpec
from tunepipe.status import FRESHNESS, Freshness, PlanState

PENDING_NOTE = "reruns only if that changes its inputs"


@dataclass
class StagePlan:
    """What the planner knows about one stage before it runs."""

    name: str
    state: PlanState
    key: str | None = None
    parts: dict[str, Any] | None = None
    reasons: list[str] = field(default_factory=list)
    inputs: dict[str, list[Artifact]] = field(default_factory=dict)
    record: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)  # the plugin's preview (dry run), e.g. a cost estimate
    operational: dict[str, Any] = field(default_factory=dict)  # operational values by path: not in the key
    unkeyed: list[str] = field(default_factory=list)  # operational values changed since the last run

    @property
    def freshness(self) -> Freshness:
        """What users read (`status`, `status --json`, `show`): one word per state, the same everywhere."""
        return FRESHNESS[self.state]

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.name, "state": self.freshness, "key": self.key, "reasons": self.reasons,
                "operational_changes": self.unkeyed, "outputs": (self.record or {}).get("outputs")}


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _package_versions(names: Iterable[str]) -> dict[str, str]:
    out = {}
    for n in names:
        try:
            out[n] = version(n)
        except PackageNotFoundError:
            out[n] = "absent"
    return out


def stage_packages(plugin: Any, params: Mapping[str, Any]) -> list[str]:
    """The distributions whose versions enter a stage's key: the plugin's ``packages`` and, with the
    optional ``packages_for(params)``, those these parameters bring in (train: an installed backend)."""
    more = getattr(plugin, "packages_for", None)
    return list(dict.fromkeys([*plugin.packages, *(more(params) if more is not None else ())]))


def stage_code(plugin: Any, params: Mapping[str, Any], inputs: Mapping[str, list[Artifact]]) -> list[str]:
    """Modules whose code enters a stage's key besides the plugin's own, from the optional
    ``code_for(params, inputs)`` (train: the chosen backend's training code; evaluate: the replier of
    the backend that trained the model)."""
    more = getattr(plugin, "code_for", None)
    return list(more(params, inputs)) if more is not None else []


class Planner:
    """Computes keys and reasons; shared by the runner, ``status`` and ``--dry-run``."""

    def __init__(self, pipeline: Pipeline, store: Store, registry: Registry) -> None:
        self.pipeline = pipeline
        self.store = store
        self.registry = registry
        self.state = PipelineState(store.root, pipeline.path, pipeline.name)
        self._last = self.state.read()
        self._code: dict[str, str] = {}
        self._memo_file = store.root / "fingerprints.json"
        load_memo(self._memo_file)

    def save(self) -> None:
        """Remember file digests and code analyses for the next run (both only speed-ups)."""
        self.store.digests.save()
        save_memo(self._memo_file)

    def last_key(self, stage: str) -> str | None:
        """The key of the stage's last successful run when this planner started."""
        return self._last.get(stage, {}).get("key")

    def remember(self, plan: StagePlan) -> str:
        """Keep the stage's key and operational values as its last successful run (if they changed);
        returns why that failed (a read-only cache), or ""."""
        last = self._last.get(plan.name, {})
        if plan.key and (last.get("key") != plan.key or
                         canonical_json(last.get("operational")) != canonical_json(plan.operational)):
            return self.state.update(plan.name, plan.key, plan.operational)
        return ""

    def inputs(self, spec: StageSpec, upstream: Mapping[str, Mapping[str, str]]) -> dict[str, list[Artifact]] | None:
        """The artifacts of each input, or None while an upstream stage has no outputs yet."""
        out: dict[str, list[Artifact]] = {}
        for name, refs in spec.inputs.items():
            arts: list[Artifact] = []
            for ref in refs:
                if ref.kind == "stage":
                    produced = upstream.get(ref.stage)
                    if produced is None:
                        return None
                    digest = produced[ref.output]
                    arts.append(Artifact(self.store.object_path(digest), digest, ref.text))
                else:
                    for path in expand(ref, self.pipeline.root):
                        try:
                            digest = self.store.digests.path(path)
                        except OSError as e:
                            raise UserError(f"stage '{spec.name}': cannot read its input {path}: {e.strerror}. "
                                            "Fix the file's permissions or the link, or change the input") from None
                        arts.append(Artifact(path, digest, _relative(path, self.pipeline.root)))
            out[name] = arts
        return out

    def operational(self, spec: StageSpec) -> tuple[dict[str, Any], dict[str, Any]]:
        """The stage's parameters for its key, and its operational values (by dotted path)."""
        paths = getattr(self.registry.load(spec.uses).plugin, "operational", ()) or ()
        return split_operational(spec.params, paths)

    def parts(self, spec: StageSpec, inputs: Mapping[str, list[Artifact]], params: Mapping[str, Any]) -> dict[str, Any]:
        """The key's parts; ``params``: the stage's parameters less the operational ones."""
        loaded = self.registry.load(spec.uses)
        parts = key_parts(
            plugin=loaded.plugin.name, identity=loaded.identity, version=loaded.plugin.version,
            code=self.code(loaded.module, *stage_code(loaded.plugin, spec.params, inputs)), params=params,
            inputs={k: [(a.name, a.digest) for a in v] for k, v in inputs.items()},
            outputs=list(spec.outputs), env=_package_versions(stage_packages(loaded.plugin, spec.params)))
        secret = find_secret(canonical_json(spec.params))
        if secret:
            raise UserError(
                f"stage '{spec.name}': a parameter holds the value of ${secret}. Secrets must not be in a "
                "pipeline file or --set (they would reach cache keys and records); plugins read them "
                "from the environment")
        return parts

    def code(self, module: str, *more: str) -> str:
        """The code fingerprint of a plugin's module (and of the modules ``code_for`` adds)."""
        for m in (module, *more):
            if m not in self._code:
                self._code[m] = code_fingerprint(m)
        if not more:
            return self._code[module]
        return hashlib.sha256(canonical_json({m: self._code[m] for m in (module, *more)}).encode()).hexdigest()

    def prepare(self, name: str, upstream: Mapping[str, Mapping[str, str]], forced: bool) -> StagePlan:
        """Plan one stage given the outputs of the stages before it."""
        spec = self.pipeline.stages[name]
        inputs = self.inputs(spec, upstream)
        if inputs is None:
            waits = [u for u in spec.upstream() if u not in upstream]
            return StagePlan(name, PlanState.PENDING, reasons=[f"waits for {', '.join(waits)}: {PENDING_NOTE}"])
        keyed, operational = self.operational(spec)
        parts = self.parts(spec, inputs, keyed)
        key = stage_key(parts)
        record = self.store.record(key)
        plan = StagePlan(name, PlanState.RUN, key=key, parts=parts, inputs=inputs, record=record,
                         operational=operational)
        last = self._last.get(name, {})
        if "operational" in last:  # a state written before operational values were kept: nothing to compare
            plan.unkeyed = operational_changes(last["operational"], plan.operational)
        if forced:
            plan.reasons = ["forced (--force)"]
        elif record is not None:  # the store trusts a record only while its outputs look whole
            plan.state = PlanState.CACHED
        else:
            plan.reasons = self.damaged(key) or self.why(name, key, parts)
        return plan

    def damaged(self, key: str) -> list[str]:
        """Why a key that has a record is not served: its outputs that are missing or damaged (the
        rerun publishes them again; planning changes nothing, so ``status`` stays read-only)."""
        try:
            outputs = json.loads(self.store.record_path(key).read_text(encoding="utf-8"))["outputs"]
        except (OSError, ValueError, KeyError, TypeError):
            return []
        return [f"its cached output {o} is damaged ({why}): recomputing" for o, d in outputs.items()
                if self.store.object_path(d).is_dir() and (why := self.store.damage(d)) is not None]

    def why(self, name: str, key: str, parts: dict[str, Any]) -> list[str]:
        last = self.last_key(name)
        if last is None:
            return ["never run in this pipeline"]
        if last == key:
            return ["its outputs are no longer in the cache"]
        try:
            old = json.loads(self.store.record_path(last).read_text(encoding="utf-8"))["parts"]
        except (OSError, ValueError, KeyError):
            return ["the record of its last run is gone (cache gc?)"]
        reasons = diff(old, parts) or ["key changed"]
        spec = self.pipeline.stages[name]
        for i, r in enumerate(reasons):  # name what the input reads: "input src (b.out) changed"
            for input_name, refs in spec.inputs.items():
                prefix = f"input {input_name} changed"
                if r.startswith(prefix):
                    reasons[i] = f"input {input_name} ({', '.join(x.text for x in refs)}) changed" + r[len(prefix):]
        return reasons

    def plan(self, selected: list[str], forced: set[str], preview: bool = False) -> list[StagePlan]:
        """Plan every selected stage, in order, without running anything (``preview``: also ask
        each stage that would run what it would do, for ``--dry-run``)."""
        upstream: dict[str, dict[str, str]] = {}
        plans = []
        for name in selected:
            p = self.prepare(name, upstream, name in forced)
            if p.state == PlanState.CACHED and p.record is not None:
                upstream[name] = p.record["outputs"]
            elif p.state == PlanState.RUN and preview:
                p.notes = self.preview(p)
            plans.append(p)
        return plans

    def preview(self, plan: StagePlan) -> list[str]:
        """What the plugin says about a stage that would run on inputs that exist (``preview``)."""
        spec = self.pipeline.stages[plan.name]
        hook = getattr(self.registry.load(spec.uses).plugin, "preview", None)
        if hook is None:
            return []
        try:
            fetched = {k: [Artifact(self.store.fetch(a.digest), a.digest, a.name)
                           if a.path == self.store.object_path(a.digest) else a for a in v]
                       for k, v in plan.inputs.items()}  # a remote cache downloads stored inputs first
            inputs = {k: (v if spec.multiple.get(k) else (v[0] if v else None)) for k, v in fetched.items()}
            return [str(line) for line in hook(inputs, spec.params)]
        except TunepipeError as e:
            return [f"(no preview: {e})"]
        except Exception as e:  # noqa: BLE001 - a preview must never break planning
            return [f"(no preview: {type(e).__name__}: {e})"]
