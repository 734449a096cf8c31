"""The model reference: ``model.json`` (``format: tunepipe-model/1``), read and written here only.

A train stage's output is a folder whose ``model.json`` says what the folder holds and how to load
or call the model: ``backend`` (the registered backend that wrote it and knows how to use it),
``base_model``, and whatever else that backend records (the local backend: the adapter's folder,
the tokenizer's; the OpenAI backend: the fine-tuned model's name and the job). Whoever reads a
model (the evaluate stage, a backend's replier or export) goes through :func:`read`; every backend
writes through :func:`write`, so the format has one definition.

Nothing here knows a backend: which fields a backend needs is its own business
(:func:`require` checks the ones it names).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunepipe.errors import UserError

FORMAT = "tunepipe-model/1"
FILE = "model.json"
REQUIRED = ("backend", "base_model")  # every model reference names these


@dataclass(frozen=True)
class ModelRef:
    """A trained model's folder and its ``model.json``.

    ``name`` is how messages call it (an input's name such as ``train.model``, else the folder);
    ``digest`` the folder's content digest when it is a published artifact (empty otherwise).
    """

    folder: Path
    info: Mapping[str, Any] = field(default_factory=dict)
    name: str = ""
    digest: str = ""

    @property
    def backend(self) -> str:
        return str(self.info["backend"])

    @property
    def base_model(self) -> str:
        return str(self.info["base_model"])

    def get(self, key: str, default: Any = None) -> Any:
        return self.info.get(key, default)

    def file(self, key: str, default: str) -> Path:
        """The path of a part the reference names by a relative folder (``tokenizer``, ``adapter``)."""
        return self.folder / str(self.info.get(key) or default)

    @property
    def label(self) -> str:
        return self.name or str(self.folder)


def write(folder: Path, info: Mapping[str, Any]) -> Path:
    """Write ``folder/model.json`` (atomically) from ``info``, which must name the backend and the
    base model; ``format`` is set here. Returns the file's path."""
    from tunepipe.cache.atomic import write_json

    missing = [k for k in REQUIRED if not info.get(k)]
    if missing:
        raise ValueError(f"a model reference needs {', '.join(missing)}")  # a backend's bug, not the user's
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / FILE
    write_json(path, {"format": FORMAT, **{k: v for k, v in info.items() if k != "format"}})
    return path


def read(path: Path, *, name: str = "", digest: str = "", where: str = "") -> ModelRef:
    """The model reference in ``path`` (a folder holding model.json, or the file itself), checked:
    a UserError that says what to do when it is missing, unreadable or of another format.
    ``where`` starts each message (e.g. ``"stage 'evaluate': "``)."""
    path = Path(path)
    folder, file = (path.parent, path) if path.is_file() else (path, path / FILE)
    label = name or str(folder)
    try:
        info = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{where}{label} has no {FILE}; connect the output of a train stage (train.model)") from None
    except ValueError as e:
        raise UserError(f"{where}{label}/{FILE} is not valid JSON ({e}); train the model again") from None
    fmt = info.get("format") if isinstance(info, dict) else None
    if fmt != FORMAT:
        raise UserError(f"{where}{label}/{FILE} has format {fmt!r}, this tunepipe reads {FORMAT}: train the model "
                        "again with this version")
    ref = ModelRef(folder, info, name, digest)
    require(ref, {k: "train the model again" for k in REQUIRED}, where=where)
    return ref


def require(ref: ModelRef, fields: Mapping[str, str], *, where: str = "") -> None:
    """A UserError naming the first of ``fields`` (field -> what to do) that the reference lacks."""
    for key, hint in fields.items():
        if not ref.info.get(key):
            raise UserError(f"{where}{ref.label}/{FILE} has no {key}: {hint}")
