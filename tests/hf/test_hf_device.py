"""Device selection and the thread count."""

from __future__ import annotations

import pytest
import torch

from tunepipe.errors import UserError
from tunepipe.hf.device import cpu_threads, placement, resolve_device

HAS_CUDA = torch.cuda.is_available()
HAS_MPS = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def test_auto_takes_cuda_then_mps_then_cpu() -> None:
    assert resolve_device("auto") == ("cuda" if HAS_CUDA else "mps" if HAS_MPS else "cpu")
    assert resolve_device("cpu") == "cpu"


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a CUDA GPU")
def test_asking_for_an_absent_cuda_gpu_is_a_user_error_that_says_what_to_do() -> None:
    with pytest.raises(UserError) as e:
        resolve_device("cuda")
    assert "no CUDA GPU" in str(e.value) and "device: auto or cpu" in str(e.value)


@pytest.mark.skipif(HAS_MPS, reason="this machine has Apple's Metal backend")
def test_asking_for_an_absent_mps_is_a_user_error() -> None:
    with pytest.raises(UserError, match="mps was asked for"):
        resolve_device("mps")


def test_an_unknown_device_is_a_user_error() -> None:
    with pytest.raises(UserError, match="auto, cpu, cuda, mps"):
        resolve_device("tpu")


def test_cpu_runs_in_float32_without_autocast() -> None:
    p = placement("cpu", lora=True)
    assert p.weights == torch.float32 and p.compute is None and p.dtype_name == "float32"


def test_the_thread_count_applies_inside_and_is_restored_after() -> None:
    before = torch.get_num_threads()
    with cpu_threads(2) as n:
        assert n == 2 and torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
    with cpu_threads(None) as n:
        assert n == before
