"""split: deterministic, append-stable train / validation / test splits, checked for prompt leakage.

How an example's split is decided, what counts as a leak, and what the stage costs in memory and
time: :mod:`tunepipe.data.splitting` (the decisions, pure functions over hashes) and
:mod:`tunepipe.data.split_passes` (the passes over the files). This module is the stage itself:
its parameters, ``run`` (pass 1, the assignment, the leakage check, pass 2 unless pass 1 wrote the
splits) and the report.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from tunepipe.data import fields
from tunepipe.data.blocks import LineNumbers, cut, jsonl_files
from tunepipe.data.outfile import OutputFile
from tunepipe.data.record import Provenance
from tunepipe.data.split_passes import (Hashed, Hashes, append_parts, check_groups_within_strata, findings,
                                        input_lines, scan, staged_lines, write_splits)
from tunepipe.data.splitting import (DROPPED, GROUP_BY_PROMPT, SPLITS, TEST, TRAIN, VALIDATION, Assigned, Leaks,
                                     ScanConfig, Size, assign_all, canonical, direct_bands, find_leaks, seed_salt)
from tunepipe.errors import StageInputError, UserError
from tunepipe.plugins import Artifact, Port, StageContext

if TYPE_CHECKING:
    import numpy as np

IN_MESSAGE = 5               # leaking prompts shown in a `leakage: fail` error
PARALLEL_MIN_BYTES = 32 << 20    # below this, worker processes cost more than they save
CHUNK_BYTES = 8 << 20        # input per block of pass 1
_NO_FILE = "connect the format stage's examples output (or a JSONL file of examples) to the input 'examples'"

_SIZE_DOC = ("A ratio of the examples (a number below 1, e.g. 0.1) or a count (an integer, e.g. 50; "
             "with group_by, a number of groups). A ratio is applied by each example's own hash, so on a small "
             "set the share varies (0.3 of 90 examples can give 38, 42%); a count is exact.")
FAR_SDS = 2        # a ratio's realised count this many binomial standard deviations off gets a warning,
FAR_SHARE = 0.01   # when it is also this far off as a share (on large sets two deviations are a rounding error)


def _size(default: float | int, what: str) -> dict[str, Any]:
    return {"type": "number", "minimum": 0,
            "if": {"not": {"type": "integer"}}, "then": {"exclusiveMaximum": 1},  # a ratio is below 1
            "default": default, "description": f"{what} {_SIZE_DOC}"}


class Split:
    name = "split"
    version = "0.1.0"
    description = "Deterministic, append-stable train/validation/test split with a prompt-leakage check."
    params_schema: Mapping[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "validation": _size(0.1, "The validation split."),
            "test": _size(0, "The test split (0: none; test.jsonl is then empty)."),
            "seed": {"type": ["integer", "string"], "default": 0,
                     "description": "Salt of the hash that decides splits: change it to reshuffle deliberately."},
            "group_by": {"type": ["string", "null"], "default": None,
                         "pattern": fields.PATTERN,
                         "description": "A dotted path (e.g. meta.conversation_id): examples with the same value "
                                        "land in the same split; every example needs it. \"@prompt\" groups by "
                                        "normalized user prompt, which makes leaks impossible. Default: each "
                                        "example by its whole content (without meta)."},
            "stratify_by": {"type": ["string", "null"], "default": None, "pattern": fields.PATTERN,
                            "description": "A dotted path (e.g. meta.label): ratios apply within each value's "
                                           "examples, with exact quotas (see the stage's documentation)."},
            "leakage": {"enum": ["fail", "dedupe", "report"], "default": "fail",
                        "description": "An identical normalized user prompt in two splits: fail the stage, "
                                       "dedupe (keep the split of its first occurrence, drop the others), "
                                       "or report it only."},
            "keep_meta": {"type": "boolean", "default": False,
                          "description": "Keep each example's meta in the split files (false: the files are "
                                         "ready to upload to OpenAI)."},
            "allow_empty": {"type": "boolean", "default": False,
                            "description": "Let the stage succeed with an empty train split (no examples, or "
                                           "validation and test take them all). By default that fails the "
                                           "stage: there would be nothing to train on."},
        },
    }
    inputs = {"examples": Port("examples.jsonl from the format stage (or any JSONL of examples with meta)")}
    outputs = {"train": Port("train.jsonl"),
               "validation": Port("validation.jsonl"),
               "test": Port("test.jsonl (empty without a test split)"),
               "report": Port("report.json: counts per split and stratum, leakage findings, the parameters")}
    packages: tuple[str, ...] = ()

    def run(self, ctx: StageContext, inputs: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
        validation, test = _sizes(params)
        art: Artifact = inputs["examples"]
        files = jsonl_files(art, _NO_FILE, prefer="examples.jsonl")
        staged = ctx.scratch / "staged"
        shutil.rmtree(staged, ignore_errors=True)  # left by a crashed run of this key
        cfg = _scan_config(params, staged, validation, test)
        if cfg.staged is not None:
            staged.mkdir(parents=True)
        try:
            with contextlib.ExitStack() as stack:
                outs = [stack.enter_context(OutputFile(ctx.output(name) / f"{name}.jsonl")) for name in SPLITS]
                h = _pass1(ctx, cfg, art, files, outs)
                d = _decide(params, (validation, test), h, art, files)
                if cfg.bands is None:  # pass 2: copy each example's line to its split
                    lines = staged_lines(staged) if cfg.staged else input_lines(art, files)
                    write_splits(outs, d.assigned.split, lines, ctx.check_cancelled)
                elif h.written != d.counts[:3].tolist():  # the workers' bands and the assignment must agree
                    raise RuntimeError(f"the workers wrote {h.written} examples per split, the "
                                       f"assignment counts {d.counts[:3].tolist()}")
        finally:
            shutil.rmtree(staged, ignore_errors=True)
        return _report(ctx, params, (validation, test), h, d)


class Decided(NamedTuple):
    """Every example's split (leaking copies dropped with ``leakage: dedupe``), and why."""

    assigned: Assigned
    counts: np.ndarray               # examples per split (train, validation, test, dropped)
    leaks: Leaks
    found: list[dict[str, Any]]      # the leaking prompts described in the report


