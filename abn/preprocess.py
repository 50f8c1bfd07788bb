"""From any decoded image to the model's input; the one conversion training and serving share.

The conversion, in order:

1. the first frame of an animated image is used;
2. transparency is composited onto black (Fashion-MNIST items are light on black);
3. the mode becomes ``L`` (grayscale, ITU-R 601-2 luma) for one-channel models, ``RGB`` for
   three-channel ones;
4. a non-square image is padded with black to a square, centred, so the aspect ratio is kept;
5. it is resized to the model's height x width with bilinear filtering (antialiased when
   shrinking), as uint8, so pixels stay 8-bit;
6. :func:`normalize` maps ``[0, 255]`` to ``(x / 255 - mean) / std``, the training statistics.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from PIL import Image, ImageOps


@dataclass(frozen=True)
class InputSpec:
    channels: int
    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_dict(self) -> dict:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> InputSpec:
        return cls(
            channels=int(d["channels"]),
            height=int(d["height"]),
            width=int(d["width"]),
            mean=tuple(float(m) for m in d["mean"]),
            std=tuple(float(s) for s in d["std"]),
        )


def pil_to_uint8(image: Image.Image, spec: InputSpec) -> torch.Tensor:
    """A decoded Pillow image as a ``(C, H, W)`` uint8 tensor in the model's geometry."""
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
    if image.mode in ("P", "PA", "LA", "RGBA", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    mode = "L" if spec.channels == 1 else "RGB"
    if image.mode != mode:  # convert() to the image's own mode would only copy it
        image = image.convert(mode)
    if image.width != image.height:
        side = max(image.width, image.height)
        image = ImageOps.pad(image, (side, side), color=0, centering=(0.5, 0.5))
    if image.size != (spec.width, spec.height):
        image = image.resize((spec.width, spec.height), Image.Resampling.BILINEAR)
    # the pixels, copied once into a tensor of their own (HWC), then laid out CHW
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return pixels.view(spec.height, spec.width, spec.channels).permute(2, 0, 1).contiguous()


@dataclass(frozen=True)
class Normalizer:
    """:func:`normalize` with its per-channel constants built once on one device: what a loaded
    model or a loop over batches holds, rather than rebuilding two small tensors per batch."""

    mean: torch.Tensor  # (1, C, 1, 1)
    std: torch.Tensor

    @classmethod
    def for_spec(cls, spec: InputSpec, device: torch.device | str) -> Normalizer:
        mean = torch.tensor(spec.mean, device=device).view(1, -1, 1, 1)
        return cls(mean, torch.tensor(spec.std, device=device).view(1, -1, 1, 1))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(N, C, H, W)`` to the float input the network was trained on."""
        return (images.float() / 255.0 - self.mean) / self.std


def normalize(images: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """uint8 ``(N, C, H, W)`` to the float input the network was trained on (one batch; a
    loop over batches holds a :class:`Normalizer`)."""
    return Normalizer.for_spec(spec, images.device)(images)
