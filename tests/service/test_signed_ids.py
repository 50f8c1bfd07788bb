"""Signed request ids: what one key and model issued reads back; anything altered, another
key or model, or a plain id reads as unknown; an old one reads as expired."""

from __future__ import annotations

import re

from service.middleware import MAX_REQUEST_ID
from service.signed_ids import SignedIds

BASE = "0123456789abcdef0123456789abcdef"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_an_issued_id_reads_back_until_it_expires() -> None:
    clock = Clock()
    ids = SignedIds(b"key", "m\x001.0", ttl_seconds=60, clock=clock)
    signed = ids.issue(BASE, 7)
    assert signed.startswith(BASE + ".7.")
    assert len(signed) <= MAX_REQUEST_ID and re.fullmatch(r"[\x21-\x7e]+", signed)
    assert ids.read(signed) == (7, False)
    clock.now += 61
    assert ids.read(signed) == (7, True)


def test_altered_ids_other_keys_other_models_and_plain_ids_are_unknown() -> None:
    ids = SignedIds(b"key", "m\x001.0", ttl_seconds=60)
    signed = ids.issue(BASE, 7)
    base, label, expiry, mac = signed.split(".")
    altered = [
        f"{base}.8.{expiry}.{mac}",  # another label
        f"{base}.7.{int(expiry) + 1000}.{mac}",  # a later expiry
        f"{base[:-1]}0.7.{expiry}.{mac}",  # another request
        f"{base}.7.{expiry}.{mac[:-1]}{'A' if mac[-1] != 'A' else 'B'}",
    ]
    for other in altered:
        assert ids.read(other) is None, other
    assert SignedIds(b"other key", "m\x001.0", 60).read(signed) is None
    assert SignedIds(b"key", "m\x002.0", 60).read(signed) is None
    for plain in ("req-1", BASE, "", signed + "x", "a.b.c.d"):
        assert ids.read(plain) is None, plain
