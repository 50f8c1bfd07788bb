"""One layer: the bit-serial kernels compute the float path's arithmetic, to float rounding.

The float path convolves ``levels_a * step_a`` with ``levels_w * step_w`` in float32; the
kernel sums ``levels_a * levels_w`` exactly in integers and scales once. Their difference is
the float path's rounding, bounded by ``(K + 4) * 2**-24`` times the magnitude sum
``step_a * step_w * |bn scale| * sum |levels_a| |levels_w|`` of each output (K the terms of
the sum), plus a rounding of the result: the bound asserted here, for every output.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from abn.bitserial.conv import BitSerialConv
from abn.layers import quantize_unsigned

from .conftest import kernels, random_layer

EPS = 2.0**-24
SHAPES = [  # in, out, kernel, stride, size
    (16, 16, 3, 1, 28),
    (16, 32, 3, 2, 28),
    (32, 32, 3, 1, 14),
    (16, 32, 1, 2, 28),
    (3, 5, 3, 1, 9),
    (40, 12, 3, 2, 11),
    (70, 9, 1, 1, 5),
    (64, 64, 3, 1, 7),
]


def rounding_bound(layer, x: torch.Tensor, bits: int, rows, y: torch.Tensor) -> torch.Tensor:
    step_a, high = layer.act_quantizer.step_for(bits)
    q = quantize_unsigned(x, step_a, high) / step_a
    w = layer.weight_quantizer
    levels = w.integer_levels(layer.weight, bits).double()
    magnitude = F.conv2d(q.double().abs(), levels.abs(), None, layer.stride, layer.padding)
    scale, _ = layer.bn.affine_table()
    per_sample = scale[rows].double().abs() * step_a * float(w.step(bits).detach())
    k = layer.weight[0].numel()
    return (k + 4) * EPS * magnitude * per_sample[:, :, None, None] + 2 * EPS * y.abs().double()


def assert_within_rounding(layer, form: BitSerialConv, x: torch.Tensor, b: int, in_bits) -> None:
    expected = layer(x, b, in_bits)
    got = form.run(x, b, in_bits, layer.stride, layer.padding)
    rows = torch.as_tensor(layer.bn.pair_index(in_bits, b)).expand(x.shape[0])
    bound = rounding_bound(layer, x, b, rows, expected)
    assert got.shape == expected.shape
    excess = ((got - expected).abs().double() - bound).max().item()
    assert excess <= 0, f"{b}-bit: beyond the rounding bound by {excess:.3g}"


@pytest.mark.parametrize("kernel", kernels())
@pytest.mark.parametrize(("in_ch", "out_ch", "k", "stride", "size"), SHAPES)
def test_every_width_matches_the_float_path(kernel, in_ch, out_ch, k, stride, size) -> None:
    bits = (1, 2, 3, 4, 8)
    layer = random_layer(in_ch, out_ch, k, stride, bits, input_widths=(2, 8), seed=in_ch + k)
    form = BitSerialConv(layer, kernel)
    g = torch.Generator().manual_seed(1)
    x = torch.relu(torch.randn(5, in_ch, size, size, generator=g) * 1.5)  # zeros and clipping
    for b in bits:
        assert_within_rounding(layer, form, x, b, (2, 8, 8, 2, 8))  # BN pair per sample


@pytest.mark.parametrize("kernel", kernels())
def test_one_feeder_width_for_the_group_and_ties_round_to_even(kernel) -> None:
    layer = random_layer(16, 8, 3, 1, (2, 4), input_widths=(4,))
    step, high = layer.act_quantizer.step_for(4)
    levels = torch.randint(0, high, (2, 16, 6, 6), generator=torch.Generator().manual_seed(0))
    x = (levels.float() + 0.5) * step  # mostly exact ties of x / step: both round half to even
    assert_within_rounding(layer, BitSerialConv(layer, kernel), x, 4, 4)


def test_both_kernels_agree_exactly_where_both_run() -> None:
    from abn.bitserial.cpu import missing_flags

    if missing_flags("avx512"):
        pytest.skip("this CPU cannot run the avx512 kernel")
    layer = random_layer(32, 24, 3, 2, (1, 3, 8), input_widths=(3,))
    x = torch.relu(torch.randn(3, 32, 13, 13))
    for b in (1, 3, 8):
        fast = BitSerialConv(layer, "avx512").run(x, b, 3, 2, 1)
        portable = BitSerialConv(layer, "scalar").run(x, b, 3, 2, 1)
        torch.testing.assert_close(fast, portable, rtol=2 * EPS, atol=0.0)


@pytest.mark.parametrize("kernel", kernels())
def test_what_the_kernel_cannot_read_safely_is_refused_before_it(kernel) -> None:
    layer = random_layer(16, 8, 3, 1, (2,), input_widths=(2, 4))
    form = BitSerialConv(layer, kernel)
    x = torch.rand(2, 16, 6, 6)
    with pytest.raises(ValueError, match=r"float32 \(N, C, H, W\)"):
        form.run(x.double(), 2, 2, 1, 1)
    with pytest.raises(ValueError, match="expected 16 channels"):
        form.run(x[:, :8], 2, 2, 1, 1)
    with pytest.raises(ValueError, match="one feeder width per sample"):
        form.run(x, 2, (2, 4, 2), 1, 1)
    with pytest.raises(ValueError, match="packed for stride 1"):
        form.run(x, 2, 2, 2, 1)
