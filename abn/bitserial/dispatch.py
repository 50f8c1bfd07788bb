"""Each layer's widths on whichever kernel runs them faster here: bit-serial or float.

The bit-serial kernel's time grows with ``bits ** 2``; the float path's is the same at every
width. On the CPUs measured (docs/bitserial.md) bit-serial is 2-4 times faster at 1 and 2 bits
and 3-6 times slower at 8, with the crossing near 3 bits, and where it falls differs per layer
(channels, map size). So the choice is measured at load, per layer and width, on this machine:
both forms compute the same integers (docs/bitserial/exactness.md), so a network may mix them
freely, layer by layer and width by width, and a request's answer does not depend on which
ran.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

import torch

from abn.bitserial.conv import BitSerialConv
from abn.layers import HostWidths, InferenceForm, SwitchableConvBN
from abn.supernet import Supernet

# Each form's time is fitted as fixed + per image x images from calls at these two batch
# sizes: the float path's per-call overhead is the larger, the bit-serial kernel's per-image
# work is the larger at wide widths, so which is faster depends on the group's size as well as
# its width. A served batch holds 1 to ABN_MAX_BATCH_SIZE (default 32) images, an adaptive
# batch's width groups fewer.
TIMING_BATCHES = (4, 32)
TIMING_REPEATS = 5  # interleaved calls per form, width and batch size; the median is fitted


@dataclass(frozen=True)
class LinearCost:
    """A form's fitted time for one width of one layer, in microseconds:
    ``fixed_us + per_image_us * images``."""

    fixed_us: float
    per_image_us: float


@dataclass(frozen=True)
class KernelOption:
    """One kernel's form of one layer at one width, and its fitted time."""

    name: str  # "float" or "bitserial"
    form: InferenceForm
    cost: LinearCost


@dataclass(frozen=True)
class WidthChoice:
    """Which kernel runs a layer's calls at one width, decided at load: ``small`` for groups
    of up to ``up_to`` images (the fitted costs' crossing), ``large`` above."""

    small: KernelOption
    large: KernelOption
    up_to: float

    @classmethod
    def between(cls, a: KernelOption, b: KernelOption) -> WidthChoice:
        """The cheaper of ``a`` and ``b`` at every group size: the one with the lower fixed
        cost up to where the other's lower cost per image overtakes it."""
        small, large = (a, b) if a.cost.fixed_us <= b.cost.fixed_us else (b, a)
        if small.cost.per_image_us <= large.cost.per_image_us:
            return cls(small, large, math.inf)
        up_to = (large.cost.fixed_us - small.cost.fixed_us) / (
            small.cost.per_image_us - large.cost.per_image_us
        )
        return cls(small, large, up_to)

    def describe(self) -> str:
        """In words, for the start log."""
        if self.up_to == math.inf:
            return f"{self.small.name} at every size"
        if self.up_to < 1:
            return f"{self.large.name} at every size"
        return f"{self.small.name} up to {self.up_to:.1f} images, {self.large.name} above"


@dataclass(frozen=True)
class FastestForm:
    """A switchable layer's inference form that runs each call on the kernel chosen at load
    for its width and group size (:class:`WidthChoice`, :func:`use_fastest_kernels`)."""

    by_width: dict[int, WidthChoice]

    def run(
        self, x: torch.Tensor, bits: int, in_bits: HostWidths, stride: int, padding: int
    ) -> torch.Tensor:
        choice = self.by_width[bits]
        option = choice.small if x.shape[0] <= choice.up_to else choice.large
        return option.form.run(x, bits, in_bits, stride, padding)

    def crossings(self) -> dict[int, str]:
        """Per width, in words, which kernel runs which group sizes (the start log)."""
        return {bits: choice.describe() for bits, choice in self.by_width.items()}


def _call_us(
    form: InferenceForm, layer: SwitchableConvBN, x: torch.Tensor, bits: int, in_bits: int
) -> float:
    start = time.perf_counter()
    form.run(x, bits, in_bits, layer.stride, layer.padding)
    return 1e6 * (time.perf_counter() - start)


def _fit(small: float, large: float) -> LinearCost:
    """The line through the medians at the two timing batch sizes (time never falls with
    images, so a negative slope from noise is taken as flat)."""
    lo, hi = TIMING_BATCHES
    per_image = max(0.0, (large - small) / (hi - lo))
    return LinearCost(max(0.0, small - per_image * lo), per_image)


def _fitted_costs(
    layer: SwitchableConvBN, forms: list[InferenceForm], shape: tuple[int, int, int]
) -> dict[tuple[int, int], LinearCost]:
    """``(width, form index) -> LinearCost``, every call interleaved with the others so a
    neighbour's load on a shared machine falls on all alike; each form's first call at each
    width and size (oneDNN builds a kernel per shape) is made before any is timed."""
    in_bits = layer.bn.input_widths[0]
    inputs = [
        torch.rand(n, *shape).contiguous(memory_format=torch.channels_last) for n in TIMING_BATCHES
    ]
    cells = [(b, k, x) for b in layer.bit_candidates for k in range(len(forms)) for x in inputs]
    for bits, k, x in cells:
        forms[k].run(x, bits, in_bits, layer.stride, layer.padding)
    times: dict[tuple[int, int, int], list[float]] = {}
    for _ in range(TIMING_REPEATS):
        for bits, k, x in cells:
            times.setdefault((bits, k, x.shape[0]), []).append(
                _call_us(forms[k], layer, x, bits, in_bits)
            )
    small, large = TIMING_BATCHES
    return {
        (bits, k): _fit(
            statistics.median(times[(bits, k, small)]), statistics.median(times[(bits, k, large)])
        )
        for bits in layer.bit_candidates
        for k in range(len(forms))
    }


def use_fastest_kernels(
    net: Supernet, input_shapes: list[tuple[int, int, int]], kernel: str = "avx512"
) -> dict[str, dict[int, str]]:
    """Fold ``net`` for inference and run each switchable layer's calls on the faster of the
    float and bit-serial kernels for the call's width and size, both timed here on inputs of
    the layer's shape (``input_shapes``, one ``(C, H, W)`` per switchable layer). Returns, per
    layer and width, which kernel runs which group sizes, in words.

    Refuses (:class:`abn.bitserial.BitSerialUnavailableError`) what :func:`use_bitserial`
    refuses; the float path is untouched until every layer is timed.
    """
    net.fold_for_inference()
    layers = net.switchable_layers
    names = ("float", "bitserial")
    forms = [[layer.inference_form(), BitSerialConv(layer, kernel)] for layer in layers]
    with torch.inference_mode():  # under a second: no progress bar in a server's log
        costs = [
            _fitted_costs(layer, pair, shape)
            for layer, pair, shape in zip(layers, forms, input_shapes, strict=True)
        ]
    report = {}
    for layer, pair, cost in zip(layers, forms, costs, strict=True):
        fastest = FastestForm(
            {
                b: WidthChoice.between(
                    KernelOption(names[0], pair[0], cost[(b, 0)]),
                    KernelOption(names[1], pair[1], cost[(b, 1)]),
                )
                for b in layer.bit_candidates
            }
        )
        layer.use_inference_form(fastest)
        report[layer.name] = fastest.crossings()
    return report
