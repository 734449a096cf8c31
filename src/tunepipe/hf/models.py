"""Base models for local training, and loading a trained artifact back.

A model spec is one of:

* a packaged model name (``smollm2-135m-instruct``, see :data:`tunepipe.data.models.PACKAGED_MODELS`)
  or a path to a ``.gguf`` file: converted once into a plain Hugging Face folder under the shared
  cache (``<shared>/<name>-<first 16 hex of the file's sha256>/``), built in a temporary folder beside
  it and renamed into place under a file lock, so concurrent runs convert it once;
* a folder holding a Hugging Face model (``config.json``, weights, tokenizer);
* a Hugging Face model id, loaded from the local Hugging Face cache only (runs are offline).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunepipe.data.models import PACKAGED_MODELS, packaged_model_file
from tunepipe.errors import UserError

log = logging.getLogger(__name__)

CONVERTED_MARKER = "tunepipe-converted.json"
_DIGESTS: dict[tuple[str, int, int], str] = {}
_UMASK = os.umask(0o022)  # read once at import (setting it is process-wide), as tunepipe.cache.atomic does
os.umask(_UMASK)


def file_sha256(path: Path) -> str:
    """The sha256 of a file, remembered per (path, size, mtime) for this process."""
    st = path.stat()
    memo = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _DIGESTS[memo] = h.hexdigest()
    return _DIGESTS[memo]


@dataclass(frozen=True)
class BaseSource:
    """Where a base model loads from.

    ``kind``: ``packaged``, ``gguf``, ``folder`` or ``hub``. ``location``: what ``from_pretrained``
    takes (a folder, or the hub id). ``identity``: a string that changes when the weights do (the
    GGUF digest, the folder's config and weight sizes, the hub id and its cached revision).
    """

    spec: str
    kind: str
    location: str
    identity: str
    converted_in: float | None = None  # seconds spent converting a GGUF in this call (None: reused)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "location": self.location, "identity": self.identity}


# --- resolving a spec -------------------------------------------------------------------------

def _looks_like_path(spec: str) -> bool:
    """A hub id is ``name`` or ``org/name``; anything else with a slash or a suffix is a path."""
    return spec.startswith(("/", "./", "../", "~", ".")) or spec.count("/") > 1 or spec.endswith(".gguf")


def resolve_base(spec: str, shared: Path | None, say: Callable[[str], None] | None = None) -> BaseSource:
    """Find (and for a GGUF, convert once) the base model named by ``spec``.

    ``shared``: the cache folder for converted models (``ctx.shared("models")``); None converts
    into a private temporary folder (slow every time: only for one-off use).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise UserError("model: give a packaged model name "
                        f"({', '.join(PACKAGED_MODELS)}), a Hugging Face model id or a model folder")
    if spec in PACKAGED_MODELS:
        gguf = packaged_model_file(spec)
        return _converted(spec, "packaged", gguf, spec, shared, say)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return _converted(spec, "gguf", path.resolve(), path.stem, shared, say)
    if path.is_dir():
        return _folder(spec, path.resolve())
    if _looks_like_path(spec):
        raise UserError(f"model '{spec}': no such folder or .gguf file (relative paths are taken from "
                        f"{Path.cwd()}); name a folder with a Hugging Face model, a packaged model "
                        f"({', '.join(PACKAGED_MODELS)}) or a model id in the local Hugging Face cache")
    return _hub(spec)


def _folder(spec: str, folder: Path) -> BaseSource:
    if not (folder / "config.json").is_file():
        hint = " (it holds a .gguf file: name that file instead)" if any(folder.glob("*.gguf")) else ""
        raise UserError(f"model folder {folder} has no config.json{hint}: it must hold a Hugging Face model "
                        "saved with save_pretrained (config.json, *.safetensors, tokenizer files)")
    parts = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and (p.suffix in (".safetensors", ".bin") or p.name == "config.json"):
            st = p.stat()
            parts.append(f"{p.name}:{st.st_size}:{st.st_mtime_ns}")
    identity = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
    return BaseSource(spec, "folder", str(folder), f"folder:{identity}")


def _hub(spec: str) -> BaseSource:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        try_to_load_from_cache = None
    where = None
    if try_to_load_from_cache is not None:
        try:
            where = try_to_load_from_cache(spec, "config.json")
        except Exception:  # an id that is not a valid repo id
            where = None
    if not isinstance(where, str):
        raise _not_cached(spec)
    # .../models--org--name/snapshots/<revision>/config.json: the revision identifies the weights
    revision = Path(where).parent.name
    return BaseSource(spec, "hub", spec, f"hub:{spec}@{revision}")


def _not_cached(spec: str) -> UserError:
    return UserError(f"model '{spec}' is not a packaged model ({', '.join(PACKAGED_MODELS)}), a folder, "
                     "or a model in the local Hugging Face cache. Runs are offline and never download: "
                     f"fetch it beforehand on a machine with network (`hf download {spec}`, into "
                     "HF_HOME or ~/.cache/huggingface), or name a folder saved with save_pretrained")


# --- converting a GGUF once -------------------------------------------------------------------

def _converted(spec: str, kind: str, gguf: Path, name: str, shared: Path | None,
               say: Callable[[str], None] | None) -> BaseSource:
    digest = file_sha256(gguf)[:16]
    identity = f"gguf:{file_sha256(gguf)}"
    if shared is None:
        tmp = Path(tempfile.mkdtemp(prefix=f"tunepipe-{name}-"))
        started = time.monotonic()
        convert_gguf(gguf, tmp, say)
        return BaseSource(spec, kind, str(tmp), identity, time.monotonic() - started)
    shared.mkdir(parents=True, exist_ok=True)
    dest = shared / f"{name}-{digest}"
    if _complete(dest):
        return BaseSource(spec, kind, str(dest), identity)
    from filelock import FileLock, Timeout

    lock = FileLock(str(shared / f"{dest.name}.lock"), thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if say:
            say(f"waiting for another run converting {gguf.name}")
        lock.acquire()
    try:
        if _complete(dest):  # another run converted it while we waited
            return BaseSource(spec, kind, str(dest), identity)
        for leftover in shared.glob(f".{dest.name}.*"):  # a conversion killed half-way
            shutil.rmtree(leftover, ignore_errors=True)
        if dest.exists():  # without its marker: not ours to trust
            shutil.rmtree(dest)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=shared))
        started = time.monotonic()
        try:
            convert_gguf(gguf, tmp, say)
            (tmp / CONVERTED_MARKER).write_text(json.dumps(
                {"source": str(gguf), "sha256": file_sha256(gguf), "spec": spec,
                 "seconds": round(time.monotonic() - started, 1)}, indent=1) + "\n")
            _readable(tmp)
            os.rename(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return BaseSource(spec, kind, str(dest), identity, time.monotonic() - started)
    finally:
        lock.release()


def _readable(folder: Path) -> None:
    """Others sharing the cache must read the converted model (mkdtemp makes a private folder)."""
    os.chmod(folder, 0o777 & ~_UMASK)
    for p in folder.iterdir():
        if p.is_file():
            os.chmod(p, 0o666 & ~_UMASK)


def _complete(dest: Path) -> bool:
    return (dest / CONVERTED_MARKER).is_file() and (dest / "config.json").is_file()


@contextlib.contextmanager
def _no_tqdm() -> Iterator[None]:
    """transformers' GGUF reader draws a tqdm bar straight onto the terminal (not through its
    logging switch, and tqdm reads TQDM_DISABLE only when imported), which would tear the run's
    stage view: give that module a silent tqdm while converting."""
    import functools

    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    original = getattr(gguf_utils, "tqdm", None)
    if original is None:
        yield
        return
    gguf_utils.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = original


def convert_gguf(gguf: Path, out: Path, say: Callable[[str], None] | None = None) -> None:
    """Dequantize a GGUF chat model into a float32 Hugging Face folder (model + tokenizer).

    transformers refuses ``save_pretrained`` on a model loaded from GGUF; a model built from the same
    config without the quantization entry, given the same weights, saves normally.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if say:
        say(f"converting {gguf.name} to a Hugging Face model (once)")
    folder, name = str(gguf.parent), gguf.name
    try:
        with _no_tqdm():
            tok = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
            loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, local_files_only=True,
                                                          dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise UserError(f"cannot read the GGUF model {gguf}: {e}. It must be a chat model of an "
                        "architecture transformers can dequantize (llama, mistral, qwen2, ...)") from None
    cfg = loaded.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.tie_weights()
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    del loaded, model


# --- loading ---------------------------------------------------------------------------------

def load_tokenizer(source: BaseSource | str | Path) -> Any:
    from transformers import AutoTokenizer

    location = source.location if isinstance(source, BaseSource) else str(source)
    try:
        tok = AutoTokenizer.from_pretrained(location, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:  # a missing, unreadable or corrupt tokenizer
        raise UserError(f"cannot load the tokenizer of model '{location}': {type(e).__name__}: {e}") from None
    return tok


def load_weights(source: BaseSource, dtype: Any = None, device: str = "cpu") -> Any:
    """The causal LM of ``source`` in ``dtype`` (default float32), on ``device``, in train mode off."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(source.location, local_files_only=True,
                                                     dtype=dtype or torch.float32)
    except OSError as e:
        if source.kind == "hub":
            raise _not_cached(source.spec) from None
        raise UserError(f"cannot load model '{source.spec}' from {source.location}: {e}") from None
    except ValueError as e:  # e.g. an architecture without a causal-LM head
        raise UserError(f"model '{source.spec}' cannot be loaded as a causal language model: {e}") from None
    return model.to(device)


