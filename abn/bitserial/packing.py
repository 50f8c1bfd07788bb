"""A switchable layer's weights at every width as bit-planes, packed once at load.

Bit order, shared with the C kernel: a receptive field is one bit row of ``kernel``
segments, one per kernel row, each starting on a 64-bit word; a segment holds that kernel
row's (kernel column, channel) bits, every position's channels padded to ``padded_channels``
(8, 16, 32 or a multiple of 64). The kernel builds an activation segment with one VPTESTMB per
64 levels of the NHWC level map, so the layout costs it nothing; the price is the padding of a
segment to whole words (for 3x3 convs: none at 16 or 64 channels, 20 % at 32).

Weights are offset-encoded, ``level = alpha * u + beta`` with ``u`` unsigned: at ``b >= 2``
bits ``u = level + 2**(b-1)`` (``alpha = 1``, ``beta = -2**(b-1)``), at 1 bit ``u = 1`` for
``+1`` and ``0`` for ``-1`` (``alpha = 2``, ``beta = -1``); the kernel adds ``beta * sum(a)``
once per position instead of weighting a sign plane negatively, so one formula serves every
width. Planes are stored ``[plane][output channel][word]``, the output channels padded to a
multiple of 4 (the kernel's step) with zeros; the kernel broadcasts one weight word against
one 512-bit load of eight output positions' activation words.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np
import torch

from abn.bitserial.build import BitSerialLayer
from abn.bitserial.cpu import BitSerialUnavailableError
from abn.layers import SwitchableConvBN

CHANNEL_PAD = 4  # output channels per kernel step (the C kernel's kChannels)
MAX_BITS = 8  # activation levels are bytes in the kernel's level map


def padded_channels(channels: int) -> int:
    """Channels of one position in the kernel's layout: 8, 16, 32, or a multiple of 64."""
    for size in (8, 16, 32):
        if channels <= size:
            return size
    return -(-channels // 64) * 64


def offset_encoding(levels: torch.Tensor, bits: int) -> tuple[torch.Tensor, int, int]:
    """``(u, alpha, beta)`` with ``levels == alpha * u + beta`` and ``0 <= u < 2**bits``."""
    if bits == 1:
        return (levels > 0).long(), 2, -1
    low = -(2 ** (bits - 1))
    return levels - low, 1, low


def pack_planes(u: torch.Tensor, bits: int, channels: int) -> tuple[torch.Tensor, int]:
    """``u`` (out, in, k, k) unsigned -> int64 planes ``(bits, out padded, words)`` and the
    number of words per row (``k`` segments of ``ceil(k * channels / 64)`` words)."""
    out_ch, in_ch, k, _ = u.shape
    segment = -(-(k * channels) // 64)
    grid = torch.zeros(-(-out_ch // CHANNEL_PAD) * CHANNEL_PAD, k, k, channels, dtype=torch.long)
    grid[:out_ch, :, :, :in_ch] = u.permute(0, 2, 3, 1)
    rows = torch.zeros(grid.shape[0], k, segment * 64, dtype=torch.long)
    rows[:, :, : k * channels] = grid.reshape(grid.shape[0], k, k * channels)
    rows = rows.reshape(grid.shape[0], -1)
    planes = [
        np.packbits(((rows >> j) & 1).to(torch.uint8).numpy(), axis=1, bitorder="little")
        for j in range(bits)
    ]
    return torch.from_numpy(np.stack(planes).view("<u8").view(np.int64)), k * segment


@dataclass(frozen=True)
class PackedWidth:
    """One layer at one width, as the kernel reads it; holds the tensors its struct points to."""

    struct: BitSerialLayer
    weights: torch.Tensor
    scale: torch.Tensor
    shift: torch.Tensor


@torch.no_grad()
def pack_width(layer: SwitchableConvBN, bits: int) -> PackedWidth:
    """``layer`` at ``bits``: its planes, and its BN pairs times both quantizer steps."""
    if not 1 <= bits <= MAX_BITS:
        raise BitSerialUnavailableError(
            f"{layer.name}: the bit-serial kernel runs widths 1 to {MAX_BITS}, not {bits}"
        )
    quantizer = layer.weight_quantizer
    weight = layer.weight.detach().float().cpu()
    u, alpha, beta = offset_encoding(quantizer.integer_levels(weight, bits), bits)
    channels = padded_channels(weight.shape[1])
    planes, words = pack_planes(u, bits, channels)
    act_step, act_high = layer.act_quantizer.step_for(bits)
    bn_scale, bn_shift = layer.bn.affine_table()
    w_step = float(quantizer.step(bits))
    scale = (bn_scale.double().cpu() * (act_step * w_step)).float().contiguous()
    shift = bn_shift.float().cpu().contiguous()
    struct = BitSerialLayer(
        weights=planes.data_ptr(),
        scale=scale.data_ptr(),
        shift=shift.data_ptr(),
        in_channels=weight.shape[1],
        out_channels=weight.shape[0],
        kernel=weight.shape[2],
        stride=layer.stride,
        padding=layer.padding,
        channels=channels,
        row_words=words,
        weight_bits=bits,
        act_bits=bits,
        act_step=ctypes.c_float(act_step).value,
        act_high=act_high,
        alpha=alpha,
        beta=beta,
    )
    return PackedWidth(struct, planes, scale, shift)
