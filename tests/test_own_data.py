"""Your own images end to end, through the real command line: a tiny generated RGB folder
(3 classes, not 28x28) -> ``abn train supernet`` -> ``abn train policy`` -> ``abn evaluate`` ->
``abn serve`` as a real process -> ``/classify`` and ``/v1/model``, whose tables must be the
folder's (its classes, its input, its test split), not Fashion-MNIST's."""

from __future__ import annotations

import io
import json
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from abn.datasource import DataSource, channel_stats, folder_files, load_for_model
from abn.store import open_model_dir
from commands.abn import main as abn_main
from tests.service.helpers import ServerProcess
from tests.torch_threads import single_torch_thread

COLOURS = {"blue": (30, 40, 210), "green": (30, 200, 40), "red": (210, 40, 30)}
PER_CLASS = 10  # 8 train, 1 val, 1 test per class at the default fractions
SIZE = 12


def make_rgb_folder(root: Path) -> Path:
    """JPEGs and PNGs of 20x14 pixels, each class a colour under noise."""
    rng = np.random.default_rng(0)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(PER_CLASS):
            noise = rng.random((14, 20, 3)) * 70
            pixels = (noise + np.array(colour) * 0.7).clip(0, 255).astype(np.uint8)
            suffix = "jpg" if i % 2 else "png"
            Image.fromarray(pixels, "RGB").save(root / name / f"{i}.{suffix}")
    return root


def jpeg_of(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (30, 18), colour).save(out, "JPEG")
    return out.getvalue()


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    with single_torch_thread():
        yield


@pytest.fixture(scope="module")
def own_model(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> tuple[Path, Path]:
    """The folder and the model directory after all three commands ran on it."""
    work = tmp_path_factory.mktemp("own-data")
    folder, model = make_rgb_folder(work / "photos"), work / "model"
    common = ["--device", "cpu"]
    stage1 = ["train", "supernet", "--image-folder", str(folder), "--out", str(model)]
    stage1 += ["--name", "own-e2e", "--channels", "3", "--input-size", str(SIZE), "--epochs", "1"]
    stage1 += ["--batch-size", "12", "--calibration-rounds", "1", "--calibration-batch-size", "8"]
    stage1 += ["--checkpoints", str(work / "ck1")]
    assert abn_main([*stage1, *common]) == 0
    stage2 = ["train", "policy", "--model", str(model), "--steps", "3", "--batch-size", "6"]
    stage2 += ["--samples-per-image", "2", "--checkpoints", str(work / "ck2")]
    assert abn_main([*stage2, *common]) == 0
    evaluate = ["evaluate", "--model", str(model), "--random-configs", "2", "--budgets", "2"]
    assert abn_main([*evaluate, "--latency-batch-size", "4", *common]) == 0
    return folder, model


def test_the_manifest_records_the_folder_and_its_statistics(own_model: tuple[Path, Path]) -> None:
    folder, model = own_model
    md = open_model_dir(model)
    record = md.manifest["data"]
    assert record["source"] == "image-folder" and record["path"] == str(folder.resolve())
    assert record["classes"] == md.classes == sorted(COLOURS)
    assert record["images"] == {"train": 24, "val": 3, "test": 3}
    assert record["input"] == {"channels": 3, "height": SIZE, "width": SIZE}
    train = load_for_model(md, ["train"])["train"]
    assert (tuple(record["mean"]), tuple(record["std"])) == channel_stats(train.images)
    assert md.input_spec.mean == tuple(record["mean"])  # the network normalises with them
    for name in ("manifest.json", "supernet.safetensors", "policy.safetensors"):
        assert stat.S_IMODE((model / name).stat().st_mode) == 0o644, name
    # the evaluated test split is the folder's held-out images, not Fashion-MNIST's 10 000
    _, files = folder_files(DataSource.of_model(md.manifest))
    assert md.manifest["accuracy"]["test_images"] == len(files["test"]) == 3


def test_served_from_a_real_process_with_the_folders_model_card(
    own_model: tuple[Path, Path], tmp_path: Path
) -> None:
    _, model = own_model
    # one worker: this test is about the model directory, not about several serving processes;
    # the float backend serves the card's latency table as abn evaluate measured it
    server = ServerProcess(model, tmp_path / "serve.log", workers=1, backend="float")
    try:
        server.wait_ready()
        answer = httpx.post(
            server.url + "/classify",
            content=jpeg_of(COLOURS["red"]),
            headers={"Content-Type": "image/jpeg"},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["class_name"] in COLOURS and len(body["top_k"]) <= len(COLOURS)
        card = httpx.get(server.url + "/v1/model", timeout=30).json()
    finally:
        assert server.stop() == 0, server.log()
    assert card["classes"] == sorted(COLOURS)
    assert {k: card["input"][k] for k in ("channels", "height", "width")} == {
        "channels": 3,
        "height": SIZE,
        "width": SIZE,
    }
    uniform = [s for s in card["accuracy"]["static"] if len(set(s["bit_widths"])) == 1]
    assert {s["bit_widths"][0] for s in uniform} == set(card["bit_candidates"])
    # accuracies over the folder's 3 test images are multiples of 1/3, never Fashion-MNIST's
    for row in card["accuracy"]["static"] + card["accuracy"]["adaptive"]:
        assert round(row["accuracy"] * 3, 6) == round(row["accuracy"] * 3)
    assert len(card["accuracy"]["adaptive"]) == 2
    latency = card["latency"]
    assert latency["device"] == "cpu" and latency["batch_size"] == 4
    assert sorted(r["bit_widths"][0] for r in latency["rows"]) == sorted(card["bit_candidates"])
    assert all(r["batch_ms"] > 0 for r in latency["rows"])


def test_data_that_does_not_fit_the_model_is_one_line_and_exit_2(
    own_model: tuple[Path, Path],
    tiny_fmnist_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder, model = own_model
    before = json.loads((model / "manifest.json").read_text())
    code = abn_main(["evaluate", "--model", str(model), "--data-dir", str(tiny_fmnist_dir)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "3 classes (blue, green, red)" in err[0] and "10 (T-shirt/top" in err[0]
    assert json.loads((model / "manifest.json").read_text()) == before  # nothing written

    other = tmp_path / "other"
    for name in ("cat", "dog", "fish"):
        (other / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(other / name / "a.png")
    code = abn_main(["train", "policy", "--model", str(model), "--image-folder", str(other)])
    err = capsys.readouterr().err
    assert code == 2 and "cat, dog, fish" in err and "Traceback" not in err
