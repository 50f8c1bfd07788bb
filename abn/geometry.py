"""Which input each architecture takes, and whether a network can be built for another one.

Every architecture is a ResNet ending in global average pooling, so it runs on any input at
least as large as its total downsampling (stem stride, stem pool, stage strides); its listed
geometry (``ARCHITECTURES``) is the one it was designed for and the default when training.
"""

from __future__ import annotations

import math

from abn.errors import ConfigError
from abn.supernet import ARCHITECTURES, ResNetSpec

ALLOWED_CHANNELS = (1, 3)  # grayscale or RGB: the two modes images are converted to


def downsampling(spec: ResNetSpec) -> int:
    """How many input pixels one pixel of the last feature map spans, per side."""
    pool = 2 if spec.stem_pool else 1
    return spec.stem_stride * pool * math.prod(stage.stride for stage in spec.stages)


def describe(spec: ResNetSpec) -> str:
    kind = "grayscale" if spec.in_channels == 1 else "RGB"
    return f"{spec.name} ({spec.in_channels}x{spec.input_size}x{spec.input_size} {kind})"


def architectures_help() -> str:
    """One line for ``--help``: every architecture with the input it expects."""
    return ", ".join(describe(spec) for spec in ARCHITECTURES.values())


def check_input_geometry(spec: ResNetSpec, channels: int, size: int) -> None:
    """Refuse a channel count other than 1 or 3, or an input the network would shrink to
    nothing, naming what is allowed."""
    if channels not in ALLOWED_CHANNELS:
        raise ConfigError(
            f"--channels {channels}: images are converted to 1 (grayscale) or 3 (RGB) channels"
        )
    if size < downsampling(spec):
        raise ConfigError(
            f"--input-size {size} is too small for {spec.name}, which downsamples by "
            f"{downsampling(spec)}; use at least {downsampling(spec)} (it was designed for "
            f"{spec.input_size})"
        )
