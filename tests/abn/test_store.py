"""abn.store: model directories are saved with sha256s and refused when anything is off."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from abn.bitops import cost_table
from abn.data import FASHION_MNIST_CLASSES, FASHION_MNIST_INPUT
from abn.errors import ModelIntegrityError
from abn.policy import PolicySpec, WidthPolicy
from abn.store import (
    MANIFEST,
    POLICY_FILE,
    SUPERNET_FILE,
    ModelDescription,
    open_model_dir,
    save_model_dir,
    save_policy,
    sha256_of,
    update_manifest,
)
from abn.supernet import architecture, build_supernet
from tests.nets import calibrate


@pytest.fixture
def model_dir(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the shared tiny model directory, free to damage."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))


def card() -> ModelDescription:
    return ModelDescription("m", "1.2.3", list(FASHION_MNIST_CLASSES), FASHION_MNIST_INPUT)


def test_save_then_load_gives_the_same_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = calibrate(build_supernet("resnet8_fmnist"))
    directory = save_model_dir(tmp_path / "m", net, card())
    opened = open_model_dir(tmp_path / "m")
    assert opened.manifest == directory.manifest
    assert opened.spec == net.spec
    assert opened.input_spec == FASHION_MNIST_INPUT
    assert opened.classes == list(FASHION_MNIST_CLASSES)
    assert not opened.has_policy and opened.load_policy() is None
    entry = opened.manifest["files"][SUPERNET_FILE]
    assert entry["sha256"] == sha256_of(tmp_path / "m" / SUPERNET_FILE)
    assert entry["bytes"] == (tmp_path / "m" / SUPERNET_FILE).stat().st_size
    loaded = opened.load_supernet()
    assert not loaded.training
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        for config in (1, 8, [1, 2, 3, 4, 8, 4, 2, 1]):
            assert torch.equal(loaded(x, config), net(x, config))


def test_policy_is_saved_kept_and_loaded(tmp_path: Path) -> None:
    net = calibrate(build_supernet("resnet8_fmnist"))
    save_model_dir(tmp_path, net, card())
    torch.manual_seed(1)
    policy = WidthPolicy(PolicySpec.for_table(cost_table(net)))
    save_policy(tmp_path, policy, {"spec": policy.spec.to_dict(), "note": "x"})
    save_model_dir(tmp_path, net, card())  # re-saving the supernet keeps the policy
    opened = update_manifest(tmp_path, accuracy={"static": [1], "adaptive": []})
    opened = open_model_dir(tmp_path)
    assert opened.has_policy and opened.manifest["policy"]["note"] == "x"
    assert opened.manifest["accuracy"]["static"] == [1]
    loaded = opened.load_policy()
    for (k, a), (_, b) in zip(
        loaded.state_dict().items(), policy.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("name", [SUPERNET_FILE, POLICY_FILE])
def test_tampered_file_is_refused_naming_it(model_dir: Path, name: str) -> None:
    path = model_dir / name
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01  # one bit, same size
    path.write_bytes(bytes(blob))
    with pytest.raises(ModelIntegrityError, match="sha256") as info:
        open_model_dir(model_dir)
    assert name in str(info.value)


@pytest.mark.parametrize("name", [SUPERNET_FILE, POLICY_FILE])
def test_truncated_file_is_refused_naming_it(model_dir: Path, name: str) -> None:
    path = model_dir / name
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ModelIntegrityError, match="truncated") as info:
        open_model_dir(model_dir)
    assert name in str(info.value)


@pytest.mark.parametrize("name", [SUPERNET_FILE, POLICY_FILE])
def test_missing_file_is_refused_naming_it(model_dir: Path, name: str) -> None:
    (model_dir / name).unlink()
    with pytest.raises(ModelIntegrityError, match="missing") as info:
        open_model_dir(model_dir)
    assert name in str(info.value)


def test_missing_or_broken_manifest_is_refused(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelIntegrityError, match=MANIFEST):
        open_model_dir(tmp_path / "nothing-here")
    manifest = model_dir / MANIFEST
    text = manifest.read_text()
    manifest.write_text(text[: len(text) // 2])
    with pytest.raises(ModelIntegrityError, match="not valid JSON"):
        open_model_dir(model_dir)
    data = json.loads(text)
    del data["files"][SUPERNET_FILE]
    manifest.write_text(json.dumps(data))
    with pytest.raises(ModelIntegrityError, match=SUPERNET_FILE):
        open_model_dir(model_dir)


def test_weights_that_do_not_fit_the_architecture_are_refused(model_dir: Path) -> None:
    manifest = json.loads((model_dir / MANIFEST).read_text())
    manifest["architecture"] = architecture("resnet20_cifar").to_dict()
    (model_dir / MANIFEST).write_text(json.dumps(manifest))
    opened = open_model_dir(model_dir)  # the files themselves are intact
    with pytest.raises(ModelIntegrityError, match="does not match") as info:
        opened.load_supernet()
    assert SUPERNET_FILE in str(info.value)


def test_shared_tiny_model_directory_opens(tiny_model_dir: Path) -> None:
    opened = open_model_dir(tiny_model_dir)
    assert opened.has_policy
    net = opened.load_supernet()
    policy = opened.load_policy()
    assert net.num_switchable == len(policy.spec.feature_channels)
    assert len(opened.manifest["accuracy"]["static"]) == len(net.bit_candidates)


def test_a_changed_supernet_drops_the_old_policy_and_files_are_readable_by_all(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    torch.manual_seed(0)
    net = calibrate(build_supernet("resnet8_fmnist"))
    save_model_dir(tmp_path, net, card())
    policy = WidthPolicy(PolicySpec.for_table(cost_table(net)))
    save_policy(tmp_path, policy, {"spec": policy.spec.to_dict()})
    for name in (MANIFEST, SUPERNET_FILE, POLICY_FILE):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name
    with torch.no_grad():
        net.classifier.weight.add_(1.0)  # another supernet: the policy learnt on the old one
    save_model_dir(tmp_path, net, card())
    opened = open_model_dir(tmp_path)
    assert not opened.has_policy and "policy" not in opened.manifest
    assert not (tmp_path / POLICY_FILE).exists()
    assert "old policy no longer fits and was removed" in caplog.text


def test_a_missing_model_directory_says_to_pass_model(tmp_path: Path) -> None:
    with pytest.raises(ModelIntegrityError, match="does not exist; pass --model DIR"):
        open_model_dir(tmp_path / "nowhere")
