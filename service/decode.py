"""From an HTTP request body to the model's uint8 input, refusing what must not be decoded.

Order of checks, cheapest first, so hostile input costs the server as little as possible:

1. ``Content-Type`` (415) - an image type or ``multipart/form-data``;
2. ``Content-Length`` against the body limit (413) before a byte of the body is read, then the
   body is streamed with a running cap, so a lying or absent ``Content-Length`` cannot make the
   server buffer more than the limit;
3. the image header, read by ``Image.open`` without decoding pixels: the pixel count and the
   square the image will be padded to (``max(w, h)^2``, see :mod:`abn.preprocess`) against the
   pixel limit (413) - a decompression bomb is refused before it is inflated;
4. decoding and the documented conversion (:func:`abn.preprocess.pil_to_uint8`); anything
   Pillow cannot decode is a 400.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import AsyncIterator
from typing import Literal

import torch
from PIL import Image, UnidentifiedImageError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from abn.preprocess import InputSpec, pil_to_uint8
from service.errors import InvalidImage, PayloadTooLarge, UnsupportedMediaType

IMAGE_MEDIA_TYPES = ("image/png", "image/jpeg", "image/webp", "image/bmp", "image/gif")
MULTIPART = "multipart/form-data"
IMAGE_FIELD = "image"
# Pillow decoders tried; only these formats, whatever the Content-Type says, to keep the
# attack surface to the five the contract names.
PILLOW_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
ACCEPTED = ", ".join(IMAGE_MEDIA_TYPES) + f", or {MULTIPART} with the file in the field 'image'"


def configure_pillow(max_image_pixels: int) -> None:
    """Make Pillow's own bomb guard agree with ours and turn its warning into an error.

    Pillow warns above ``MAX_IMAGE_PIXELS`` and raises above twice that, at ``Image.open``.
    It is raised to at least our limit (never lowered: it is process-wide) so Pillow never
    refuses an image the setting allows; its warning becomes an exception, which we answer 413.
    """
    current = Image.MAX_IMAGE_PIXELS or 0
    Image.MAX_IMAGE_PIXELS = max(current, max_image_pixels)
    warnings.simplefilter("error", Image.DecompressionBombWarning)


def body_kind(content_type: str | None) -> Literal["image", "multipart"]:
    """Which body the request carries, from its ``Content-Type``; 415 for anything else."""
    if not content_type:
        raise UnsupportedMediaType(f"no Content-Type; send one of {ACCEPTED}")
    media = content_type.split(";", 1)[0].strip().lower()
    if media in IMAGE_MEDIA_TYPES:
        return "image"
    if media == MULTIPART:
        return "multipart"
    shown = ascii(media[:60])
    raise UnsupportedMediaType(f"Content-Type {shown} is not supported; send one of {ACCEPTED}")


def check_content_length(request: Request, limit: int) -> None:
    """413 at once when the declared length is over the limit (nothing is read)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(_too_large(limit, f"the body declares {int(declared)} bytes"))


async def _capped(stream: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    total = 0
    async for chunk in stream:
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(_too_large(limit, "the body is larger than the limit"))
        yield chunk


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused (413) as soon as it is known to pass ``limit`` bytes."""
    check_content_length(request, limit)
    return b"".join([chunk async for chunk in _capped(request.stream(), limit)])


async def read_images(request: Request, kind: str, limit: int, max_images: int) -> list[bytes]:
    """The encoded images: the whole body (one image), or the ``image`` fields of a multipart
    body (1 to ``max_images``); the body has at most ``limit`` bytes either way."""
    if kind == "image":
        return [await read_body(request, limit)]
    check_content_length(request, limit)
    parser = MultiPartParser(
        request.headers,
        _capped(request.stream(), limit),
        max_files=max_images + 8,
        max_fields=64,
        max_part_size=limit,
    )
    try:
        form = await parser.parse()
    except MultiPartException as err:
        raise InvalidImage(f"the multipart body is malformed: {err.message}") from err
    try:
        fields = form.getlist(IMAGE_FIELD)
        if not fields:
            raise InvalidImage(
                f"the multipart body has no field '{IMAGE_FIELD}'; put the image file there"
            )
        if len(fields) > max_images:
            raise PayloadTooLarge(
                f"the multipart body has {len(fields)} fields '{IMAGE_FIELD}'; at most "
                f"{max_images} images per request (ABN_MAX_IMAGES_PER_REQUEST, "
                f"ABN_MAX_QUEUE_SIZE)"
            )
        images = []
        for i, field in enumerate(fields):
            if not isinstance(field, UploadFile):
                where = f"#{i} " if len(fields) > 1 else ""
                raise InvalidImage(
                    f"the multipart field '{IMAGE_FIELD}' {where}must be a file, not text"
                )
            images.append(await field.read())
        return images
    finally:
        await form.close()


def open_image(data: bytes, max_image_pixels: int) -> Image.Image:
    """Read the image header only and refuse it (413) if it has, or would be padded to, more
    pixels than allowed. Cheap: no pixel data is inflated here."""
    if not data:
        raise InvalidImage("the image is empty")
    try:
        image = Image.open(io.BytesIO(data), formats=PILLOW_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise PayloadTooLarge(_too_many_pixels(max_image_pixels, str(err))) from err
    except UnidentifiedImageError as err:
        raise InvalidImage("the body is not a PNG, JPEG, WebP, BMP or GIF image") from err
    except Exception as err:  # Pillow raises many types on hostile headers
        raise InvalidImage(f"the image header cannot be read ({type(err).__name__})") from err
    width, height = image.size
    side = max(width, height)
    if width * height > max_image_pixels:
        image.close()
        raise PayloadTooLarge(_too_many_pixels(max_image_pixels, f"the image is {width}x{height}"))
    if side * side > max_image_pixels:
        image.close()
        raise PayloadTooLarge(
            _too_many_pixels(
                max_image_pixels, f"the {width}x{height} image is padded to a {side}x{side} square"
            )
        )
    return image


def convert_image(image: Image.Image, spec: InputSpec, max_image_pixels: int) -> torch.Tensor:
    """Decode an opened image and apply the documented conversion; closes the image."""
    with image:
        try:
            return pil_to_uint8(image, spec)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise PayloadTooLarge(_too_many_pixels(max_image_pixels, str(err))) from err
        except MemoryError as err:
            raise PayloadTooLarge("the image is too large to decode") from err
        except Exception as err:
            raise InvalidImage(
                f"the image cannot be decoded ({type(err).__name__}: {str(err)[:100]})"
            ) from err


def _too_large(limit: int, what: str) -> str:
    return f"{what}; the limit is {limit} bytes ({limit / 2**20:.3g} MiB); send a smaller image"


def _too_many_pixels(limit: int, what: str) -> str:
    return (
        f"{what}: more than the limit of {limit} pixels (the image and the square it is padded "
        f"to must each have at most {limit} pixels); send a smaller image"
    )
