"""Export a local model out of the cache, with a model card (``README.md``) in each format.

* ``hf-adapter``: the PEFT adapter and the tokenizer (with its chat template), as trained;
* ``merged``: the whole model as safetensors (the adapter merged into the base), loadable with
  ``AutoModelForCausalLM.from_pretrained`` and no PEFT; a fully fine-tuned model's ``full/``;
* ``gguf``: that merged model as one GGUF file (``model-<quant>.gguf``, :mod:`tunepipe.hf.to_gguf`)
  and, when the chat template translates, an Ollama ``Modelfile`` (:mod:`tunepipe.hf.modelfile`).

Options (keywords after ``out``): ``shared`` (the shared models folder where converted base models
are cached, as :func:`tunepipe.hf.models.load_base` takes it), ``quantize`` (gguf: ``q8_0``
default, ``f16``, ``f32``), ``card`` (facts for the model card, :mod:`tunepipe.hf.card`; they
override what the export knows) and ``system`` (gguf: the Modelfile's default system prompt).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunepipe.errors import UserError
from tunepipe.exports import EXPORT_FORMATS, Exported
from tunepipe.modelref import ModelRef

CARD = "README.md"
MODELFILE = "Modelfile"


@dataclass(frozen=True)
class Options:
    """The export's options, as the backend passes them through ``**options``."""

    shared: Path | None = None
    quantize: str | None = None
    card: Mapping[str, Any] = field(default_factory=dict)
    system: str | None = None

    @classmethod
    def parse(cls, fmt: str, options: Mapping[str, Any]) -> Options:
        unknown = sorted(set(options) - {"shared", "quantize", "card", "system"})
        if unknown:  # the caller's mistake, not the user's
            raise TypeError(f"export() got unknown options: {', '.join(unknown)}")
        if fmt != "gguf":
            for name in ("quantize", "system"):
                if options.get(name) is not None:
                    raise UserError(f"{name} applies to the gguf export only, not to {fmt}: drop it or "
                                    "export as gguf")
        shared = options.get("shared")
        return cls(Path(shared) if shared is not None else None, options.get("quantize"),
                   dict(options.get("card") or {}), options.get("system"))


def export(model: ModelRef, fmt: str, out: Path, **options: Any) -> Exported:
    """Write ``model`` (a local artifact's reference) into the folder ``out`` as ``fmt``."""
    if fmt not in EXPORT_FORMATS:
        raise UserError(f"unknown export format {fmt!r}: use one of {', '.join(EXPORT_FORMATS)}")
    opts = Options.parse(fmt, options)
    if model.get("kind") not in ("lora", "full"):
        raise UserError(f"{model.label} has kind {model.get('kind')!r}, not lora or full: train the model again "
                        "with backend: local")
    writers = {"hf-adapter": _adapter, "merged": _merged, "gguf": _gguf}
    return writers[fmt](model, out, opts)


# --- the formats -----------------------------------------------------------------------------------

def _adapter(ref: ModelRef, out: Path, opts: Options) -> Exported:
    if ref.get("kind") != "lora" or not ref.get("adapter"):
        raise UserError(f"{ref.label} was fully fine-tuned ({ref.get('kind')!r}): it has no LoRA adapter to "
                        "export as hf-adapter; export it as merged (its whole model) or gguf")
    out.mkdir(parents=True, exist_ok=True)
    files = _copy_files(ref.file("adapter", "adapter"), out, skip=(CARD,))  # PEFT writes a blank card there
    files += _copy_files(ref.file("tokenizer", "tokenizer"), out, skip=(CARD,))
    files.append(_write_card(ref, out, opts, "hf-adapter"))
    return Exported("hf-adapter", out, _names(files),
                    f"the LoRA adapter of {ref.base_model} and its tokenizer (with the chat template training "
                    "used); load it with peft.AutoPeftModelForCausalLM or PeftModel.from_pretrained")


