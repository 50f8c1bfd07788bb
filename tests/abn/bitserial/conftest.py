"""Shared by the bit-serial tests: which kernels this CPU runs, and a random calibrated layer."""

from __future__ import annotations

import pytest
import torch

from abn.bitserial.cpu import KERNELS, missing_flags
from abn.layers import SwitchableConvBN

RUNNABLE = [k for k in KERNELS if not missing_flags(k)]


def kernels() -> list:
    """Every kernel, the ones this CPU cannot run marked as skipped (with the reason)."""
    return [
        pytest.param(k, marks=pytest.mark.skipif(bool(missing_flags(k)), reason=f"CPU lacks {k}"))
        for k in KERNELS
    ]


def random_layer(
    in_ch: int,
    out_ch: int,
    kernel: int,
    stride: int,
    bits: tuple[int, ...],
    input_widths: tuple[int, ...],
    seed: int = 0,
) -> SwitchableConvBN:
    """A switchable layer with random weights, steps, clip levels and BN statistics (every
    pair marked as seen), in eval mode and folded: what a trained, calibrated layer looks like
    to an inference backend."""
    g = torch.Generator().manual_seed(seed)
    layer = SwitchableConvBN(
        in_ch, out_ch, kernel, stride, bits, "test.conv", input_widths=input_widths
    )
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * 0.2)
        for step in layer.weight_quantizer.steps.values():
            step.mul_(0.5 + torch.rand((), generator=g))
        for alpha in layer.act_quantizer.clip_levels.values():
            alpha.mul_(0.5 + torch.rand((), generator=g))
        for bn in layer.bn.norms.values():
            bn.running_mean.copy_(torch.randn(out_ch, generator=g))
            bn.running_var.copy_(torch.rand(out_ch, generator=g) + 0.5)
            bn.weight.copy_(torch.randn(out_ch, generator=g))
            bn.bias.copy_(torch.randn(out_ch, generator=g))
            bn.num_batches_tracked.fill_(1)
    layer.eval()
    layer.fold_for_inference()
    return layer
