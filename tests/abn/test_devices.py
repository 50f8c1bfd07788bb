"""abn.devices: one rule, for training and serving, for which device a setting names."""

from __future__ import annotations

import pytest
import torch

from abn.devices import resolve_device
from abn.errors import ConfigError


def test_auto_and_cpu() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("setting", ["tpu", "gpu", "cuda:x", ""])
def test_a_device_torch_cannot_run_on_is_refused_naming_the_choices(setting: str) -> None:
    with pytest.raises(ConfigError, match="auto, cpu, cuda or cuda:N"):
        resolve_device(setting)


@pytest.mark.parametrize("setting", ["cuda", "cuda:1"])
def test_a_missing_gpu_is_an_error_not_a_fallback(setting: str) -> None:
    if torch.cuda.is_available() and setting == "cuda":
        assert resolve_device(setting).type == "cuda"
        return
    if torch.cuda.device_count() > 1:
        pytest.skip("this machine has a second GPU")
    with pytest.raises(ConfigError, match="CUDA device"):
        resolve_device(setting)
