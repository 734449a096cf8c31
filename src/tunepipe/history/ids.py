"""Short run ids, like git's abbreviated commits: the shortest prefix (at least 7) of a hash of the
run id that no other run of the pipeline shares. A user may give any unique prefix of it, or of
the full run id (``20261207T060059-23961``, the record's file name)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Sequence
from typing import Protocol, TypeVar

from tunepipe.errors import UserError

MIN_LENGTH = 7


class Identified(Protocol):
    """What a run shows of itself to be named (:class:`tunepipe.history.runs.Run`)."""

    @property
    def run_id(self) -> str: ...
    @property
    def short(self) -> str: ...
    @property
    def started(self) -> float | None: ...


R = TypeVar("R", bound=Identified)


def long_id(run_id: str) -> str:
    return hashlib.sha256(run_id.encode()).hexdigest()


def short_ids(run_ids: Iterable[str], minimum: int = MIN_LENGTH) -> dict[str, str]:
    """Each run id's short id; one length for all, grown until every prefix is unique."""
    full = {r: long_id(r) for r in run_ids}
    length = minimum
    while len({h[:length] for h in full.values()}) < len(full) and length < 64:
        length += 1
    return {r: h[:length] for r, h in full.items()}


def match(runs: Sequence[R], given: str, spec: str) -> R:
    """The run ``given`` names: a unique prefix of a short id or of a run id. Unknown or ambiguous
    prefixes are user errors; an ambiguous one lists its candidates."""
    text = given.strip()
    exact = [r for r in runs if text in (r.run_id, r.short) or text.lower() == r.short]
    found = exact or [r for r in runs if text and (long_id(r.run_id).startswith(text.lower())
                                                   or r.run_id.startswith(text))]
    if len(found) == 1:
        return found[0]
    if not found:
        raise UserError(f"no run of {spec} has the id '{given}': `pipeline runs {spec}` lists them")
    raise UserError(f"run id '{given}' is ambiguous: it starts {_candidates(found)}; give more characters")


def _candidates(runs: Sequence[Identified], most: int = 8) -> str:
    names = [f"{r.short} ({time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(r.started)) if r.started else r.run_id})"
             for r in runs[:most]]
    more = f" and {len(runs) - most} more" if len(runs) > most else ""
    return ", ".join(names) + more
