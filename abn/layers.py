"""Switchable-precision building blocks: a conv whose weights and input activations run at the
width it is told, followed by a Bit-Specific BatchNorm; plus fixed 8-bit stem and classifier.

A width is passed per call, never stored as module state, so a batch can be split into groups
that run the same module at different widths (see :func:`run_grouped`).
"""

from __future__ import annotations

import operator
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from abn.errors import UnknownBitWidthError
from abn.quant import (
    MaxAbsWeightQuantizer,
    SwitchableActivationQuantizer,
    SwitchableWeightQuantizer,
)

FIXED_BITS = 8  # stem and classifier, unless a spec says otherwise (the FP32 reference)


class BitSpecificBatchNorm2d(nn.Module):
    """One BatchNorm per width (Quantizable DNNs): each width shifts the conv output statistics,
    so sharing one set of running statistics would be wrong for all but one width.

    ``bit_specific=False`` keeps a single BN for every width (the ablation).
    """

    def __init__(self, channels: int, bit_candidates: tuple[int, ...], bit_specific: bool = True):
        super().__init__()
        self.bit_candidates = tuple(bit_candidates)
        self.bit_specific = bit_specific
        keys = [str(b) for b in self.bit_candidates] if bit_specific else ["shared"]
        self.norms = nn.ModuleDict({k: nn.BatchNorm2d(channels) for k in keys})

    def norm_for(self, bits: int) -> nn.BatchNorm2d:
        return self.norms[str(bits) if self.bit_specific else "shared"]

    def forward(self, x: torch.Tensor, bits: int) -> torch.Tensor:
        return self.norm_for(bits)(x)


def fold_batch_norm(weight: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """A conv weight and bias equal to conv-then-BN in eval mode (BN is affine per channel)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return (
        (weight * scale.view(-1, 1, 1, 1)).contiguous(),
        (bn.bias - bn.running_mean * scale).contiguous(),
    )


def quantize_unsigned(x: torch.Tensor, step: float, high: int) -> torch.Tensor:
    """Inference-only activation quantizer with a precomputed step (see ``step_for``)."""
    if high == 0:  # full precision
        return x
    return torch.clamp(x / step, 0, high).round_().mul_(step)


class SwitchableConvBN(nn.Module):
    """Conv2d + Bit-Specific BN whose weights and input activations are quantized to ``bits``.

    Holds one full-precision weight shared by every width. For inference,
    :meth:`fold_for_inference` quantizes the weight once per width and folds that width's BN
    (exact in eval mode: BN is affine per output channel), so a request only pays for
    quantizing its activations.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        bit_candidates: tuple[int, ...],
        name: str,
        *,
        bit_specific_bn: bool = True,
        switchable_clipping: bool = True,
    ) -> None:
        super().__init__()
        self.name = name
        self.bit_candidates = tuple(sorted(bit_candidates))
        self.stride = stride
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        self.weight_quantizer = SwitchableWeightQuantizer(self.weight, self.bit_candidates)
        self.act_quantizer = SwitchableActivationQuantizer(
            self.bit_candidates, switchable=switchable_clipping
        )
        self.bn = BitSpecificBatchNorm2d(out_channels, self.bit_candidates, bit_specific_bn)
        self._folded: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None

    def check_bits(self, bits: int) -> int:
        """``bits`` as an int, or :class:`UnknownBitWidthError` (a float such as 4.0 included)."""
        try:
            value = operator.index(bits)  # ints, numpy and 0-d integer tensors; never floats
        except TypeError:
            raise UnknownBitWidthError(bits, self.bit_candidates, self.name) from None
        if isinstance(bits, bool) or value not in self.bit_candidates:
            raise UnknownBitWidthError(bits, self.bit_candidates, self.name)
        return value

    def forward(self, x: torch.Tensor, bits: int) -> torch.Tensor:
        bits = self.check_bits(bits)
        if self._folded is not None and not self.training:
            weight, bias, step, high = self._folded[bits]
            xq = quantize_unsigned(x, step, high)
            return F.conv2d(xq, weight, bias, self.stride, self.padding)
        xq = self.act_quantizer(x, bits)
        wq = self.weight_quantizer(self.weight, bits)
        return self.bn(F.conv2d(xq, wq, None, self.stride, self.padding), bits)

    @torch.no_grad()
    def fold_for_inference(self) -> None:
        """Cache, per width, the quantized weight with that width's eval-mode BN folded in, and
        the activation step as a Python number: a request then pays three elementwise ops and
        one conv per layer, instead of recomputing the step from its parameter every call."""
        folded = {}
        for bits in self.bit_candidates:
            wq = self.weight_quantizer(self.weight, bits)
            weight, bias = fold_batch_norm(wq, self.bn.norm_for(bits))
            step, high = self.act_quantizer.step_for(bits)
            folded[bits] = (weight, bias, step, high)
        self._folded = folded

    def unfold(self) -> None:
        self._folded = None

    def train(self, mode: bool = True) -> SwitchableConvBN:
        if mode:
            self._folded = None  # weights will change; a stale cache would be silently wrong
        return super().train(mode)