def _merged(ref: ModelRef, out: Path, opts: Options) -> Exported:
    """The stored whole model when there is one (copied: its dtype kept), else merged now."""
    out.mkdir(parents=True, exist_ok=True)
    stored = _stored_weights(ref)
    if stored is not None:
        files = _copy_files(stored, out, skip=(CARD,))
        files += _copy_files(ref.file("tokenizer", "tokenizer"), out, skip=(CARD,))
        how = f"the artifact's {stored.name}/ folder"
    else:
        model, tok = merged_model(ref, opts.shared)
        model.save_pretrained(str(out))
        tok.save_pretrained(str(out))
        files = [p.name for p in out.iterdir() if p.is_file() and p.name != CARD]
        how = "the base model with the LoRA adapter merged in now"
    files.append(_write_card(ref, out, opts, "merged"))
    return Exported("merged", out, _names(files),
                    f"the whole fine-tuned model ({how}) as safetensors with its tokenizer and chat template; "
                    "load it with transformers.AutoModelForCausalLM.from_pretrained, no PEFT needed")


def _gguf(ref: ModelRef, out: Path, opts: Options) -> Exported:
    from tunepipe.hf.card import base_license, display_name
    from tunepipe.hf.modelfile import Untranslatable, modelfile
    from tunepipe.hf.to_gguf import check_quant, write_gguf

    quant = check_quant(opts.quantize)  # before loading anything
    model, tok = merged_model(ref, opts.shared)
    name = f"model-{quant}.gguf"
    title = str(opts.card.get("title") or f"{display_name(ref.base_model)} fine-tuned")
    license_id = opts.card["license"] if "license" in opts.card else base_license(ref)
    written = write_gguf(model, tok, out / name, quant, name=title, license=license_id)
    del model
    files, why_not = [name], ""
    try:
        (out / MODELFILE).write_text(modelfile(name, tok, opts.system), encoding="utf-8")
        files.append(MODELFILE)
    except Untranslatable as e:
        (out / MODELFILE).unlink(missing_ok=True)
        why_not = f"; no Ollama Modelfile: {e} (llama.cpp reads the chat template from the GGUF itself)"
    facts = {"gguf_file": name, "quantization": quant, "modelfile": MODELFILE in files, "license": license_id}
    files.append(_write_card(ref, out, opts, "gguf", facts))
    mib = written.size / 2**20
    types = ", ".join(f"{k} {v}" for k, v in sorted(written.tensor_types.items()))
    return Exported("gguf", out, _names(files),
                    f"{name} ({mib:.1f} MiB; tensors: {types}) for llama.cpp, Ollama and LM Studio"
                    + (f", with an Ollama {MODELFILE} (ollama create NAME -f {MODELFILE})" if not why_not
                       else why_not))


# --- helpers -----------------------------------------------------------------------------------------

def _stored_weights(ref: ModelRef) -> Path | None:
    """The artifact's folder holding a whole model: full/ (kind full) or merged/ (LoRA, merge on)."""
    key = "full" if ref.get("kind") == "full" else "merged"
    if not ref.get(key):
        return None
    folder = ref.file(key, key)
    if not (folder / "config.json").is_file():
        raise UserError(f"{ref.label}: its {key}/ folder has no config.json; train the model again")
    return folder


def merged_model(ref: ModelRef, shared: Path | None) -> tuple[Any, Any]:
    """(a plain transformers model with the fine-tuning in its weights, the artifact's tokenizer),
    in float32: the stored whole model, else the base with the adapter merged in."""
    from tunepipe.hf.models import load_model

    model, tok = load_model(ref.folder, shared, prefer_merged=True)
    if hasattr(model, "merge_and_unload"):  # a PeftModel: base + adapter
        model = model.merge_and_unload()
    return model, tok


def _write_card(ref: ModelRef, out: Path, opts: Options, fmt: str, facts: Mapping[str, Any] | None = None) -> str:
    from tunepipe.hf.card import base_license, model_card

    known = {"base_model": ref.base_model, "format": fmt, "kind": ref.get("kind"), **(facts or {})}
    merged = {**known, **opts.card}
    if "license" not in merged:
        merged["license"] = base_license(ref)
    (out / CARD).write_text(model_card(merged), encoding="utf-8")
    return CARD


def _names(files: list[str]) -> tuple[str, ...]:
    return tuple(sorted(set(files)))


def _copy_files(folder: Path, out: Path, skip: tuple[str, ...] = ()) -> list[str]:
    """Copy ``folder``'s files into ``out`` (relative names kept); their names."""
    names = []
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = f.relative_to(folder)
        if rel.as_posix() in skip:
            continue
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, out / rel)
        names.append(rel.as_posix())
    return names
