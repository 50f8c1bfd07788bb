"""abn.supernet: specs, whole-pass and layer-by-layer execution, configurations, folding."""

from __future__ import annotations

import copy

import pytest
import torch

from abn import layers
from abn.bitops import cost_table
from abn.errors import ConfigLengthError, UncalibratedBatchNormError, UnknownBitWidthError
from abn.quant import FULL_PRECISION
from abn.supernet import (
    ARCHITECTURES,
    DEFAULT_BIT_CANDIDATES,
    ResNetSpec,
    Supernet,
    architecture,
    build_supernet,
)
from tests.nets import ALLOWED_WIDTHS, give_bn_statistics

BITS = DEFAULT_BIT_CANDIDATES


@pytest.fixture(scope="module")
def net() -> Supernet:
    torch.manual_seed(0)
    net = build_supernet("resnet8_fmnist")
    give_bn_statistics(net)
    return net.eval()


def random_config(n: int, gen: torch.Generator) -> list[int]:
    return [BITS[i] for i in torch.randint(0, len(BITS), (n,), generator=gen).tolist()]


def run_layerwise(net: Supernet, x: torch.Tensor, widths: list) -> torch.Tensor:
    run = net.start(x)
    for i, w in enumerate(widths):
        assert not run.done and run.layer_index == i
        run.advance(w)
    assert run.done and run.activation is None
    return run.logits


@pytest.mark.parametrize(
    ("name", "layers", "classes", "shape"),
    [
        ("resnet8_fmnist", 8, 10, (1, 28, 28)),
        ("resnet20_cifar", 20, 10, (3, 32, 32)),
        ("resnet18_imagenet", 19, 1000, (3, 224, 224)),
    ],
)
def test_architectures_have_their_switchable_layers(
    name: str, layers: int, classes: int, shape: tuple[int, ...]
) -> None:
    spec = architecture(name)
    assert (spec.in_channels, spec.input_size, spec.input_size) == shape
    net = build_supernet(name)
    assert net.num_switchable == layers
    assert len(set(net.layer_names)) == layers
    assert net.bit_candidates == BITS
    assert net.classifier.weight.shape[0] == classes
    assert net.stem.bits == 8 and net.classifier.bits == 8


def test_spec_round_trips_and_overrides() -> None:
    for spec in ARCHITECTURES.values():
        assert ResNetSpec.from_dict(spec.to_dict()) == spec
    spec = architecture("resnet20_cifar", num_classes=7, bit_candidates=[2, 4])
    assert spec.num_classes == 7 and spec.bit_candidates == (2, 4)
    net = give_bn_statistics(build_supernet(spec)).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 32, 32), [2, 4] * 10).shape == (1, 7)
    with pytest.raises(ValueError, match="resnet8_fmnist"):
        architecture("resnet9000")


def test_specs_of_1x_manifests_still_load() -> None:
    new = architecture("resnet8_fmnist", bit_candidates=[2, 3, 4, 5, 6, 8])
    assert new.batch_norm == "transitional"
    old = new.to_dict()
    del old["batch_norm"]
    for flag, mode in ((True, "per_width"), (False, "shared")):
        spec = ResNetSpec.from_dict({**old, "bit_specific_bn": flag, "family": "resnet"})
        assert spec == new.replace(batch_norm=mode)
        layer = build_supernet(spec).switchable_layers[3]
        keys = [str(b) for b in spec.bit_candidates] if flag else ["shared"]
        assert list(layer.bn.norms) == keys  # the 1.x state-dict names


def test_each_layer_has_a_bn_pair_per_feeder_width(net: Supernet) -> None:
    """The stem feeds the first block's conv1 at its fixed width; everything else is fed by a
    switchable layer (conv2 by conv1, a later block's conv1 and shortcut by the previous conv2)."""
    first = net.blocks[0]
    assert first.conv1.input_widths == (net.spec.fixed_bits,)
    assert list(first.conv1.bn.norms) == [f"8_{b}" for b in BITS]
    others = [layer for layer in net.switchable_layers if layer is not first.conv1]
    assert others and all(layer.input_widths == BITS for layer in others)
    assert all(len(layer.bn.norms) == len(BITS) ** 2 for layer in others)
    shortcuts = [b.shortcut for b in net.blocks if b.shortcut is not None]
    assert shortcuts and all(s.input_widths == BITS for s in shortcuts)


