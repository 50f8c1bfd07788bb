"""Hostile input never yields a 5xx nor takes the server down: one table, two transports.

``ROWS`` is the table (docs/operations.md, "Reliability and security", lists it): each row is
one request to ``POST /classify`` and the exact answer it must get - the status and, for an
error, the contract's ``{"error", "error_type"}`` body. The table runs twice:

* in process, through the ASGI app (fast, precise failures);
* over TCP against a real ``abn serve`` with the same limits, sent byte for byte by a raw
  socket client (no HTTP library tidies the request up), with the server's HTTP parser in
  the path; afterwards the process must still be alive, healthy and classifying.

The servers run with small limits (``LIMIT_BYTES``, ``LIMIT_PIXELS``) so that oversized bodies
and decompression bombs stay cheap to build and to refuse.
"""

from __future__ import annotations

import asyncio
import io
import json
import select
import socket
import struct
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from PIL import Image

from service.app import create_app
from service.model import ServedModel
from service.settings import Settings
from tests.torch_threads import single_torch_thread

from .helpers import Scrape, ServerProcess, fmnist_like, png, png_header_only, serving

pytestmark = pytest.mark.timeout(120)

LIMIT_BYTES = 200_000
LIMIT_PIXELS = 1_000_000
MAX_IMAGES = 3
SETTINGS: dict[str, object] = {
    "max_body_bytes": LIMIT_BYTES,
    "max_image_pixels": LIMIT_PIXELS,
    "max_images_per_request": MAX_IMAGES,
    "max_batch_size": 8,
    "max_queue_delay_seconds": 0.0,
}
N_LAYERS = 8  # switchable layers of the tiny test model (resnet8_fmnist)
GOOD = png(0)


