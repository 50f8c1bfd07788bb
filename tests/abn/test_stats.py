"""abn.stats: paired bootstrap differences."""

from __future__ import annotations

import pytest
import torch

from abn.stats import paired_difference


def test_identical_methods_tie_at_zero() -> None:
    correct = torch.rand(500, generator=torch.Generator().manual_seed(0)) < 0.8
    d = paired_difference(correct, correct)
    assert d == {"difference": 0.0, "low": 0.0, "high": 0.0}


def test_difference_is_the_accuracy_gap_and_the_interval_covers_it() -> None:
    gen = torch.Generator().manual_seed(1)
    b = torch.rand(2000, generator=gen) < 0.7
    a = b.clone()
    flip = torch.randperm(2000, generator=gen)[:100]
    a[flip] = True  # a is right wherever b is, and on up to 100 more images
    d = paired_difference(a, b)
    assert d["difference"] == pytest.approx((a.double().mean() - b.double().mean()).item())
    assert 0.0 < d["low"] < d["difference"] < d["high"]


def test_same_seed_same_interval_and_mismatched_inputs_refused() -> None:
    a = torch.tensor([True, False, True, True])
    b = torch.tensor([False, False, True, False])
    assert paired_difference(a, b) == paired_difference(a, b)
    with pytest.raises(ValueError, match="same images"):
        paired_difference(a, b[:3])
