"""The model card (``README.md``) written beside an exported model, in the Hugging Face format:
YAML front matter the Hub reads (base model, license, library, tags), then Markdown for people.

The card holds the facts it is given and nothing else (no settings, environment or paths are read
here), so a secret can enter it only if a caller puts one in ``facts``.

``facts`` (every key optional except ``base_model``):

* ``base_model``: the base model's name (a packaged name, a Hugging Face id, a folder);
* ``title``: the heading (default: "<base> fine-tuned with tunepipe");
* ``license``: the base model's license id (see :func:`base_license`);
* ``format``: ``hf-adapter``, ``merged`` or ``gguf`` (picks ``library_name`` and the snippet);
* ``kind``: ``lora`` or ``full``;
* ``gguf_file`` / ``quantization``: the GGUF file's name and type (format ``gguf``);
* ``modelfile``: true when an Ollama ``Modelfile`` lies beside the GGUF;
* ``data``: ``{"digest", "examples", "name"}`` of the training data;
* ``training``: ``{parameter: value}``, shown as a table in the order given;
* ``metrics``: ``{name: {"base", "tuned", "delta", "low", "high"}}`` (``low``/``high``: the delta's
  interval) or None;
* ``pipeline``, ``stage``: where it was produced; ``tunepipe_version`` (default: this version).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tunepipe.modelref import ModelRef

# packaged model name -> its Hugging Face id (the Hub links a card's base_model by id)
HUB_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
LIBRARIES = {"hf-adapter": "peft", "merged": "transformers"}  # a GGUF card has none: the Hub sees the file


def hub_id(base_model: str) -> str | None:
    """The Hugging Face id of a base model name, or None for a local folder or file."""
    if base_model in HUB_IDS:
        return HUB_IDS[base_model]
    looks_local = base_model.startswith(("/", ".", "~")) or base_model.count("/") > 1 or "\\" in base_model
    return None if looks_local or base_model.endswith(".gguf") else base_model


def display_name(base_model: str) -> str:
    """How the card names the base: its Hub id, else the last part of its path (never a full path)."""
    return hub_id(base_model) or Path(base_model).name or base_model


# --- the card --------------------------------------------------------------------------------------

def model_card(facts: Mapping[str, Any]) -> str:
    """The README.md text for ``facts`` (see the module docstring)."""
    import yaml

    sections = [_about(facts), _usage(facts), _data(facts), _training(facts), _metrics(facts), _provenance(facts)]
    front = yaml.safe_dump(front_matter(facts), sort_keys=False, allow_unicode=True)
    return f"---\n{front}---\n\n" + "\n\n".join(s for s in sections if s) + "\n"


def front_matter(facts: Mapping[str, Any]) -> dict[str, Any]:
    """The YAML header. ``base_model`` is the Hub id when known, else the base folder's name (never
    its path: replace it with the Hub id before pushing the card to the Hub)."""
    fmt, base = facts.get("format"), str(facts["base_model"])
    tags = ["tunepipe", "fine-tuned"] + [t for t in (facts.get("kind"), "gguf" if fmt == "gguf" else None) if t]
    out: dict[str, Any] = {"base_model": display_name(base)}
    if hub_id(base):
        out["base_model_relation"] = "adapter" if fmt == "hf-adapter" else "finetune"
    if facts.get("license"):
        out["license"] = str(facts["license"])
    if fmt in LIBRARIES:
        out["library_name"] = LIBRARIES[str(fmt)]
    out["pipeline_tag"] = "text-generation"
    out["tags"] = tags
    return out


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text.replace("|", "\\|").replace("\n", " ")


def _about(facts: Mapping[str, Any]) -> str:
    base = display_name(str(facts["base_model"]))
    title = facts.get("title") or f"{base} fine-tuned with tunepipe"
    what = {"hf-adapter": "a LoRA adapter for", "merged": "a fine-tuned version of",
            "gguf": "a GGUF file (for llama.cpp, Ollama, LM Studio) of a fine-tuned version of"}
    line = f"This is {what.get(str(facts.get('format')), 'a fine-tuned version of')} `{base}`"
    how = {"lora": " with LoRA", "full": " with full fine-tuning"}.get(str(facts.get("kind")), "")
    extra = f", quantized as {str(facts['quantization']).upper()}" if facts.get("quantization") else ""
    return f"# {title}\n\n{line}, trained{how} by a tunepipe pipeline{extra}."


def _usage(facts: Mapping[str, Any]) -> str:
    fmt, base = facts.get("format"), display_name(str(facts["base_model"]))
    if fmt == "hf-adapter":
        code = ("from peft import PeftModel\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                f'base = AutoModelForCausalLM.from_pretrained("{base}")\n'
                'model = PeftModel.from_pretrained(base, "path/to/this/folder")\n'
                'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")')
        return f"## How to use\n\nLoad the base model, then this adapter (it needs `peft`):\n\n```python\n{code}\n```"
    if fmt == "gguf":
        name = facts.get("gguf_file") or "model.gguf"
        ollama = ("\n\nWith Ollama, from this folder:\n\n```sh\nollama create my-model -f Modelfile\n"
                  "ollama run my-model\n```" if facts.get("modelfile") else "")
        return (f"## How to use\n\nWith llama.cpp:\n\n```sh\nllama-cli -m {name} -cnv\n```{ollama}\n\n"
                f"With transformers (dequantized to float):\n\n```python\nfrom transformers import "
                f'AutoModelForCausalLM\n\nmodel = AutoModelForCausalLM.from_pretrained("path/to/this/folder", '
                f'gguf_file="{name}")\n```')
    code = ("from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            'model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")\n'
            'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")\n'
            'messages = [{"role": "user", "content": "Hello!"}]\n'
            "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\", "
            "return_dict=True)\n"
            "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=64)[0]))")
    return f"## How to use\n\n```python\n{code}\n```"


def _data(facts: Mapping[str, Any]) -> str:
    data = facts.get("data") or {}
    rows = [(label, data.get(key)) for key, label in
            (("name", "data set"), ("examples", "training examples"), ("digest", "content digest"))]
    rows = [(label, f"`{v}`" if label == "content digest" else v) for label, v in rows if v is not None]
    if not rows:
        return ""
    return "## Training data\n\n" + "\n".join(f"- {label}: {_cell(v)}" for label, v in rows)


def _training(facts: Mapping[str, Any]) -> str:
    params = facts.get("training") or {}
    if not params:
        return ""
    rows = "\n".join(f"| {_cell(k)} | {_cell(v)} |" for k, v in params.items())
    return f"## Training parameters\n\n| parameter | value |\n|---|---|\n{rows}"


def _metrics(facts: Mapping[str, Any]) -> str:
    metrics = facts.get("metrics") or {}
    if not metrics:
        return ""
    lines = ["## Evaluation", "", "| metric | base | fine-tuned | delta | interval |", "|---|---|---|---|---|"]
    for name, m in metrics.items():
        low, high = m.get("low"), m.get("high")
        interval = f"{_cell(low)} to {_cell(high)}" if low is not None and high is not None else ""
        lines.append(f"| {_cell(name)} | {_cell(m.get('base'))} | {_cell(m.get('tuned'))} | "
                     f"{_cell(m.get('delta'))} | {interval} |")
    return "\n".join(lines)


def _provenance(facts: Mapping[str, Any]) -> str:
    from tunepipe import __version__

    parts = [f"tunepipe {facts.get('tunepipe_version') or __version__}"]
    if facts.get("pipeline"):
        parts.append(f"pipeline `{_cell(facts['pipeline'])}`")
    if facts.get("stage"):
        parts.append(f"stage `{_cell(facts['stage'])}`")
    return "## How it was produced\n\nTrained and exported by " + ", ".join(parts) + "."


# --- the base model's license ----------------------------------------------------------------------

def base_license(ref: ModelRef) -> str | None:
    """The license id of ``ref``'s base model, read offline from what lies on disk: the base
    folder's README front matter or config, the GGUF it was converted from (``general.license``;
    the packaged SmolLM2 says apache-2.0), or a README in the local Hugging Face cache."""
    source = ref.get("base_source") or {}
    folder = Path(str(source.get("location") or ""))
    if source.get("location") and folder.is_dir():
        found = _folder_license(folder) or _converted_license(folder)
        if found:
            return found
    gguf = _gguf_of(ref.base_model)
    if gguf is not None:
        return _gguf_string(gguf, "general.license")
    return _hub_license(ref.base_model)


def readme_license(text: str) -> str | None:
    """``license`` from a README's YAML front matter, or None."""
    import yaml

    if not text.startswith("---"):
        return None
    head = text[3:].split("\n---", 1)[0]
    try:
        meta = yaml.safe_load(head)
    except yaml.YAMLError:
        return None
    value = meta.get("license") if isinstance(meta, dict) else None
    return str(value) if value else None


