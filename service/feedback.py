"""Recent predictions by request id, so ``POST /feedback`` can score them (live accuracy).

Bounded twice: at most ``capacity`` ids (least recently answered evicted first) and each for
``ttl_seconds``, after which it is dropped, so at a steady rate the memory holds rate x TTL ids
at most and a label for an old or unknown id is a 404, never a guess.
Entries are kept in the order they were remembered, and every one lives the same TTL, so the
expired ones are always at the front: each ``remember`` drops them there, in O(1) amortized.

An id this process never saw is still scored when it is a signed id that carries its
prediction (:mod:`service.signed_ids`): answered by another worker or replica. It is then
remembered here, so a repeat to this process is a 409 like any other.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

from service.errors import Conflict, NotFound
from service.signed_ids import SignedIds

Outcome = Literal["correct", "incorrect"]


@dataclass(slots=True)
class _Prediction:
    label: int
    expires: float
    scored: bool = False


class RecentPredictions:
    """An LRU of request id -> predicted label, with expiry."""

    def __init__(self, capacity: int, ttl_seconds: float) -> None:
        self.capacity = capacity
        self.ttl = ttl_seconds
        self._items: OrderedDict[str, _Prediction] = OrderedDict()
        self.signed: SignedIds | None = None  # set once the model is known

    def __len__(self) -> int:
        return len(self._items)

    def remember(self, request_id: str, label: int) -> None:
        now = time.monotonic()
        self._items.pop(request_id, None)
        self._items[request_id] = _Prediction(label, now + self.ttl)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)
        while next(iter(self._items.values())).expires < now:  # the newest never has
            self._items.popitem(last=False)

    def sign(self, generated_id: str, label: int) -> str:
        """A generated request id made to carry its prediction ``label`` (signed), so that
        any process holding the key can score it; unchanged before a model is loaded."""
        return generated_id if self.signed is None else self.signed.issue(generated_id, label)

    def score(self, request_id: str, true_label: int) -> tuple[Outcome, int]:
        """Compare the true label with the prediction: (outcome, predicted label).

        404 for an unknown or expired id; 409 when that id was already scored (one request,
        one vote, so a retrying client cannot skew live accuracy).
        """
        entry = self._items.get(request_id)
        if entry is None and self.signed is not None:
            carried = self.signed.read(request_id)  # answered elsewhere?
            if carried is not None and not carried[1]:
                self.remember(request_id, carried[0])
                entry = self._items[request_id]
        if entry is not None and entry.expires < time.monotonic():
            del self._items[request_id]
            entry = None
        if entry is None:
            raise NotFound(
                f"no recent request with id {ascii(request_id[:80])}: unknown, or older than "
                f"{self.ttl:g}s or the last {self.capacity} requests"
            )
        if entry.scored:
            raise Conflict(f"feedback for request {ascii(request_id[:80])} was already given")
        entry.scored = True
        outcome: Outcome = "correct" if entry.label == true_label else "incorrect"
        return outcome, entry.label
