"""The model every peer serves: the shipped supernet at one uniform width, from PNG bytes.

Loaded with :mod:`abn`'s own loader (sha256-verified, BN folded, every width's weights cached,
as the service loads it), decoded with the conversion the service documents
(:func:`abn.preprocess.pil_to_uint8`), so the peers differ from the service only in how they
serve, not in what they compute.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from abn.bitops import cost_table
from abn.errors import ABNError
from abn.preprocess import normalize, pil_to_uint8
from abn.store import DEFAULT_MODEL_DIR, ModelDirectory, open_model_dir

DEFAULT_BITS = 4


class PinnedModel:
    """One model directory on the CPU, every request at ``bits`` in every switchable layer
    (a width the directory has: see :func:`checked_directory`)."""

    def __init__(self, directory: ModelDirectory, bits: int, torch_threads: int = 1) -> None:
        torch.set_num_threads(torch_threads)
        self.net = directory.load_supernet("cpu").fold_for_inference()
        table = cost_table(self.net)
        self.bits = bits
        self.spec = directory.input_spec
        self.classes = directory.classes
        self.widths = [bits] * len(table.layer_macs)
        self.bitops = table.cost(self.widths)
        self.classify_batch([self.decode(_blank_png(self.spec.width, self.spec.height))])

    def decode(self, body: bytes) -> torch.Tensor:
        """PNG (or any Pillow format) bytes to a ``(C, H, W)`` uint8 tensor."""
        with Image.open(io.BytesIO(body)) as image:
            return pil_to_uint8(image, self.spec)

    def classify_batch(self, images: list[torch.Tensor]) -> list[dict[str, Any]]:
        """One forward pass over the batch; one answer per image, in order."""
        with torch.inference_mode():
            x = normalize(torch.stack(images), self.spec)
            probabilities = torch.softmax(self.net(x, self.bits).float(), dim=1)
        confidence, label = probabilities.max(dim=1)
        return [
            {
                "label": int(k),
                "class_name": self.classes[int(k)],
                "confidence": float(p),
                "bit_widths": self.widths,
                "bitops": self.bitops,
            }
            for k, p in zip(label.tolist(), confidence.tolist(), strict=True)
        ]


def _blank_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


def peer_arguments(description: str) -> argparse.ArgumentParser:
    """The options every peer takes, so the bench starts them all the same way."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--bits", type=int, default=DEFAULT_BITS, help="the uniform width served")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--torch-threads", type=int, default=1)
    return p


def checked_directory(parser: argparse.ArgumentParser, args: argparse.Namespace) -> ModelDirectory:
    """The verified model directory the options name, without loading its weights; a wrong
    directory or width is one line and exit code 2."""
    try:
        directory = open_model_dir(args.model)
    except (ABNError, ValueError, OSError) as err:
        parser.error(str(err))
    if args.bits not in directory.spec.bit_candidates:
        parser.error(
            f"--bits {args.bits}: the model has widths {list(directory.spec.bit_candidates)}"
        )
    return directory


def load_or_exit(parser: argparse.ArgumentParser, args: argparse.Namespace) -> PinnedModel:
    """The model the options name, loaded (see :func:`checked_directory` for mistakes)."""
    return PinnedModel(checked_directory(parser, args), args.bits, args.torch_threads)
