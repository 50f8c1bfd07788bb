"""abn.quant: levels, clip ranges and straight-through gradients of the fake quantizers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from abn.quant import (
    FULL_PRECISION,
    SwitchableActivationQuantizer,
    SwitchableWeightQuantizer,
    signed_levels,
    unsigned_levels,
)

BITS = (2, 3, 4, 5, 6, 8)


def distinct(t: torch.Tensor) -> int:
    return int(torch.unique(t.detach()).numel())


@pytest.mark.parametrize("bits", BITS)
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


@pytest.mark.parametrize("bits", (2, 4, 8))
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


@pytest.mark.parametrize("bits", (2, 4, 8))
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
