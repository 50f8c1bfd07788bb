"""BitOps of a configuration, from the real layer shapes.

BitOps of a conv or linear layer = MACs x b_w x b_a for one sample. Weights and activations of a
switchable layer share its width, so a layer at width b costs MACs x b^2. The stem and the
classifier are fixed at 8 bits and count MACs x 64. BatchNorm, pooling and additions are free.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import torch

from abn.supernet import Supernet


def conv_macs(weight_shape: Sequence[int], output_shape: Sequence[int]) -> int:
    """MACs per sample of a conv (or linear, as a 1x1 conv) from its weight and output shapes."""
    out_ch, in_per_group, *kernel = weight_shape
    out_positions = 1
    for d in output_shape[2:]:  # output_shape includes the batch dimension
        out_positions *= int(d)
    k = 1
    for d in kernel:
        k *= int(d)
    return int(out_ch) * out_positions * int(in_per_group) * k


@dataclass(frozen=True)
class CostTable:
    """Per-layer MACs of one architecture and the BitOps arithmetic on top of them."""

    layer_names: tuple[str, ...]
    layer_macs: tuple[int, ...]
    fixed_macs: int  # stem + classifier, always at fixed_bits x fixed_bits (8 x 8)
    bit_candidates: tuple[int, ...]
    fixed_bits: int = 8
    layer_input_shapes: tuple[tuple[int, ...], ...] = ()  # (C, H, W) feeding each layer

    @property
    def fixed_bitops(self) -> float:
        return float(self.fixed_macs * self.fixed_bits * self.fixed_bits)

    @property
    def total_macs(self) -> int:
        return self.fixed_macs + sum(self.layer_macs)

    def cost(self, config: Sequence[int]) -> float:
        """BitOps of one image at ``config`` (one width per switchable layer)."""
        if len(config) != len(self.layer_macs):
            raise ValueError(f"expected {len(self.layer_macs)} widths, got {len(config)}")
        return self.fixed_bitops + float(
            sum(m * b * b for m, b in zip(self.layer_macs, config, strict=True))
        )

    def batch_cost(self, configs: torch.Tensor) -> torch.Tensor:
        """BitOps per sample of an ``(N, L)`` integer tensor of widths, as float64."""
        macs = torch.tensor(self.layer_macs, dtype=torch.float64, device=configs.device)
        return self.fixed_bitops + (configs.double() ** 2 * macs).sum(dim=1)

    def layer_cost(self, index: int, bits: int) -> float:
        return float(self.layer_macs[index] * bits * bits)

    @cached_property  # read per request by the service: computed once per (immutable) table
    def min_bitops(self) -> float:
        b = min(self.bit_candidates)
        return self.cost([b] * len(self.layer_macs))

    @cached_property
    def max_bitops(self) -> float:
        b = max(self.bit_candidates)
        return self.cost([b] * len(self.layer_macs))

    def remaining(self, bits: int) -> list[float]:
        """Cost of layers ``i..L-1`` all at ``bits``, for each ``i`` (and 0 after the last)."""
        tail = [0.0]
        for m in reversed(self.layer_macs):
            tail.append(tail[-1] + m * bits * bits)
        return list(reversed(tail))

    def min_remaining(self) -> list[float]:
        """Cheapest cost of layers ``i..L-1`` for each ``i`` (and 0 after the last)."""
        return self.remaining(min(self.bit_candidates))

    def to_dict(self) -> dict:
        return {
            "layers": [
                {"name": n, "macs": m}
                for n, m in zip(self.layer_names, self.layer_macs, strict=True)
            ],
            "fixed_macs": self.fixed_macs,
            "min_bitops": self.min_bitops,
            "max_bitops": self.max_bitops,
        }


@torch.no_grad()
def cost_table(net: Supernet) -> CostTable:
    """Trace one forward pass and read every layer's MACs off its real shapes.

    The trace runs on a copy of the network in training mode, so it needs no BatchNorm
    statistics and leaves the network's own state untouched: the table depends on the layer
    shapes alone. (PyTorch's ``meta`` device would skip the arithmetic, but its first call
    costs seconds of set-up, more than the load-time budget of a small model.)
    """
    spec = net.spec
    probe = copy.deepcopy(net).train()
    shapes: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    inputs: dict[int, tuple[int, ...]] = {}
    fixed = [probe.stem, probe.classifier]
    modules = [*probe.switchable_layers, *fixed]

    def record(module: torch.nn.Module, inp: tuple, out: torch.Tensor) -> None:
        shapes[id(module)] = (tuple(module.weight.shape), tuple(out.shape))
        inputs[id(module)] = tuple(inp[0].shape[1:])

    for m in modules:
        m.register_forward_hook(record)
    device = next(net.parameters()).device
    x = torch.zeros(2, spec.in_channels, spec.input_size, spec.input_size, device=device)
    probe(x, max(probe.bit_candidates))
    layer_macs = tuple(conv_macs(*shapes[id(m)]) for m in probe.switchable_layers)
    fixed_macs = sum(conv_macs(*shapes[id(m)]) for m in fixed)
    return CostTable(
        tuple(net.layer_names),
        layer_macs,
        fixed_macs,
        net.bit_candidates,
        spec.fixed_bits,
        tuple(inputs[id(m)] for m in probe.switchable_layers),
    )
