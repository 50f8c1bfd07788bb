"""abn.train.supernet: stage 1 learns, resumes bit-for-bit, and keeps DDP replicas identical."""

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
from abn.data import FASHION_MNIST_INPUT, load_fashion_mnist
from abn.preprocess import normalize
from abn.store import SUPERNET_FILE, open_model_dir
from abn.supernet import Supernet
from abn.train.supernet import SupernetTrainConfig, model_spec, param_digest, train_supernet

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
    }
    return SupernetTrainConfig(**{**base, **changes})


def initial_net(cfg: SupernetTrainConfig) -> Supernet:
    """The network a run starts from: the same seed and spec as train_supernet uses."""
    torch.manual_seed(cfg.seed)
    return Supernet(model_spec(cfg, 10))


def losses(net: Supernet, images: torch.Tensor, labels: torch.Tensor) -> dict[int, float]:
    net.eval()
    with torch.no_grad():
        x = normalize(images, FASHION_MNIST_INPUT)
        return {b: float(F.cross_entropy(net(x, b), labels)) for b in (2, 8)}


def test_a_few_steps_lower_the_loss(tiny_fmnist_dir: Path, tmp_path: Path, small_val: None) -> None:
    cfg = config(tmp_path, tiny_fmnist_dir, "learn", max_steps_per_epoch=8)
    out = train_supernet(cfg)
    data = load_fashion_mnist("train", tiny_fmnist_dir).subset(slice(0, 256))
    model = open_model_dir(out)
    before = losses(initial_net(cfg), data.images, data.labels)
    after = losses(model.load_supernet(), data.images, data.labels)
    assert before[8] == pytest.approx(math.log(10), abs=0.05)  # an untrained classifier
    assert after[8] < before[8] - 0.2, (before, after)  # the max-width config learned
    assert after[2] < before[2] - 0.05, (before, after)  # and so did the min-width one
    stage = model.manifest["training"]["stage1"]
    assert [h["epoch"] for h in stage["history"]] == [1]
    assert stage["world_size"] == 1
    assert (Path(cfg.checkpoints) / "last.safetensors").is_file()


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

    with pytest.raises(ValueError, match="architecture"):
        train_supernet(
            config(tmp_path, tiny_fmnist_dir, "other", init_from=str(first), bit_candidates=[2, 4])
        )


class Crash(Exception):
    pass


def test_resume_continues_bit_for_bit(
    tiny_fmnist_dir: Path, tmp_path: Path, small_val: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    common = {"epochs": 2, "augment": True}
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
