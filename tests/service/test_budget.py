"""X-BitOps-Budget and X-Bit-Widths parsing: the documented syntax and nothing else."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from abn.bitops import CostTable
from abn.errors import BudgetError
from service.budget import (
    BudgetSyntaxError,
    WidthsError,
    check_pinned_fits,
    parse_bit_widths,
    parse_budget_header,
    parse_budget_number,
)

pytestmark = pytest.mark.timeout(120)  # a hang fails fast, not after 10 minutes

TABLE = CostTable(
    layer_names=("a", "b", "c"),
    layer_macs=(1000, 2000, 500),
    fixed_macs=100,
    bit_candidates=(2, 3, 4, 5, 6, 8),
)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("25000000", 25e6),
        ("2.5e7", 25e6),
        ("2.5E+7", 25e6),
        ("25M", 25e6),
        ("25K", 25e3),
        ("1.5G", 1.5e9),
        (".5M", 5e5),
        ("5.", 5.0),
        (" 7 ", 7.0),
        ("1e-3K", 1.0),
    ],
)
def test_budget_syntax_accepted(text: str, value: float) -> None:
    assert parse_budget_number(text) == pytest.approx(value)


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "nan",
        "NaN",
        "inf",
        "-inf",
        "Infinity",
        "1e400",
        "1e308G",
        "0",
        "-0",
        "0.0",
        "0e5",
        "-5",
        "+5",
        "0x10",
        "1_000",
        "\u0663",  # ARABIC-INDIC DIGIT THREE
        "\uff15",  # FULLWIDTH DIGIT FIVE
        "25MM",
        "25KM",
        "25m",
        "25 M",
        "M",
        "e5",
        "1e",
        "1,000",
        "25M\x00",
        "9" * 100,
    ],
)
def test_budget_syntax_refused(text: str) -> None:
    with pytest.raises(BudgetSyntaxError):
        parse_budget_number(text)


@given(st.text(max_size=30))
@settings(max_examples=300, deadline=None)
def test_any_text_is_a_positive_finite_budget_or_refused(text: str) -> None:
    try:
        value = parse_budget_number(text)
    except BudgetSyntaxError:
        return
    assert math.isfinite(value) and value > 0


def test_header_states_the_feasible_range() -> None:
    low, high = TABLE.min_bitops, TABLE.max_bitops
    with pytest.raises(BudgetError) as below:
        parse_budget_header([str(low - 1)], TABLE)
    with pytest.raises(BudgetError) as garbage:
        parse_budget_header(["lots"], TABLE)
    with pytest.raises(BudgetError, match="given 2 times"):
        parse_budget_header(["1G", "2G"], TABLE)
    for err in (below.value, garbage.value):
        assert f"{low:.6g}" in str(err) and f"{high:.6g}" in str(err)
    assert parse_budget_header([str(low)], TABLE) == low
    assert parse_budget_header(["1G"], TABLE) == 1e9  # above the maximum is fine


def test_bit_widths() -> None:
    cands = TABLE.bit_candidates
    assert parse_bit_widths(["4"], cands, 3) == [4, 4, 4]
    assert parse_bit_widths([" 8, 4 ,2"], cands, 3) == [8, 4, 2]
    for bad in ["7", "4,4", "4,4,4,4", "", "4,,4", "four", "4.0", "+4", "\u0664", "-4", "8,4,7"]:
        with pytest.raises(WidthsError) as err:
            parse_bit_widths([bad], cands, 3)
        assert "2, 3, 4, 5, 6, 8" in str(err.value), bad
        assert "3" in str(err.value)
    with pytest.raises(WidthsError):
        parse_bit_widths(["4", "4"], cands, 3)


def test_pinned_must_fit_the_budget() -> None:
    cost = TABLE.cost([8, 8, 8])
    assert check_pinned_fits([8, 8, 8], cost, TABLE, True) == cost
    with pytest.raises(BudgetError, match="above the X-BitOps-Budget"):
        check_pinned_fits([8, 8, 8], cost - 1, TABLE, True)
    with pytest.raises(BudgetError, match="default budget"):
        check_pinned_fits([8, 8, 8], cost - 1, TABLE, False)
