"""service.feedback.RecentPredictions: what it keeps, and for how long (its memory bound)."""

from __future__ import annotations

import pytest

from service import feedback
from service.errors import NotFound
from service.feedback import RecentPredictions


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(feedback.time, "monotonic", c)
    return c


def test_expired_ids_are_dropped_as_new_ones_arrive(clock: Clock) -> None:
    """At a steady rate the store holds rate x TTL ids, not ``capacity``: an id nobody gives
    feedback for must not stay until capacity pushes it out (the soak's slow growth)."""
    store = RecentPredictions(capacity=100_000, ttl_seconds=10.0)
    for i in range(1000):  # 10 ids a second for 100 s
        clock.now += 0.1
        store.remember(f"id-{i}", i % 10)
    assert 99 <= len(store) <= 101
    assert store.score("id-999", 9) == ("correct", 9)
    with pytest.raises(NotFound):
        store.score("id-800", 0)  # 20 s old


def test_a_remembered_id_lives_its_ttl_and_capacity_still_bounds(clock: Clock) -> None:
    store = RecentPredictions(capacity=3, ttl_seconds=10.0)
    for i in range(5):
        store.remember(f"id-{i}", 1)
    assert len(store) == 3
    with pytest.raises(NotFound):
        store.score("id-0", 1)  # evicted by capacity
    clock.now += 9.9
    assert store.score("id-4", 2) == ("incorrect", 1)