# -- bodies ---------------------------------------------------------------------------------
def save(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


GRAY = Image.fromarray(fmnist_like(1))
NOISE = Image.fromarray((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8))
ENCODED = {
    "PNG": save(NOISE, "PNG"),
    "JPEG": save(NOISE, "JPEG"),
    "GIF": save(NOISE, "GIF"),
    "WebP": save(NOISE.convert("RGB"), "WEBP"),
    "BMP": save(NOISE, "BMP"),
}
FRAMES = [GRAY, GRAY.transpose(Image.Transpose.FLIP_LEFT_RIGHT), GRAY.rotate(90)]


def patched(data: bytes, at: int, replacement: bytes) -> bytes:
    """``data`` with the bytes at ``at`` overwritten (same length): a corrupted file."""
    return data[:at] + replacement + data[at + len(replacement) :]


def after(data: bytes, marker: bytes) -> int:
    return data.index(marker) + len(marker)


CORRUPT = {  # broken where a decoder must notice, not in data it may conceal
    "PNG": patched(ENCODED["PNG"], len(ENCODED["PNG"]) // 2, b"\xff" * 16),  # zlib stream
    "JPEG": patched(ENCODED["JPEG"], after(ENCODED["JPEG"], b"\xff\xc4") + 2, b"\xff" * 26),
    "GIF": patched(ENCODED["GIF"], len(ENCODED["GIF"]) // 2, b"\xff" * 16),  # LZW stream
    "WebP": patched(ENCODED["WebP"], after(ENCODED["WebP"], b"VP8 ") + 4, b"\x00" * 12),
    "BMP": patched(ENCODED["BMP"], 28, struct.pack("<H", 7)),  # 7 bits per pixel
}


def gif_header(width: int, height: int) -> bytes:
    """A GIF whose screen and only frame claim ``width x height``, with almost no data."""
    screen = struct.pack("<HHBBB", width, height, 0, 0, 0)
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0)
    return b"GIF89a" + screen + frame + b"\x02\x02\x44\x01\x00\x3b"


def bmp_header(width: int, height: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 0, 0, 2835, 2835, 0, 0)
    offset = 14 + 40 + 1024
    return b"BM" + struct.pack("<IHHI", offset + 16, 0, 0, offset) + info + b"\x00" * 1040


def jpeg_header(width: int, height: int) -> bytes:
    quant = b"\xff\xdb" + struct.pack(">H", 67) + b"\x00" + bytes(range(1, 65))
    frame = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    scan = b"\xff\xda" + struct.pack(">HB", 8, 1) + b"\x01\x00\x00\x3f\x00"
    return b"\xff\xd8" + quant + frame + scan + b"\x00" * 32 + b"\xff\xd9"


def webp_header(width: int, height: int) -> bytes:
    """A lossless WebP whose bitstream header claims ``width x height`` (max 16384 each)."""
    bits = b"\x2f" + ((width - 1) | ((height - 1) << 14)).to_bytes(4, "little") + b"\x00" * 8
    body = b"WEBP" + b"VP8L" + struct.pack("<I", len(bits)) + bits
    return b"RIFF" + struct.pack("<I", len(body)) + body


def real_bomb(side: int) -> bytes:
    """A valid, decodable PNG of ``side x side`` black pixels: a few KB that inflate to MBs."""
    return save(Image.new("L", (side, side)), "PNG", optimize=True)


def form(parts: list[tuple[str, str | None, bytes]], boundary: str = "abn-boundary") -> bytes:
    """A multipart/form-data body: (field name, file name or None for a text field, data)."""
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        kind = "Content-Type: image/png\r\n" if filename else ""
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n{kind}\r\n".encode()
        out += data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


MULTIPART = "multipart/form-data; boundary=abn-boundary"


@dataclass(frozen=True)
class Stream:
    """A body sent in ``count`` chunks of ``size`` bytes with no Content-Length (chunked)."""

    size: int
    count: int

    @property
    def total(self) -> int:
        return self.size * self.count

    def chunks(self) -> Iterator[bytes]:
        for _ in range(self.count):
            yield b"\x00" * self.size


# -- the table ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """One hostile request and the exact answer it must get (``error_type`` None: a 200)."""

    name: str
    status: int
    error_type: str | None
    body: bytes | Stream = GOOD
    content_type: str | None = "image/png"
    headers: tuple[tuple[str, bytes], ...] = ()
    content_length: int | None = None  # declared instead of the body's real length


def ok(name: str, body: bytes = GOOD, content_type: str = "image/png") -> Row:
    return Row(name, 200, None, body, content_type)


def bad_image(name: str, body: bytes, content_type: str = "image/png") -> Row:
    return Row(name, 400, "invalid_image", body, content_type)


def too_large(
    name: str,
    body: bytes | Stream,
    content_type: str = "image/png",
    content_length: int | None = None,
) -> Row:
    return Row(name, 413, "payload_too_large", body, content_type, content_length=content_length)


def budget(value: str, status: int = 422, error_type: str | None = "invalid_budget") -> Row:
    raw = value.encode("utf-8")
    return Row(f"budget {value!r}", status, error_type, headers=(("X-BitOps-Budget", raw),))


def widths(
    value: str, status: int = 422, error_type: str | None = "invalid_bit_widths", budget: str = ""
) -> Row:
    headers = [("X-Bit-Widths", value.encode("utf-8"))]
    if budget:
        headers.append(("X-BitOps-Budget", budget.encode()))
    label = f"bit-widths {value if len(value) < 24 else value[:20] + '...'!r}"
    return Row(
        label + (f" budget {budget}" if budget else ""), status, error_type, headers=tuple(headers)
    )


def multipart(
    name: str,
    status: int,
    error_type: str | None,
    body: bytes,
    content_type: str = MULTIPART,
) -> Row:
    return Row(f"multipart: {name}", status, error_type, body, content_type)


MEDIA = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "GIF": "image/gif",
    "WebP": "image/webp",
    "BMP": "image/bmp",
}
OVER_PIXELS = 1_100  # 1100^2 = 1.21M > LIMIT_PIXELS

ROWS: list[Row] = [
    # -- empty, random, truncated, corrupt ------------------------------------------------
    *(bad_image(f"empty body as {media}", b"", media) for media in MEDIA.values()),
    bad_image("one zero byte", b"\x00"),
    bad_image("1 KiB of random bytes", np.random.default_rng(1).bytes(1024)),
    bad_image("random bytes after a PNG signature", ENCODED["PNG"][:8] + b"\x13" * 500),
    bad_image("random bytes as image/gif", np.random.default_rng(2).bytes(300), "image/gif"),
    *(
        bad_image(f"truncated {fmt} (half)", data[: len(data) // 2], MEDIA[fmt])
        for fmt, data in ENCODED.items()
    ),
    *(bad_image(f"{fmt}: first 16 bytes only", data[:16]) for fmt, data in ENCODED.items()),
    *(bad_image(f"corrupt {fmt}", data, MEDIA[fmt]) for fmt, data in CORRUPT.items()),
    ok(  # entropy-coded JPEG data is concealed by the decoder: wrong pixels, still an image
        "JPEG with flipped scan data (decoder conceals)",
        patched(ENCODED["JPEG"], len(ENCODED["JPEG"]) // 3, bytes(16)),
        "image/jpeg",
    ),
    # -- a Content-Type that lies or is not ours ------------------------------------------
    ok("PNG sent as image/jpeg", ENCODED["PNG"], "image/jpeg"),
    ok("JPEG sent as image/gif", ENCODED["JPEG"], "image/gif"),
    ok("GIF sent as image/webp", ENCODED["GIF"], "image/webp"),
    ok("Content-Type with case and parameters", GOOD, "IMAGE/PNG; charset=binary; q=1"),
    bad_image("TIFF sent as image/png", save(NOISE, "TIFF")),
    bad_image("JSON sent as image/png", b'{"image": "x"}'),
    bad_image("ICO sent as image/bmp", save(GRAY, "ICO"), "image/bmp"),
    Row("no Content-Type", 415, "unsupported_media_type", GOOD, None),
    Row("empty Content-Type", 415, "unsupported_media_type", GOOD, ""),
    Row("PNG as text/plain", 415, "unsupported_media_type", GOOD, "text/plain"),
    Row(
        "PNG as application/octet-stream",
        415,
        "unsupported_media_type",
        GOOD,
        "application/octet-stream",
    ),
    Row("PNG as image/tiff", 415, "unsupported_media_type", GOOD, "image/tiff"),
    Row("PNG as image/svg+xml", 415, "unsupported_media_type", GOOD, "image/svg+xml"),
    Row("PNG as application/json", 415, "unsupported_media_type", GOOD, "application/json"),
    # -- animated, palette, odd modes -----------------------------------------------------
    ok(
        "animated GIF (3 frames)",
        save(FRAMES[0], "GIF", save_all=True, append_images=FRAMES[1:]),
        "image/gif",
    ),
    ok(
        "animated WebP (3 frames)",
        save(
            FRAMES[0].convert("RGB"),
            "WEBP",
            save_all=True,
            append_images=[f.convert("RGB") for f in FRAMES[1:]],
            duration=40,
        ),
        "image/webp",
    ),
    ok(
        "animated PNG (APNG, 3 frames)",
        save(FRAMES[0], "PNG", save_all=True, append_images=FRAMES[1:]),
    ),
    ok("palette PNG, one transparent index", save(GRAY.convert("P"), "PNG", transparency=0)),
    ok(
        "palette PNG, alpha per entry (P + tRNS table, read as PA)",
        save(GRAY.convert("P"), "PNG", transparency=bytes(range(256))),
    ),
    ok(
        "palette GIF with transparency", save(GRAY.convert("P"), "GIF", transparency=0), "image/gif"
    ),
    ok("palette BMP", save(GRAY.convert("P"), "BMP"), "image/bmp"),
    ok("gray + alpha PNG (LA)", save(GRAY.convert("LA"), "PNG")),
    ok("RGBA WebP", save(GRAY.convert("RGBA"), "WEBP"), "image/webp"),
    ok("16-bit gray PNG (I;16)", save(GRAY.convert("I").convert("I;16"), "PNG")),
    ok("1-bit BMP", save(GRAY.convert("1"), "BMP"), "image/bmp"),
    ok("CMYK JPEG", save(GRAY.convert("CMYK"), "JPEG"), "image/jpeg"),
    ok("progressive JPEG", save(GRAY, "JPEG", progressive=True), "image/jpeg"),
    ok("1 x 1 image", save(Image.new("L", (1, 1), 200), "PNG")),
    ok("1000 x 1 strip (padded square = the pixel limit)", save(Image.new("L", (1000, 1)), "PNG")),
    # -- huge bodies and decompression bombs ----------------------------------------------
    too_large("declares 10 GiB (nothing sent)", b"", content_length=10 * 2**30),
    too_large("4 bytes over the body limit", b"\x89PNG" + b"\x00" * LIMIT_BYTES),
    too_large("streamed, no Content-Length, 1 MiB", Stream(16_384, 64)),
    too_large("PNG header claims 1100 x 1100", png_header_only(OVER_PIXELS, OVER_PIXELS)),
    too_large("PNG header claims 65535 x 65535", png_header_only(65_535, 65_535)),
    too_large(
        "GIF header claims 1100 x 1100",
        gif_header(OVER_PIXELS, OVER_PIXELS),
        content_type="image/gif",
    ),
    too_large(
        "GIF header claims 65535 x 65535", gif_header(65_535, 65_535), content_type="image/gif"
    ),
    too_large(
        "BMP header claims 1100 x 1100",
        bmp_header(OVER_PIXELS, OVER_PIXELS),
        content_type="image/bmp",
    ),
    too_large(
        "JPEG header claims 1100 x 1100",
        jpeg_header(OVER_PIXELS, OVER_PIXELS),
        content_type="image/jpeg",
    ),
    too_large(
        "WebP header claims 16384 x 16384", webp_header(16_384, 16_384), content_type="image/webp"
    ),
    too_large("real PNG bomb, 2000 x 2000 black", real_bomb(2_000)),
    too_large(
        "1 x 1100 strip (padded square over the limit)",
        save(Image.new("L", (1, OVER_PIXELS)), "PNG"),
    ),
    # -- X-BitOps-Budget ----------------------------------------------------------------------
    *(
        budget(v)
        for v in (
            "NaN",
            "nan",
            "inf",
            "-inf",
            "Infinity",
            "1e400",
            "-0",
            "0",
            "0.0",
            "1e-400",
            "0x10",
            "0X10",
            "\u0661\u0662\u0663",
            "\uff11\uff12\uff13",
            "\uff11G",
            "",
            "   ",
            "MM",
            "1KM",
            "25MM",
            "250m",
            "250k",
            "250 M",
            "-5",
            "+5",
            "1_000",
            "K",
            "1e",
            ".",
            "1",
            "1" * 65,
        )
    ),  # fmt: skip
    budget("1G", 200, None),
    budget("2.5e8", 200, None),
    budget("  1G  ", 200, None),
    budget("1e12", 200, None),  # above the dearest configuration: fine, it runs at most that
    Row(
        "X-BitOps-Budget given twice",
        422,
        "invalid_budget",
        headers=(("X-BitOps-Budget", b"1G"), ("X-BitOps-Budget", b"2G")),
    ),
    # -- X-Bit-Widths -------------------------------------------------------------------------
    *(
        widths(v)
        for v in (
            "",
            "4,,4",
            "4.0",
            "-4",
            "+4",
            "99",
            "7",
            "0",
            "0x4",
            "4;4",
            "\u0664",
            "\uff14",
            "4,4",
            ",".join(["4"] * (N_LAYERS + 1)),
            "4," * 1000,
            "four",
            ",",
            " , ",
        )
    ),  # fmt: skip
    widths(" 4", 200, None),
    widths("4 ", 200, None),
    widths("8, 4,4,3 ,2,4,8,4", 200, None),
    widths("2", 200, None, budget="50M"),
    widths("8", 422, "bit_widths_over_budget", budget="50M"),
    Row(
        "X-Bit-Widths given twice",
        422,
        "invalid_bit_widths",
        headers=(("X-Bit-Widths", b"4"), ("X-Bit-Widths", b"4")),
    ),
    # -- other headers ----------------------------------------------------------------------
    Row(
        "X-Request-ID of 129 characters",
        422,
        "invalid_request_id",
        headers=(("X-Request-ID", b"r" * 129),),
    ),
    Row(
        "X-Request-ID with a space", 422, "invalid_request_id", headers=(("X-Request-ID", b"a b"),)
    ),
    Row(
        "X-Request-ID not ASCII",
        422,
        "invalid_request_id",
        headers=(("X-Request-ID", "\u00e9".encode()),),
    ),
    # -- multipart ----------------------------------------------------------------------------
    multipart("the image field", 200, None, form([("image", "x.png", GOOD)])),
    multipart(
        "image plus another file",
        200,
        None,
        form([("other", "o.png", GOOD), ("image", "x.png", GOOD)]),
    ),
    multipart("path-traversal file name", 200, None, form([("image", "../../etc/passwd", GOOD)])),
    multipart("no image field", 400, "invalid_image", form([("photo", "x.png", GOOD)])),
    multipart(
        "two image files", 200, None, form([("image", "a.png", GOOD), ("image", "b.png", GOOD)])
    ),
    multipart(
        "more image files than allowed",
        413,
        "payload_too_large",
        form([("image", f"{i}.png", GOOD) for i in range(MAX_IMAGES + 1)]),
    ),
    multipart(
        "a second image that is corrupt",
        400,
        "invalid_image",
        form([("image", "a.png", GOOD), ("image", "b.png", CORRUPT["PNG"])]),
    ),
    multipart("image is a text field", 400, "invalid_image", form([("image", None, b"hello")])),
    multipart("empty image file", 400, "invalid_image", form([("image", "x.png", b"")])),
    multipart(
        "corrupt image file", 400, "invalid_image", form([("image", "x.png", CORRUPT["PNG"])])
    ),
    multipart(
        "wrong boundary", 400, "invalid_image", form([("image", "x.png", GOOD)], boundary="other")
    ),
    multipart(
        "no boundary parameter",
        400,
        "invalid_image",
        form([("image", "x.png", GOOD)]),
        "multipart/form-data",
    ),
    multipart("empty body", 400, "invalid_image", b""),
    multipart("unterminated", 400, "invalid_image", form([("image", "x.png", GOOD)])[:-40]),
    multipart("raw PNG body", 400, "invalid_image", GOOD),
    multipart(
        "100 text fields", 400, "invalid_image", form([(f"f{i}", None, b"x") for i in range(100)])
    ),
    multipart(
        "20 files", 400, "invalid_image", form([(f"f{i}", "x.png", GOOD) for i in range(20)])
    ),
    multipart(
        "image over the body limit",
        413,
        "payload_too_large",
        form([("image", "x.png", b"\x00" * LIMIT_BYTES)]),
    ),
]
IDS = [row.name for row in ROWS]
assert len(set(IDS)) == len(IDS), "row names must be unique"


# -- answers ----------------------------------------------------------------------------------
@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes
    sent: int = 0  # body bytes the client got to send before the answer came


def check_reply(row: Row, reply: Reply) -> None:
    """The exact status and body the row expects, with the headers every answer carries."""
    what = f"{row.name}: {reply.status} {reply.body[:300]!r}"
    assert reply.status == row.status, what
    assert reply.headers.get("x-request-id"), what
    assert reply.headers.get("content-type", "").startswith("application/json"), what
    body = json.loads(reply.body)
    if row.error_type is None:
        for answer in body.get("results", [body]):  # several images: one answer each
            assert answer["policy"] in ("adaptive", "pinned"), what
            assert answer["bitops"] <= answer["budget"], what
            assert len(answer["bit_widths"]) == N_LAYERS, what
    else:
        assert set(body) == {"error", "error_type"}, what
        assert body["error_type"] == row.error_type, what
        assert isinstance(body["error"], str) and len(body["error"]) > 10, what


# -- in process -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def asgi_client(
    served_model: ServedModel, tiny_model_dir: Path
) -> Iterator[tuple[asyncio.Runner, httpx.AsyncClient, FastAPI]]:
    """One app for the whole table, its lifespan running in one event loop (a Runner)."""
    assert served_model.num_layers == N_LAYERS
    app = create_app(
        Settings(model_dir=tiny_model_dir, device="cpu", **SETTINGS),  # type: ignore[arg-type]
        model=served_model,
    )
    # one thread for the whole module (conftest's one_torch_thread is per test)
    with single_torch_thread(), asyncio.Runner() as runner:
        context = serving(app)
        client = runner.run(context.__aenter__())
        try:
            yield runner, client, app
        finally:
            runner.run(context.__aexit__(None, None, None))


async def _stream(body: Stream) -> AsyncIterator[bytes]:
    for chunk in body.chunks():
        yield chunk


async def send_asgi(client: httpx.AsyncClient, row: Row) -> Reply:
    headers: list[tuple[str, bytes]] = list(row.headers)
    if row.content_type is not None:
        headers.append(("Content-Type", row.content_type.encode()))
    if row.content_length is not None:
        headers.append(("Content-Length", str(row.content_length).encode()))
    content = _stream(row.body) if isinstance(row.body, Stream) else row.body
    r = await client.post("/classify", content=content, headers=headers)
    return Reply(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content)


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_in_process(
    row: Row, asgi_client: tuple[asyncio.Runner, httpx.AsyncClient, FastAPI]
) -> None:
    runner, client, _ = asgi_client
    check_reply(row, runner.run(send_asgi(client, row)))


def test_in_process_app_still_serves_after_the_table(
    asgi_client: tuple[asyncio.Runner, httpx.AsyncClient, FastAPI],
) -> None:
    runner, client, app = asgi_client

    async def body() -> Scrape:
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200
        r = await client.post("/classify", content=png(3), headers={"Content-Type": "image/png"})
        assert r.status_code == 200, r.text
        return Scrape((await client.get("/metrics")).text)

    metrics = runner.run(body())
    assert app.state.service.engine.busy is False
    assert_no_server_errors(metrics)


def assert_no_server_errors(metrics: Scrape) -> None:
    """No ``/classify`` answer was a 5xx (``/readyz``'s 503s while loading are expected)."""
    counted = metrics.series("abn_requests_total")
    classify = [(ls["status_code"], v) for ls, v in counted if ls["route"] == "/classify"]
    assert sum(v for _, v in classify) >= len(ROWS)
    server_errors = {code: v for code, v in classify if v and int(code) >= 500}
    assert not server_errors, server_errors


# -- a real process, byte for byte ------------------------------------------------------------
@pytest.fixture(scope="module")
def server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    process = ServerProcess(
        tiny_model_dir, tmp_path_factory.mktemp("hostile") / "server.log", **SETTINGS
    )
    try:
        process.wait_ready()
        yield process
    finally:
        rc = process.stop()
    assert rc == 0, process.log()


def request_head(row: Row, host: str) -> bytes:
    lines = [b"POST /classify HTTP/1.1", f"Host: {host}".encode(), b"Connection: close"]
    if row.content_type is not None:
        lines.append(b"Content-Type: " + row.content_type.encode())
    for name, value in row.headers:
        lines.append(name.encode() + b": " + value)
    if isinstance(row.body, Stream):
        lines.append(b"Transfer-Encoding: chunked")
    else:
        length = row.content_length if row.content_length is not None else len(row.body)
        lines.append(f"Content-Length: {length}".encode())
    return b"\r\n".join(lines) + b"\r\n\r\n"


def body_pieces(body: bytes | Stream, piece: int = 65_536) -> Iterator[bytes]:
    if isinstance(body, Stream):
        for chunk in body.chunks():
            yield f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
        yield b"0\r\n\r\n"
    else:
        for start in range(0, len(body), piece):
            yield body[start : start + piece]


def send_raw(port: int, head: bytes, pieces: Iterator[bytes], timeout: float = 30.0) -> Reply:
    """Send a request as raw bytes and read the answer; stop sending as soon as the server has
    answered (it may refuse a body before reading it), and count what was sent by then."""
    sent = 0
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head)
        for piece in pieces:
            if select.select([sock], [], [], 0)[0]:
                break  # the answer is here: the server did not wait for the rest
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(piece)
        try:
            while chunk := sock.recv(65_536):
                data += chunk
        except ConnectionResetError:
            pass  # the server closed a connection whose body it never read
    head_part, _, rest = data.partition(b"\r\n\r\n")
    lines = head_part.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 "), data[:200]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", len(rest)))
    return Reply(int(lines[0].split()[1]), headers, rest[:length], sent)


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_over_http(row: Row, server: ServerProcess) -> None:
    head = request_head(row, f"127.0.0.1:{server.port}")
    check_reply(row, send_raw(server.port, head, body_pieces(row.body)))


