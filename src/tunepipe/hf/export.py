"""Export a local model out of the cache: ``hf-adapter`` (the PEFT adapter and its tokenizer)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from tunepipe.exports import EXPORT_FORMATS, Exported
from tunepipe.errors import UserError
from tunepipe.modelref import ModelRef


def export(model: ModelRef, fmt: str, out: Path, **options: Any) -> Exported:
    """``hf-adapter``: the LoRA adapter and the tokenizer (with its chat template) in one folder,
    which PEFT and transformers load as they are."""
    if fmt not in EXPORT_FORMATS:
        raise UserError(f"unknown export format {fmt!r}: use one of {', '.join(EXPORT_FORMATS)}")
    if fmt != "hf-adapter":
        raise UserError(f"exporting a local model as {fmt} is not yet supported: export it as hf-adapter")
    if model.get("kind") != "lora" or not model.get("adapter"):
        raise UserError(f"{model.label} was fully fine-tuned ({model.get('kind')!r}): it has no LoRA adapter to "
                        "export as hf-adapter; its whole model is the artifact's full/ folder")
    out.mkdir(parents=True, exist_ok=True)
    files = _copy_files(model.file("adapter", "adapter"), out) + _copy_files(model.file("tokenizer", "tokenizer"), out)
    return Exported(fmt, out, tuple(sorted(set(files))),
                    f"the LoRA adapter of {model.base_model} and its tokenizer (with the chat template training "
                    "used); load it with peft.AutoPeftModelForCausalLM or PeftModel.from_pretrained")


def _copy_files(folder: Path, out: Path) -> list[str]:
    """Copy ``folder``'s files into ``out`` (relative names kept); their names."""
    names = []
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = f.relative_to(folder)
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, out / rel)
        names.append(rel.as_posix())
    return names
