"""Which device, dtype and number of CPU threads a local run uses."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tunepipe.errors import UserError

DEVICES = ("auto", "cpu", "cuda", "mps")


@dataclass(frozen=True)
class Placement:
    """Where and how the model runs.

    ``weights``: the dtype the frozen base weights are kept in; ``compute``: the autocast dtype of
    the forward pass, or None for none (full precision). Trainable weights stay float32.
    """

    device: str  # "cpu", "cuda", "mps"
    weights: Any  # torch.dtype
    compute: Any  # torch.dtype | None

    @property
    def dtype_name(self) -> str:
        name = str(self.weights).removeprefix("torch.")
        return name if self.compute is None else f"{name} weights, {str(self.compute).removeprefix('torch.')} autocast"


def _mps_available(torch: Any) -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(requested: str) -> str:
    """``auto`` -> CUDA, then MPS, then CPU; an explicit device that is absent -> UserError."""
    import torch

    if requested not in DEVICES:
        raise UserError(f"unknown device '{requested}': use one of {', '.join(DEVICES)}")
    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if _mps_available(torch) else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("device: cuda was asked for, but torch sees no CUDA GPU (the installed torch "
                        f"{torch.__version__} may be a CPU build); use device: auto or cpu, or install a CUDA "
                        "build of torch")
    if requested == "mps" and not _mps_available(torch):
        raise UserError("device: mps was asked for, but Apple's Metal backend is not available here; "
                        "use device: auto or cpu")
    return requested


def placement(device: str, lora: bool) -> Placement:
    """float32 on CPU and MPS. On CUDA: bfloat16 autocast where the GPU has it (else float16 is
    risky without a loss scaler, so float32); LoRA keeps the frozen base in bfloat16 too."""
    import torch

    if device == "cuda" and torch.cuda.is_bf16_supported():
        return Placement(device, torch.bfloat16 if lora else torch.float32, torch.bfloat16)
    return Placement(device, torch.float32, None)


@contextmanager
def cpu_threads(threads: int | None) -> Iterator[int]:
    """Run with ``torch.set_num_threads(threads)`` and restore the previous count after."""
    import torch

    before = torch.get_num_threads()
    n = max(1, int(threads)) if threads else before
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)
