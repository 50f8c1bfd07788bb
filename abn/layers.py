"""Switchable-precision building blocks: a conv whose weights and input activations run at the
width it is told, followed by a Bit-Specific BatchNorm; plus fixed 8-bit stem and classifier.

A width is passed per call, never stored as module state, so a batch can be split into groups
that run the same module at different widths (see :func:`run_grouped`).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from abn.errors import UncalibratedBatchNormError, UnknownBitWidthError
from abn.quant import (
    MaxAbsWeightQuantizer,
    SwitchableActivationQuantizer,
    SwitchableWeightQuantizer,
)

FIXED_BITS = 8  # stem and classifier, unless a spec says otherwise (the FP32 reference)


BN_MODES = ("transitional", "per_width", "shared")

Widths = int | torch.Tensor  # one width for a whole batch, or one per sample
# the same, read to the host: what a network run hands its layers, so that grouping samples by
# width and looking up BN pairs need no device-to-host copy (a sync on a GPU) of their own
HostWidths = int | tuple[int, ...]


def host_widths(widths: Widths | HostWidths) -> HostWidths:
    """``widths`` on the host: one device-to-host copy for a tensor, none for the rest."""
    if isinstance(widths, torch.Tensor):
        return int(widths.item()) if widths.dim() == 0 else tuple(widths.tolist())
    return widths


def widths_of_rows(widths: HostWidths, rows: Sequence[int]) -> HostWidths:
    """The widths of the samples ``rows`` (one width for all stays one width)."""
    return widths if isinstance(widths, int) else tuple(widths[r] for r in rows)


class TransitionalBatchNorm2d(nn.Module):
    """One BatchNorm per (input width, own width) pair of a switchable layer (Bit-Mixer).

    A layer's output statistics depend on its own width *and* on the width of the layer that
    produced its input (a 2-bit feeder hands over a coarser, differently scaled map), so one
    BN per own width (Quantizable DNNs' bit-specific BN) is right only for uniform
    configurations. ``mode`` picks the ablations: ``"per_width"`` keys by own width only,
    ``"shared"`` keeps one BN for every width.

    A pair whose statistics were never estimated (``num_batches_tracked == 0``: neither trained
    nor calibrated) is an error in eval mode, never a silent fallback to another pair's BN.

    For inference :meth:`affine_table` gives every pair's BN as a per-channel scale and shift,
    row ``pair_index(in_bits, bits)``, so a batch whose samples come from different feeders is
    normalised by one gather and one multiply-add after a single convolution per own width.
    """

    def __init__(
        self,
        channels: int,
        input_widths: tuple[int, ...],
        bit_candidates: tuple[int, ...],
        mode: str = "transitional",
        name: str = "",
    ) -> None:
        super().__init__()
        if mode not in BN_MODES:
            raise ValueError(f"unknown BatchNorm mode {mode!r}; choose one of {BN_MODES}")
        self.name = name
        self.mode = mode
        self.input_widths = tuple(input_widths)
        self.bit_candidates = tuple(bit_candidates)
        self.norms = nn.ModuleDict(
            {k: nn.BatchNorm2d(channels) for k in dict.fromkeys(self.keys())}
        )
        # feeder width -> first row of its pairs in affine_table, built once, not per call
        self._first_row = {w: i * len(self.bit_candidates) for i, w in enumerate(self.input_widths)}

    def key(self, in_bits: int, bits: int) -> str:
        if self.mode == "transitional":
            return f"{in_bits}_{bits}"
        return str(bits) if self.mode == "per_width" else "shared"

    def keys(self) -> list[str]:
        """The key of every (input width, own width) pair, row order of :meth:`affine_table`."""
        return [self.key(i, b) for i in self.input_widths for b in self.bit_candidates]

    def norm_for(self, in_bits: int, bits: int) -> nn.BatchNorm2d:
        if in_bits not in self.input_widths:
            raise UnknownBitWidthError(in_bits, self.input_widths, f"the input of {self.name}")
        return self.norms[self.key(in_bits, bits)]

    def unseen_pairs(self) -> list[tuple[int, int]]:
        """Pairs whose running statistics were never estimated."""
        return [
            (i, b)
            for i in self.input_widths
            for b in self.bit_candidates
            if int(self.norms[self.key(i, b)].num_batches_tracked) == 0
        ]

    def check_seen(self, bn: nn.BatchNorm2d, in_bits: int, bits: int) -> None:
        if int(bn.num_batches_tracked) == 0:
            raise UncalibratedBatchNormError(self.name, [(in_bits, bits)])

    def forward(self, x: torch.Tensor, in_bits: int, bits: int) -> torch.Tensor:
        bn = self.norm_for(in_bits, bits)
        if not self.training:
            self.check_seen(bn, in_bits, bits)
        return bn(x)

    def check_input_widths(self, in_bits: HostWidths) -> None:
        """Refuse a feeder width this layer has no BN pairs for, rather than gather another
        pair's row. A network run never needs it (its feeder widths are the previous layer's,
        checked there); a caller of the layer itself does."""
        values = {in_bits} if isinstance(in_bits, int) else set(in_bits)
        unknown = values - self._first_row.keys()
        if unknown:
            raise UnknownBitWidthError(min(unknown), self.input_widths, f"the input of {self.name}")

    def pair_index(
        self, in_bits: HostWidths, bits: int, device: torch.device | None = None
    ) -> int | torch.Tensor:
        """Row of :meth:`affine_table` for each sample (``in_bits`` checked, on the host).

        One int when every sample has the same feeder width (one row broadcast over the group),
        else a tensor of rows on ``device``, built from the host copy the run already holds: no
        device-to-host copy here.
        """
        own = self.bit_candidates.index(bits)
        if isinstance(in_bits, int):
            return self._first_row[in_bits] + own
        if len(set(in_bits)) == 1:
            return self._first_row[in_bits[0]] + own
        return torch.tensor([self._first_row[v] + own for v in in_bits], device=device)

    @torch.no_grad()
    def affine_table(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Eval-mode BN of every pair as ``(scale, shift)``, each ``(pairs, channels)``."""
        unseen = self.unseen_pairs()
        if unseen:
            raise UncalibratedBatchNormError(self.name, unseen)
        scales, shifts = zip(*(bn_affine(self.norms[k]) for k in self.keys()), strict=True)
        return torch.stack(scales).contiguous(), torch.stack(shifts).contiguous()