def test_an_uncalibrated_network_refuses_to_run_in_eval_naming_layer_and_pair() -> None:
    torch.manual_seed(0)
    fresh = build_supernet("resnet8_fmnist").eval()
    x = torch.zeros(2, 1, 28, 28)
    with torch.no_grad(), pytest.raises(UncalibratedBatchNormError) as info:
        fresh(x, 4)
    assert info.value.layer == "stage1.block1.conv1" and info.value.pairs == [(8, 4)]
    assert "stage1.block1.conv1" in str(info.value) and "8->4" in str(info.value)
    with pytest.raises(UncalibratedBatchNormError, match="stage1.block1.conv1"):
        fresh.fold_for_inference()
    # training mode estimates statistics as it goes, so it runs
    fresh.train()
    with torch.no_grad():
        assert fresh(x, 4).shape == (2, 10)


def test_200_random_configurations_run(net: Supernet) -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, 28, 28, generator=gen)
    seen = set()
    with torch.no_grad():
        for _ in range(200):
            config = random_config(net.num_switchable, gen)
            seen.add(tuple(config))
            logits = net(x, config)
            assert logits.shape == (2, 10)
            assert bool(torch.isfinite(logits).all())
    assert len(seen) > 190


def test_layerwise_run_equals_whole_pass(net: Supernet) -> None:
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 1, 28, 28, generator=gen)
    table = cost_table(net)
    with torch.no_grad():
        for _ in range(10):
            config = random_config(net.num_switchable, gen)
            assert torch.equal(run_layerwise(net, x, config), net(x, config))
        # the activation offered before each layer is the one that layer consumes
        run = net.start(x)
        while not run.done:
            assert tuple(run.activation.shape[1:]) == table.layer_input_shapes[run.layer_index]
            run.advance(4)


def test_config_forms_agree(net: Supernet) -> None:
    x = torch.randn(2, 1, 28, 28)
    n = net.num_switchable
    with torch.no_grad():
        expected = net(x, [3] * n)
        assert torch.equal(net(x, 3), expected)
        assert torch.equal(net(x, [3]), expected)
        assert torch.equal(net(x, torch.full((n,), 3)), expected)
        assert torch.equal(net(x, torch.full((2, n), 3)), expected)
        assert torch.equal(net(x, net.uniform(3)), expected)


@pytest.mark.parametrize("folded", [False, True], ids=["unfolded", "folded"])
def test_per_sample_widths_equal_each_sample_alone(folded: bool) -> None:
    """Grouped execution with transitional BN: a batch whose samples run different random
    per-layer configurations (so each layer sees several feeder widths at once) gives every
    sample the logits it gets alone at its configuration, whole pass and layer by layer."""
    # float64, so that grouping's or folding's rounding cannot tip an activation across a
    # quantization threshold; the unfolded network alone is the reference for both
    torch.manual_seed(3)
    net = give_bn_statistics(build_supernet("resnet8_fmnist"), seed=3).double().eval()
    gen = torch.Generator().manual_seed(3)
    n_samples = 8
    x = torch.randn(n_samples, 1, 28, 28, generator=gen, dtype=torch.float64)
    configs = torch.tensor(
        [random_config(net.num_switchable, gen) for _ in range(n_samples)], dtype=torch.long
    )
    configs[0], configs[1] = 1, 8  # the two extremes, uniform, beside the mixed ones
    with torch.no_grad():
        alone = torch.cat([net(x[j : j + 1], configs[j].tolist()) for j in range(n_samples)])
        if folded:
            net.fold_for_inference()
        batched = net(x, configs)
        layerwise = run_layerwise(net, x, [configs[:, i] for i in range(net.num_switchable)])
    assert torch.equal(batched, layerwise)
    assert torch.allclose(batched, alone, atol=1e-9, rtol=0)


def test_folded_inference_matches_unfolded_eval_output() -> None:
    # float64, so that folding's rounding (1e-7 in float32) cannot tip a later layer's
    # activation across a quantization threshold and move the logits by a whole level
    torch.manual_seed(4)
    net = build_supernet("resnet8_fmnist")
    give_bn_statistics(net)
    net = net.double().eval()
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(4, 1, 28, 28, generator=gen, dtype=torch.float64)
    configs = [net.uniform(b) for b in BITS] + [
        random_config(net.num_switchable, gen) for _ in range(6)
    ]
    with torch.no_grad():
        unfolded = [net(x, c) for c in configs]
        assert net.fold_for_inference() is net and not net.training
        assert all(layer._folded is not None for layer in net.switchable_layers)
        for c, expected in zip(configs, unfolded, strict=True):
            assert torch.allclose(net(x, c), expected, atol=1e-4, rtol=0), c
    net.train()  # leaving eval drops the folded weights
    assert all(layer._folded is None for layer in net.switchable_layers)


