"""Where a model's images come from: one record in its manifest that every stage reads.

Stage 1 (``abn train supernet``) picks the source from its flags and writes the record
(``data`` in the manifest): Fashion-MNIST, or an image folder with its path, classes, split
seed and fractions, input size and channels, and the mean/std measured on its training split.
Stage 2 and ``abn evaluate`` read that record, so the policy is trained and the model scored on
the model's own images; a source named on their command line instead (``--data-dir``,
``--image-folder``) must agree with the model (classes, channels, size) before any work starts.
A manifest without the record (every model before it existed) is Fashion-MNIST.

An image folder is either one folder of class sub-folders, split per class into train, val and
test by the seed and the fractions, or a folder holding ``train/`` (and ``val/``, ``test/``,
each of class sub-folders) where the user made the split; a split it lacks is drawn out of
``train/`` by the same rule.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from abn.data import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_INPUT,
    VALIDATION_SEED,
    ImageSet,
    folder_classes,
    image_files,
    is_colour,
    load_fashion_mnist,
    load_images,
)
from abn.errors import DataSourceError
from abn.preprocess import InputSpec

if TYPE_CHECKING:
    from abn.store import ModelDirectory

FASHION_MNIST = "fashion-mnist"
IMAGE_FOLDER = "image-folder"
SPLITS = ("train", "val", "test")
DEFAULT_VAL_FRACTION = 0.1
DEFAULT_TEST_FRACTION = 0.1
_MIN_STD = 1e-3  # a channel that never varies (a blank test image) must not divide by zero


@dataclass(frozen=True)
class DataSource:
    """What to read: the kind, its path (None: Debian's Fashion-MNIST) and how a folder splits."""

    kind: str
    path: str | None = None
    split_seed: int = VALIDATION_SEED
    val_fraction: float = DEFAULT_VAL_FRACTION
    test_fraction: float = DEFAULT_TEST_FRACTION
    grayscale: bool = False  # colour images made one-channel on purpose (--channels 1)

    def __post_init__(self) -> None:
        fractions = (self.val_fraction, self.test_fraction)
        if not all(0 < f < 1 for f in fractions) or sum(fractions) >= 1:
            raise DataSourceError(
                f"--val-fraction {self.val_fraction} and --test-fraction {self.test_fraction} "
                f"do not split a folder: each must be between 0 and 1 and together below 1"
            )

    @classmethod
    def from_flags(
        cls, data_dir: str | None, image_folder: str | None, **split: object
    ) -> DataSource:
        """The source a command line names (Fashion-MNIST unless ``--image-folder``)."""
        if data_dir and image_folder:
            raise DataSourceError("give --image-folder or --data-dir (Fashion-MNIST), not both")
        if image_folder:
            return cls(IMAGE_FOLDER, str(Path(image_folder).resolve()), **split)
        return cls(FASHION_MNIST, str(Path(data_dir).resolve()) if data_dir else None, **split)

    @classmethod
    def of_model(cls, manifest: dict) -> DataSource:
        """The source a model directory records (Fashion-MNIST when it records none)."""
        record = manifest.get("data")
        if not record:
            return cls(FASHION_MNIST)
        return cls(
            record["source"],
            record.get("path"),
            int(record.get("split_seed", VALIDATION_SEED)),
            float(record.get("val_fraction", DEFAULT_VAL_FRACTION)),
            float(record.get("test_fraction", DEFAULT_TEST_FRACTION)),
            bool(record.get("converted_to_grayscale", False)),
        )

    def instead(self, data_dir: str | None, image_folder: str | None) -> DataSource:
        """This source, or the one named by the flags, split by this source's rule."""
        if not data_dir and not image_folder:
            return self
        named = DataSource.from_flags(data_dir, image_folder)
        return replace(self, kind=named.kind, path=named.path)


def folder_layout(root: Path) -> dict[str, Path | None]:
    """``train``/``val``/``test`` folders where the user made the split, else one folder."""
    folder_classes(root)  # a clear error when the folder is missing or has no sub-folders
    names = {p.name for p in root.iterdir() if p.is_dir()}
    if "train" in names and names <= set(SPLITS):
        return {s: root / s if s in names else None for s in SPLITS}
    return {"train": root, "val": None, "test": None}


def stratified_split(
    labels: torch.Tensor, classes: Sequence[str], held_out: dict[str, float], seed: int
) -> dict[str, torch.Tensor]:
    """Indices of each split: per class, shuffled by ``seed``, a fraction (at least one image)
    for each held-out split, the rest for ``train``; sorted, so file order is kept."""
    gen = torch.Generator().manual_seed(seed)
    parts: dict[str, list[torch.Tensor]] = {"train": [], **{s: [] for s in held_out}}
    for label, name in enumerate(classes):
        index = (labels == label).nonzero().flatten()
        index = index[torch.randperm(len(index), generator=gen)]
        start = 0
        for split, fraction in held_out.items():
            count = max(1, round(len(index) * fraction))
            parts[split].append(index[start : start + count])
            start += count
        if start >= len(index):
            raise DataSourceError(
                f"class {name!r} has {len(index)} image(s): too few to hold one out for "
                f"{' and '.join(held_out)} and train on the rest; add images (at least "
                f"{len(held_out) + 1}) or give the folder train/, val/ and test/ sub-folders"
            )
        parts["train"].append(index[start:])
    return {s: torch.cat(p).sort().values for s, p in parts.items()}


def folder_files(source: DataSource) -> tuple[tuple[str, ...], dict[str, list]]:
    """The classes of an image-folder source and the ``(path, label)`` files of each split."""
    root = Path(str(source.path))
    layout = folder_layout(root)
    print(f"reading {root}: {_layout_name(layout, root)}", file=sys.stderr)
    classes = folder_classes(layout["train"])
    files = {}
    for split, folder in layout.items():
        if folder is None:
            continue
        unknown = sorted(set(folder_classes(folder)) - set(classes))
        if unknown:
            raise DataSourceError(
                f"{folder} has classes that train/ lacks: {', '.join(unknown)}; every class of "
                f"val/ and test/ must have a folder in train/"
            )
        files[split] = image_files(folder, classes)
    held_out = {
        s: f
        for s, f in (("val", source.val_fraction), ("test", source.test_fraction))
        if s not in files
    }
    if held_out:
        train = files.pop("train")
        labels = torch.tensor([label for _, label in train])
        for split, index in stratified_split(labels, classes, held_out, source.split_seed).items():
            files[split] = [train[i] for i in index.tolist()]
    return classes, files


def _layout_name(layout: dict[str, Path | None], root: Path) -> str:
    """How a folder's splits are made, in words (printed, and recorded in the manifest)."""
    if layout["train"] == root:
        return "one folder of classes, split per class by seed"
    given = [s for s in SPLITS if layout[s] is not None]
    drawn = [s for s in SPLITS if layout[s] is None]
    drawn_text = f"; {', '.join(drawn)} drawn from train/ by seed" if drawn else ""
    return "/, ".join(given) + "/ folders" + drawn_text


def check_channels(source: DataSource, colour: int, total: int, channels: int, what: str) -> None:
    """Colour images into a one-channel network only when asked (``--channels 1``)."""
    if channels != 1 or not colour:
        return
    if not source.grayscale:
        raise DataSourceError(
            f"{colour} of the {total} images under {source.path} are in colour but {what} "
            f"takes 1-channel (grayscale) input; train with --channels 3 (or an RGB "
            f"architecture such as resnet20_cifar), or pass --channels 1 to convert them to "
            f"grayscale on purpose"
        )
    print(f"note: converting {colour} colour image(s) to grayscale (--channels 1)", file=sys.stderr)


def channel_stats(images: torch.Tensor, chunk: int = 1024) -> tuple[tuple, tuple]:
    """Per-channel mean and standard deviation of uint8 images, on the ``[0, 1]`` scale."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, images.shape[0], chunk):
        x = images[start : start + chunk].double() / 255.0
        total += x.sum(dim=(0, 2, 3))
        squares += (x * x).sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(0).sqrt().clamp_min(_MIN_STD)
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())


@dataclass
class TrainingData:
    """Stage 1's data: the splits, the input they are converted to and the manifest record."""

    splits: dict[str, ImageSet]
    input_spec: InputSpec
    record: dict


def load_for_training(
    source: DataSource, channels: int, size: int, architecture: str
) -> TrainingData:
    """Train and val splits of ``source`` converted to ``channels`` x ``size`` x ``size``,
    with the mean/std of the training split, checked against the architecture's input."""
    what = f"{architecture} ({channels}x{size}x{size})"
    if source.kind == FASHION_MNIST:
        if (channels, size) != (1, 28):
            raise DataSourceError(
                f"Fashion-MNIST is 1x28x28 grayscale but {what} takes other input; use "
                f"--arch resnet8_fmnist, or --channels 1 --input-size 28, or --image-folder"
            )
        splits = {s: load_fashion_mnist(s, source.path) for s in ("train", "val")}
        return TrainingData(splits, FASHION_MNIST_INPUT, fashion_mnist_record(source, splits))
    classes, files = folder_files(source)
    every = [f for split in files.values() for f in split]
    colour = sum(is_colour(path) for path, _ in every)
    check_channels(source, colour, len(every), channels, what)
    provisional = InputSpec(channels, size, size, (0.0,) * channels, (1.0,) * channels)
    splits = {s: load_images(files[s], classes, provisional) for s in ("train", "val")}
    mean, std = channel_stats(splits["train"].images)
    input_spec = InputSpec(channels, size, size, mean, std)
    record = {
        "source": IMAGE_FOLDER,
        "path": source.path,
        "layout": _layout_name(folder_layout(Path(str(source.path))), Path(str(source.path))),
        "classes": list(classes),
        "split_seed": source.split_seed,
        "val_fraction": source.val_fraction,
        "test_fraction": source.test_fraction,
        "images": {s: len(files[s]) for s in SPLITS},
        "colour_images": colour,
        "converted_to_grayscale": bool(colour and channels == 1),
        **input_record(input_spec),
    }
    return TrainingData(splits, input_spec, record)


def input_record(spec: InputSpec) -> dict:
    """The input geometry and the normalisation measured on the training split."""
    return {
        "input": {"channels": spec.channels, "height": spec.height, "width": spec.width},
        "mean": list(spec.mean),
        "std": list(spec.std),
    }


def fashion_mnist_record(source: DataSource, splits: dict[str, ImageSet]) -> dict:
    """The record of a Fashion-MNIST model: its IDX directory (None: Debian's) and fixed split."""
    return {
        "source": FASHION_MNIST,
        "path": source.path,
        "classes": list(FASHION_MNIST_CLASSES),
        "split_seed": VALIDATION_SEED,
        "images": {s: len(d) for s, d in splits.items()},
        **input_record(FASHION_MNIST_INPUT),
    }


def load_for_model(
    model: ModelDirectory,
    splits: Sequence[str],
    data_dir: str | None = None,
    image_folder: str | None = None,
) -> dict[str, ImageSet]:
    """The model's recorded data (or the flags' instead), checked against the model first."""
    source = DataSource.of_model(model.manifest).instead(data_dir, image_folder)
    spec = model.input_spec
    geometry = f"{spec.channels}x{spec.height}x{spec.width}"
    if source.kind == FASHION_MNIST:
        check_classes(model, FASHION_MNIST_CLASSES, "Fashion-MNIST")
        if (spec.channels, spec.height, spec.width) != (1, 28, 28):
            raise DataSourceError(
                f"Fashion-MNIST is 1x28x28 but the model {model.path} takes {geometry}; give "
                f"the --image-folder it was trained on"
            )
        return {s: load_fashion_mnist(s, source.path) for s in splits}
    root = Path(str(source.path))
    check_classes(model, folder_classes(folder_layout(root)["train"]), str(root))  # before a split
    classes, files = folder_files(source)
    every = [f for s in splits for f in files[s]]
    colour = sum(is_colour(path) for path, _ in every) if spec.channels == 1 else 0
    check_channels(source, colour, len(every), spec.channels, f"the model ({geometry})")
    return {s: load_images(files[s], classes, spec) for s in splits}


def check_classes(model: ModelDirectory, classes: Sequence[str], where: str) -> None:
    """The same class names in the same order: a label must mean the class it meant in training."""
    if list(classes) != model.classes:
        raise DataSourceError(
            f"the model {model.path} has {len(model.classes)} classes "
            f"({_names(model.classes)}) but {where} has {len(classes)} ({_names(classes)}); "
            f"give the data it was trained on (--image-folder or --data-dir)"
        )


def _names(classes: Sequence[str], shown: int = 6) -> str:
    more = f", ... {len(classes) - shown} more" if len(classes) > shown else ""
    return ", ".join(classes[:shown]) + more