def _decide(params: Mapping[str, Any], sizes: tuple[Size, Size], h: Hashed, art: Artifact,
            files: list[Path]) -> Decided:
    """Assign the splits, check for leaks, and fail where the result is unusable."""
    import numpy as np

    group_by, stratify_by, mode = params["group_by"], params["stratify_by"], params["leakage"]
    if h.st is not None and group_by:
        check_groups_within_strata(h.u, h.st, art, files, group_by, stratify_by)
    assigned = assign_all(h.u, h.st, h.values, *sizes)
    split = assigned.split
    leaks = find_leaks(h.ph, split)
    found = findings(leaks, h.ph, split, art, files, mode) if leaks.prompts else []
    if leaks.prompts and mode == "fail":
        raise StageInputError(_leak_message(leaks, found))
    if mode == "dedupe":
        split[leaks.dropped] = DROPPED
    counts = np.bincount(split, minlength=4)
    if not counts[TRAIN] and not params.get("allow_empty", False):
        raise StageInputError(_empty_train(art, len(h.u), counts, *sizes,
                                           len(leaks.dropped) if mode == "dedupe" else 0))
    return Decided(assigned, counts, leaks, found)


def _scan_config(params: Mapping[str, Any], staged: Path, validation: Size, test: Size) -> ScanConfig:
    group_by, stratify_by = params["group_by"], params["stratify_by"]
    bands = direct_bands(validation, test, bool(stratify_by), params["leakage"])
    return ScanConfig(
        salt=seed_salt(params["seed"]),
        group_by=fields.parse(group_by) if group_by and group_by != GROUP_BY_PROMPT else None,
        by_prompt=group_by == GROUP_BY_PROMPT,
        stratify_by=fields.parse(stratify_by) if stratify_by else None,
        staged=None if params["keep_meta"] and bands is None else str(staged),
        group_label=group_by or "", stratify_label=stratify_by or "", bands=bands, keep_meta=params["keep_meta"])


