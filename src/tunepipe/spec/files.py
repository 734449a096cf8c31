"""File inputs: paths and globs relative to the pipeline file, checked on every run."""

from __future__ import annotations

import difflib
import glob as globlib
from pathlib import Path

from tunepipe.errors import Problem, SpecError, excerpt_at
from tunepipe.spec.limits import special_kind
from tunepipe.spec.model import InputRef, Pipeline

GLOB_CHARS = set("*?[")


def expand(ref: InputRef, root: Path) -> list[Path]:
    """The files a file reference names: one path, or a glob's matches (sorted)."""
    if GLOB_CHARS & set(ref.text):
        pattern = str(root / ref.text)
        return [Path(p) for p in sorted(globlib.glob(pattern, recursive=True))]
    p = root / ref.text
    return [p] if p.exists() else []


def special_file(paths: list[Path]) -> tuple[Path, str] | None:
    """The first path that is neither a regular file nor a folder, and what it is: reading a
    device (/dev/zero), a named pipe or a socket never ends or blocks."""
    for p in paths:
        try:
            mode = p.stat().st_mode
        except OSError:
            continue  # a broken link: reading it reports it
        kind = special_kind(mode)
        if kind is not None:
            return p, kind
    return None


def file_problem(ref: InputRef, root: Path, stage_names: list[str], stage: str, input_name: str) -> tuple[str, str] | None:
    """Why a file reference resolves to nothing or to something that is not a file (message, hint),
    or None when it is fine."""
    found = expand(ref, root)
    special = special_file(found)
    if special is not None:
        path, kind = special
        shown = f"'{path.name}' (matched by '{ref.text}')" if GLOB_CHARS & set(ref.text) else f"'{ref.text}'"
        return (f"input '{input_name}' of stage '{stage}' reads {shown}, which is {kind}, not a regular file",
                "an input must be a file or a folder: copy the data into a file and name that")
    if found:
        return None
    head, dot, _ = ref.text.partition(".")
    close = difflib.get_close_matches(head, stage_names, n=1) if dot and "/" not in ref.text else []
    if close:
        return (f"input '{input_name}' of stage '{stage}' reads '{ref.text}': there is no stage '{head}' "
                f"and no such file", f"did you mean stage '{close[0]}'? stages: {', '.join(stage_names)}")
    what = "no file matches the pattern" if GLOB_CHARS & set(ref.text) else "the file does not exist"
    return (f"input '{input_name}' of stage '{stage}': {what} '{ref.text}' (looked in {root})",
            "paths are relative to the file they are written in; to read a stage's output write 'stage.output'")


def check_files(pipeline: Pipeline) -> None:
    """Raise :class:`SpecError` for every file input that resolves to nothing (checked on every run)."""
    problems = []
    names = list(pipeline.stages)
    for spec in pipeline.stages.values():
        for input_name, refs in spec.inputs.items():
            for ref in refs:
                if ref.kind == "file":
                    found = file_problem(ref, pipeline.root, names, spec.name, input_name)
                    if found:
                        text = _read_text(ref.position.source)
                        problems.append(Problem(ref.position, found[0], found[1],
                                                excerpt_at(text, ref.position) if text else ()))
    if problems:
        raise SpecError(problems)


def _read_text(source: str) -> str:
    try:
        return Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""
