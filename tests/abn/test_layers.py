"""abn.layers: switchable conv + bit-specific BN, fixed 8-bit layers, grouped execution."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from abn.errors import UnknownBitWidthError
from abn.layers import FixedConvBN, FixedLinear, SwitchableConvBN, run_grouped
from abn.supernet import build_supernet
from abn.train.supernet import SupernetTrainConfig, make_optimizer

BITS = (2, 3, 4, 5, 6, 8)


def make_layer(seed: int = 0, **kwargs: object) -> SwitchableConvBN:
    torch.manual_seed(seed)
    return SwitchableConvBN(8, 16, 3, 1, BITS, "test.conv", **kwargs)


def randomize_bn(layer: SwitchableConvBN) -> None:
    """Non-trivial running statistics and affine parameters for every width's BN."""
    with torch.no_grad():
        for bn in layer.bn.norms.values():
            bn.running_mean.normal_(0.0, 0.5)
            bn.running_var.uniform_(0.3, 3.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0.0, 0.3)


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
    layer = make_layer().eval()
    spy = ConvSpy()
    monkeypatch.setattr(F, "conv2d", spy)
    x = F.relu(torch.randn(4, 8, 12, 12) * 3)
    with torch.no_grad():
        layer(x, bits)
    [(xq, wq)] = spy.calls
    assert torch.unique(xq).numel() <= 2**bits
    assert torch.unique(wq).numel() <= 2**bits
    alpha = float(layer.act_quantizer.clip_level(bits).detach())
    assert float(xq.min()) >= 0.0 and float(xq.max()) <= alpha * (1 + 1e-6)
    step = float(layer.weight_quantizer.steps[str(bits)].detach().abs())
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    assert low * step * (1 + 1e-5) <= float(wq.min()) and float(wq.max()) <= high * step * (
        1 + 1e-5
    )


@pytest.mark.parametrize("bits", (2, 5, 8))
def test_output_is_that_widths_bn_of_the_quantized_conv(bits: int) -> None:
    layer = make_layer().eval()
    randomize_bn(layer)
    x = F.relu(torch.randn(3, 8, 10, 10))
    with torch.no_grad():
        xq = layer.act_quantizer(x, bits)
        wq = layer.weight_quantizer(layer.weight, bits)
        expected = layer.bn.norm_for(bits)(F.conv2d(xq, wq, None, 1, 1))
        assert torch.allclose(layer(x, bits), expected, atol=1e-6)
        other = 2 if bits != 2 else 8
        assert not torch.allclose(layer(x, other), expected, atol=1e-3)


@pytest.mark.parametrize("bits", (2, 4, 8))
def test_gradients_reach_weight_step_clip_level_and_only_that_widths_bn(bits: int) -> None:
    layer = make_layer().train()
    x = F.relu(torch.randn(4, 8, 10, 10) * 2)
    layer(x, bits).pow(2).mean().backward()
    assert layer.weight.grad is not None and float(layer.weight.grad.abs().sum()) > 0
    assert float(layer.weight_quantizer.steps[str(bits)].grad.abs()) > 0
    assert float(layer.act_quantizer.clip_levels[str(bits)].grad.abs()) > 0
    assert float(layer.bn.norm_for(bits).weight.grad.abs().sum()) > 0
    for other in BITS:
        if other == bits:
            continue
        assert layer.weight_quantizer.steps[str(other)].grad is None
        assert layer.act_quantizer.clip_levels[str(other)].grad is None
        assert layer.bn.norm_for(other).weight.grad is None
        assert layer.bn.norm_for(other).bias.grad is None


def width_of(key: str) -> int | None:
    """The width a state-dict entry belongs to (``...norms.4.``, ``steps.4``), else None."""
    parts = key.split(".")
    for marker in ("norms", "steps", "clip_levels"):
        if marker in parts:
            tag = parts[parts.index(marker) + 1]
            return int(tag) if tag.isdigit() else None
    return None


