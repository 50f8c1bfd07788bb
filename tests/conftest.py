"""Shared fixtures: tiny generated Fashion-MNIST-format data and a tiny model directory.

Nothing here downloads anything; the tiny model has random weights, BatchNorm statistics
calibrated on the generated training images, and measured (meaningless but real) accuracy tables
on the generated data, which is all the service and store tests need.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from abn.bitops import cost_table
from abn.data import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_INPUT,
    iterate_batches,
    load_fashion_mnist,
    write_idx,
)
from abn.evaluate import static_accuracy
from abn.policy import CompiledPolicy, PolicySpec, WidthPolicy
from abn.preprocess import normalize
from abn.store import ModelDescription, save_model_dir, save_policy, update_manifest
from abn.supernet import architecture, build_supernet
from tests.nets import calibrate


def make_tiny_fashion_mnist(root: Path, n_train: int = 5600, n_test: int = 300) -> Path:
    """IDX files shaped like Fashion-MNIST whose class is a bright horizontal band's position."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = (rng.random((n, 28, 28)) * 60).astype(np.uint8)
        for i, label in enumerate(labels):
            images[i, 2 * label : 2 * label + 6, 4:24] = 220
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


@pytest.fixture(scope="session")
def tiny_fmnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_fashion_mnist(tmp_path_factory.mktemp("tiny-fmnist"))


def make_tiny_model_dir(path: Path, data_dir: Path, with_policy: bool = True) -> Path:
    torch.manual_seed(0)
    spec = architecture("resnet8_fmnist")
    net = build_supernet(spec)
    # a random net has no BatchNorm statistics: calibrate every pair on the training images
    train = load_fashion_mnist("train", data_dir)
    calibrate(
        net,
        (
            normalize(images, FASHION_MNIST_INPUT)
            for epoch in itertools.count()
            for images, _ in iterate_batches(train, 16, shuffle=True, epoch=epoch, drop_last=True)
        ),
    )
    table = cost_table(net)
    test = load_fashion_mnist("test", data_dir)
    static = [
        {
            "bit_widths": net.uniform(b),
            "bitops": table.cost(net.uniform(b)),
            "accuracy": static_accuracy(net, test, FASHION_MNIST_INPUT, net.uniform(b)),
        }
        for b in net.bit_candidates
    ]
    card = ModelDescription(
        name="tiny-test",
        version="0.0.1",
        classes=list(FASHION_MNIST_CLASSES),
        input_spec=FASHION_MNIST_INPUT,
        training={"note": "random weights, for tests only"},
        accuracy={"static": static, "adaptive": []},
    )
    save_model_dir(path, net, card)
    if with_policy:
        policy = WidthPolicy(PolicySpec.for_table(table))
        save_policy(path, policy, {"spec": policy.spec.to_dict()})
        x = normalize(test.images, FASHION_MNIST_INPUT)
        adaptive = []
        compiled = CompiledPolicy(net, table, policy, torch.device("cpu"))
        for budget in np.linspace(table.min_bitops, table.max_bitops, 4).tolist():
            with torch.no_grad():
                r = compiled.rollout(x, torch.full((len(test),), budget))
            adaptive.append(
                {
                    "budget": budget,
                    "mean_bitops": float(r.bitops.mean()),
                    "accuracy": float((r.logits.argmax(1) == test.labels).float().mean()),
                }
            )
        update_manifest(path, accuracy={"static": static, "adaptive": adaptive})
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_fmnist_dir: Path) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("models") / "tiny-test", tiny_fmnist_dir)