def inference_memory_format(device: torch.device) -> torch.memory_format:
    """The memory layout inference runs fastest in on ``device``: channels-last on the CPU,
    where each convolution shape of ``resnet8_fmnist`` took 9-47 % less time in it at batch
    8 to 32, and the 16-channel 28x28 one 70 % less at batch 32, where oneDNN's NCHW kernel
    falls off (``scripts/conv_layout.py``, docs/profiling.md). A convolution's output takes
    its weight's layout and elementwise ops keep it, so the whole pass runs in it. Other
    devices keep the default layout."""
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


def bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """An eval-mode BN as the per-channel ``(scale, shift)`` it applies."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def fold_batch_norm(weight: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """A conv weight and bias equal to conv-then-BN in eval mode (BN is affine per channel)."""
    scale, shift = bn_affine(bn)
    return (weight * scale.view(-1, 1, 1, 1)).contiguous(), shift.contiguous()


def quantize_unsigned(x: torch.Tensor, step: float, high: int) -> torch.Tensor:
    """Inference-only activation quantizer with a precomputed step (see ``step_for``). In
    place after the division, which makes the one new tensor (a second one for the clamp was
    a large part of the model's time: docs/profiling.md)."""
    if high == 0:  # full precision
        return x
    return (x / step).clamp_(0, high).round_().mul_(step)


def relu_fresh(x: torch.Tensor) -> torch.Tensor:
    """ReLU of a tensor its caller has just made and no one else holds: in place when no
    gradient is being recorded (inference), a new tensor otherwise. The same numbers."""
    return F.relu(x) if torch.is_grad_enabled() else x.relu_()


def add_fresh(x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``x + other`` where ``x`` is a tensor its caller has just made and no one else holds:
    into ``x`` when no gradient is being recorded, as :func:`relu_fresh`."""
    return x + other if torch.is_grad_enabled() else x.add_(other)


def _conv_weight(in_channels: int, out_channels: int, kernel_size: int) -> nn.Parameter:
    """A square conv kernel, Kaiming-initialised (fan-out) for the ReLU that follows every
    conv here: one initialisation rule for the stem and the switchable layers alike."""
    weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
    nn.init.kaiming_normal_(weight, mode="fan_out", nonlinearity="relu")
    return weight


class SwitchableConvBN(nn.Module):
    """Conv2d + transitional BN whose weights and input activations are quantized to ``bits``.

    Holds one full-precision weight shared by every width. ``input_widths`` are the widths the
    layer feeding this one can run at (the stem's fixed width for the first block). For
    inference, :meth:`fold_for_inference` quantizes the weight once per width and turns every
    BN pair into a row of a (pair, channel) scale/shift table, so a request pays for
    quantizing its activations, one conv per width group and one gathered multiply-add.
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
        input_widths: tuple[int, ...] | None = None,
        bn_mode: str = "transitional",
        switchable_clipping: bool = True,
    ) -> None:
        super().__init__()
        self.name = name
        self.bit_candidates = tuple(sorted(bit_candidates))
        self.input_widths = tuple(sorted(input_widths or self.bit_candidates))
        self.stride = stride
        self.padding = kernel_size // 2
        self.weight = _conv_weight(in_channels, out_channels, kernel_size)
        self.weight_quantizer = SwitchableWeightQuantizer(self.weight, self.bit_candidates)
        self.act_quantizer = SwitchableActivationQuantizer(
            self.bit_candidates, switchable=switchable_clipping
        )
        self.bn = TransitionalBatchNorm2d(
            out_channels, self.input_widths, self.bit_candidates, bn_mode, name
        )
        self._folded: InferenceForm | None = None

    def check_bits(self, bits: int) -> int:
        """``bits`` as an int, or :class:`UnknownBitWidthError` (a float such as 4.0 included)."""
        try:
            value = operator.index(bits)  # ints, numpy and 0-d integer tensors; never floats
        except TypeError:
            raise UnknownBitWidthError(bits, self.bit_candidates, self.name) from None
        if isinstance(bits, bool) or value not in self.bit_candidates:
            raise UnknownBitWidthError(bits, self.bit_candidates, self.name)
        return value

    def forward(
        self, x: torch.Tensor, bits: int, in_bits: Widths | HostWidths, checked: bool = False
    ) -> torch.Tensor:
        """``x`` through the layer at ``bits``; ``in_bits`` is the width of the layer that
        produced ``x``, one int or one per sample (it picks the BN pair).

        Both are checked here unless ``checked``: a network run checks each layer's widths once,
        where they enter it, and hands them over on the host; a caller of the layer itself
        gets them checked (and read to the host) here.
        """
        if not checked:
            bits = self.check_bits(bits)
            in_bits = host_widths(in_bits)
            self.bn.check_input_widths(in_bits)
        if self._folded is not None and not self.training:
            return self._folded.run(x, bits, in_bits, self.stride, self.padding)
        xq = self.act_quantizer(x, bits)
        wq = self.weight_quantizer(self.weight, bits)
        y = F.conv2d(xq, wq, None, self.stride, self.padding)
        if isinstance(in_bits, int):
            return self.bn(y, in_bits, bits)
        return run_grouped(lambda part, feeder: self.bn(part, feeder, bits), y, in_bits)

    @torch.no_grad()
    def fold_for_inference(self) -> None:
        """Cache, per width, the quantized weight and the activation step as a Python number,
        and every BN pair as a row of one scale/shift table: a request then pays three
        elementwise ops, one conv and one multiply-add per layer and width group."""
        weights, steps = {}, {}
        for bits in self.bit_candidates:
            weight = self.weight_quantizer(self.weight, bits)
            weights[bits] = weight.contiguous(memory_format=inference_memory_format(weight.device))
            steps[bits] = self.act_quantizer.step_for(bits)
        scale, shift = self.bn.affine_table()
        self._folded = _FoldedConv(weights, steps, scale, shift, self.bn)

    def inference_form(self) -> InferenceForm:
        """The frozen form eval-mode forwards run through (after :meth:`fold_for_inference`)."""
        if self._folded is None:
            raise RuntimeError(f"{self.name}: not folded for inference")
        return self._folded

    def use_inference_form(self, form: InferenceForm) -> None:
        """Run eval-mode forwards through ``form``, another backend's frozen form of this
        layer computing the same arithmetic (abn.bitserial); training mode drops it as it
        drops the float one."""
        if self.training:
            raise RuntimeError(f"{self.name}: an inference form is for eval mode only")
        self._folded = form

    def train(self, mode: bool = True) -> SwitchableConvBN:
        if mode:
            self._folded = None  # weights will change; a stale cache would be silently wrong
        return super().train(mode)


class InferenceForm(Protocol):
    """A switchable layer frozen for inference: its output at ``bits`` for input ``x`` whose
    samples were produced at ``in_bits`` (one width, or one per sample)."""

    def run(
        self, x: torch.Tensor, bits: int, in_bits: HostWidths, stride: int, padding: int
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class _FoldedConv:
    """The frozen inference form of a :class:`SwitchableConvBN` (see ``fold_for_inference``).

    One conv per width group with that width's quantized weight, then each sample's BN pair as
    a per-channel multiply-add (one row of the (pair, channel) table for the whole group when
    its samples share a feeder width, else gathered per sample). Both ways do the same
    arithmetic per sample, so a sample's answer does not depend on what it is batched with;
    folding each pair's BN into its own conv weights would make uniform groups round
    differently from mixed ones.
    """

    weights: dict[int, torch.Tensor]  # width -> quantized weight
    steps: dict[int, tuple[float, int]]  # width -> (activation step, highest level)
    scale: torch.Tensor  # (pairs, channels)
    shift: torch.Tensor
    bn: TransitionalBatchNorm2d  # for pair_index

    def run(
        self, x: torch.Tensor, bits: int, in_bits: HostWidths, stride: int, padding: int
    ) -> torch.Tensor:
        step, high = self.steps[bits]
        y = F.conv2d(quantize_unsigned(x, step, high), self.weights[bits], None, stride, padding)
        row = self.bn.pair_index(in_bits, bits, y.device)
        if isinstance(row, int):
            scale = self.scale[row].view(1, -1, 1, 1)
            shift = self.shift[row].view(1, -1, 1, 1)
        else:
            scale, shift = self.scale[row][:, :, None, None], self.shift[row][:, :, None, None]
        if torch.is_grad_enabled():
            return torch.addcmul(shift, y, scale)
        return torch.addcmul(shift, y, scale, out=y)  # into the conv's fresh output: no new tensor


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
        self.weight = _conv_weight(in_channels, out_channels, kernel_size)
        self.weight_quantizer = MaxAbsWeightQuantizer(bits)
        self.bn = nn.BatchNorm2d(out_channels)
        self._folded: tuple[torch.Tensor, torch.Tensor, torch.memory_format] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._folded is not None and not self.training:
            weight, bias, layout = self._folded
            y = relu_fresh(F.conv2d(x, weight, bias, self.stride, self.padding))
            return y.contiguous(memory_format=layout)
        wq = self.weight_quantizer(self.weight)
        return F.relu(self.bn(F.conv2d(x, wq, None, self.stride, self.padding)))

    @torch.no_grad()
    def fold_for_inference(self) -> None:
        # The weight keeps the default layout and the output is laid out for the switchable
        # layers: on a one-channel image a channels-last conv sums in another order, and the
        # stem's inputs are not levels (integers) as the switchable layers' are, so its
        # output would round differently.
        weight, bias = fold_batch_norm(self.weight_quantizer(self.weight), self.bn)
        self._folded = (weight, bias, inference_memory_format(weight.device))

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
    layer: Callable[..., torch.Tensor],
    x: torch.Tensor,
    widths: Widths | HostWidths,
    in_widths: Widths | HostWidths | None = None,
) -> torch.Tensor:
    """Run ``layer`` on every sample of ``x`` at that sample's width.

    ``widths`` is one int for the whole batch, or one width per sample (a tensor, or the host
    copy a network run holds). Samples are grouped by width and each group runs the layer
    once; outputs go back in input order. No width is ever computed for a sample that did not
    ask for it. When ``in_widths`` (the widths of the layer that produced ``x``) is given, the
    layer is called as ``layer(part, width, in_widths_of_part)``.
    """
    if isinstance(widths, torch.Tensor) and widths.dim() != 1:
        raise ValueError(_per_sample_message(tuple(widths.shape), x.shape[0]))
    # On the host (one transfer of a tensor, none for a run's copy), then grouping in Python:
    # for the batch sizes a server sees this is several times cheaper than unique + nonzero
    # per width on the device.
    widths = host_widths(widths)
    in_widths = None if in_widths is None else host_widths(in_widths)
    extra = () if in_widths is None else (in_widths,)
    if isinstance(widths, int):
        return layer(x, widths, *extra)
    if len(widths) != x.shape[0]:
        raise ValueError(_per_sample_message((len(widths),), x.shape[0]))
    groups: dict[int, list[int]] = {}
    for i, bits in enumerate(widths):
        groups.setdefault(bits, []).append(i)
    if len(groups) == 1:
        return layer(x, next(iter(groups)), *extra)
    out: torch.Tensor | None = None
    for bits, rows in sorted(groups.items()):
        index = torch.tensor(rows, device=x.device)
        part_extra = ()
        if in_widths is not None:
            part_extra = (widths_of_rows(in_widths, rows),)
        part = layer(x[index], bits, *part_extra)  # indexing keeps x's layout; index_select not
        if out is None:
            out = _empty_rows_like(part, x.shape[0])
        out.index_copy_(0, index, part)
    assert out is not None
    return out


def _empty_rows_like(part: torch.Tensor, rows: int) -> torch.Tensor:
    """An uninitialised tensor of ``rows`` samples shaped and laid out as ``part``'s."""
    channels_last = (
        part.dim() == 4
        and not part.is_contiguous()
        and part.is_contiguous(memory_format=torch.channels_last)
    )
    layout = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(
        (rows, *part.shape[1:]), dtype=part.dtype, device=part.device, memory_format=layout
    )


def _per_sample_message(shape: tuple[int, ...], batch: int) -> str:
    return (
        f"per-sample widths must have one entry per sample: got shape {shape} for a batch of "
        f"{batch}"
    )