def test_folded_inference_runs_channels_last_on_the_cpu_with_the_same_logits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The layout is a speed choice only (abn.layers.inference_memory_format): in float32, uniform
    and mixed configurations give bit-identical logits to the default layout's, and every
    activation a run hands a switchable layer, grouped or not, stays channels-last."""
    torch.manual_seed(5)
    plain = give_bn_statistics(build_supernet("resnet8_fmnist"), seed=5)
    fast = copy.deepcopy(plain).fold_for_inference()
    with monkeypatch.context() as patched:
        patched.setattr(layers, "inference_memory_format", lambda _: torch.contiguous_format)
        plain.fold_for_inference()
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(24, 1, 28, 28, generator=gen)
    mixed = torch.tensor([random_config(fast.num_switchable, gen) for _ in range(24)])
    with torch.no_grad():
        for config in [fast.uniform(3), mixed]:
            assert torch.equal(fast(x, config), plain(x, config))
        run = fast.start(x)
        while not run.done:
            assert run.activation.is_contiguous(memory_format=torch.channels_last)
            assert not run.activation.is_contiguous()
            run.advance(mixed[:, run.layer_index])


@pytest.mark.parametrize(
    "config",
    [7, [7], "bad-per-layer", "bad-tensor", "bad-per-sample"],
    ids=["int", "one", "per-layer", "tensor", "per-sample"],
)
def test_unknown_width_raises_naming_allowed_widths(net: Supernet, config: object) -> None:
    n = net.num_switchable
    if config == "bad-per-layer":
        config = [4] * (n - 1) + [7]
    elif config == "bad-tensor":
        config = torch.tensor([4] * (n - 1) + [5])
    elif config == "bad-per-sample":
        config = torch.full((2, n), 4)
        config[1, 2] = 9
    with pytest.raises(UnknownBitWidthError) as info:
        net(torch.zeros(2, 1, 28, 28), config)
    message = str(info.value)
    assert ALLOWED_WIDTHS in message
    assert "stage" in message  # names the layer
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("bad", [7, 4.0, True, torch.tensor([4, 7])])
def test_layerwise_advance_refuses_unknown_widths(net: Supernet, bad: object) -> None:
    run = net.start(torch.zeros(2, 1, 28, 28))
    run.advance(4)
    with pytest.raises(UnknownBitWidthError, match=ALLOWED_WIDTHS):
        run.advance(bad)
    assert run.layer_index == 1  # nothing ran: the caller can retry with a valid width


def test_advancing_a_finished_run_is_an_error(net: Supernet) -> None:
    run = net.start(torch.zeros(1, 1, 28, 28))
    with torch.no_grad():
        for _ in range(net.num_switchable):
            run.advance(2)
    with pytest.raises(RuntimeError, match="finished"):
        run.advance(2)


@pytest.mark.parametrize("length", [0, 2, 7, 9])
def test_configuration_of_wrong_length_raises(net: Supernet, length: int) -> None:
    n = net.num_switchable
    with pytest.raises(ConfigLengthError) as info:
        net(torch.zeros(1, 1, 28, 28), [4] * length)
    assert f"{length} widths" in str(info.value) and str(n) in str(info.value)
    if length:
        with pytest.raises(ConfigLengthError):
            net(torch.zeros(1, 1, 28, 28), torch.full((1, length), 4))


def test_full_precision_reference_runs() -> None:
    spec = architecture("resnet8_fmnist").replace(
        bit_candidates=[FULL_PRECISION], fixed_bits=FULL_PRECISION
    )
    net = give_bn_statistics(build_supernet(spec)).eval()
    with torch.no_grad():
        logits = net(torch.randn(2, 1, 28, 28), FULL_PRECISION)
    assert logits.shape == (2, 10) and bool(torch.isfinite(logits).all())
    with pytest.raises(UnknownBitWidthError):
        net(torch.randn(1, 1, 28, 28), 8)
