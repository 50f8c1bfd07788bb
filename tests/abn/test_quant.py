"""abn.quant: levels, clip ranges and straight-through gradients of the fake quantizers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from abn.quant import (
    FULL_PRECISION,
    SwitchableActivationQuantizer,
    SwitchableWeightQuantizer,
    _LSQFunction,
    initial_weight_step,
    lsq_grad_scale,
    lsq_quantize,
    round_ste,
    scale_grad,
    signed_levels,
    unsigned_levels,
)
from abn.supernet import DEFAULT_BIT_CANDIDATES

BITS = DEFAULT_BIT_CANDIDATES
MULTI_LEVEL = tuple(b for b in BITS if b > 1)  # 1-bit weights are binary, not on this grid


def distinct(t: torch.Tensor) -> int:
    return int(torch.unique(t.detach()).numel())


@pytest.mark.parametrize("bits", MULTI_LEVEL)
def test_weights_take_at_most_2b_values_on_the_step_grid(bits: int) -> None:
    torch.manual_seed(bits)
    weight = torch.randn(64, 32, 3, 3) * 0.1
    weight[0, 0, 0, 0] = 5.0  # an outlier far beyond the range: it must saturate
    weight[0, 0, 0, 1] = -5.0
    quantizer = SwitchableWeightQuantizer(weight, BITS)
    q = quantizer(weight, bits).detach()
    step = quantizer.steps[str(bits)].detach().abs()
    low, high = signed_levels(bits)
    assert distinct(q) <= 2**bits
    tol = 1e-5  # relative: the quantizer adds 1e-8 to the step to keep it positive
    assert float(q.min()) >= low * float(step) * (1 + tol)
    assert float(q.max()) <= high * float(step) * (1 + tol)
    assert q.max() == pytest.approx(float(high * step), rel=1e-5)  # saturated at the top
    k = q / step
    assert torch.allclose(k, k.round(), atol=1e-4)  # integer multiples of the step


@pytest.mark.parametrize("bits", BITS)
def test_activations_take_at_most_2b_values_within_the_clip_level(bits: int) -> None:
    torch.manual_seed(bits)
    x = torch.randn(8, 16, 10, 10) * 3.0  # negatives and values far above every clip level
    quantizer = SwitchableActivationQuantizer(BITS)
    q = quantizer(x, bits).detach()
    alpha = float(quantizer.clip_level(bits).detach())
    assert distinct(q) <= 2**bits
    assert distinct(q) > 1
    assert float(q.min()) == 0.0  # negatives clip to zero (unsigned levels)
    assert float(q.max()) <= alpha * (1 + 1e-6)
    assert float(q.max()) == pytest.approx(alpha, rel=1e-5)  # values above alpha saturate
    step = alpha / unsigned_levels(bits)[1]
    k = q / step
    assert torch.allclose(k, k.round(), atol=1e-4)


def test_full_precision_width_is_the_identity() -> None:
    weight = torch.randn(4, 4)
    assert torch.equal(SwitchableWeightQuantizer(weight, (8,))(weight, FULL_PRECISION), weight)
    x = torch.randn(3, 5)
    assert torch.equal(SwitchableActivationQuantizer((8,))(x, FULL_PRECISION), x)


@pytest.mark.parametrize("bits", (1, 2, 4, 8))
def test_gradients_reach_weights_and_only_the_used_step(bits: int) -> None:
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(16, 8) * 0.2)
    quantizer = SwitchableWeightQuantizer(weight, BITS)
    target = torch.randn(16, 8)
    ((quantizer(weight, bits) - target) ** 2).sum().backward()
    assert weight.grad is not None and bool(weight.grad.abs().sum() > 0)
    used = quantizer.steps[str(bits)].grad
    assert used is not None and float(used.abs()) > 0
    for other in BITS:
        if other != bits:
            assert quantizer.steps[str(other)].grad is None


@pytest.mark.parametrize("bits", (1, 2, 4, 8))
def test_gradients_reach_activations_and_only_the_used_clip_level(bits: int) -> None:
    torch.manual_seed(0)
    x = (torch.randn(4, 8, 6, 6) * 2).requires_grad_()
    quantizer = SwitchableActivationQuantizer(BITS)
    quantizer(x, bits).pow(2).sum().backward()
    assert x.grad is not None and bool(x.grad.abs().sum() > 0)
    # straight-through inside the range, zero where the input was clipped
    alpha = float(quantizer.clip_level(bits).detach())
    inside = (x > 0) & (x < alpha)
    assert bool((x.grad[~inside] == 0).all())
    assert bool((x.grad[inside] != 0).any())
    used = quantizer.clip_levels[str(bits)].grad
    assert used is not None and float(used.abs()) > 0
    for other in BITS:
        if other != bits:
            assert quantizer.clip_levels[str(other)].grad is None


def test_shared_clipping_ablation_uses_one_level_for_every_width() -> None:
    quantizer = SwitchableActivationQuantizer(BITS, switchable=False)
    assert list(quantizer.clip_levels.keys()) == ["shared"]
    with torch.no_grad():
        assert float(quantizer.clip_level(2)) == float(quantizer.clip_level(8))


@pytest.mark.parametrize("bits", (2, 4, 8))
def test_clip_levels_learn_at_a_useful_rate(bits: int) -> None:
    torch.manual_seed(0)
    quantizer = SwitchableActivationQuantizer((bits,))
    optimizer = torch.optim.SGD(quantizer.parameters(), lr=0.1, momentum=0.9)
    start = float(quantizer.clip_level(bits).detach())
    for _ in range(20):
        # half of a N(0, 2^2): much of it lies above every starting clip level, so the
        # reconstruction error asks for a higher clip level
        x = F.relu(torch.randn(64, 16, 14, 14) * 2)
        loss = (quantizer(x, bits) - x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    moved = float(quantizer.clip_level(bits).detach()) / start - 1
    assert moved > 0.01


@pytest.mark.parametrize("bits", BITS)
def test_inference_path_gives_the_training_paths_values(bits: int) -> None:
    torch.manual_seed(bits)
    weight = torch.nn.Parameter(torch.randn(32, 16, 3, 3) * 0.1)
    wq = SwitchableWeightQuantizer(weight, BITS)
    aq = SwitchableActivationQuantizer(BITS)
    x = F.relu(torch.randn(4, 16, 8, 8) * 2)
    trained_w, trained_x = wq(weight, bits), aq(x, bits)  # straight-through path
    assert trained_w.requires_grad and trained_x.requires_grad
    with torch.no_grad():  # the inference shortcut
        fast_w, fast_x = wq(weight, bits), aq(x, bits)
    assert torch.allclose(fast_w, trained_w.detach(), rtol=1e-6, atol=0)
    assert torch.allclose(fast_x, trained_x.detach(), rtol=1e-6, atol=0)


def one_bit_weight() -> torch.Tensor:
    """Weights on both sides of zero, some exactly zero, some beyond the binary scale."""
    torch.manual_seed(11)
    weight = torch.randn(16, 8, 3, 3) * 0.1
    weight[0, 0] = 0.0
    weight[1, 0, 0, 0] = 1.0
    weight[1, 0, 0, 1] = -1.0
    return weight


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
def test_one_bit_weights_take_exactly_two_values_plus_minus_the_scale(grad: bool) -> None:
    weight = torch.nn.Parameter(one_bit_weight())
    quantizer = SwitchableWeightQuantizer(weight, BITS)
    step = quantizer.steps["1"]
    start = float(step.detach())
    assert start == pytest.approx(float(weight.detach().abs().mean()), rel=1e-6)
    assert initial_weight_step(weight, 1) == pytest.approx(start, rel=1e-6)
    scale = float(step.detach().abs()) + 1e-8
    with torch.set_grad_enabled(grad):
        q = quantizer(weight, 1)
    assert q.requires_grad == grad
    values = torch.unique(q.detach())
    assert values.numel() == 2
    assert torch.allclose(values, torch.tensor([-scale, scale]), rtol=1e-6, atol=0)
    signs = torch.where(weight.detach() >= 0, 1.0, -1.0)
    assert torch.equal(torch.sign(q.detach()), signs)  # sign(0) = +1
    assert bool((q.detach()[0, 0] > 0).all())


def test_one_bit_weight_gradients_are_clipped_straight_through_and_reach_the_scale() -> None:
    weight = torch.nn.Parameter(one_bit_weight())
    quantizer = SwitchableWeightQuantizer(weight, BITS)
    upstream = torch.randn(weight.shape, generator=torch.Generator().manual_seed(1))
    (quantizer(weight, 1) * upstream).sum().backward()
    w = weight.detach()
    scale = quantizer.steps["1"].detach().abs() + 1e-8
    inside = (w.abs() <= scale).float()
    assert bool((w.abs() > scale).any()) and bool((w.abs() <= scale).any())
    # the weight's gradient passes where |w| <= scale and is exactly zero beyond it
    assert torch.allclose(weight.grad, upstream * inside, atol=1e-6, rtol=1e-6)
    assert bool((weight.grad[w.abs() > scale] == 0).all())
    # the scale's: d(s * sign(w))/ds on LSQ's two-level grid, scaled by 1/sqrt(numel)
    signs = torch.where(w >= 0, 1.0, -1.0)
    expected = (upstream * (signs - w / scale * inside)).sum() / math.sqrt(w.numel())
    got = quantizer.steps["1"].grad
    assert got is not None and float(got.abs()) > 0
    assert float(got) == pytest.approx(float(expected), rel=1e-5, abs=1e-7)
    for other in BITS[1:]:
        assert quantizer.steps[str(other)].grad is None


def test_one_bit_activations_take_exactly_two_values_zero_and_alpha() -> None:
    torch.manual_seed(12)
    x = (torch.randn(4, 8, 6, 6) * 2).requires_grad_()
    quantizer = SwitchableActivationQuantizer(BITS)
    alpha = float(quantizer.clip_level(1).detach())
    q = quantizer(x, 1)
    values = torch.unique(q.detach())
    assert values.numel() == 2
    assert torch.allclose(values, torch.tensor([0.0, alpha]), rtol=1e-6, atol=0)
    xd = x.detach()
    # one threshold, at alpha / 2
    assert bool((q.detach()[xd < 0.49 * alpha] == 0).all())
    high = q.detach()[xd > 0.51 * alpha]
    assert torch.allclose(high, torch.full_like(high, alpha), rtol=1e-6, atol=0)
    with torch.no_grad():
        assert torch.equal(quantizer(xd, 1), q.detach())
    # gradients flow: straight through inside [0, alpha], zero outside; alpha gets one
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    (q * upstream).sum().backward()
    inside = (xd >= 0) & (xd <= alpha)
    assert torch.equal(x.grad, upstream * inside)
    assert bool(inside.any()) and bool((~inside).any())
    grad = quantizer.clip_levels["1"].grad
    assert grad is not None and float(grad.abs()) > 0


def composed_lsq(x: torch.Tensor, step: torch.Tensor, low: int, high: int, g: float):
    """LSQ as it was written before _LSQFunction: round_ste and scale_grad composed."""
    s = scale_grad(step, g)
    return round_ste(torch.clamp(x / s, low, high)) * s


@pytest.mark.parametrize(
    ("low", "high"),
    [signed_levels(4), signed_levels(2), unsigned_levels(1), unsigned_levels(3)],
    ids=["signed4", "signed2", "unsigned1", "unsigned3"],
)
def test_lsq_function_gradients_equal_the_composed_reference(low: int, high: int) -> None:
    gen = torch.Generator().manual_seed(high - low)
    base = torch.randn(6, 5, 4, 4, generator=gen) * 2
    step0 = 0.37
    base[0, 0, 0, :2] = torch.tensor([low * step0, high * step0])  # exactly on the clip edges
    upstream = torch.randn(base.shape, generator=gen)
    g = lsq_grad_scale(base, high)
    results = []
    for fn in (_LSQFunction.apply, composed_lsq):
        x = base.clone().requires_grad_()
        step = torch.nn.Parameter(torch.tensor(step0))
        out = fn(x, step, low, high, g)
        (out * upstream).sum().backward()
        results.append((out.detach(), x.grad, step.grad))
    (out, gx, gs), (ref_out, ref_gx, ref_gs) = results
    assert torch.equal(out, ref_out)
    assert torch.allclose(gx, ref_gx, atol=1e-6, rtol=0)
    assert float(gs) == pytest.approx(float(ref_gs), abs=1e-6)
    assert float(gs.abs()) > 0
    # and lsq_quantize uses it, with LSQ's default gradient scale
    x = base.clone().requires_grad_()
    step = torch.nn.Parameter(torch.tensor(step0))
    (lsq_quantize(x, step, low, high) * upstream).sum().backward()
    assert torch.allclose(x.grad, ref_gx, atol=1e-6, rtol=0)
    assert float(step.grad) == pytest.approx(float(ref_gs), abs=1e-6)
