"""The packed weight planes hold exactly the quantizer's integer levels, in the kernel's order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from abn.bitserial.packing import offset_encoding, pack_planes, padded_channels
from abn.quant import SwitchableWeightQuantizer


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_offset_encoding_gives_back_every_level(bits: int) -> None:
    weight = torch.randn(8, 5, 3, 3, generator=torch.Generator().manual_seed(bits))
    quantizer = SwitchableWeightQuantizer(weight, (bits,))
    levels = quantizer.integer_levels(weight, bits)
    with torch.no_grad():  # the inference form the kernels pack (training's STE form rounds
        # its 1-bit product differently in the last place for some weights)
        assert torch.equal(levels * quantizer.step(bits), quantizer(weight, bits))
    u, alpha, beta = offset_encoding(levels, bits)
    assert u.min() >= 0 and u.max() < 2**bits
    assert torch.equal(alpha * u + beta, levels)


def unpack(planes: torch.Tensor, words: int) -> np.ndarray:
    """(bits, out, words) int64 -> (bits, out, words * 64) bits, the naive way."""
    raw = planes.numpy().view(np.uint64)
    assert raw.shape[2] == words
    return ((raw[..., None] >> np.arange(64, dtype=np.uint64)) & 1).reshape(*raw.shape[:2], -1)


@pytest.mark.parametrize(("in_ch", "k"), [(3, 3), (16, 3), (32, 3), (70, 1), (64, 3)])
def test_a_weight_bit_sits_at_its_kernel_row_segment_column_and_channel(in_ch, k) -> None:
    out_ch, bits = 11, 3
    u = torch.randint(0, 2**bits, (out_ch, in_ch, k, k))
    planes, words = pack_planes(u, bits, padded_channels(in_ch))
    c = padded_channels(in_ch)
    segment = -(-(k * c) // 64)
    assert words == k * segment
    unpacked = unpack(planes, words)
    for o, ch, ky, kx in [(0, 0, 0, 0), (10, in_ch - 1, k - 1, k - 1), (5, in_ch // 2, k // 2, 0)]:
        position = ky * segment * 64 + kx * c + ch
        for j in range(bits):
            assert unpacked[j, o, position] == (int(u[o, ch, ky, kx]) >> j) & 1
    assert unpacked[:, out_ch:].sum() == 0  # padded output channels are zero
    assert unpacked.sum() == sum(((u >> j) & 1).sum().item() for j in range(bits))


def test_padded_channels_never_let_a_position_straddle_a_word() -> None:
    assert [padded_channels(c) for c in (1, 8, 9, 16, 17, 32, 33, 64, 65)] == [
        8,
        8,
        16,
        16,
        32,
        32,
        64,
        64,
        128,
    ]