def _pass1(ctx: StageContext, cfg: ScanConfig, art: Artifact, files: list[Path], outs: list[OutputFile]) -> Hashed:
    """Hash every example's key and prompt (and stage it without meta, or with bands write it to
    ``outs``): the per-example arrays."""
    size = sum(p.stat().st_size for p in files)
    serial = size < PARALLEL_MIN_BYTES
    ctx.log.info("%d file(s), %d bytes, %d worker(s)", len(files), size, 1 if serial else ctx.workers)
    blocks = list(cut(art, files, CHUNK_BYTES))
    hashes, numbers = Hashes(cfg, art.name or "examples"), LineNumbers()
    # local_files: a block is a byte range of a file on this node, and scan stages into this node's scratch
    for block, got in zip(blocks, ctx.map(functools.partial(scan, cfg), blocks, local_files=True, serial=serial)):
        before = numbers.advance(block, got.lines)
        if got.error is not None:
            where = got.error.where or Provenance(block.label, "line", before + got.error.line)
            raise StageInputError(f"{where}: {got.error.message}")
        hashes.add(got)
        if got.written is not None:
            append_parts(outs, cfg.staged, block.index, got.written)
        ctx.check_cancelled()
        ctx.progress(f"{hashes.count:,} examples hashed")
    return hashes.arrays()


