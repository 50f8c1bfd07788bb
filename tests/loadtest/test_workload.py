"""Budget and widths specs, and the seeded request sequence."""

from __future__ import annotations

import random

import numpy as np
import pytest

from loadtest.workload import (
    BudgetSpec,
    Images,
    ModelRange,
    Workload,
    WorkloadError,
    budget_header,
    parse_widths,
    resolve_budget_token,
)

MODEL = ModelRange(min_bitops=40e6, max_bitops=600e6, bit_candidates=(2, 3, 4, 8), num_layers=3)


@pytest.mark.parametrize(
    ("token", "value"),
    [
        ("min", 40e6),
        ("max", 600e6),
        ("50%", 320e6),
        ("0%", 40e6),
        ("25M", 25e6),
        ("2.5e7", 25e6),
        ("none", None),
    ],
)
def test_budget_tokens(token: str, value: float | None) -> None:
    assert resolve_budget_token(token, MODEL) == value


@pytest.mark.parametrize("token", ["150%", "-5", "abc", "25MM", ""])
def test_bad_budget_tokens_say_what_is_allowed(token: str) -> None:
    with pytest.raises(WorkloadError, match="budget"):
        resolve_budget_token(token, MODEL)


def test_budget_header_never_rounds_below_the_value() -> None:
    for value in (40e6, 40_000_000.4, 123456789.0001, 1.5):
        assert float(budget_header(value)) >= value - 1e-6


def test_list_spec_draws_every_token_with_its_label() -> None:
    spec = BudgetSpec.parse("min,50%,none", MODEL)
    rng = random.Random(0)
    seen = {spec.draw(rng) for _ in range(200)}
    assert seen == {(40e6, "min"), (320e6, "50%"), (None, "none")}


def test_distribution_spec_stays_in_range_and_bins() -> None:
    spec = BudgetSpec.parse("loguniform:min:max", MODEL, bins=4)
    rng = random.Random(1)
    draws = [spec.draw(rng) for _ in range(500)]
    assert all(40e6 <= v <= 600e6 for v, _ in draws)
    assert len({label for _, label in draws}) == 4
    with pytest.raises(WorkloadError):
        BudgetSpec.parse("uniform:max:min", MODEL)
    with pytest.raises(WorkloadError):
        BudgetSpec.parse("uniform:min", MODEL)


def test_widths_are_checked_against_the_model() -> None:
    assert parse_widths([], MODEL) == (None,)
    assert parse_widths(["adaptive", "4", "8,4,2"], MODEL) == (None, "4", "8,4,2")
    with pytest.raises(WorkloadError, match="allowed widths are 2, 3, 4, 8"):
        parse_widths(["5"], MODEL)
    with pytest.raises(WorkloadError, match="give 1 width or 3"):
        parse_widths(["4,4"], MODEL)


def test_the_same_seed_replays_the_same_requests() -> None:
    images = Images(np.zeros((7, 28, 28), np.uint8), np.arange(7))
    spec = BudgetSpec.parse("min,max", MODEL)
    a = Workload(images, spec, (None, "4"), seed=3)
    b = Workload(images, spec, (None, "4"), seed=3)
    assert [a.plan(i) for i in range(20)] == [b.plan(i) for i in range(20)]
    # every image once per pass of the shuffled order
    assert sorted(a.plan(i).image for i in range(7)) == list(range(7))
    pinned = next(a.plan(i) for i in range(20) if a.plan(i).widths == "4")
    assert pinned.headers()["X-Bit-Widths"] == "4"
    assert pinned.group.endswith("widths 4")


def test_images_encode_as_png_that_decodes_to_the_same_pixels() -> None:
    from io import BytesIO

    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (2, 28, 28), dtype=np.uint8)
    images = Images(pixels, np.array([1, 2]))
    data = images.png(1)
    assert data.startswith(b"\x89PNG") and images.png(1) is data  # cached
    assert np.array_equal(np.asarray(Image.open(BytesIO(data))), pixels[1])
