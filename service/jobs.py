"""From decoded images to answers: the engine's side of every route that classifies.

Each image of a request is one job of the batching engine (its own policy decision under the
per-image budget, batched with whatever else is queued). A request is answered whole: it is
admitted whole (when the queue has no room for all its images, none stays queued: 429), and
when one image fails (deadline, shutdown, the model), the others are cancelled, so the batcher
drops them before they reach the model, and the request gets that error. The metrics count
each answered image, as they count a one-image request, and each answer gets an id that
``POST /feedback`` can score (:func:`feedback_ids`).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence

import torch
from starlette.requests import Request
from starlette.types import Receive

from service.connections import GONE_KEY
from service.cost import CostRequest
from service.engine import Answer, BatchingEngine
from service.errors import ClientGone, DeadlineExceeded
from service.settings import Settings
from service.state import ServiceState


def submit_all(
    engine: BatchingEngine,
    images: Sequence[torch.Tensor],
    cost: CostRequest,
    deadline: float,
    request_id: str,
) -> list[asyncio.Future[Answer]]:
    """One job per image; all or none: if the engine refuses one (429, 503), those already
    queued are cancelled and the refusal is raised."""
    if time.monotonic() >= deadline:
        raise DeadlineExceeded("the request passed its deadline before it could be queued")
    futures: list[asyncio.Future[Answer]] = []
    sole = len(images) == 1  # its widths are then counted by the engine (count_answers)
    try:
        for image in images:
            futures.append(
                engine.submit(image, cost.budget, cost.pinned, deadline, request_id, sole)
            )
    except BaseException:
        for future in futures:
            future.cancel()
        raise
    return futures


async def wait_all(
    request: Request, futures: list[asyncio.Future[Answer]], deadline: float
) -> list[Answer]:
    """Every image's answer, in order; 504 at the deadline; :class:`ClientGone` (499) when the
    client closes its connection first; the first error of any image. In each failing case
    every job still pending is cancelled, so the batcher drops it before it reaches the
    model."""
    # one image (the usual case) waits on its own future: no gathering future per request
    waited = futures[0] if len(futures) == 1 else asyncio.gather(*futures)
    gone: asyncio.Future[None] | None = request.scope.get(GONE_KEY)  # the server's protocol's
    watcher = None
    if gone is None:  # another server (an in-process test client): a task watches receive()
        gone = watcher = asyncio.get_running_loop().create_task(
            _disconnected(request.receive), name="abn-disconnect-watch"
        )
    try:
        done, _ = await asyncio.wait(
            (waited, gone),
            timeout=max(deadline - time.monotonic(), 0.0),
            return_when=asyncio.FIRST_COMPLETED,
        )
    except asyncio.CancelledError:
        _cancel(waited, futures)  # the request task itself was cancelled: the batcher skips them
        raise
    finally:
        if watcher is not None:
            watcher.cancel()
    if waited.done() and not waited.cancelled():
        if waited.exception() is not None:
            _cancel(waited, futures)  # one image failed: the rest are not worth running
            raise waited.exception()  # type: ignore[misc]
        result = waited.result()
        return [result] if len(futures) == 1 else list(result)
    _cancel(waited, futures)
    if gone in done:
        raise ClientGone("while its request waited for the model; the work was dropped")
    raise DeadlineExceeded(
        "the request waited past its deadline (ABN_REQUEST_TIMEOUT_SECONDS) for the model"
    )


def count_answers(state: ServiceState, answers: Sequence[Answer], cost: CostRequest) -> None:
    """Each answered image in the metrics, as a one-image request is. A one-image request's
    widths were counted by the engine as it answered (``Admission.count_widths``); a request of
    several images has its widths counted here, now that all of them are answered."""
    model = state.loaded_model()
    if len(answers) > 1:
        state.metrics.widths_chosen(answer.widths for answer in answers)
    for answer in answers:
        state.metrics.classified(
            budget=cost.budget,
            bitops=answer.bitops,
            confidence=answer.top_probabilities[0],
            expected_accuracy=model.accuracy.expected(
                pinned=cost.pinned is not None,
                budget=cost.budget,
                widths=answer.widths,
                bitops=answer.bitops,
            ),
        )


def feedback_ids(
    state: ServiceState,
    request_id: str,
    generated: bool,
    answers: Sequence[Answer],
    one: bool,
) -> list[str]:
    """Each answer's id for ``POST /feedback``, remembered with its prediction. ``one``: the
    request's answer is one image's, whose id is the request's (signed when generated);
    otherwise each image has its own: a signed id of its own when the request's was
    generated, else the client's id with ``-<index>``."""
    ids = []
    for i, answer in enumerate(answers):
        label = answer.top_labels[0]
        if generated:  # ours to shape: each id carries its prediction, signed
            image_id = state.predictions.sign(request_id if one else uuid.uuid4().hex, label)
        else:
            image_id = request_id if one else f"{request_id}-{i}"
        state.predictions.remember(image_id, label)
        ids.append(image_id)
    return ids


def _cancel(waited: asyncio.Future, futures: Sequence[asyncio.Future[Answer]]) -> None:
    """Cancel the jobs, and the gathering future first (a gathering future left to see its
    children cancelled would hold a CancelledError nobody retrieves, and warn)."""
    waited.cancel()
    for future in futures:
        future.cancel()


async def _disconnected(receive: Receive) -> None:
    """Return when the client has gone. Called after the body has been read, when the next
    ASGI message can only be ``http.disconnect`` (uvicorn sends it when the socket closes)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def max_images(settings: Settings) -> int:
    """The most images one request may carry: ``ABN_MAX_IMAGES_PER_REQUEST``, and never more
    than the queue holds (such a request could never be admitted)."""
    return min(settings.max_images_per_request, settings.max_queue_size)