def _report(ctx: StageContext, params: Mapping[str, Any], sizes: tuple[Size, Size], h: Hashed,
            d: Decided) -> dict[str, Any]:
    """Write report.json and say the warnings; the stage's summary."""
    import numpy as np

    validation, test = sizes
    assigned, counts, leaks, found = d
    n, mode, st = len(h.u), params["leakage"], h.st
    summary: dict[str, int] = {"train": int(counts[TRAIN]), "validation": int(counts[VALIDATION]),
                               "test": int(counts[TEST]), "leaks": leaks.prompts}
    warnings = _warnings(n, summary, validation, test)
    if st is None:
        warnings += _far_ratios(summary, validation, test, assigned.keys, grouped=bool(params["group_by"]))
    for w in warnings:
        ctx.say(w)
    if warnings:
        summary["warnings"] = len(warnings)
    report = {
        "parameters": dict(params),
        "examples": n,
        "keys": assigned.keys,
        "splits": {name: int(counts[s]) for s, name in enumerate(SPLITS)},
        "strata": _strata_report(h.values, st, assigned.split, assigned.key_counts) if st is not None else None,
        "leakage": {
            "mode": mode,
            "prompts": leaks.prompts,
            "examples": len(leaks.examples),
            "dropped": len(leaks.dropped) if mode == "dedupe" else 0,
            "without_prompt": int(np.count_nonzero(h.ph == 0)),
            "findings": found,
        },
        "warnings": warnings,
        "method": "see the documentation of tunepipe.stages.split; key hash: BLAKE2b-64 salted with the seed",
    }
    (ctx.output("report") / "report.json").write_text(
        json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    ctx.log.info("%d examples: %s, %d dropped", n, summary, report["leakage"]["dropped"])
    return summary


def _sizes(params: Mapping[str, Any]) -> tuple[Size, Size]:
    validation, test = Size(params["validation"]), Size(params["test"])
    for name, s in (("validation", validation), ("test", test)):
        if not s.is_count and s.value >= 1:
            raise UserError(f"parameter {name} is {s.value}: a ratio must be below 1; "
                            f"write an integer without a decimal point (e.g. {int(s.value)}) for a count")
    ratios = [s.value for s in (validation, test) if not s.is_count]
    if sum(ratios) >= 1:
        raise UserError(f"validation + test ratios add up to {sum(ratios):g}, which leaves "
                        "nothing for train; make their sum below 1 (e.g. validation: 0.1, test: 0.1)")
    return validation, test



def _leak_message(leaks: Leaks, findings: list[dict[str, Any]]) -> str:
    n = leaks.prompts
    lines = [f"{n} user prompt{'s' if n != 1 else ''} appear{'s' if n == 1 else ''} in more than one split "
             f"({len(leaks.examples)} examples):"]
    for f in findings[:IN_MESSAGE]:
        places = "; ".join(f"{o['split']} {o['where']}" for o in f["occurrences"][:4])
        lines.append(f"  {json.dumps(f['prompt'], ensure_ascii=False)}: {places}")
    if n > IN_MESSAGE:
        lines.append(f"  ... and {n - IN_MESSAGE} more")
    lines.append("Fix: remove the repeated prompts upstream (clean's deduplication), or keep them in one split "
                 "with `group_by: \"@prompt\"`, or set `leakage: dedupe` to drop the copies outside the split "
                 "of each prompt's first occurrence, or `leakage: report` to accept them")
    return "\n".join(lines)


def _strata_report(values: list[Any], st: np.ndarray, split: np.ndarray, key_counts: list[int]) -> list[dict]:
    import numpy as np

    table = np.bincount(st.astype(np.int64) * 4 + split, minlength=4 * len(values)).reshape(-1, 4)
    rows = [{"value": v, "keys": key_counts[s], **{name: int(table[s, k]) for k, name in enumerate(SPLITS)},
             "dropped": int(table[s, DROPPED])} for s, v in enumerate(values)]
    return sorted(rows, key=lambda r: canonical(r["value"]))


def _empty_train(art: Artifact, n: int, counts: np.ndarray, validation: Size, test: Size, dropped: int) -> str:
    """Why train would be empty, and what to do."""
    name = art.name or str(art.path)
    if not n:
        return (f"{name} holds no examples, so every split would be empty: fix the stage or file that feeds split, "
                "or set `allow_empty: true` on this stage to write empty splits")
    taken = f"validation: {validation.value} takes {int(counts[VALIDATION]):,}"
    if test.value:
        taken += f" and test: {test.value} takes {int(counts[TEST]):,}"
    if dropped:
        taken += f" (leakage: dedupe dropped {dropped:,})"
    return (f"train would be empty: {taken} of the {n:,} example{'s' if n != 1 else ''} in {name}, leaving nothing to "
            "train on. Ask for less (a smaller count, such as validation: 1, or a smaller ratio), add examples, or "
            "set `allow_empty: true` on this stage")


def far_ratio(name: str, size: Size, got: int, n: int, keys: int, grouped: bool) -> str | None:
    """A warning when a ratio's realised count of ``n`` examples is far from what it asks, naming the count.

    Far: more than FAR_SDS standard deviations of the binomial count a fair hash gives (by chance
    about 5 % of the time) and at least FAR_SHARE off as a share, so that large sets stay quiet.
    An empty split has its own warning (:func:`_warnings`).
    """
    p = float(size.value)
    if size.is_count or not p or not got or not n:
        return None
    expected = n * p
    if abs(got - expected) <= FAR_SDS * math.sqrt(expected * (1 - p)) or abs(got / n - p) < FAR_SHARE:
        return None
    per, unit = ("per-group", " groups") if grouped else ("per-example", "")
    count = size.quota(keys if grouped else n)
    return (f"{name} is {got:,} of {n:,} examples ({got / n:.0%}) for {name}: {p:g} — ratios are {per} hashes, so "
            f"small sets vary; for exactly {count:,}{unit} use {name}: {count}")


def _far_ratios(summary: Mapping[str, int], validation: Size, test: Size, keys: int, grouped: bool) -> list[str]:
    n = summary["train"] + summary["validation"] + summary["test"]
    found = (far_ratio(name, size, summary[name], n, keys, grouped)
             for name, size in (("validation", validation), ("test", test)))
    return [w for w in found if w]


def _warnings(n: int, summary: Mapping[str, int], validation: Size, test: Size) -> list[str]:
    out = []
    if n == 0:
        return ["the input holds no examples: every split is empty"]
    if summary["train"] == 0:
        out.append("train is empty: lower validation/test")
    for name, size in (("validation", validation), ("test", test)):
        if size.value and summary[name] == 0:
            hint = (f"a ratio of {size.value} on {n} examples often picks none; ask for a count "
                    f"(e.g. {name}: 1)" if not size.is_count else "")
            out.append(f"{name} is empty" + (f": {hint}" if hint else ""))
    return out
