"""abn.datasource: the data a model records, its splits, and data that does not fit refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from abn.data import load_fashion_mnist
from abn.datasource import (
    FASHION_MNIST,
    IMAGE_FOLDER,
    DataSource,
    channel_stats,
    folder_files,
    load_for_model,
    load_for_training,
    stratified_split,
)
from abn.errors import DataSourceError
from abn.store import open_model_dir


def write_images(folder: Path, count: int, mode: str = "RGB", size: tuple = (10, 6)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(folder)))
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    for i in range(count):
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
        Image.fromarray(pixels, mode).save(folder / f"{i}.png")


def test_the_split_is_per_class_disjoint_seeded_and_keeps_every_class() -> None:
    labels = torch.tensor([0] * 20 + [1] * 5 + [2] * 3)
    held_out = {"val": 0.1, "test": 0.2}
    parts = stratified_split(labels, ["a", "b", "c"], held_out, seed=7)
    assert parts.keys() == {"train", "val", "test"}
    every = torch.cat(list(parts.values()))
    assert sorted(every.tolist()) == list(range(len(labels)))  # disjoint and complete
    for split in parts.values():
        assert set(labels[split].tolist()) == {0, 1, 2}  # at least one image of each class
    # a: 2 val, 4 test, 14 train; b and c: one each held out (at least one), the rest train
    assert [len(parts[s]) for s in ("train", "val", "test")] == [18, 4, 6]
    again = stratified_split(labels, ["a", "b", "c"], held_out, seed=7)
    assert all(torch.equal(parts[s], again[s]) for s in parts)
    other = stratified_split(labels, ["a", "b", "c"], held_out, seed=8)
    assert not all(torch.equal(parts[s], other[s]) for s in parts)
    with pytest.raises(DataSourceError, match="class 'b' has 2 image"):
        stratified_split(torch.tensor([0, 0, 0, 1, 1]), ["a", "b"], held_out, seed=0)


def test_train_val_test_folders_are_used_as_given_and_a_missing_split_is_drawn(
    tmp_path: Path,
) -> None:
    for name, count in (("train", 6), ("test", 2)):
        write_images(tmp_path / name / "cat", count)
        write_images(tmp_path / name / "dog", count)
    classes, files = folder_files(DataSource(IMAGE_FOLDER, str(tmp_path)))
    assert classes == ("cat", "dog")
    assert all(path.parent.parent.name == "test" for path, _ in files["test"])
    assert len(files["test"]) == 4 and len(files["val"]) == 2 and len(files["train"]) == 10
    write_images(tmp_path / "val" / "bird", 1)
    with pytest.raises(DataSourceError, match="classes that train/ lacks: bird"):
        folder_files(DataSource(IMAGE_FOLDER, str(tmp_path)))


def test_colour_into_one_channel_only_on_purpose_and_the_statistics_are_measured(
    tmp_path: Path,
) -> None:
    for name in ("a", "b"):
        write_images(tmp_path / name, 5)
    source = DataSource(IMAGE_FOLDER, str(tmp_path))
    with pytest.raises(DataSourceError, match="10 of the 10 images .* are in colour"):
        load_for_training(source, 1, 8, "resnet8_fmnist")
    gray = load_for_training(DataSource(IMAGE_FOLDER, str(tmp_path), grayscale=True), 1, 8, "x")
    assert gray.record["converted_to_grayscale"] and gray.input_spec.channels == 1
    rgb = load_for_training(source, 3, 8, "resnet8_fmnist")
    train = rgb.splits["train"]
    assert train.images.shape[1:] == (3, 8, 8) and rgb.record["images"]["train"] == 6
    assert (rgb.input_spec.mean, rgb.input_spec.std) == channel_stats(train.images)
    assert rgb.input_spec.mean != (0.5, 0.5, 0.5)
    with pytest.raises(DataSourceError, match="Fashion-MNIST is 1x28x28"):
        load_for_training(DataSource(FASHION_MNIST), 3, 32, "resnet20_cifar")


def test_channel_stats_match_a_direct_computation() -> None:
    images = torch.randint(0, 256, (7, 3, 5, 4), dtype=torch.uint8)
    mean, std = channel_stats(images, chunk=3)
    x = images.double() / 255
    assert mean == tuple(round(v, 4) for v in x.mean(dim=(0, 2, 3)).tolist())
    expected = x.permute(1, 0, 2, 3).reshape(3, -1).std(dim=1, unbiased=False)
    assert std == tuple(round(v, 4) for v in expected.tolist())


def test_fractions_out_of_range_and_two_sources_are_refused() -> None:
    with pytest.raises(DataSourceError, match="between 0 and 1"):
        DataSource(IMAGE_FOLDER, "x", val_fraction=0.6, test_fraction=0.5)
    with pytest.raises(DataSourceError, match="not both"):
        DataSource.from_flags("a", "b")


def test_a_manifest_without_a_record_is_fashion_mnist(
    tiny_model_dir: Path, tiny_fmnist_dir: Path, tmp_path: Path
) -> None:
    md = open_model_dir(tiny_model_dir)
    assert "data" not in md.manifest
    assert DataSource.of_model(md.manifest) == DataSource(FASHION_MNIST)
    data = load_for_model(md, ["test"], data_dir=str(tiny_fmnist_dir))
    assert torch.equal(data["test"].images, load_fashion_mnist("test", tiny_fmnist_dir).images)
    for name in ("x", "y"):
        write_images(tmp_path / name, 3)
    with pytest.raises(DataSourceError, match=r"10 classes \(T-shirt/top.* has 2 \(x, y\)"):
        load_for_model(md, ["test"], image_folder=str(tmp_path))