def load_base(spec: str, shared: Path | None, *, device: str = "cpu", dtype: Any = None) -> tuple[Any, Any]:
    """(model, tokenizer) of a base model spec; ``shared`` as in :func:`resolve_base`."""
    source = resolve_base(spec, shared)
    tok = load_tokenizer(source)
    model = load_weights(source, dtype, device)
    model.eval()
    return model, tok


def load_model(model_dir: Path, shared: Path | None, *, device: str = "cpu",
               prefer_merged: bool = True) -> tuple[Any, Any]:
    """(model, tokenizer) of a trained artifact, in eval mode.

    A LoRA artifact loads its merged copy when it has one (``prefer_merged``: faster to run, same
    outputs up to rounding), else its base model plus the adapter. The tokenizer is the one saved
    with the artifact (with the chat template training rendered through).
    """
    import torch

    from tunepipe import modelref

    model_dir = Path(model_dir)
    info = modelref.read(model_dir).info
    if info.get("kind") not in ("lora", "full"):
        raise UserError(f"{model_dir}/model.json has kind {info.get('kind')!r}, not lora or full: a local model "
                        "artifact is written by the train stage with backend: local; train the model again")
    tok = load_tokenizer(model_dir / info.get("tokenizer", "tokenizer"))
    if info["kind"] == "full" or (prefer_merged and info.get("merged")):
        folder = model_dir / (info["full"] if info["kind"] == "full" else info["merged"])
        source = BaseSource(str(folder), "folder", str(folder), "artifact")
        model = load_weights(source, torch.float32, device)
    else:
        from peft import PeftModel

        base = info.get("base_source") or {}
        spec = info["base_model"]
        if base.get("kind") == "folder" and Path(base["location"]).is_dir():
            spec = base["location"]  # a relative folder: where it was when training ran
        source = resolve_base(spec, shared)
        if base.get("identity") and source.identity != base["identity"]:
            log.warning("the base model %s differs from the one %s was trained on (%s, now %s)",
                        spec, model_dir, base["identity"], source.identity)
        model = load_weights(source, torch.float32, device)
        with warnings.catch_warnings():  # transformers' deprecation notes about what peft calls
            warnings.simplefilter("ignore", FutureWarning)
            model = PeftModel.from_pretrained(model, str(model_dir / info["adapter"]))
    model.eval()
    return model, tok


# --- introspection ----------------------------------------------------------------------------

def linear_layer_names(model: Any) -> list[str]:
    """The distinct last names of the model's linear layers (what LoRA ``target_modules`` name)."""
    import torch

    names = set()
    for full, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D":
            names.add(full.rsplit(".", 1)[-1])
    return sorted(names)


def check_target_modules(model: Any, targets: Sequence[str] | str) -> list[str]:
    """The LoRA targets, checked against the model's module names (``all-linear`` allowed)."""
    if isinstance(targets, str):
        targets = [targets]
    targets = list(targets)
    if not targets:
        raise UserError("lora.target_modules is empty: name the linear layers to adapt, e.g. "
                        f"{', '.join(linear_layer_names(model))} (or all-linear)")
    if targets == ["all-linear"]:
        return targets
    linear = linear_layer_names(model)
    names = [n for n, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise UserError(f"lora.target_modules names {', '.join(missing)}, not in this model; its linear layers "
                        f"are: {', '.join(linear)} (or use all-linear)")
    return targets
