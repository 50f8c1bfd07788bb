"""abn.data: the IDX reader, Fashion-MNIST splits, image folders and batching."""

from __future__ import annotations

import gzip
import hashlib
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from abn.data import (
    FASHION_MNIST_CLASSES,
    ImageSet,
    iterate_batches,
    load_fashion_mnist,
    load_image_folder,
    random_crop_flip,
    read_idx,
    write_idx,
)
from abn.errors import DatasetNotFoundError
from abn.preprocess import InputSpec


def raw_idx(array: np.ndarray, code: int) -> bytes:
    """An IDX file's bytes, written here independently of abn.data.write_idx."""
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


@pytest.mark.parametrize("shape", [(7,), (3, 4, 5), (2, 28, 28), (0, 2)])
def test_write_then_read_round_trips(tmp_path: Path, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, shape).astype(np.uint8)
    path = tmp_path / "a-idx.gz"
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == np.uint8 and back.shape == shape
    assert np.array_equal(back, array)
    with gzip.open(path, "rb") as f:  # the file really is IDX: magic 0x00000803 for 3-D
        assert f.read(4) == bytes([0, 0, 0x08, len(shape)])


@pytest.mark.parametrize(
    ("dtype", "code"),
    [(np.uint8, 0x08), (np.int8, 0x09), (">i2", 0x0B), (">i4", 0x0C), (">f4", 0x0D), (">f8", 0x0E)],
)
def test_reads_every_idx_type_plain_and_gzipped(tmp_path: Path, dtype: str, code: int) -> None:
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    (tmp_path / "plain-idx").write_bytes(raw_idx(array, code))
    with gzip.open(tmp_path / "packed-idx.gz", "wb") as f:
        f.write(raw_idx(array, code))
    for name in ("plain-idx", "packed-idx.gz"):
        back = read_idx(tmp_path / name)
        assert back.shape == (2, 3, 4)
        assert np.array_equal(back, array)


def test_truncated_data_is_refused(tmp_path: Path) -> None:
    data = raw_idx(np.zeros((10, 28, 28), np.uint8), 0x08)
    (tmp_path / "cut-idx").write_bytes(data[:-100])
    with pytest.raises(ValueError, match="truncated") as info:
        read_idx(tmp_path / "cut-idx")
    assert "cut-idx" in str(info.value)
    with gzip.open(tmp_path / "cut-idx.gz", "wb") as f:
        f.write(data[:-1])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "cut-idx.gz")


def test_cut_off_gzip_stream_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "train-images-idx3-ubyte.gz"
    write_idx(path, np.random.default_rng(1).integers(0, 256, (50, 28, 28)).astype(np.uint8))
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt") as info:
        read_idx(path)
    assert path.name in str(info.value)


def test_truncated_header_and_bad_magic_are_refused(tmp_path: Path) -> None:
    (tmp_path / "short-idx").write_bytes(bytes([0, 0, 0x08, 3, 0, 0, 0, 10]))
    with pytest.raises(ValueError, match="header"):
        read_idx(tmp_path / "short-idx")
    (tmp_path / "png-idx").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(32))
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "png-idx")
    (tmp_path / "type-idx").write_bytes(bytes([0, 0, 0x07, 1, 0, 0, 0, 1, 0]))
    with pytest.raises(ValueError, match="data type"):
        read_idx(tmp_path / "type-idx")


def digests(data: ImageSet) -> list[str]:
    return [hashlib.sha1(img.numpy().tobytes()).hexdigest() for img in data.images]


def test_fashion_mnist_splits(tiny_fmnist_dir: Path) -> None:
    train = load_fashion_mnist("train", tiny_fmnist_dir)
    val = load_fashion_mnist("val", tiny_fmnist_dir)
    test = load_fashion_mnist("test", tiny_fmnist_dir)
    full = load_fashion_mnist("train_full", tiny_fmnist_dir)
    assert (len(train), len(val), len(test), len(full)) == (600, 5000, 300, 5600)
    for part in (train, val, test, full):
        assert part.images.dtype == torch.uint8 and part.images.shape[1:] == (1, 28, 28)
        assert part.labels.dtype == torch.int64 and part.labels.shape == (len(part),)
        assert part.classes == FASHION_MNIST_CLASSES
    train_d, val_d, full_d = digests(train), digests(val), digests(full)
    assert len(set(full_d)) == len(full)  # generated images are all distinct
    assert not set(train_d) & set(val_d)  # the validation split is held out of train
    assert Counter(train_d) + Counter(val_d) == Counter(full_d)
    # labels travel with their images
    label_of = dict(zip(full_d, full.labels.tolist(), strict=True))
    assert [label_of[d] for d in val_d] == val.labels.tolist()


