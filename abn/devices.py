"""Which torch device a setting names: one rule for training, evaluation and serving."""

from __future__ import annotations

import torch

from abn.errors import ConfigError

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def resolve_device(setting: str) -> torch.device:
    """``auto``: CUDA when available, else the CPU; ``cpu``, ``cuda`` and ``cuda:N`` as named.

    A CUDA device that is not there is an error, not a silent fallback to the CPU, because
    whoever asks for a GPU wants to know they did not get one.
    """
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(setting)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ConfigError(f"the device must be {DEVICE_CHOICES}, not {setting!r}")
    if device.type == "cpu":
        return device
    if not torch.cuda.is_available():
        raise ConfigError(f"device {setting!r} asked for but no CUDA device is available to torch")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(
            f"device {setting!r} asked for but torch sees {torch.cuda.device_count()} CUDA "
            f"device(s)"
        )
    return device
