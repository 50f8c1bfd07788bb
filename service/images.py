"""From encoded images to the model's uint8 input tensors, for every route that classifies.

``POST /classify`` (one image, or several multipart fields) and the BYTES input of
``POST /v2/models/{name}/infer`` both end here, so both get the same checks in the same order
(:mod:`service.decode`: header and pixel count first, 413; then decoding, 400) and the same
care for the event loop: small images decode inline, large ones in a thread, one at a time
(so a request of many large images holds one decoded image at a time, not all of them), and
no later than the request's deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import torch
from PIL import Image

from abn.preprocess import InputSpec
from service.decode import convert_image, open_image
from service.errors import DeadlineExceeded, InvalidImage, PayloadTooLarge

# Images up to this many pixels decode on the event loop (well under a millisecond); a thread
# hand-off would cost more than the decode. Larger ones go to a thread.
INLINE_DECODE_PIXELS = 256 * 256


async def decode_images(
    encoded: Sequence[bytes], spec: InputSpec, max_image_pixels: int, deadline: float
) -> list[torch.Tensor]:
    """Every image decoded and converted, in order: ``(C, H, W)`` uint8 each. An image that
    is refused (400, 413) refuses the request; with several, the message says which."""
    images = []
    for i, data in enumerate(encoded):
        try:
            images.append(await _decode(data, spec, max_image_pixels, deadline))
        except (InvalidImage, PayloadTooLarge) as err:
            if len(encoded) > 1:
                err.message = f"image #{i} of {len(encoded)}: {err.message}"
            raise
    return images


async def _decode(
    data: bytes, spec: InputSpec, max_image_pixels: int, deadline: float
) -> torch.Tensor:
    opened = open_image(data, max_image_pixels)
    if opened.width * opened.height <= INLINE_DECODE_PIXELS:
        return convert_image(opened, spec, max_image_pixels)
    # a large decode would stall every other request: off the event loop
    return await _decode_in_thread(opened, spec, max_image_pixels, deadline)


async def _decode_in_thread(
    opened: Image.Image, spec: InputSpec, max_image_pixels: int, deadline: float
) -> torch.Tensor:
    """:func:`convert_image` in the default thread pool, but no later than the deadline: when
    the pool is saturated, the request is answered 504 rather than left waiting for a thread."""
    remaining = deadline - time.monotonic()
    try:
        return await asyncio.wait_for(
            asyncio.to_thread(convert_image, opened, spec, max_image_pixels),
            max(remaining, 0.0),
        )
    except TimeoutError:
        raise DeadlineExceeded(
            "the request passed its deadline (ABN_REQUEST_TIMEOUT_SECONDS) waiting for a "
            "decoder thread"
        ) from None
