"""The Open Inference Protocol (v2) routes through httpx against the ASGI app (in process):
every input form gives the answers ``POST /classify`` gives, and every guarantee of
``/classify`` (budgets, pinned widths, auth, limits, metrics per image) holds here too.
tritonclient against a real server: test_v2_tritonclient.py."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from abn.data import FASHION_MNIST_CLASSES
from service.app import create_app
from service.model import ServedModel
from service.settings import Settings

from .helpers import Scrape, fmnist_like, png, serving, serving_for_module

pytestmark = pytest.mark.timeout(120)

MODEL = "tiny-test"
INFER = f"/v2/models/{MODEL}/infer"
N_LAYERS = 8
BUDGET = 100e6


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def image_input(images: list[bytes]) -> dict[str, Any]:
    return {
        "name": "image",
        "datatype": "BYTES",
        "shape": [len(images)],
        "data": [b64(i) for i in images],
    }


def outputs(body: dict[str, Any]) -> dict[str, np.ndarray]:
    """The JSON outputs of a v2 response as arrays of their shapes."""
    return {
        o["name"]: np.array(o["data"], dtype=object if o["datatype"] == "BYTES" else None).reshape(
            o["shape"]
        )
        for o in body["outputs"]
    }


def call(
    make_app: Callable[..., FastAPI],
    send: Callable[[httpx.AsyncClient], Any],
    **settings: object,
) -> Any:
    async def main() -> Any:
        async with serving(make_app(**settings)) as client:
            return await send(client)

    return asyncio.run(main())


def test_metadata_and_readiness(make_app: Callable[..., FastAPI]) -> None:
    async def send(c: httpx.AsyncClient) -> dict[str, httpx.Response]:
        paths = ["/v2", f"/v2/models/{MODEL}", f"/v2/models/{MODEL}/ready", "/v2/models/other"]
        paths += ["/v2/models/other/ready", "/v2/health/live", "/v2/health/ready"]
        return {p: await c.get(p) for p in paths}

    r = call(make_app, send)
    assert r["/v2"].json()["extensions"] == ["binary_tensor_data"]
    meta = r[f"/v2/models/{MODEL}"].json()
    assert meta["name"] == MODEL and meta["versions"] == ["0.0.1"]
    assert {i["name"]: i["shape"] for i in meta["inputs"]} == {
        "image": [-1],
        "pixels": [-1, 1, 28, 28],
    }
    assert {o["name"] for o in meta["outputs"]} == {
        "label",
        "class_name",
        "probabilities",
        "bit_widths",
        "bitops",
        "id",
    }
    assert r[f"/v2/models/{MODEL}/ready"].json() == {"name": MODEL, "ready": True}
    for path in ("/v2/models/other", "/v2/models/other/ready"):
        assert r[path].status_code == 404
        assert f"'{MODEL}'" in r[path].json()["error"]  # names what is served
    assert r["/v2/health/live"].status_code == r["/v2/health/ready"].status_code == 200


def test_bytes_input_answers_as_classify_does(make_app: Callable[..., FastAPI]) -> None:
    """Three images in one v2 request: each is answered as /classify answers it alone, and
    the metrics count three images."""
    images = [png(i) for i in range(3)]

    async def send(c: httpx.AsyncClient) -> tuple[httpx.Response, list[dict], Scrape, Scrape]:
        headers = {"X-BitOps-Budget": str(int(BUDGET))}
        singles = [
            (await c.post("/classify", content=i, headers={**headers, "Content-Type": "image/png"}))
            for i in images
        ]
        before = Scrape((await c.get("/metrics")).text)
        body = {"inputs": [image_input(images)], "parameters": {"budget": BUDGET}}
        v2 = await c.post(INFER, json=body)
        after = Scrape((await c.get("/metrics")).text)
        return v2, [s.json() for s in singles], before, after

    v2, singles, before, after = call(make_app, send)
    assert v2.status_code == 200, v2.text
    assert v2.headers["content-type"] == "application/json"
    body = v2.json()
    assert body["model_name"] == MODEL and body["id"] == v2.headers["x-request-id"]
    assert body["parameters"]["budget"] == BUDGET and body["parameters"]["policy"] == "adaptive"
    out = outputs(body)
    assert out["label"].tolist() == [s["label"] for s in singles]
    assert out["class_name"].tolist() == [s["class_name"] for s in singles]
    assert out["bit_widths"].tolist() == [s["bit_widths"] for s in singles]
    assert out["bitops"].tolist() == [s["bitops"] for s in singles]
    assert out["probabilities"].shape == (3, 10)
    assert np.allclose(out["probabilities"].sum(axis=1), 1.0, atol=1e-5)
    for row, single in zip(out["probabilities"], singles, strict=True):
        assert row[single["label"]] == pytest.approx(single["confidence"], abs=1e-5)
    assert after.value("abn_bitops_used_count") - before.value("abn_bitops_used_count") == 3
    route = {"route": "/v2/models/{name}/infer", "status_code": "200"}
    assert after.value("abn_requests_total", **route) == 1


def _pixels(seeds: list[int]) -> np.ndarray:
    """uint8 (N, 1, 28, 28): what the model's conversion makes of each seed's PNG."""
    return np.stack([fmnist_like(s)[None] for s in seeds])


def test_pixel_tensors_json_and_binary(make_app: Callable[..., FastAPI]) -> None:
    """UINT8 and FP32 (0-1) pixels, as JSON data and in the binary part, answer as the
    same images sent encoded."""
    pixels = _pixels([3, 4])
    as_float = (pixels / 255.0).astype("<f4")
    forms: dict[str, tuple[dict[str, Any], bytes]] = {
        "uint8-json": (
            {"name": "pixels", "datatype": "UINT8", "shape": [2, 1, 28, 28]}
            | {"data": pixels.tolist()},
            b"",
        ),
        "fp32-json": (
            {"name": "pixels", "datatype": "FP32", "shape": [2, 1, 28, 28]}
            | {"data": as_float.reshape(-1).tolist()},
            b"",
        ),
        "uint8-binary": (
            {"name": "pixels", "datatype": "UINT8", "shape": [2, 1, 28, 28]}
            | {"parameters": {"binary_data_size": pixels.nbytes}},
            pixels.tobytes(),
        ),
        "fp32-binary": (
            {"name": "pixels", "datatype": "FP32", "shape": [2, 1, 28, 28]}
            | {"parameters": {"binary_data_size": as_float.nbytes}},
            as_float.tobytes(),
        ),
    }

    async def send(c: httpx.AsyncClient) -> dict[str, httpx.Response]:
        answers = {"encoded": await c.post(INFER, json={"inputs": [image_input([png(3), png(4)])]})}
        for name, (tensor, binary) in forms.items():
            header = json.dumps({"inputs": [tensor]}).encode()
            headers = {"Inference-Header-Content-Length": str(len(header))} if binary else {}
            answers[name] = await c.post(INFER, content=header + binary, headers=headers)
        return answers

    answers = call(make_app, send)
    expected = outputs(answers["encoded"].json())
    for name, response in answers.items():
        assert response.status_code == 200, (name, response.text)
        got = outputs(response.json())
        assert got["label"].tolist() == expected["label"].tolist(), name
        assert got["bitops"].tolist() == expected["bitops"].tolist(), name
        assert np.allclose(got["probabilities"], expected["probabilities"], atol=1e-5), name


def test_binary_outputs(make_app: Callable[..., FastAPI]) -> None:
    """binary_data_output, and one output asked in JSON among binary ones: the binary part
    follows the JSON header, in output order, BYTES length-prefixed."""
    body = {
        "inputs": [image_input([png(0), png(1)])],
        "parameters": {"binary_data_output": True},
        "outputs": [{"name": "class_name"}, {"name": "bitops"}, {"name": "label"}]
        + [{"name": "bit_widths", "parameters": {"binary_data": False}}],
    }

    async def send(c: httpx.AsyncClient) -> httpx.Response:
        return await c.post(INFER, json=body)

    response = call(make_app, send)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    length = int(response.headers["inference-header-content-length"])
    header, binary = json.loads(response.content[:length]), response.content[length:]
    entries = {o["name"]: o for o in header["outputs"]}
    assert [o["name"] for o in header["outputs"]] == ["class_name", "bitops", "label", "bit_widths"]
    assert "data" not in entries["bitops"] and len(entries["bit_widths"]["data"]) == 2 * N_LAYERS
    sizes = [entries[n]["parameters"]["binary_data_size"] for n in ("class_name", "bitops")]
    names_raw, bitops_raw = binary[: sizes[0]], binary[sizes[0] : sizes[0] + sizes[1]]
    labels = np.frombuffer(binary[sizes[0] + sizes[1] :], "<i8")
    assert len(binary) == sum(sizes) + 16 and labels.shape == (2,)
    (first,) = struct.unpack_from("<I", names_raw)
    assert names_raw[4 : 4 + first].decode() in FASHION_MNIST_CLASSES
    assert np.all(np.frombuffer(bitops_raw, "<f8") > 0)


def test_budget_and_pinned_widths_as_parameters(make_app: Callable[..., FastAPI]) -> None:
    one = [image_input([png(0)])]
    cases = {
        "pinned": {"bit_widths": "4"},
        "pinned-int": {"bit_widths": 2, "budget": "50M"},
        "low": {"budget": 1},
        "syntax": {"budget": "lots"},
        "bool": {"budget": True},
        "widths": {"bit_widths": "5"},
        "over": {"bit_widths": 8, "budget": "50M"},
    }

    async def send(c: httpx.AsyncClient) -> dict[str, httpx.Response]:
        return {
            k: await c.post(INFER, json={"inputs": one, "parameters": p}) for k, p in cases.items()
        }

    r = call(make_app, send)
    pinned = r["pinned"].json()
    assert pinned["parameters"]["policy"] == "pinned"
    assert outputs(pinned)["bit_widths"].tolist() == [[4] * N_LAYERS]
    assert outputs(r["pinned-int"].json())["bit_widths"].tolist() == [[2] * N_LAYERS]
    expected = {
        "low": "invalid_budget",
        "syntax": "invalid_budget",
        "bool": "invalid_budget",
        "widths": "invalid_bit_widths",
        "over": "bit_widths_over_budget",
    }
    for case, error_type in expected.items():
        assert r[case].status_code == 422, (case, r[case].text)
        body = r[case].json()
        assert body["error_type"] == error_type, (case, body)
        assert "X-" not in body["error"], body  # no header was sent: none is named
        if case != "low":  # the others name what was sent
            assert "parameter '" in body["error"], body
    assert "feasible budgets are" in r["low"].json()["error"]


def _bad_requests() -> dict[str, tuple[int, dict[str, Any], bytes, dict[str, str]]]:
    """name: (status, JSON request, binary part, headers)."""
    img = image_input([png(0)])
    pixels = {"name": "pixels", "datatype": "UINT8", "shape": [1, 1, 28, 28]}
    return {
        "no inputs": (400, {"inputs": []}, b"", {}),
        "two inputs": (400, {"inputs": [img, img]}, b"", {}),
        "unknown input": (400, {"inputs": [{**img, "name": "photo"}]}, b"", {}),
        "misspelt key": (400, {"inputs": [img], "output": []}, b"", {}),
        "another model_name": (400, {"inputs": [img], "model_name": "other"}, b"", {}),
        "unknown parameter": (400, {"inputs": [img], "parameters": {"bugdet": 1}}, b"", {}),
        "unknown output": (400, {"inputs": [img], "outputs": [{"name": "logits"}]}, b"", {}),
        "classification": (
            400,
            {"inputs": [img], "outputs": [{"name": "label", "parameters": {"classification": 3}}]},
            b"",
            {},
        ),
        "not base64": (400, {"inputs": [{**img, "data": ["%%%"]}]}, b"", {}),
        "content_type str": (
            400,
            {"inputs": [{**img, "parameters": {"content_type": "str"}}]},
            b"",
            {},
        ),
        "not an image": (400, {"inputs": [{**img, "data": [b64(b"hello")]}]}, b"", {}),
        "shape and count": (400, {"inputs": [{**img, "shape": [2]}]}, b"", {}),
        "wrong datatype": (400, {"inputs": [{**img, "datatype": "FP32"}]}, b"", {}),
        "pixel shape": (400, {"inputs": [{**pixels, "shape": [1, 28, 28], "data": [0]}]}, b"", {}),
        "pixel range": (400, {"inputs": [{**pixels, "data": [256] * 784}]}, b"", {}),
        "fp32 range": (
            400,
            {"inputs": [{**pixels, "datatype": "FP32", "data": [2.0] * 784}]},
            b"",
            {},
        ),
        "binary short": (
            400,
            {"inputs": [{**pixels, "parameters": {"binary_data_size": 784}}]},
            b"\x00" * 10,
            {},
        ),
        "too many images": (413, {"inputs": [image_input([png(0)] * 4)]}, b"", {}),
        "gzip": (415, {"inputs": [img]}, b"", {"Content-Encoding": "gzip"}),
        "text/plain": (415, {"inputs": [img]}, b"", {"Content-Type": "text/plain"}),
        "header length": (400, {"inputs": [img]}, b"", {"Inference-Header-Content-Length": "x"}),
    }


def test_bad_requests_are_explicit_and_never_500(make_app: Callable[..., FastAPI]) -> None:
    cases = _bad_requests()

    async def send(c: httpx.AsyncClient) -> dict[str, httpx.Response]:
        answers = {}
        for name, (_, request, binary, headers) in cases.items():
            header = json.dumps(request).encode()
            if binary:
                headers = {**headers, "Inference-Header-Content-Length": str(len(header))}
            answers[name] = await c.post(INFER, content=header + binary, headers=headers)
        answers["not json"] = await c.post(INFER, content=b"{", headers={})
        return answers

    answers = call(make_app, send, max_images_per_request=3)
    cases["not json"] = (400, {}, b"", {})
    for name, response in answers.items():
        assert response.status_code == cases[name][0], (name, response.text)
        body = response.json()
        assert set(body) == {"error", "error_type"} and len(body["error"]) > 15, (name, body)


def test_auth_and_request_id(make_app: Callable[..., FastAPI]) -> None:
    request = {"id": "mine", "inputs": [image_input([png(0)])]}

    async def send(c: httpx.AsyncClient) -> list[httpx.Response]:
        return [
            await c.post(INFER, json=request),
            await c.post(INFER, json=request, headers={"Authorization": "Bearer k"}),
            await c.get(f"/v2/models/{MODEL}"),  # metadata stays open, like /v1/model
        ]

    refused, answered, metadata = call(make_app, send, api_key="k")
    assert refused.status_code == 401 and refused.json()["error_type"] == "unauthorized"
    assert answered.status_code == 200 and answered.json()["id"] == "mine"
    assert answered.json()["parameters"]["request_id"] == answered.headers["x-request-id"]
    assert metadata.status_code == 200


def test_openapi_describes_the_v2_routes(make_app: Callable[..., FastAPI]) -> None:
    async def send(c: httpx.AsyncClient) -> dict[str, Any]:
        return (await c.get("/openapi.json")).json()

    paths = call(make_app, send)["paths"]
    infer = paths["/v2/models/{name}/infer"]["post"]
    assert set(infer["requestBody"]["content"]) == {"application/json", "application/octet-stream"}
    assert set(infer["responses"]["200"]["content"]) == {
        "application/json",
        "application/octet-stream",
    }
    assert {"400", "401", "404", "413", "415", "422", "429", "503", "504"} <= set(
        infer["responses"]
    )
    assert infer["security"] == [{"bearer": []}, {}]
    for path in ("/v2", "/v2/models/{name}", "/v2/models/{name}/ready", "/v2/health/ready"):
        assert "get" in paths[path]


def test_image_conversion_is_shared(make_app: Callable[..., FastAPI]) -> None:
    """A large RGB JPEG goes through the same conversion as on /classify (decoded in a
    thread above the inline size): the same answer either way."""
    rgb = Image.fromarray(np.stack([fmnist_like(9, 300)] * 3, axis=-1))
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG")
    jpeg = buffer.getvalue()

    async def send(c: httpx.AsyncClient) -> tuple[httpx.Response, httpx.Response]:
        single = await c.post("/classify", content=jpeg, headers={"Content-Type": "image/jpeg"})
        return single, await c.post(INFER, json={"inputs": [image_input([jpeg])]})

    single, v2 = call(make_app, send)
    assert outputs(v2.json())["label"].tolist() == [single.json()["label"]]
    assert outputs(v2.json())["bitops"].tolist() == [single.json()["bitops"]]


class GatedModel:
    """The shared model behind a gate: every batch waits for ``gate``; batch sizes recorded."""

    def __init__(self, model: ServedModel) -> None:
        self._model = model
        self.gate = threading.Event()
        self.batches: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def infer(self, images: torch.Tensor, budgets: torch.Tensor, pinned: Any) -> Any:
        self.batches.append(len(budgets))
        assert self.gate.wait(20)
        return self._model.infer(images, budgets, pinned)


def test_shedding_is_all_or_none_and_the_timeout_parameter(
    served_model: ServedModel, tiny_model_dir: Path
) -> None:
    """With the model held, a request whose images do not all fit in the queue is refused
    429 with Retry-After, and none of its images runs; tritonclient's ``timeout``
    (microseconds) is a deadline of its own."""
    gated = GatedModel(served_model)
    settings = Settings(
        model_dir=tiny_model_dir,
        device="cpu",
        max_batch_size=1,
        max_queue_size=3,
        max_queue_delay_seconds=0.0,
        batch_execution="thread",  # the gate holds a model thread, not the event loop
    )
    app = create_app(settings, model=gated)  # type: ignore[arg-type]

    def request(n: int, **parameters: Any) -> dict[str, Any]:
        return {"inputs": [image_input([png(i) for i in range(n)])], "parameters": parameters}

    async def main() -> tuple[list[httpx.Response], httpx.Response, httpx.Response]:
        async with serving(app) as c:
            # (warm-up ran on the model itself, not through the gate)
            first = asyncio.create_task(c.post(INFER, json=request(1)))
            while not gated.batches:  # in the model, held
                await asyncio.sleep(0.005)
            second = asyncio.create_task(c.post(INFER, json=request(2)))
            while app.state.service.engine.queued < 2:
                await asyncio.sleep(0.005)
            refused = await c.post(INFER, json=request(2))
            late = await c.post(INFER, json=request(1, timeout=1))
            gated.gate.set()
            return [await first, await second], refused, late

    answered, refused, late = asyncio.run(main())
    assert [a.status_code for a in answered] == [200, 200], [a.text for a in answered]
    assert refused.status_code == 429 and refused.json()["error_type"] == "queue_full"
    assert int(refused.headers["retry-after"]) >= 1
    assert late.status_code == 504 and late.json()["error_type"] == "deadline_exceeded"
    assert sum(gated.batches) == 3  # 1 + 2: nothing of the refused request reached the model


def test_mlserver_base64_annotation(make_app: Callable[..., FastAPI]) -> None:
    """MLServer marks base64 BYTES with the input parameter content_type: base64; accepted
    in JSON (what JSON BYTES are here anyway) and in the binary part (elements then base64)."""
    text = b64(png(2)).encode()
    binary = struct.pack("<I", len(text)) + text
    tensor = {"name": "image", "datatype": "BYTES", "shape": [1]}
    json_form = {**tensor, "data": [text.decode()], "parameters": {"content_type": "base64"}}
    binary_form = {
        **tensor,
        "parameters": {"content_type": "base64", "binary_data_size": len(binary)},
    }

    async def send(c: httpx.AsyncClient) -> list[httpx.Response]:
        header = json.dumps({"inputs": [binary_form]}).encode()
        length = {"Inference-Header-Content-Length": str(len(header))}
        return [
            await c.post(INFER, json={"inputs": [image_input([png(2)])]}),
            await c.post(INFER, json={"inputs": [json_form]}),
            await c.post(INFER, content=header + binary, headers=length),
        ]

    plain, annotated, in_binary = call(make_app, send)
    labels = [outputs(r.json())["label"].tolist() for r in (plain, annotated, in_binary)]
    assert labels[0] == labels[1] == labels[2], [r.text[:200] for r in (annotated, in_binary)]


# -- any request, however malformed: an explicit 4xx, never a 500 ------------------------------
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-300, 300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
_tensors = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["image", "pixels", "other"]),
        "datatype": st.sampled_from(["BYTES", "UINT8", "FP32", "INT64", "bytes"]),
        "shape": st.lists(st.integers(-1, 30), max_size=4),
    },
    optional={
        "data": st.recursive(st.lists(_scalars, max_size=6), lambda c: st.lists(c, max_size=3)),
        "parameters": st.dictionaries(
            st.sampled_from(["binary_data_size", "content_type", "x"]), _scalars, max_size=2
        ),
    },
)
_requests = st.fixed_dictionaries(
    {"inputs": st.lists(_tensors, max_size=2)},
    optional={
        "id": _scalars,
        "parameters": st.dictionaries(
            st.sampled_from(["budget", "bit_widths", "binary_data_output", "timeout", "y"]),
            _scalars,
            max_size=3,
        ),
        "outputs": st.lists(
            st.fixed_dictionaries(
                {"name": st.sampled_from(["label", "bitops", "logits"])},
                optional={"parameters": st.dictionaries(st.just("binary_data"), _scalars)},
            ),
            max_size=3,
        ),
    },
)


@pytest.fixture(scope="module")
def v2_client(
    served_model: ServedModel, tiny_model_dir: Path
) -> Iterator[tuple[asyncio.Runner, httpx.AsyncClient]]:
    """One app for every generated request, its lifespan in one event loop (a Runner)."""
    settings = Settings(model_dir=tiny_model_dir, device="cpu", max_images_per_request=4)
    app = create_app(settings, model=served_model)
    with serving_for_module(app) as served:
        yield served


@given(request=_requests, binary=st.binary(max_size=64), header_length=st.booleans())
@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_generated_requests_never_fail_the_server(
    v2_client: tuple[asyncio.Runner, httpx.AsyncClient],
    request: dict[str, Any],
    binary: bytes,
    header_length: bool,
) -> None:
    runner, client = v2_client
    header = json.dumps(request).encode()  # NaN and Infinity too, as Python writes them
    headers = {"Inference-Header-Content-Length": str(len(header))} if header_length else {}
    response = runner.run(client.post(INFER, content=header + binary, headers=headers))
    assert response.status_code in (200, 400, 413, 422), response.text
    if response.status_code != 200:
        body = response.json()
        assert set(body) == {"error", "error_type"} and len(body["error"]) > 15, body


def test_kserve_shaped_request(make_app: Callable[..., FastAPI]) -> None:
    """What KServe's InferenceRESTClient sends (InferRequest.to_rest): the model name and an
    id at the top level, input parameters present, JSON data."""
    request = {
        "id": "2c7f0e9a-kserve",
        "model_name": MODEL,
        "inputs": [{**image_input([png(4)]), "parameters": {"content_type": "base64"}}],
        "outputs": [{"name": "label"}, {"name": "class_name"}],
        "parameters": {"budget": 100000000},
    }

    async def send(c: httpx.AsyncClient) -> httpx.Response:
        return await c.post(
            INFER, content=json.dumps(request), headers={"Content-Type": "application/json"}
        )

    response = call(make_app, send)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == "2c7f0e9a-kserve" and [o["name"] for o in body["outputs"]] == [
        "label",
        "class_name",
    ]


def test_each_image_id_takes_feedback(make_app: Callable[..., FastAPI]) -> None:
    """The id output: one id per image for POST /feedback, signed when the request id was
    generated, the client's X-Request-ID with -<index> otherwise."""

    async def send(c: httpx.AsyncClient) -> tuple[dict, dict, list[httpx.Response]]:
        body = {"inputs": [image_input([png(1), png(2)])], "outputs": [{"name": "id"}]}
        generated = (await c.post(INFER, json=body)).json()
        mine = (await c.post(INFER, json=body, headers={"X-Request-ID": "r"})).json()
        scored = [
            await c.post("/feedback", json={"id": i, "label": 0})
            for answer in (generated, mine)
            for i in outputs(answer)["id"].tolist()
        ]
        return generated, mine, scored

    generated, mine, scored = call(make_app, send)
    assert outputs(mine)["id"].tolist() == ["r-0", "r-1"]
    assert all(i.count(".") == 3 for i in outputs(generated)["id"].tolist())  # signed
    assert [r.status_code for r in scored] == [200] * 4, [r.text for r in scored]