def _folder_license(folder: Path) -> str | None:
    readme, config = folder / "README.md", folder / "config.json"
    if readme.is_file():
        found = readme_license(readme.read_text(encoding="utf-8", errors="replace"))
        if found:
            return found
    if config.is_file():
        try:
            value = json.loads(config.read_text(encoding="utf-8")).get("license")
        except (ValueError, AttributeError):
            return None
        return str(value) if value else None
    return None


def _converted_license(folder: Path) -> str | None:
    """A base converted from a GGUF (tunepipe.hf.models) names its source in a marker file."""
    from tunepipe.hf.models import CONVERTED_MARKER

    marker = folder / CONVERTED_MARKER
    try:
        source = Path(json.loads(marker.read_text(encoding="utf-8"))["source"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return _gguf_string(source, "general.license") if source.is_file() else None


def _gguf_of(base_model: str) -> Path | None:
    from tunepipe.data.models import PACKAGED_MODELS, packaged_model_file

    if base_model in PACKAGED_MODELS:
        try:
            return packaged_model_file(base_model)
        except Exception:  # the package is not installed: no license to read
            return None
    path = Path(base_model).expanduser()
    return path if path.suffix == ".gguf" and path.is_file() else None


def _hub_license(base_model: str) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        where = try_to_load_from_cache(base_model, "README.md")
    except Exception:  # no huggingface_hub, or not a valid repo id
        return None
    if not isinstance(where, str):
        return None
    return readme_license(Path(where).read_text(encoding="utf-8", errors="replace"))


_SCALARS = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUF value type -> bytes


def _gguf_string(path: Path, key: str) -> str | None:
    """One string value of a GGUF file's metadata, read from its header only (gguf.GGUFReader
    parses every token of the vocabulary: ~2.4 s for SmolLM2; this takes milliseconds)."""
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                return None
            _version, _tensors, count = struct.unpack("<IQQ", f.read(20))
            for _ in range(count):
                name = _read_str(f)
                (kind,) = struct.unpack("<I", f.read(4))
                if name == key and kind == 8:
                    return _read_str(f)
                _skip_value(f, kind)
    except (OSError, struct.error, UnicodeDecodeError, ValueError):
        return None
    return None


def _read_str(f: Any) -> str:
    (n,) = struct.unpack("<Q", f.read(8))
    return f.read(n).decode("utf-8")


def _skip_value(f: Any, kind: int) -> None:
    if kind in _SCALARS:
        f.seek(_SCALARS[kind], 1)
    elif kind == 8:
        (n,) = struct.unpack("<Q", f.read(8))
        f.seek(n, 1)
    elif kind == 9:
        item, n = struct.unpack("<IQ", f.read(12))
        if item in _SCALARS:
            f.seek(_SCALARS[item] * n, 1)
        else:
            for _ in range(n):
                _skip_value(f, item)
    else:
        raise ValueError(f"unknown GGUF value type {kind}")
