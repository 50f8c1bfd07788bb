"""What a classify request sends: the headers that carry the cost, and the body."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

Image = bytes | str | os.PathLike[str]  # the encoded image, or the path of its file
Widths = int | str | Sequence[int]

# magic numbers of the five formats the server decodes, for an honest Content-Type
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF8", "image/gif"),
    (b"BM", "image/bmp"),
)


def image_bytes(image: Image) -> bytes:
    if isinstance(image, bytes):
        return image
    return Path(image).read_bytes()


def media_type(data: bytes) -> str:
    """The image's Content-Type from its first bytes; PNG when unknown (the server decodes
    by content, and answers 400 for what it cannot decode)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((kind for magic, kind in _MAGIC if data.startswith(magic)), "image/png")


def format_budget(budget: float | str) -> str:
    """``X-BitOps-Budget``: a string as given (``25M``), a number without a fraction when it
    has none, else in full."""
    if isinstance(budget, str):
        return budget
    value = float(budget)
    if math.isfinite(value) and value == int(value):
        return str(int(value))
    return repr(value)


def format_widths(widths: Widths) -> str:
    """``X-Bit-Widths``: one width for every layer, or one per layer."""
    if isinstance(widths, str):
        return widths
    if isinstance(widths, int):
        return str(widths)
    return ",".join(str(int(w)) for w in widths)


def cost_headers(
    budget: float | str | None, bit_widths: Widths | None, request_id: str | None
) -> dict[str, str]:
    headers = {}
    if budget is not None:
        headers["X-BitOps-Budget"] = format_budget(budget)
    if bit_widths is not None:
        headers["X-Bit-Widths"] = format_widths(bit_widths)
    if request_id is not None:
        headers["X-Request-ID"] = request_id
    return headers


def classify_body(images: Sequence[bytes]) -> dict[str, Any]:
    """httpx keyword arguments for the body: one image as itself, several as multipart
    ``image`` fields (the server answers each in order)."""
    if len(images) == 1:
        return {"content": images[0], "headers": {"Content-Type": media_type(images[0])}}
    return {
        "files": [
            ("image", (f"image-{i}", data, media_type(data))) for i, data in enumerate(images)
        ]
    }
