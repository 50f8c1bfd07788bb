"""The bit-serial inference form of a switchable layer: one kernel call per width group.

It replaces the float folded form (:class:`abn.layers._FoldedConv`) behind the same
``run``, so grouping samples by width, the transitional BN pair per sample and everything
around the layer (policy, residual sums, pooling) stay as they are.
"""

from __future__ import annotations

import ctypes

import torch

from abn.bitserial.build import load_kernel
from abn.bitserial.packing import PackedWidth, pack_width
from abn.layers import HostWidths, SwitchableConvBN, TransitionalBatchNorm2d


class BitSerialConv:
    """Every width of one :class:`SwitchableConvBN`, packed, and the kernel that runs them."""

    def __init__(self, layer: SwitchableConvBN, kernel: str) -> None:
        self.lib = load_kernel(kernel)
        self.name = layer.name
        self.bn: TransitionalBatchNorm2d = layer.bn
        self.in_channels = int(layer.weight.shape[1])
        self.out_channels = int(layer.weight.shape[0])
        self.kernel_size = int(layer.weight.shape[2])
        self.stride, self.padding = layer.stride, layer.padding
        self.widths: dict[int, PackedWidth] = {
            b: pack_width(layer, b) for b in layer.bit_candidates
        }
        # the struct pointer per width, built once: a call then converts no Python objects
        self._layer_ptr = {b: ctypes.byref(p.struct) for b, p in self.widths.items()}

    def __deepcopy__(self, memo: dict) -> BitSerialConv:
        """Frozen after packing, so a copied network (abn.bitops.cost_table traces one) may
        share it; ctypes structs holding pointers cannot be copied anyway."""
        return self

    def run(
        self, x: torch.Tensor, bits: int, in_bits: HostWidths, stride: int, padding: int
    ) -> torch.Tensor:
        """``x`` (float32, CPU) through the layer at ``bits``, BN pair per sample. The kernel
        reads and writes channels-last, the layout the CPU inference path runs in
        (:func:`abn.layers.inference_memory_format`), so a network's layers pass their outputs
        on without a copy; an input in another layout is copied once."""
        n, _, h, w = x.shape
        row = self.bn.pair_index(in_bits, bits)
        if isinstance(row, int):
            pairs = torch.full((n,), row, dtype=torch.int64)
        else:  # one row per sample
            pairs = torch.as_tensor(row, dtype=torch.int64).contiguous()
        self._check(x, pairs, stride, padding)
        x = x.contiguous(memory_format=torch.channels_last)
        oh = (h + 2 * padding - self.kernel_size) // stride + 1
        ow = (w + 2 * padding - self.kernel_size) // stride + 1
        out = torch.empty(
            n, self.out_channels, oh, ow, dtype=torch.float32, memory_format=torch.channels_last
        )
        status = self.lib.abn_bitserial_conv(
            self._layer_ptr[bits], x.data_ptr(), n, h, w, pairs.data_ptr(), out.data_ptr()
        )
        if status != 0:
            raise RuntimeError(f"{self.name}: the bit-serial kernel refused the call ({status})")
        return out

    def _check(self, x: torch.Tensor, pairs: torch.Tensor, stride: int, padding: int) -> None:
        """What the kernel reads through raw pointers must be what it was packed for: a wrong
        shape here would be an out-of-bounds read there, not an exception."""
        if x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() != 4:
            raise ValueError(
                f"{self.name}: the bit-serial kernel takes a float32 (N, C, H, W) tensor on "
                f"the CPU, not {x.dtype} {tuple(x.shape)} on {x.device}"
            )
        if x.shape[1] != self.in_channels or pairs.numel() != x.shape[0]:
            raise ValueError(
                f"{self.name}: expected {self.in_channels} channels and one feeder width per "
                f"sample, got {x.shape[1]} channels and {pairs.numel()} widths for "
                f"{x.shape[0]} samples"
            )
        if (stride, padding) != (self.stride, self.padding):
            raise ValueError(
                f"{self.name}: packed for stride {self.stride}, padding "
                f"{self.padding}; called with {stride}, {padding}"
            )
