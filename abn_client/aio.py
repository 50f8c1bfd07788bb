"""The asynchronous client (httpx.AsyncClient): the same calls as :class:`~abn_client.Client`."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, TypeVar

import httpx

from abn_client.calls import MODEL_CARD, Call, auth_headers, classify_call, feedback_call
from abn_client.request import Image, Widths
from abn_client.results import ClassifyResult, Feedback
from abn_client.retry import RetryPolicy
from abn_client.sync import DEFAULT_URL

T = TypeVar("T")


class AsyncClient:
    """``AsyncClient(url, api_key=..., timeout=..., retry=RetryPolicy(...))``; use it in an
    ``async with`` block or await :meth:`close`. ``transport``: an httpx transport (tests)."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self._http = httpx.AsyncClient(
            base_url=url, headers=auth_headers(api_key), timeout=timeout, transport=transport
        )

    async def classify(
        self,
        image: Image,
        *,
        budget: float | str | None = None,
        bit_widths: Widths | None = None,
        request_id: str | None = None,
    ) -> ClassifyResult:
        """One image (its bytes, or a path) within ``budget`` BitOps (None: the server's
        default), at the policy's widths or pinned ``bit_widths`` (4, [8, 4, ...], "8,4")."""
        return (await self._run(classify_call([image], budget, bit_widths, request_id)))[0]

    async def classify_many(
        self,
        images: Sequence[Image],
        *,
        budget: float | str | None = None,
        bit_widths: Widths | None = None,
        request_id: str | None = None,
    ) -> list[ClassifyResult]:
        """Several images in one request, each with its own decision under ``budget``."""
        return await self._run(classify_call(images, budget, bit_widths, request_id))

    async def feedback(self, request_id: str, label: int) -> Feedback:
        """The true ``label`` of an earlier answer (its ``id``), for live accuracy."""
        return await self._run(feedback_call(request_id, label))

    async def model_card(self) -> dict[str, Any]:
        return await self._run(MODEL_CARD)

    async def ready(self) -> bool:
        """Whether the server answers ``/readyz`` 200 now (no retry)."""
        try:
            return (await self._http.get("/readyz")).status_code == 200
        except httpx.TransportError:
            return False

    async def _run(self, call: Call[T]) -> T:
        attempt = 1
        while True:
            response = await self._http.request(call.method, call.path, **call.kwargs)
            wait = self.retry.wait_seconds(
                response.status_code, response.headers.get("retry-after"), attempt
            )
            if wait is None:
                return call.result(response)
            await asyncio.sleep(wait)
            attempt += 1

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
