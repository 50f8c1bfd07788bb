"""pil_to_uint8: the model's (C, H, W) uint8 tensor is Pillow's conversion of the image to the
model's mode, pixel for pixel, whatever mode the image came in."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from abn.preprocess import InputSpec, pil_to_uint8

GRAY = InputSpec(1, 28, 28, (0.5,), (0.5,))
COLOUR = InputSpec(3, 28, 28, (0.5,) * 3, (0.5,) * 3)
MODES = ["L", "RGB", "1", "I", "I;16", "F", "CMYK", "YCbCr"]  # no alpha, no palette


@pytest.mark.parametrize("spec", [GRAY, COLOUR], ids=["gray", "colour"])
@pytest.mark.parametrize("mode", MODES)
def test_the_tensor_is_pillows_conversion_to_the_models_mode(spec: InputSpec, mode: str) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (28, 28, 3), dtype=np.uint8)
    image = Image.fromarray(rgb, "RGB").convert(mode)
    expected = np.asarray(image.convert("L" if spec.channels == 1 else "RGB"))
    got = pil_to_uint8(image, spec)
    assert got.dtype == torch.uint8 and got.shape == (spec.channels, 28, 28)
    assert got.is_contiguous()
    assert torch.equal(got, torch.from_numpy(expected.reshape(28, 28, -1).copy()).permute(2, 0, 1))