def test_a_huge_body_is_refused_before_it_is_read(server: ServerProcess) -> None:
    """413 without waiting for the body: a declared 10 GiB gets its answer with no byte of it
    sent, and a chunked body with no length gets it while most of it is still unsent."""
    declared = Row("declared", 413, "payload_too_large", b"", content_length=10 * 2**30)
    clock = time.monotonic()
    reply = send_raw(server.port, request_head(declared, "x"), iter(()))
    check_reply(declared, reply)
    assert time.monotonic() - clock < 10

    stream = Stream(65_536, 1024)  # 64 MiB, 335 times the limit
    streamed = Row("streamed", 413, "payload_too_large", stream)
    reply = send_raw(server.port, request_head(streamed, "x"), body_pieces(stream))
    check_reply(streamed, reply)
    print(f"chunked body: 413 after {reply.sent} of {stream.total} bytes sent")
    assert reply.sent < stream.total // 4, reply.sent


def test_the_server_survived_the_table(server: ServerProcess) -> None:
    assert server.proc.poll() is None, server.log()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        r = client.post("/classify", content=png(4), headers={"Content-Type": "image/png"})
        assert r.status_code == 200, r.text
        assert_no_server_errors(Scrape(client.get("/metrics").text))
    assert "Traceback" not in server.log(), server.log()
