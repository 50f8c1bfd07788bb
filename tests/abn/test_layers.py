"""abn.layers: switchable conv + transitional BN, fixed 8-bit layers, grouped execution."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from abn.errors import UncalibratedBatchNormError, UnknownBitWidthError
from abn.layers import (
    FixedConvBN,
    FixedLinear,
    SwitchableConvBN,
    TransitionalBatchNorm2d,
    run_grouped,
)
from abn.supernet import DEFAULT_BIT_CANDIDATES, build_supernet
from abn.train.supernet import SupernetTrainConfig, make_optimizer
from tests.nets import ALLOWED_WIDTHS, feeder_widths, give_bn_statistics

BITS = DEFAULT_BIT_CANDIDATES
PAIRS = [(i, b) for i in BITS for b in BITS]


def make_layer(seed: int = 0, **kwargs: object) -> SwitchableConvBN:
    torch.manual_seed(seed)
    return SwitchableConvBN(8, 16, 3, 1, BITS, "test.conv", **kwargs)


def ready_layer(seed: int = 0, **kwargs: object) -> SwitchableConvBN:
    """A layer in eval mode with distinct, non-trivial statistics in every BN pair."""
    layer = make_layer(seed, **kwargs)
    give_bn_statistics(layer, seed)
    return layer.eval()


def reference(layer: SwitchableConvBN, x: torch.Tensor, bits: int, in_bits: int) -> torch.Tensor:
    """The layer's definition: pair (in_bits, bits)'s BN of the quantized conv."""
    xq = layer.act_quantizer(x, bits)
    wq = layer.weight_quantizer(layer.weight, bits)
    return layer.bn.norm_for(in_bits, bits)(F.conv2d(xq, wq, None, 1, 1))


class ConvSpy:
    """Records the input and weight of every F.conv2d call."""

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._conv2d = F.conv2d

    def __call__(self, x: torch.Tensor, weight: torch.Tensor, *args: object) -> torch.Tensor:
        self.calls.append((x.detach().clone(), weight.detach().clone()))
        return self._conv2d(x, weight, *args)


@pytest.mark.parametrize("bits", BITS)
def test_conv_sees_quantized_weights_and_activations(
    bits: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    layer = ready_layer()
    spy = ConvSpy()
    monkeypatch.setattr(F, "conv2d", spy)
    x = F.relu(torch.randn(4, 8, 12, 12) * 3)
    with torch.no_grad():
        layer(x, bits, 4)
    [(xq, wq)] = spy.calls
    assert torch.unique(xq).numel() <= 2**bits
    assert torch.unique(wq).numel() <= 2**bits
    alpha = float(layer.act_quantizer.clip_level(bits).detach())
    assert float(xq.min()) >= 0.0 and float(xq.max()) <= alpha * (1 + 1e-6)
    step = float(layer.weight_quantizer.steps[str(bits)].detach().abs())
    if bits == 1:  # binary: +-scale
        assert torch.allclose(wq.abs(), torch.full_like(wq, step), rtol=1e-5, atol=0)
        return
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    assert low * step * (1 + 1e-5) <= float(wq.min()) and float(wq.max()) <= high * step * (
        1 + 1e-5
    )


@pytest.mark.parametrize(("bits", "in_bits"), [(1, 8), (2, 1), (4, 3), (8, 2)])
def test_output_is_that_pairs_bn_of_the_quantized_conv(bits: int, in_bits: int) -> None:
    layer = ready_layer()
    x = F.relu(torch.randn(3, 8, 10, 10))
    with torch.no_grad():
        expected = reference(layer, x, bits, in_bits)
        assert torch.allclose(layer(x, bits, in_bits), expected, atol=1e-6)
        other_own = 2 if bits != 2 else 8
        other_in = 3 if in_bits != 3 else 4
        assert not torch.allclose(layer(x, other_own, in_bits), expected, atol=1e-3)
        assert not torch.allclose(layer(x, bits, other_in), expected, atol=1e-3)


@pytest.mark.parametrize(("bits", "in_bits"), [(1, 1), (2, 8), (4, 3), (8, 4)])
def test_gradients_reach_weight_step_clip_level_and_only_that_pairs_bn(
    bits: int, in_bits: int
) -> None:
    layer = make_layer().train()
    x = F.relu(torch.randn(4, 8, 10, 10) * 2)
    layer(x, bits, in_bits).pow(2).mean().backward()
    assert layer.weight.grad is not None and float(layer.weight.grad.abs().sum()) > 0
    assert float(layer.weight_quantizer.steps[str(bits)].grad.abs()) > 0
    assert float(layer.act_quantizer.clip_levels[str(bits)].grad.abs()) > 0
    assert float(layer.bn.norm_for(in_bits, bits).weight.grad.abs().sum()) > 0
    for other in BITS:
        if other != bits:
            assert layer.weight_quantizer.steps[str(other)].grad is None
            assert layer.act_quantizer.clip_levels[str(other)].grad is None
    for pair in PAIRS:
        if pair != (in_bits, bits):
            assert layer.bn.norm_for(*pair).weight.grad is None, pair
            assert layer.bn.norm_for(*pair).bias.grad is None, pair


def owner_and_tag(key: str) -> tuple[str, str, str] | None:
    """``(layer path, kind, tag)`` of a per-width state-dict entry: kind ``bn`` with tag
    ``"in_own"`` (``...bn.norms.4_2.weight``), or ``step``/``clip`` with tag ``"own"``."""
    for marker, kind in (("bn.norms", "bn"), ("weight_quantizer.steps", "step")):
        if f".{marker}." in key:
            owner, rest = key.split(f".{marker}.")
            return owner, kind, rest.split(".")[0]
    if ".act_quantizer.clip_levels." in key:
        owner, tag = key.split(".act_quantizer.clip_levels.")
        return owner, "clip", tag
    return None


@pytest.mark.parametrize("per_layer", [False, True], ids=["uniform", "per-layer"])
def test_training_one_configuration_leaves_every_unused_pair_and_width_unchanged(
    per_layer: bool,
) -> None:
    torch.manual_seed(1)
    net = build_supernet("resnet8_fmnist").train()
    n = net.num_switchable
    picks = torch.randint(0, len(BITS), (n,)).tolist()
    config = [BITS[i] for i in picks] if per_layer else [4] * n
    feeders = feeder_widths(net, config)
    # the library's own optimizer: SGD with Nesterov momentum and weight decay
    optimizer = make_optimizer(net, SupernetTrainConfig(lr=0.05))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    for _ in range(3):
        x = torch.randn(8, 1, 28, 28)
        y = torch.randint(0, 10, (8,))
        loss = F.cross_entropy(net(x, config), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    paths = _block_paths(net)
    used = {
        f"blocks.{p}": (f"{i}_{b}", str(b)) for p, i, b in zip(paths, feeders, config, strict=True)
    }
    changed = same = 0
    for key, value in net.state_dict().items():
        parsed = owner_and_tag(key)
        if parsed is None or parsed[0] not in used:  # not a switchable layer's (classifier)
            continue
        owner, kind, tag = parsed
        pair, own = used[owner]
        if tag == (pair if kind == "bn" else own):
            if key.endswith("num_batches_tracked"):
                assert int(value) == 3, key
            else:
                assert not torch.equal(value, before[key]), f"{key} should have trained"
                changed += 1
        else:
            assert torch.equal(value, before[key]), f"{key} changed though it never ran"
            same += 1
    assert changed == 6 * n  # weight step, clip level, the pair's BN weight/bias/mean/var
    pairs = sum(len(layer.input_widths) * len(BITS) for layer in net.switchable_layers)
    # the other widths' (step, clip) per layer; every other pair's 5 BN entries
    assert same == (len(BITS) - 1) * 2 * n + 5 * (pairs - n)


def _block_paths(net: torch.nn.Module) -> list[str]:
    """``0.conv1`` style paths of the switchable layers under ``net.blocks``, in order."""
    names = {id(m): name for name, m in net.blocks.named_modules()}
    return [names[id(layer)] for layer in net.switchable_layers]


@pytest.mark.parametrize("bad", [7, 5, 0, 16, 32, 4.0, "4", True])
def test_unknown_width_is_refused_naming_the_allowed_widths(bad: object) -> None:
    layer = make_layer()
    with pytest.raises(UnknownBitWidthError) as info:
        layer(torch.zeros(1, 8, 4, 4), bad, 4)
    message = str(info.value)
    assert ALLOWED_WIDTHS in message
    assert "test.conv" in message
    assert isinstance(info.value, ValueError)


def test_unknown_input_width_is_refused_naming_the_input() -> None:
    layer = make_layer(input_widths=(8,))
    assert layer.input_widths == (8,) and list(layer.bn.norms) == [f"8_{b}" for b in BITS]
    with pytest.raises(UnknownBitWidthError, match="the input of test.conv") as info:
        layer(torch.zeros(2, 8, 4, 4), 4, 2)
    assert info.value.allowed == (8,)
    with pytest.raises(UnknownBitWidthError, match="the input of test.conv"):
        layer(torch.zeros(2, 8, 4, 4), 4, torch.tensor([8, 2]))


def test_folded_layer_refuses_an_unknown_input_width() -> None:
    layer = ready_layer()
    layer.fold_for_inference()
    with torch.no_grad(), pytest.raises(UnknownBitWidthError, match="the input of test.conv"):
        layer(F.relu(torch.randn(2, 8, 4, 4)), 4, torch.tensor([5, 5]))


def test_integer_like_widths_are_accepted() -> None:
    layer = ready_layer()
    x = F.relu(torch.randn(1, 8, 4, 4))
    with torch.no_grad():
        expected = layer(x, 4, 2)
        assert torch.equal(layer(x, torch.tensor(4), 2), expected)


def test_batch_norm_modes_key_their_norms() -> None:
    transitional = make_layer()
    assert list(transitional.bn.norms.keys()) == [f"{i}_{b}" for i, b in PAIRS]
    assert transitional.bn.norm_for(2, 4) is not transitional.bn.norm_for(8, 4)
    per_width = make_layer(bn_mode="per_width")
    assert list(per_width.bn.norms.keys()) == [str(b) for b in BITS]
    assert per_width.bn.norm_for(2, 4) is per_width.bn.norm_for(8, 4)
    assert per_width.bn.norm_for(4, 4) is not per_width.bn.norm_for(4, 2)
    shared = make_layer(bn_mode="shared")
    assert list(shared.bn.norms.keys()) == ["shared"]
    assert shared.bn.norm_for(1, 2) is shared.bn.norm_for(8, 8)
    with pytest.raises(ValueError, match="transitional"):
        TransitionalBatchNorm2d(4, BITS, BITS, mode="per_pair")


def test_an_unseen_pair_raises_in_eval_and_when_folding_naming_layer_and_pair() -> None:
    layer = make_layer()
    x = F.relu(torch.randn(4, 8, 6, 6))
    assert layer.bn.unseen_pairs() == PAIRS
    layer.eval()
    with torch.no_grad(), pytest.raises(UncalibratedBatchNormError) as info:
        layer(x, 4, 2)
    assert info.value.layer == "test.conv" and info.value.pairs == [(2, 4)]
    assert "test.conv" in str(info.value) and "2->4" in str(info.value)
    # training estimates a pair's statistics, and then that pair, and only it, may run
    layer.train()
    with torch.no_grad():
        layer(x, 4, 2)
    layer.eval()
    assert layer.bn.unseen_pairs() == [p for p in PAIRS if p != (2, 4)]
    with torch.no_grad():
        assert torch.isfinite(layer(x, 4, 2)).all()
        with pytest.raises(UncalibratedBatchNormError, match="3->4") as info:
            layer(x, 4, torch.tensor([2, 3, 2, 2]))  # one sample's pair is unseen
        assert info.value.pairs == [(3, 4)]
    assert isinstance(info.value, RuntimeError)
    # folding needs every pair, and names all that are missing
    with pytest.raises(UncalibratedBatchNormError) as info:
        layer.fold_for_inference()
    assert info.value.layer == "test.conv"
    assert info.value.pairs == [p for p in PAIRS if p != (2, 4)]
    assert "1->1" in str(info.value) and f"and {len(PAIRS) - 1 - 8} more" in str(info.value)
    assert layer._folded is None


def test_fixed_layers_run_at_eight_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    stem = FixedConvBN(1, 16, 3, 1).eval()
    spy = ConvSpy()
    monkeypatch.setattr(F, "conv2d", spy)
    with torch.no_grad():
        stem(torch.randn(2, 1, 8, 8))
    [(_, wq)] = spy.calls
    assert torch.unique(wq).numel() <= 256
    monkeypatch.undo()

    classifier = FixedLinear(64, 10)
    with torch.no_grad():
        classifier.weight.normal_()
    x = F.relu(torch.randn(5, 64) * 3)
    xq = classifier.act_quantizer(x, 8).detach()
    wq = classifier.weight_quantizer(classifier.weight).detach()
    assert torch.unique(xq).numel() <= 256 and torch.unique(wq).numel() <= 256
    with torch.no_grad():
        assert torch.allclose(classifier(x), F.linear(xq, wq, classifier.bias), atol=1e-6)


def test_fold_matches_unfolded_eval_output() -> None:
    layer = ready_layer()
    x = F.relu(torch.randn(4, 8, 10, 10) * 2)
    with torch.no_grad():
        unfolded = {(i, b): layer(x, b, i) for i, b in PAIRS}
        layer.fold_for_inference()
        for (i, b), expected in unfolded.items():
            assert torch.allclose(layer(x, b, i), expected, atol=1e-4, rtol=0), (i, b)
    layer.train()  # training changes the weights: the folded cache must go
    layer.eval()
    with torch.no_grad():
        layer.bn.norm_for(2, 4).running_mean.add_(1.0)
        assert not torch.allclose(layer(x, 4, 2), unfolded[(2, 4)], atol=1e-2)


@pytest.mark.parametrize("folded", [False, True], ids=["unfolded", "folded"])
def test_per_sample_input_widths_pick_each_samples_pair(folded: bool) -> None:
    layer = ready_layer(seed=3)
    gen = torch.Generator().manual_seed(3)
    x = F.relu(torch.randn(8, 8, 6, 6, generator=gen) * 2)
    in_bits = torch.tensor(BITS)[torch.randint(0, len(BITS), (8,), generator=gen)]
    in_bits[:2] = torch.tensor([1, 8])  # at least two different feeders
    with torch.no_grad():
        alone = {
            b: torch.cat([reference(layer, x[j : j + 1], b, int(in_bits[j])) for j in range(8)])
            for b in (1, 3, 8)
        }
        if folded:
            layer.fold_for_inference()
        for b, expected in alone.items():
            # folding rounds differently (a scale and shift instead of BN's four terms)
            atol = 1e-4 if folded else 1e-5
            assert torch.allclose(layer(x, b, in_bits), expected, atol=atol, rtol=0), b


def test_run_grouped_runs_each_width_once_on_its_own_samples() -> None:
    layer = ready_layer()
    calls: list[tuple[int, int, list[int]]] = []

    def counted(x: torch.Tensor, bits: int, in_bits: tuple[int, ...]) -> torch.Tensor:
        calls.append((x.shape[0], bits, list(in_bits)))  # a group's feeder widths, on the host
        return layer(x, bits, in_bits)

    x = F.relu(torch.randn(6, 8, 6, 6))
    widths = torch.tensor([2, 8, 2, 1, 8, 2])
    in_widths = torch.tensor([4, 4, 1, 3, 8, 1])
    with torch.no_grad():
        out = run_grouped(counted, x, widths, in_widths)
        alone = torch.cat(
            [layer(x[i : i + 1], int(widths[i]), int(in_widths[i])) for i in range(6)]
        )
    assert sorted(calls, key=lambda c: c[1]) == [(1, 1, [3]), (3, 2, [4, 1, 1]), (2, 8, [4, 8])]
    assert torch.allclose(out, alone, atol=1e-5)
    # without input widths the layer is called with (part, width) only
    seen: list[int] = []
    run_grouped(lambda part, bits: seen.append(bits) or part, x, widths)
    assert sorted(seen) == [1, 2, 8]


def test_run_grouped_refuses_widths_of_the_wrong_batch_size() -> None:
    layer = ready_layer()
    x = torch.zeros(4, 8, 4, 4)
    with pytest.raises(ValueError, match="one entry per sample"):
        run_grouped(layer, x, torch.tensor([2, 4]), 4)
