"""A command-line mistake in training or evaluation is one line on stderr and exit status 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from abn.cli import main
from abn.errors import CheckpointMismatchError
from abn.supernet import build_supernet
from abn.train.common import load_checkpoint, save_checkpoint
from abn.train.supernet import SupernetTrainConfig, default_out


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["train", "supernet", "--image-folder", "/nowhere/photos"], "/nowhere/photos does not"),
        (["train", "supernet", "--arch", "resnet20_cifar"], "Fashion-MNIST is 1x28x28"),
        (["train", "supernet", "--input-size", "2"], "--input-size 2 is too small"),
        (["train", "supernet", "--val-fraction", "0.7", "--test-fraction", "0.4"], "below 1"),
        (["train", "policy", "--model", "/nowhere/model"], "pass --model DIR"),
        (["evaluate", "--model", "/nowhere/model"], "pass --model DIR"),
    ],
)
def test_mistakes_are_one_line_and_exit_2(
    args: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*args, "--device", "cpu"]) == 2
    line = one_error_line(capsys)
    command = " ".join(a for a in args[:2] if not a.startswith("-"))
    assert line.startswith(f"abn {command}: error: ") and expected in line


def test_an_unknown_architecture_is_refused_by_the_parser_with_the_choices(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["train", "supernet", "--arch", "vgg"])
    assert stop.value.code == 2
    assert "resnet8_fmnist" in capsys.readouterr().err


def test_resuming_another_networks_checkpoint_is_one_line(
    tmp_path: Path, tiny_fmnist_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    net = build_supernet("resnet8_fmnist")
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    save_checkpoint(tmp_path, net, optimizer, {"config": {"arch": "resnet8_fmnist"}})
    with pytest.raises(CheckpointMismatchError, match=r"another network \(arch resnet8_fmnist"):
        load_checkpoint(tmp_path, build_supernet("resnet20_cifar"), None, torch.device("cpu"))
    args = ["train", "supernet", "--data-dir", str(tiny_fmnist_dir), "--resume"]
    args += ["--checkpoints", str(tmp_path), "--out", str(tmp_path / "m"), "--device", "cpu"]
    args += ["--arch", "resnet20_cifar", "--channels", "1", "--input-size", "28"]
    assert main(args) == 2
    assert "drop --resume" in one_error_line(capsys)


def test_the_default_out_is_a_new_directory_under_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    first = default_out("mine")
    assert first.parts[0] == "runs" and first.name.startswith("mine-")
    first.mkdir(parents=True)
    second = default_out("mine")
    assert second != first and not second.exists()


def test_the_model_is_named_after_its_image_folder_unless_named() -> None:
    assert SupernetTrainConfig(image_folder="/data/photos").model_name == "photos"
    assert SupernetTrainConfig().model_name == "fmnist-abn"
    assert SupernetTrainConfig(image_folder="/data/photos", name="mine").model_name == "mine"
    assert SupernetTrainConfig(image_folder="/data/photos").checkpoint_dir == Path("runs/photos")
