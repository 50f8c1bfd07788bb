"""Datasets: Fashion-MNIST from its IDX files, and image folders for users' own data.

Images are kept as uint8 tensors ``(N, C, H, W)``: that is the form every source shares (the
service decodes uploads to the same form), and normalisation happens in one place,
:func:`abn.preprocess.normalize`.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from abn.errors import DatasetNotFoundError
from abn.preprocess import InputSpec, pil_to_uint8

DEFAULT_FASHION_MNIST_DIR = Path(
    os.environ.get("ABN_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")
)
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FASHION_MNIST_INPUT = InputSpec(channels=1, height=28, width=28, mean=(0.2860,), std=(0.3530,))
VALIDATION_SIZE = 5000
VALIDATION_SEED = 20201  # fixed forever: the validation split must never move
# images per batch when a split is scored in eval mode (each image is scored on its own: this
# sets memory and speed)
EVALUATION_BATCH_SIZE = 500
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped), the format of MNIST and Fashion-MNIST."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:  # a cut-off or damaged .gz stream
        raise ValueError(f"{path}: the gzip stream is truncated or corrupt ({err})") from err
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    dtype_code, ndim = data[2], data[3]
    if dtype_code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX data type 0x{dtype_code:02x}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: the IDX header is truncated ({len(data)} bytes)")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_DTYPES[dtype_code])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(
            f"{path}: header declares shape {shape} ({expected} bytes) but holds "
            f"{len(data) - header} bytes; the file is truncated or corrupt"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).copy()


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) as a gzipped IDX file; used to make tiny test datasets."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


@dataclass
class ImageSet:
    """A labelled set of uint8 images held in memory."""

    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor | slice) -> ImageSet:
        return ImageSet(self.images[index], self.labels[index], self.classes)


def load_fashion_mnist(split: str, root: str | Path | None = None) -> ImageSet:
    """Fashion-MNIST ``train`` (55k), ``val`` (5k held out of train, fixed), ``test`` (10k),
    or ``train_full`` (all 60k)."""
    root = Path(root) if root is not None else DEFAULT_FASHION_MNIST_DIR
    if split not in ("train", "val", "test", "train_full"):
        raise ValueError(f"unknown split {split!r}; choose train, val, test or train_full")
    source = "test" if split == "test" else "train"
    paths = [root / name for name in _FILES[source]]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise DatasetNotFoundError(
            f"Fashion-MNIST not found: missing {', '.join(missing)}. Install Debian's package "
            f"'dataset-fashion-mnist' (apt-get install dataset-fashion-mnist) or point "
            f"--data-dir / ABN_FASHION_MNIST_DIR at a directory holding the IDX .gz files"
        )
    images = torch.from_numpy(read_idx(paths[0])).unsqueeze(1)
    labels = torch.from_numpy(read_idx(paths[1]).astype(np.int64))
    data = ImageSet(images, labels, FASHION_MNIST_CLASSES)
    if split in ("test", "train_full"):
        return data
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(VALIDATION_SEED))
    val_index, train_index = order[:VALIDATION_SIZE].sort().values, order[VALIDATION_SIZE:]
    return data.subset(val_index if split == "val" else train_index.sort().values)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
_GRAYSCALE_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F")


def folder_classes(root: str | Path) -> tuple[str, ...]:
    """The class names of an image folder: its sub-folders, sorted (the order is the labels)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetNotFoundError(f"image folder {root} does not exist")
    classes = tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
    if not classes:
        raise DatasetNotFoundError(f"{root} has no class sub-folders (expected root/<class>/*.png)")
    return classes


def image_files(root: str | Path, classes: Sequence[str]) -> list[tuple[Path, int]]:
    """Every image under ``root/<class>/`` with its label (the class's index in ``classes``);
    a class folder that ``root`` lacks contributes nothing."""
    root = Path(root)
    files = []
    for label, name in enumerate(classes):
        folder = root / name
        if folder.is_dir():
            files += [
                (path, label)
                for path in sorted(folder.iterdir())
                if path.suffix.lower() in IMAGE_SUFFIXES
            ]
    if not files:
        raise DatasetNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    return files


def is_colour(path: Path) -> bool:
    """Whether an image file is stored in colour, from its header alone (no decoding): a
    palette counts as colour unless every entry is grey."""
    with Image.open(path) as im:
        if im.mode in _GRAYSCALE_MODES:
            return False
        if im.mode in ("P", "PA"):
            palette = im.getpalette() or []
            return any(len(set(palette[i : i + 3])) > 1 for i in range(0, len(palette), 3))
        return True


def load_images(
    files: Sequence[tuple[Path, int]], classes: Sequence[str], input_spec: InputSpec
) -> ImageSet:
    """Decode ``files`` and convert them exactly as the service converts an upload."""
    images = []
    for path, _ in tqdm(files, desc="reading images", mininterval=2.0, disable=len(files) < 2000):
        with Image.open(path) as im:
            images.append(pil_to_uint8(im, input_spec))
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    return ImageSet(torch.stack(images), labels, tuple(classes))


def load_image_folder(root: str | Path, input_spec: InputSpec) -> ImageSet:
    """Images under ``root/<class name>/``, one folder per class (sorted names are the labels),
    decoded and converted exactly as the service converts an upload."""
    classes = folder_classes(root)
    return load_images(image_files(root, classes), classes, input_spec)


def random_crop_flip(
    images: torch.Tensor, generator: torch.Generator, pad: int = 2
) -> torch.Tensor:
    """Per-sample random shift (zero padding) and horizontal flip of a uint8 batch."""
    n, c, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)).view(n, 1, h, 1).expand(n, c, h, w + 2 * pad)
    cols = (dx[:, None] + torch.arange(w)).view(n, 1, 1, w).expand(n, c, h, w)
    out = padded.gather(2, rows).gather(3, cols)
    flip = torch.rand(n, generator=generator) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def iterate_batches(
    data: ImageSet,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    epoch: int = 0,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of ``(uint8 images, labels)``; the order depends only on seed and epoch, and each
    of ``world_size`` ranks gets a disjoint, equally long shard (as DistributedSampler)."""
    n = len(data)
    order = (
        torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        if shuffle
        else torch.arange(n)
    )
    per_rank = n // world_size
    order = order[rank : per_rank * world_size : world_size]
    stop = len(order) - len(order) % batch_size if drop_last else len(order)
    for start in range(0, stop, batch_size):
        index = order[start : start + batch_size]
        yield data.images[index], data.labels[index]
