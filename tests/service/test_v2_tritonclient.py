"""Triton's own HTTP client (tritonclient[http], sync and aio) against a real ``abn serve``:
what a user of Triton, KServe or MLServer would run. tritonclient sends inputs in the
binary-data extension unless told otherwise and asks for binary outputs when it names none;
both ways, and the JSON forms, are exercised here."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
import tritonclient.http.aio as triton_aio
from tritonclient.utils import InferenceServerException

from .helpers import ServerProcess, fmnist_like, png, running_servers

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

KEY = "v2-key"
MODEL = "tiny-test"
N_LAYERS = 8


@pytest.fixture(scope="module")
def server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    logs = tmp_path_factory.mktemp("v2-tritonclient")
    spec = {"api_key": KEY, "max_images_per_request": 4, "max_batch_size": 8}
    with running_servers(tiny_model_dir, logs, {"v2": spec}) as servers:
        yield servers["v2"]


@pytest.fixture
def client(server: ServerProcess) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(server.url.removeprefix("http://")) as c:
        yield c


def auth() -> dict[str, str]:
    """A fresh headers dict per call: tritonclient writes Inference-Header-Content-Length into
    the dict it is given, which a shared one would carry into the next request."""
    return {"Authorization": f"Bearer {KEY}"}


def classify(server: ServerProcess, image: bytes, **headers: str) -> dict:
    """The same image through POST /classify, to compare with."""
    headers = {**auth(), "Content-Type": "image/png", **headers}
    response = httpx.post(server.url + "/classify", content=image, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_server_and_model_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL) and not client.is_model_ready("other")
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    metadata = client.get_model_metadata(MODEL)
    assert metadata["name"] == MODEL
    assert [i["name"] for i in metadata["inputs"]] == ["image", "pixels"]
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("other")
    assert info.value.status() == "404" and MODEL in info.value.message()


def test_encoded_images_binary_in_and_out(
    server: ServerProcess, client: triton.InferenceServerClient
) -> None:
    """tritonclient's defaults: BYTES in the binary part, every output binary."""
    images = [png(i) for i in range(3)]
    tensor = triton.InferInput("image", [3], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_))
    result = client.infer(MODEL, [tensor], parameters={"budget": 1e8}, headers=auth())
    singles = [classify(server, image, **{"X-BitOps-Budget": "100M"}) for image in images]
    assert result.as_numpy("label").tolist() == [s["label"] for s in singles]
    assert [n.decode() for n in result.as_numpy("class_name")] == [s["class_name"] for s in singles]
    assert result.as_numpy("bit_widths").tolist() == [s["bit_widths"] for s in singles]
    assert result.as_numpy("bitops").tolist() == [s["bitops"] for s in singles]
    probabilities = result.as_numpy("probabilities")
    assert probabilities.dtype == np.float32 and probabilities.shape == (3, 10)
    assert result.get_response()["parameters"]["budget"] == 1e8


def test_json_in_and_out(server: ServerProcess, client: triton.InferenceServerClient) -> None:
    """binary_data=False: the BYTES elements are base64 strings in JSON; outputs in JSON."""
    image = png(5)
    tensor = triton.InferInput("image", [1, 1], "BYTES")
    tensor.set_data_from_numpy(
        np.array([[base64.b64encode(image).decode()]], dtype=np.object_), binary_data=False
    )
    wanted = [triton.InferRequestedOutput(n, binary_data=False) for n in ("label", "bitops")]
    result = client.infer(MODEL, [tensor], outputs=wanted, headers=auth(), request_id="r-1")
    response = result.get_response()
    assert response["id"] == "r-1" and all("data" in o for o in response["outputs"])
    single = classify(server, image)
    assert result.as_numpy("label").tolist() == [single["label"]]
    assert result.as_numpy("bitops").tolist() == [single["bitops"]]
    assert result.as_numpy("probabilities") is None  # not asked for


def test_pixel_tensors_and_pinned_widths(client: triton.InferenceServerClient) -> None:
    pixels = np.stack([fmnist_like(s)[None] for s in (1, 2)])
    uint8 = triton.InferInput("pixels", [2, 1, 28, 28], "UINT8")
    uint8.set_data_from_numpy(pixels)
    fp32 = triton.InferInput("pixels", [2, 1, 28, 28], "FP32")
    fp32.set_data_from_numpy((pixels / 255.0).astype(np.float32), binary_data=False)
    pinned = {"bit_widths": "2", "budget": "50M"}
    a = client.infer(MODEL, [uint8], parameters=pinned, headers=auth())
    b = client.infer(MODEL, [fp32], parameters=pinned, headers=auth())
    assert a.as_numpy("bit_widths").tolist() == [[2] * N_LAYERS] * 2
    assert a.get_response()["parameters"]["policy"] == "pinned"
    assert a.as_numpy("label").tolist() == b.as_numpy("label").tolist()
    assert np.allclose(a.as_numpy("probabilities"), b.as_numpy("probabilities"), atol=1e-6)


def test_errors_reach_the_client_with_the_message(client: triton.InferenceServerClient) -> None:
    tensor = triton.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([png(0)], dtype=np.object_))
    cases = {
        "422": ({"budget": 1}, auth(), "feasible budgets are"),
        "401": ({}, {}, "Bearer"),
    }
    for status, (parameters, headers, text) in cases.items():
        with pytest.raises(InferenceServerException) as info:
            client.infer(MODEL, [tensor], parameters=parameters, headers=headers)
        assert info.value.status() == status and text in info.value.message(), info.value
    too_many = triton.InferInput("image", [5], "BYTES")
    too_many.set_data_from_numpy(np.array([png(0)] * 5, dtype=np.object_))
    with pytest.raises(InferenceServerException) as info:
        client.infer(MODEL, [too_many], headers=auth())
    assert info.value.status() == "413" and "at most 4" in info.value.message()


def test_aio_client(server: ServerProcess) -> None:
    async def main() -> tuple[list[int], bool]:
        async with triton_aio.InferenceServerClient(server.url.removeprefix("http://")) as c:
            tensor = triton_aio.InferInput("image", [2], "BYTES")
            tensor.set_data_from_numpy(np.array([png(7), png(8)], dtype=np.object_))
            result = await c.infer(MODEL, [tensor], headers=auth())
            return result.as_numpy("label").tolist(), await c.is_model_ready(MODEL)

    labels, ready = asyncio.run(main())
    assert ready and labels == [classify(server, png(i))["label"] for i in (7, 8)]
