"""The model as training sees it: LoRA (or every weight) made trainable, the training loss, the
optimizer's parameter groups.

For the common decoder architectures the vocabulary projection runs only on the positions that are
trained (the rest of the logits are never needed): the same loss, 10-25% faster on CPU.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F

from tunepipe.errors import UserError
from tunepipe.hf.models import check_target_modules
from tunepipe.hf.render import IGNORE
from tunepipe.hf.settings import LocalTrainSettings

# Causal LMs whose logits are exactly lm_head(decoder(...)): no soft-capping or scaling of logits.
PLAIN_HEADS = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3", "smollm3", "olmo2"})


def quiet_transformers() -> None:
    """No tqdm bars or advice on the terminal: the stage's line shows progress."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def prepare_model(model: Any, s: LocalTrainSettings) -> Any:
    """Wrap ``model`` with LoRA (or make every weight trainable for full fine-tuning)."""
    if s.lora is None:
        model.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    targets = check_target_modules(model, s.lora["target_modules"])
    config = LoraConfig(r=s.lora["r"], lora_alpha=s.lora["alpha"], lora_dropout=s.lora["dropout"],
                        target_modules="all-linear" if targets == ["all-linear"] else targets,
                        bias="none", task_type="CAUSAL_LM")
    try:
        with warnings.catch_warnings():  # transformers' deprecation notes about what peft calls
            warnings.simplefilter("ignore", FutureWarning)
            return get_peft_model(model, config)
    except ValueError as e:  # e.g. a target that is not a layer type LoRA can adapt
        from tunepipe.hf.models import linear_layer_names

        raise UserError(f"LoRA cannot adapt lora.target_modules {targets}: {e}. The model's linear layers are: "
                        f"{', '.join(linear_layer_names(model))}") from None


def plain_head(model: Any) -> tuple[Any, Any] | None:
    """(decoder, lm_head) when the logits are exactly lm_head(decoder output), else None."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = getattr(base, "config", None)
    if getattr(cfg, "model_type", None) not in PLAIN_HEADS:
        return None
    if any(getattr(cfg, a, None) not in (None, 1, 1.0) for a in ("final_logit_softcapping", "logit_scale",
                                                                  "logits_scaling")):
        return None
    decoder = getattr(base, getattr(base, "base_model_prefix", "model"), None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if decoder is None or head is None or decoder is base:
        return None
    return decoder, head


def loss_sum(model: Any, batch: Mapping[str, Any], head: tuple[Any, Any] | None) -> tuple[Any, int]:
    """(the summed cross-entropy over the batch's trained tokens, their number)."""
    targets = batch["labels"][:, 1:]
    sel = targets != IGNORE
    if head is not None:
        decoder, lm_head = head
        hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         use_cache=False).last_hidden_state
        logits = lm_head(hidden[:, :-1][sel])
    else:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
        logits = out.logits[:, :-1][sel]
    return F.cross_entropy(logits.float(), targets[sel], reduction="sum"), int(sel.sum())


def param_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for _name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def trainable_state(model: Any) -> dict[str, Any]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}