class FixedConvBN(nn.Module):
    """The stem: an 8-bit conv + BN + ReLU. Its input is the image, whose pixels are 8-bit
    already (decoded as uint8, then normalised affinely), so only its weights are quantized."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        bits: int = FIXED_BITS,
    ) -> None:
        super().__init__()
        self.name = "stem"
        self.bits = bits
        self.stride = stride
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        self.weight_quantizer = MaxAbsWeightQuantizer(bits)
        self.bn = nn.BatchNorm2d(out_channels)
        self._folded: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._folded is not None and not self.training:
            weight, bias = self._folded
            return F.relu(F.conv2d(x, weight, bias, self.stride, self.padding))
        wq = self.weight_quantizer(self.weight)
        return F.relu(self.bn(F.conv2d(x, wq, None, self.stride, self.padding)))

    @torch.no_grad()
    def fold_for_inference(self) -> None:
        self._folded = fold_batch_norm(self.weight_quantizer(self.weight), self.bn)

    def train(self, mode: bool = True) -> FixedConvBN:
        if mode:
            self._folded = None
        return super().train(mode)


class FixedLinear(nn.Module):
    """The classifier: 8-bit weights and 8-bit (unsigned, post-ReLU) input activations."""

    def __init__(self, in_features: int, out_features: int, bits: int = FIXED_BITS) -> None:
        super().__init__()
        self.name = "classifier"
        self.bits = bits
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.normal_(self.weight, std=0.01)
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.weight_quantizer = MaxAbsWeightQuantizer(bits)
        self.act_quantizer = SwitchableActivationQuantizer((bits,))
        self._folded: tuple[torch.Tensor, float, int] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._folded is not None and not self.training:
            weight, step, high = self._folded
            return F.linear(quantize_unsigned(x, step, high), weight, self.bias)
        xq = self.act_quantizer(x, self.bits)
        return F.linear(xq, self.weight_quantizer(self.weight), self.bias)

    @torch.no_grad()
    def fold_for_inference(self) -> None:
        step, high = self.act_quantizer.step_for(self.bits)
        self._folded = (self.weight_quantizer(self.weight).contiguous(), step, high)

    def train(self, mode: bool = True) -> FixedLinear:
        if mode:
            self._folded = None
        return super().train(mode)


def run_grouped(
    layer: Callable[[torch.Tensor, int], torch.Tensor],
    x: torch.Tensor,
    widths: int | torch.Tensor,
) -> torch.Tensor:
    """Run ``layer`` on every sample of ``x`` at that sample's width.

    ``widths`` is one int for the whole batch, or a tensor with one width per sample. Samples
    are grouped by width and each group runs the layer once; outputs go back in input order.
    No width is ever computed for a sample that did not ask for it.
    """
    if isinstance(widths, int):
        return layer(x, widths)
    if widths.dim() != 1 or widths.shape[0] != x.shape[0]:
        raise ValueError(
            f"per-sample widths must have one entry per sample: got shape "
            f"{tuple(widths.shape)} for a batch of {x.shape[0]}"
        )
    # One transfer of the widths to the host, then grouping in Python: for the batch sizes a
    # server sees this is several times cheaper than unique + nonzero per width on the device.
    groups: dict[int, list[int]] = {}
    for i, bits in enumerate(widths.tolist()):
        groups.setdefault(int(bits), []).append(i)
    if len(groups) == 1:
        return layer(x, next(iter(groups)))
    out: torch.Tensor | None = None
    for bits in sorted(groups):
        index = torch.tensor(groups[bits], device=x.device)
        part = layer(x.index_select(0, index), bits)
        if out is None:
            out = part.new_empty((x.shape[0], *part.shape[1:]))
        out.index_copy_(0, index, part)
    assert out is not None
    return out
