"""A matrix sweep as the pipeline defines it: the matrix stage, its branches, and for each branch
the branches downstream that fan out alongside it (``evaluate@learning_rate=0.0001`` reads
``train@learning_rate=0.0001``). Pure: it reads the validated pipeline only.

A *matrix stage* has a ``matrix:`` key of its own; a stage that only fans out alongside one (its
branch values all come from upstream) is not one, and a stage that collects every branch
(``train@*.model``) has no branches at all.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from tunepipe.errors import UserError
from tunepipe.spec.model import Pipeline


@dataclass(frozen=True)
class Sweep:
    stage: str  # the matrix stage as written (``train``)
    keys: tuple[str, ...]  # its matrix keys, in the branch names' order
    branches: tuple[str, ...]
    chains: dict[str, tuple[str, ...]]  # branch -> it, then the branches that fan out alongside it
    values: dict[str, dict[str, str]]  # branch -> its swept values, as the labels in its name


def matrix_stages(pipeline: Pipeline) -> list[str]:
    """The stages with a ``matrix:`` of their own, in pipeline order."""
    out = []
    for group, branches in pipeline.groups().items():
        for name in branches:
            spec = pipeline.stages[name]
            inherited = {k for up in spec.upstream() for k in pipeline.stages[up].matrix}
            if set(spec.matrix) - inherited:
                out.append(group)
                break
    return out


def find_sweep(pipeline: Pipeline, stage: str | None, display: str) -> Sweep:
    """The sweep of ``stage`` (default: the pipeline's only matrix stage); a user error otherwise."""
    found = matrix_stages(pipeline)
    if stage is None:
        if len(found) != 1:
            raise UserError(f"{display} has no matrix stage: `pipeline compare` compares the branches of a "
                            "stage with `matrix:` (see docs/pipelines.md, Matrix)" if not found else
                            f"{display} has {len(found)} matrix stages ({', '.join(found)}): name one, "
                            f"e.g. `pipeline compare {display} {found[0]}`")
        stage = found[0]
    if stage not in found:
        raise UserError(_not_a_sweep(pipeline, stage, found, display))
    branches = tuple(pipeline.groups()[stage])
    keys = tuple(dict.fromkeys(k for b in branches for k in pipeline.stages[b].matrix))
    return Sweep(stage, keys, branches, {b: chain(pipeline, b) for b in branches},
                 {b: dict(pipeline.stages[b].matrix) for b in branches})


def chain(pipeline: Pipeline, branch: str) -> tuple[str, ...]:
    """``branch`` and every branch downstream of it that carries its values, in pipeline order."""
    down = pipeline.downstream()
    mine = pipeline.stages[branch].matrix.items()
    seen: set[str] = set()
    todo = [branch]
    while todo:
        for name in down[todo.pop()]:
            spec = pipeline.stages[name]
            if name not in seen and spec.group and mine <= spec.matrix.items():
                seen.add(name)
                todo.append(name)
    return (branch, *(n for n in pipeline.order if n in seen))


def _not_a_sweep(pipeline: Pipeline, stage: str, found: list[str], display: str) -> str:
    listed = f"its matrix stages: {', '.join(found)}" if found else "it has no matrix stage"
    groups = pipeline.groups()
    if stage in groups:
        leader = next((g for g in found if any(stage == pipeline.stages[n].group
                                               for b in groups[g] for n in chain(pipeline, b)[1:])), None)
        alongside = f" it fans out alongside '{leader}'" if leader else " it only fans out alongside upstream branches"
        return f"'{stage}' has no matrix of its own:{alongside}; compare {leader or 'a matrix stage'} ({listed})"
    if stage in pipeline.stages:
        return f"stage '{stage}' of {display} is not a matrix stage ({listed})"
    names = list(dict.fromkeys(pipeline.stages[n].group or n for n in pipeline.order))
    close = difflib.get_close_matches(stage, names, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"{display} has no stage '{stage}'.{hint} ({listed})"