@pytest.mark.parametrize("per_layer", [False, True], ids=["uniform", "per-layer"])
def test_training_one_width_leaves_other_widths_bn_and_clipping_unchanged(per_layer: bool) -> None:
    torch.manual_seed(1)
    net = build_supernet("resnet8_fmnist").train()
    n = net.num_switchable
    picks = torch.randint(0, len(BITS), (n,)).tolist()
    config = [BITS[i] for i in picks] if per_layer else [4] * n
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
    after = net.state_dict()
    prefix_width = {f"blocks.{name}": b for name, b in zip(_block_paths(net), config, strict=True)}
    checked_same = checked_changed = 0
    for key, value in after.items():
        bits = width_of(key)
        owner = next((p for p in prefix_width if key.startswith(p + ".")), None)
        if bits is None or owner is None:
            continue
        if bits == prefix_width[owner]:
            if not key.endswith("num_batches_tracked"):
                assert not torch.equal(value, before[key]), f"{key} should have trained"
                checked_changed += 1
        else:
            assert torch.equal(value, before[key]), f"{key} changed though width {bits} never ran"
            checked_same += 1
    assert checked_changed == 6 * n  # weight step, clip level, BN weight/bias/mean/var
    assert checked_same == 5 * 7 * n  # 5 other widths x (step, clip, 5 BN entries)


def _block_paths(net: torch.nn.Module) -> list[str]:
    """``0.conv1`` style paths of the switchable layers under ``net.blocks``, in order."""
    names = {id(m): name for name, m in net.blocks.named_modules()}
    return [names[id(layer)] for layer in net.switchable_layers]


@pytest.mark.parametrize("bad", [7, 1, 0, 16, 32, 4.0, "4", True])
def test_unknown_width_is_refused_naming_the_allowed_widths(bad: object) -> None:
    layer = make_layer()
    with pytest.raises(UnknownBitWidthError) as info:
        layer(torch.zeros(1, 8, 4, 4), bad)
    message = str(info.value)
    assert "2, 3, 4, 5, 6, 8" in message
    assert "test.conv" in message
    assert isinstance(info.value, ValueError)


def test_integer_like_widths_are_accepted() -> None:
    layer = make_layer().eval()
    x = F.relu(torch.randn(1, 8, 4, 4))
    with torch.no_grad():
        expected = layer(x, 4)
        assert torch.equal(layer(x, torch.tensor(4)), expected)


def test_shared_bn_ablation_uses_one_bn_for_every_width() -> None:
    layer = make_layer(bit_specific_bn=False)
    assert list(layer.bn.norms.keys()) == ["shared"]
    assert layer.bn.norm_for(2) is layer.bn.norm_for(8)


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
    layer = make_layer().eval()
    randomize_bn(layer)
    x = F.relu(torch.randn(4, 8, 10, 10) * 2)
    with torch.no_grad():
        unfolded = {b: layer(x, b) for b in BITS}
        layer.fold_for_inference()
        for b in BITS:
            assert torch.allclose(layer(x, b), unfolded[b], atol=1e-4, rtol=0), b
    layer.train()  # training changes the weights: the folded cache must go
    layer.eval()
    with torch.no_grad():
        layer.bn.norm_for(4).running_mean.add_(1.0)
        assert not torch.allclose(layer(x, 4), unfolded[4], atol=1e-2)


def test_run_grouped_runs_each_width_once_on_its_own_samples() -> None:
    layer = make_layer().eval()
    randomize_bn(layer)
    calls: list[tuple[int, int]] = []

    def counted(x: torch.Tensor, bits: int) -> torch.Tensor:
        calls.append((x.shape[0], bits))
        return layer(x, bits)

    x = F.relu(torch.randn(6, 8, 6, 6))
    widths = torch.tensor([2, 8, 2, 4, 8, 2])
    with torch.no_grad():
        out = run_grouped(counted, x, widths)
        alone = torch.cat([layer(x[i : i + 1], int(widths[i])) for i in range(6)])
    assert sorted(calls, key=lambda c: c[1]) == [(3, 2), (1, 4), (2, 8)]
    assert torch.allclose(out, alone, atol=1e-5)


def test_run_grouped_refuses_widths_of_the_wrong_batch_size() -> None:
    layer = make_layer().eval()
    x = torch.zeros(4, 8, 4, 4)
    with pytest.raises(ValueError, match="one entry per sample"):
        run_grouped(layer, x, torch.tensor([2, 4]))
