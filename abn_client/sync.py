"""The synchronous client (httpx.Client): one connection pool, retries on 429/503."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, TypeVar

import httpx

from abn_client.calls import MODEL_CARD, Call, auth_headers, classify_call, feedback_call
from abn_client.request import Image, Widths
from abn_client.results import ClassifyResult, Feedback
from abn_client.retry import RetryPolicy

T = TypeVar("T")
DEFAULT_URL = "http://127.0.0.1:8000"


class Client:
    """``Client(url, api_key=..., timeout=..., retry=RetryPolicy(...))``; use it in a
    ``with`` block or call :meth:`close`. ``transport``: an httpx transport (tests, proxies)."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self._http = httpx.Client(
            base_url=url, headers=auth_headers(api_key), timeout=timeout, transport=transport
        )

    def classify(
        self,
        image: Image,
        *,
        budget: float | str | None = None,
        bit_widths: Widths | None = None,
        request_id: str | None = None,
    ) -> ClassifyResult:
        """One image (its bytes, or a path) within ``budget`` BitOps (None: the server's
        default), at the policy's widths or pinned ``bit_widths`` (4, [8, 4, ...], "8,4")."""
        return self._run(classify_call([image], budget, bit_widths, request_id))[0]

    def classify_many(
        self,
        images: Sequence[Image],
        *,
        budget: float | str | None = None,
        bit_widths: Widths | None = None,
        request_id: str | None = None,
    ) -> list[ClassifyResult]:
        """Several images in one request, each with its own decision under ``budget``."""
        return self._run(classify_call(images, budget, bit_widths, request_id))

    def feedback(self, request_id: str, label: int) -> Feedback:
        """The true ``label`` of an earlier answer (its ``id``), for live accuracy."""
        return self._run(feedback_call(request_id, label))

    def model_card(self) -> dict[str, Any]:
        return self._run(MODEL_CARD)

    def ready(self) -> bool:
        """Whether the server answers ``/readyz`` 200 now (no retry)."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def _run(self, call: Call[T]) -> T:
        attempt = 1
        while True:
            response = self._http.request(call.method, call.path, **call.kwargs)
            wait = self.retry.wait_seconds(
                response.status_code, response.headers.get("retry-after"), attempt
            )
            if wait is None:
                return call.result(response)
            time.sleep(wait)
            attempt += 1

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