def test_fashion_mnist_splits_are_deterministic(tiny_fmnist_dir: Path) -> None:
    for split in ("train", "val"):
        a = load_fashion_mnist(split, tiny_fmnist_dir)
        b = load_fashion_mnist(split, tiny_fmnist_dir)
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def test_missing_dataset_names_the_debian_package(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        load_fashion_mnist("train", tmp_path / "nowhere")
    message = str(info.value)
    assert "dataset-fashion-mnist" in message
    assert "train-images-idx3-ubyte.gz" in message
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(ValueError, match="unknown split"):
        load_fashion_mnist("validation", tmp_path)


def make_image_folder(root: Path) -> None:
    rng = np.random.default_rng(0)
    (root / "cats").mkdir(parents=True)
    (root / "dogs").mkdir()
    (root / "empty-class").mkdir()
    Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8), "L").save(root / "cats/a.png")
    Image.fromarray(rng.integers(0, 256, (40, 20, 3), dtype=np.uint8), "RGB").save(
        root / "cats/b.PNG"
    )
    Image.fromarray(rng.integers(0, 256, (10, 10, 4), dtype=np.uint8), "RGBA").save(
        root / "dogs/c.png"
    )
    Image.fromarray(np.full((5, 9), 200, np.uint8), "L").convert("P").save(root / "dogs/d.png")
    (root / "dogs/notes.txt").write_text("not an image")


def test_image_folder(tmp_path: Path) -> None:
    make_image_folder(tmp_path)
    spec = InputSpec(channels=1, height=28, width=28, mean=(0.5,), std=(0.25,))
    data = load_image_folder(tmp_path, spec)
    assert data.classes == ("cats", "dogs", "empty-class")
    assert data.labels.tolist() == [0, 0, 1, 1]
    assert data.images.shape == (4, 1, 28, 28) and data.images.dtype == torch.uint8
    original = np.asarray(Image.open(tmp_path / "cats/a.png"))
    assert np.array_equal(data.images[0, 0].numpy(), original)  # right size: unchanged
    rgb = load_image_folder(tmp_path, InputSpec(3, 16, 16, (0.5,) * 3, (0.25,) * 3))
    assert rgb.images.shape == (4, 3, 16, 16)


def test_image_folder_errors(tmp_path: Path) -> None:
    spec = InputSpec(1, 28, 28, (0.5,), (0.25,))
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        load_image_folder(tmp_path / "missing", spec)
    with pytest.raises(DatasetNotFoundError, match="no class sub-folders"):
        load_image_folder(tmp_path, spec)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.txt").write_text("x")
    with pytest.raises(DatasetNotFoundError, match="no images"):
        load_image_folder(tmp_path, spec)


def small_set(n: int) -> ImageSet:
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).clone()
    return ImageSet(images, torch.arange(n), ("a",))


def test_batches_shard_disjointly_and_deterministically() -> None:
    data = small_set(103)

    def labels(**kw: int) -> list[int]:
        return [int(v) for _, y in iterate_batches(data, 8, shuffle=True, **kw) for v in y]

    ranks = [labels(seed=3, epoch=1, rank=r, world_size=2) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 51
    assert not set(ranks[0]) & set(ranks[1])
    assert ranks[0] == labels(seed=3, epoch=1, rank=0, world_size=2)
    assert labels(seed=3, epoch=1) != labels(seed=3, epoch=2)
    assert sorted(labels(seed=0, epoch=0)) == list(range(103))
    in_order = [int(v) for _, y in iterate_batches(data, 10, shuffle=False) for v in y]
    assert in_order == list(range(103))
    sizes = [len(y) for _, y in iterate_batches(data, 10, shuffle=False, drop_last=True)]
    assert sizes == [10] * 10


def test_random_crop_flip_keeps_shape_and_is_seeded() -> None:
    images = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8)
    a = random_crop_flip(images, torch.Generator().manual_seed(0))
    b = random_crop_flip(images, torch.Generator().manual_seed(0))
    assert a.shape == images.shape and a.dtype == torch.uint8
    assert torch.equal(a, b)
    assert not torch.equal(a, images)
