"""abn.train.supernet: stage 1 learns, resumes bit-for-bit, and keeps DDP replicas identical;
the paths of a step (phase-in of layer-wise widths) and warm starts across candidate sets."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import abn.data
import abn.train.supernet as stage1
from abn.calibrate import check_calibrated
from abn.data import FASHION_MNIST_INPUT, ImageSet, iterate_batches, load_fashion_mnist
from abn.errors import ConfigError, DataSourceError
from abn.preprocess import normalize
from abn.quant import FULL_PRECISION, initial_weight_step
from abn.store import SUPERNET_FILE, open_model_dir
from abn.supernet import Supernet, architecture, build_supernet
from abn.train.supernet import (
    SupernetTrainConfig,
    layerwise_probability,
    model_spec,
    param_digest,
    step_configs,
    train_supernet,
)
from abn.train.warm_start import warm_start
from tests.nets import calibrate, give_bn_statistics

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def small_val(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hold out 500 tiny images instead of 5000: the per-epoch validation is what costs here."""
    monkeypatch.setattr(abn.data, "VALIDATION_SIZE", 500)


def config(tmp_path: Path, data_dir: Path, tag: str, **changes: object) -> SupernetTrainConfig:
    base = {
        "out": str(tmp_path / f"model-{tag}"),
        "checkpoints": str(tmp_path / f"ckpt-{tag}"),
        "name": f"test-{tag}",
        "data_dir": str(data_dir),
        "batch_size": 64,
        "epochs": 1,
        "max_steps_per_epoch": 3,
        "augment": False,
        "device": "cpu",
        "calibration_rounds": 1,  # 36 batches of 16 instead of 360 of 256
        "calibration_batch_size": 16,
    }
    return SupernetTrainConfig(**{**base, **changes})


def initial_net(cfg: SupernetTrainConfig) -> Supernet:
    """The network a run starts from: the same seed and spec as train_supernet uses."""
    torch.manual_seed(cfg.seed)
    return Supernet(model_spec(cfg, 10))


def calibrated_initial_net(cfg: SupernetTrainConfig, train: ImageSet) -> Supernet:
    """The starting network with BN statistics (it has none), calibrated as training does."""
    batches = (
        normalize(images, FASHION_MNIST_INPUT)
        for images, _ in iterate_batches(train, 16, shuffle=True, drop_last=True)
    )
    return calibrate(initial_net(cfg), batches)


def losses(net: Supernet, images: torch.Tensor, labels: torch.Tensor) -> dict[int, float]:
    net.eval()
    with torch.no_grad():
        x = normalize(images, FASHION_MNIST_INPUT)
        return {b: float(F.cross_entropy(net(x, b), labels)) for b in (1, 8)}


def test_a_few_steps_lower_the_loss(tiny_fmnist_dir: Path, tmp_path: Path, small_val: None) -> None:
    cfg = config(tmp_path, tiny_fmnist_dir, "learn", max_steps_per_epoch=8)
    assert cfg.num_random == 3 and cfg.batch_norm == "transitional"  # the reference recipe
    out = train_supernet(cfg)
    train = load_fashion_mnist("train", tiny_fmnist_dir)
    data = train.subset(slice(0, 256))
    model = open_model_dir(out)
    before = losses(calibrated_initial_net(cfg, train), data.images, data.labels)
    trained = model.load_supernet()
    after = losses(trained, data.images, data.labels)
    assert before[8] == pytest.approx(math.log(10), abs=0.05)  # an untrained classifier
    assert after[8] < before[8] - 0.2, (before, after)  # the max-width config learned
    assert after[1] < before[1] - 0.05, (before, after)  # and so did the min-width one
    stage = model.manifest["training"]["stage1"]
    assert [h["epoch"] for h in stage["history"]] == [1]
    assert stage["world_size"] == 1
    assert (Path(cfg.checkpoints) / "last.safetensors").is_file()
    # every BN pair was calibrated after training, one round of batches each
    check_calibrated(trained)
    assert stage["bn_calibration"]["batches_per_pair"] == 1
    assert stage["bn_calibration"]["batches"] == len(trained.bit_candidates) ** 2


def test_init_from_starts_from_that_model_and_refuses_another_architecture(
    tiny_fmnist_dir: Path, tmp_path: Path, small_val: None
) -> None:
    first = train_supernet(config(tmp_path, tiny_fmnist_dir, "first", seed=1))
    # lr 0 and no weight decay: the run's weights must be exactly the ones it started from
    # (BN running statistics still move, so only parameters are compared)
    tuned = train_supernet(
        config(tmp_path, tiny_fmnist_dir, "tuned", init_from=str(first), lr=0.0, weight_decay=0.0)
    )
    a = dict(open_model_dir(first).load_supernet().named_parameters())
    b = dict(open_model_dir(tuned).load_supernet().named_parameters())
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    fresh = dict(initial_net(config(tmp_path, tiny_fmnist_dir, "x")).named_parameters())
    assert not all(torch.equal(a[k], fresh[k]) for k in a)  # and not from a fresh init

    with pytest.raises(ConfigError, match="architecture"):  # on Fashion-MNIST's 1x28x28
        other = {"arch": "resnet20_cifar", "channels": 1, "input_size": 28}
        train_supernet(config(tmp_path, tiny_fmnist_dir, "other", init_from=str(first), **other))
    with pytest.raises(DataSourceError, match="Fashion-MNIST is 1x28x28"):
        train_supernet(config(tmp_path, tiny_fmnist_dir, "rgb", arch="resnet20_cifar"))


