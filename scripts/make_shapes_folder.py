"""Write a small image folder of JPEGs to try the own-data path (docs/own-data.md) without one
of your own: four classes of shapes (circle, square, triangle, stripes) drawn at random sizes,
positions and colours on noisy backgrounds, in the layout ``abn train supernet --image-folder``
reads (``DIR/<class>/*.jpg``). Nothing is downloaded; the same seed gives the same files.

    .venv/bin/python scripts/make_shapes_folder.py /tmp/shapes --per-class 150
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "stripes", "triangle")


def draw(kind: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One RGB image of ``kind``: a shape of random colour, size and place on noise."""
    background = rng.integers(0, 120, (size, size, 3), dtype=np.uint8)
    image = Image.fromarray(background, "RGB")
    pen = ImageDraw.Draw(image)
    colour = tuple(int(c) for c in rng.integers(120, 256, 3))
    half = int(rng.integers(size // 6, size // 3))
    cx, cy = (int(v) for v in rng.integers(half, size - half, 2))
    box = (cx - half, cy - half, cx + half, cy + half)
    if kind == "circle":
        pen.ellipse(box, fill=colour)
    elif kind == "square":
        pen.rectangle(box, fill=colour)
    elif kind == "triangle":
        pen.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], fill=colour)
    else:
        step = max(2, half // 2)
        for x in range(cx - half, cx + half, 2 * step):
            pen.rectangle((x, cy - half, x + step - 1, cy + half), fill=colour)
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to write (DIR/<class>/*.jpg)")
    parser.add_argument("--per-class", type=int, default=150, help="images per class")
    parser.add_argument("--size", type=int, default=64, help="side of each image in pixels")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    for kind in CLASSES:
        folder = args.out / kind
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(args.per_class):
            draw(kind, args.size, rng).save(folder / f"{kind}-{i:04d}.jpg", quality=90)
    print(f"wrote {args.per_class * len(CLASSES)} images under {args.out}")


if __name__ == "__main__":
    main()
