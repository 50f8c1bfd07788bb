"""The shipped model on real test images: the bit-serial network answers as the float one.

Where no activation lands on another quantization level in the two paths, the logits are
identical (the classifier quantizes the pooled features at 8 bits, so float rounding before
it vanishes); an activation within float rounding of a rounding boundary moves them a little.
The full-test-set figures are scripts/bitserial_exactness.py's (docs/bitserial/exactness.md).
"""

from __future__ import annotations

import pytest
import torch

from abn.bitserial import BitSerialUnavailableError, use_bitserial
from abn.data import DEFAULT_FASHION_MNIST_DIR, load_fashion_mnist
from abn.errors import DatasetNotFoundError
from abn.preprocess import normalize
from abn.store import DEFAULT_MODEL_DIR, open_model_dir
from abn.supernet import build_supernet

from .conftest import RUNNABLE

SAMPLE = 300
pytestmark = pytest.mark.skipif(not RUNNABLE, reason="this CPU runs no bit-serial kernel")


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    try:
        test = load_fashion_mnist("test")
    except DatasetNotFoundError:
        pytest.skip(f"Debian's dataset-fashion-mnist is absent ({DEFAULT_FASHION_MNIST_DIR})")
    sample = torch.randperm(len(test), generator=torch.Generator().manual_seed(1))[:SAMPLE]
    return normalize(test.images[sample], open_model_dir(DEFAULT_MODEL_DIR).input_spec)


@pytest.fixture(scope="module")
def nets():
    directory = open_model_dir(DEFAULT_MODEL_DIR)
    reference = directory.load_supernet("cpu").fold_for_inference()
    return reference, use_bitserial(directory.load_supernet("cpu"), RUNNABLE[0])


def configurations(net) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    bits = torch.tensor(net.bit_candidates)
    shape = (SAMPLE, net.num_switchable)
    uniform = [torch.full(shape, b) for b in net.bit_candidates]
    fixed = [bits[torch.randint(len(bits), shape[1:], generator=g)].expand(shape) for _ in range(4)]
    per_image = [bits[torch.randint(len(bits), shape, generator=g)]]  # mixed groups per layer
    return uniform + fixed + per_image


def test_same_top1_and_mostly_identical_logits(nets, images) -> None:
    reference, bitserial = nets
    with torch.inference_mode():
        for config in configurations(reference):
            expected, got = reference(images, config), bitserial(images, config)
            assert torch.equal(expected.argmax(1), got.argmax(1)), config[0].tolist()
            identical = (expected == got).all(dim=1).float().mean().item()
            assert identical >= 0.9, f"{config[0].tolist()}: only {identical:.1%} identical"
            assert (expected - got).abs().max().item() < 0.5


def test_the_network_runs_on_the_cpu_only() -> None:
    net = build_supernet("resnet8_fmnist").eval().to("meta")
    with pytest.raises(BitSerialUnavailableError, match="ABN_DEVICE=cpu"):
        use_bitserial(net)
