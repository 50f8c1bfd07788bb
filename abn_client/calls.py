"""The requests both clients send, built once: path, method and httpx arguments, and how
the answer is read. :mod:`abn_client.sync` and :mod:`abn_client.aio` only send them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import httpx

from abn_client.errors import RequestFailed
from abn_client.request import Image, Widths, classify_body, cost_headers, image_bytes
from abn_client.results import ClassifyResult, Feedback, results_from_json

T = TypeVar("T")


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request and the reader of its successful answer."""

    method: str
    path: str
    read: Callable[[httpx.Response], T]
    kwargs: dict[str, Any] = field(default_factory=dict)

    def result(self, response: httpx.Response) -> T:
        if response.is_error:
            raise RequestFailed.from_response(response)
        return self.read(response)


def classify_call(
    images: Sequence[Image],
    budget: float | str | None,
    bit_widths: Widths | None,
    request_id: str | None,
) -> Call[list[ClassifyResult]]:
    if not images:
        raise ValueError("give at least one image")
    body = classify_body([image_bytes(image) for image in images])
    headers = {**body.pop("headers", {}), **cost_headers(budget, bit_widths, request_id)}
    return Call(
        "POST",
        "/classify",
        lambda r: results_from_json(r.json()),
        {**body, "headers": headers},
    )


def feedback_call(request_id: str, label: int) -> Call[Feedback]:
    return Call(
        "POST",
        "/feedback",
        lambda r: Feedback.from_json(r.json()),
        {"json": {"id": request_id, "label": label}},
    )


MODEL_CARD: Call[dict[str, Any]] = Call("GET", "/v1/model", lambda r: r.json())


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}