class Crash(Exception):
    pass


def test_resume_continues_bit_for_bit(
    tiny_fmnist_dir: Path, tmp_path: Path, small_val: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # phase-in of layer-wise paths spans the interruption
    common = {"epochs": 2, "augment": True, "phase_in_epochs": 1.5, "batch_size": 32}
    straight = config(tmp_path, tiny_fmnist_dir, "straight", **common)
    train_supernet(straight)

    # the same run, killed right after its first epoch's checkpoint ...
    interrupted = config(tmp_path, tiny_fmnist_dir, "resumed", **common)
    save = stage1.save_checkpoint

    def save_then_crash(
        directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, meta: dict
    ) -> Path:
        path = save(directory, model, optimizer, meta)
        if meta["epoch"] == 1:
            raise Crash
        return path

    monkeypatch.setattr(stage1, "save_checkpoint", save_then_crash)
    with pytest.raises(Crash):
        train_supernet(interrupted)
    monkeypatch.setattr(stage1, "save_checkpoint", save)
    assert not Path(interrupted.out).exists()

    # ... then started again with resume
    resumed = config(tmp_path, tiny_fmnist_dir, "resumed", resume=True, **common)
    train_supernet(resumed)

    a = load_file(str(Path(straight.out) / SUPERNET_FILE))
    b = load_file(str(Path(resumed.out) / SUPERNET_FILE))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # the optimizer state (momentum buffers) carried over exactly as well
    ca = load_file(str(Path(straight.checkpoints) / "last.safetensors"))
    cb = load_file(str(Path(resumed.checkpoints) / "last.safetensors"))
    assert ca.keys() == cb.keys() and any(k.startswith("optim.") for k in ca)
    for key in ca:
        assert torch.equal(ca[key], cb[key]), key
    history = open_model_dir(resumed.out).manifest["training"]["stage1"]["history"]
    assert [h["epoch"] for h in history] == [1, 2]


def test_two_process_ddp_keeps_replicas_identical(tiny_fmnist_dir: Path, tmp_path: Path) -> None:
    torchrun = Path(sys.executable).parent / "torchrun"
    out, ckpt = tmp_path / "model", tmp_path / "ckpt"
    command = [
        str(torchrun),
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "abn.cli",
        "train",
        "supernet",
        "--data-dir",
        str(tiny_fmnist_dir),
        "--out",
        str(out),
        "--checkpoints",
        str(ckpt),
        "--name",
        "ddp-test",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--max-steps-per-epoch",
        "3",
        "--calibration-rounds",
        "1",
        "--calibration-batch-size",
        "16",
        "--device",
        "cpu",
        "--param-digest",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    digests = [(ckpt / f"rank{r}.params.sha256").read_text().strip() for r in (0, 1)]
    assert len(digests[0]) == 64
    assert digests[0] == digests[1]  # both replicas hold exactly the same parameters
    model = open_model_dir(out)
    assert param_digest(model.load_supernet()) == digests[0]  # and rank 0 saved them
    cfg = SupernetTrainConfig(**model.manifest["training"]["stage1"]["config"])
    assert param_digest(initial_net(cfg)) != digests[0]  # the three steps did train
    assert model.manifest["training"]["stage1"]["world_size"] == 2
    record = json.loads(next(line for line in proc.stdout.splitlines() if '"epoch"' in line))
    assert record["epoch"] == 1


def recipe(**changes: object) -> SupernetTrainConfig:
    return SupernetTrainConfig(**{"seed": 3, "phase_in_epochs": 2.0, **changes})


def test_step_configs_are_max_min_and_random_paths_phased_in_layer_by_layer() -> None:
    net = build_supernet("resnet8_fmnist")
    bits, n = net.bit_candidates, net.num_switchable
    cfg = recipe()
    steps_per_epoch = 10  # phase-in over 20 steps
    assert layerwise_probability(cfg, 0, steps_per_epoch) == 0.0
    assert layerwise_probability(cfg, 10, steps_per_epoch) == 0.5
    assert layerwise_probability(cfg, 20, steps_per_epoch) == 1.0
    assert layerwise_probability(cfg, 500, steps_per_epoch) == 1.0

    def paths(step: int) -> list[list[int]]:
        configs = step_configs(net, cfg, step, steps_per_epoch)
        assert len(configs) == 2 + cfg.num_random == 5
        assert configs[0] == net.uniform(max(bits)) and configs[1] == net.uniform(min(bits))
        assert all(len(c) == n and set(c) <= set(bits) for c in configs)
        return configs[2:]

    # at step 0 every random path runs one width for all layers (not always the same one)
    start = paths(0)
    assert all(len(set(c)) == 1 for c in start)
    assert len({c[0] for s in range(5) for c in paths(s) if len(set(c)) == 1}) > 1
    # after the phase-in the random paths are per layer: some mix widths within a few steps
    late = [c for step in range(20, 24) for c in paths(step)]
    assert all(len(set(c)) > 1 for c in late)
    # seeded by (seed, step): the same step draws the same paths, another step others
    assert paths(21) == paths(21)
    assert paths(21) != paths(22)
    # a phase-in of zero starts layer-wise at once
    immediate = step_configs(net, recipe(phase_in_epochs=0.0), 0, steps_per_epoch)[2:]
    assert any(len(set(c)) > 1 for c in immediate)


def test_warm_start_copies_weights_and_common_widths_across_candidate_sets() -> None:
    torch.manual_seed(1)
    old_bits = (2, 3, 4, 5, 6, 8)
    source = build_supernet(
        architecture("resnet8_fmnist", bit_candidates=list(old_bits), batch_norm="per_width")
    )
    give_bn_statistics(source, seed=1)
    with torch.no_grad():  # learned-looking steps and clip levels, unlike a fresh init
        for name, p in source.named_parameters():
            if ".steps." in name or ".clip_levels." in name:
                p.mul_(1.0 + 0.1 * torch.rand(()))
    torch.manual_seed(2)
    target = build_supernet("resnet8_fmnist")  # the default set, transitional BN
    assert target.bit_candidates != source.bit_candidates
    warm_start(source, target)

    src, dst = dict(source.named_parameters()), dict(target.named_parameters())
    for name, p in dst.items():  # every conv/linear weight (and the classifier's bias)
        if p.dim() > 1 or name.startswith("classifier."):
            assert torch.equal(p, src[name]), name
    stem = source.stem.state_dict()
    assert all(torch.equal(v, stem[k]) for k, v in target.stem.state_dict().items())
    for s_layer, t_layer in zip(source.switchable_layers, target.switchable_layers, strict=True):
        for bits in set(old_bits) & set(target.bit_candidates):
            assert torch.equal(
                t_layer.weight_quantizer.steps[str(bits)], s_layer.weight_quantizer.steps[str(bits)]
            )
            assert torch.equal(
                t_layer.act_quantizer.clip_levels[str(bits)],
                s_layer.act_quantizer.clip_levels[str(bits)],
            )
        # the width the source lacks: a fresh binary scale; the clip level of its nearest width
        assert float(t_layer.weight_quantizer.steps["1"].detach()) == pytest.approx(
            initial_weight_step(t_layer.weight, 1), rel=1e-6
        )
        assert torch.equal(
            t_layer.act_quantizer.clip_levels["1"], s_layer.act_quantizer.clip_levels["2"]
        )
        # every BN pair starts from the source's (per-width) BN of the same or nearest width
        for in_bits in t_layer.input_widths:
            for bits in t_layer.bit_candidates:
                s_bn = s_layer.bn.norms[str(bits if bits in old_bits else 2)].state_dict()
                t_bn = t_layer.bn.norm_for(in_bits, bits).state_dict()
                assert all(torch.equal(t_bn[k], s_bn[k]) for k in s_bn), (in_bits, bits)
    with torch.no_grad():  # the same network at a common uniform width
        x = torch.randn(2, 1, 28, 28)
        assert torch.allclose(target.eval()(x, 4), source.eval()(x, 4), atol=1e-6)


def test_warm_start_from_the_fp32_reference() -> None:
    torch.manual_seed(1)
    spec = architecture("resnet8_fmnist")
    source = build_supernet(
        spec.replace(bit_candidates=[FULL_PRECISION], fixed_bits=FULL_PRECISION)
    )
    target = build_supernet(spec)
    warm_start(source, target)  # the recipe starts stage 1 from the FP32 reference
    src = dict(source.named_parameters())
    for name, p in target.named_parameters():
        if p.dim() > 1:
            assert torch.equal(p, src[name]), name


@pytest.mark.parametrize(
    "other",
    [
        architecture("resnet20_cifar", in_channels=1, input_size=28),
        architecture("resnet8_fmnist", num_classes=7),
    ],
    ids=["deeper", "classes"],
)
def test_warm_start_refuses_another_architecture(other: object) -> None:
    target = build_supernet(other)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError, match="same architecture"):
        warm_start(build_supernet("resnet8_fmnist"), target)
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())
