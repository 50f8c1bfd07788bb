"""Parsing the request headers that choose the cost: ``X-BitOps-Budget`` and ``X-Bit-Widths``.

Both are strict on purpose: a header the server half-understands (``1e400``, ``0x10``, ``٣``,
``25MM``, ``4.0``) would silently run a configuration the client did not mean, so anything but
the documented syntax is a 422 that says what is allowed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from abn.bitops import CostTable
from abn.errors import BudgetError, ConfigLengthError, UnknownBitWidthError
from abn.policy import check_budget

SUFFIXES = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9}
MAX_HEADER_CHARS = 64  # a budget longer than this is not a number anyone means
BUDGET_SYNTAX = (
    "a positive number such as 25000000, 2.5e7 or 25M (suffixes K, M, G = 1e3, 1e6, 1e9)"
)

# ASCII digits only (re.ASCII): int()/float() would also take Arabic-Indic digits, '_' and
# 'inf'/'nan', none of which is a budget.
_BUDGET_RE = re.compile(
    r"(?P<number>(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)(?P<suffix>[KMG]?)",
    re.ASCII,
)
_WIDTH_RE = re.compile(r"[0-9]{1,3}", re.ASCII)


class BudgetSyntaxError(ValueError):
    """A budget that is not a positive finite number in the documented syntax."""


def parse_budget_number(text: str) -> float:
    """The BitOps a budget string means; raises :class:`BudgetSyntaxError` otherwise."""
    stripped = text.strip(" \t")
    if len(stripped) > MAX_HEADER_CHARS:
        raise BudgetSyntaxError(f"a budget of {len(stripped)} characters is not {BUDGET_SYNTAX}")
    match = _BUDGET_RE.fullmatch(stripped)
    if match is None:
        raise BudgetSyntaxError(f"{_shown(stripped)} is not {BUDGET_SYNTAX}")
    value = float(match["number"]) * SUFFIXES[match["suffix"]]
    if not math.isfinite(value):
        raise BudgetSyntaxError(f"{_shown(stripped)} is not a finite number")
    if value <= 0.0:
        raise BudgetSyntaxError(f"{_shown(stripped)} is not a positive number")
    return value


def parse_budget_header(
    values: Sequence[str], table: CostTable, name: str = "X-BitOps-Budget"
) -> float:
    """The budget of one request from its ``X-BitOps-Budget`` header(s), checked as feasible.
    ``name``: what the client called it, for the message (a v2 request parameter).

    Raises :class:`abn.errors.BudgetError`, whose message states the feasible range.
    """
    if len(values) != 1:
        raise BudgetError(
            f"{name} was given {len(values)} times; give it once",
            table.min_bitops,
            table.max_bitops,
        )
    try:
        budget = parse_budget_number(values[0])
    except BudgetSyntaxError as err:
        raise BudgetError(f"{name}: {err}", table.min_bitops, table.max_bitops) from err
    check_budget(table, budget)
    return budget


class WidthsError(ValueError):
    """An ``X-Bit-Widths`` header that is not a list of candidate widths of the right length."""


class PinnedOverBudgetError(BudgetError):
    """A pinned configuration that costs more than the budget that applies."""


def parse_bit_widths(
    values: Sequence[str],
    bit_candidates: Sequence[int],
    num_layers: int,
    name: str = "X-Bit-Widths",
) -> list[int]:
    """One width per switchable layer from ``X-Bit-Widths`` (``4`` or ``8,4,4,...``).
    ``name``: what the client called it, for the message (a v2 request parameter).

    Raises :class:`WidthsError` naming the allowed widths and the expected count.
    """
    allowed = ", ".join(str(b) for b in bit_candidates)
    usage = (
        f"{name} takes one width for all {num_layers} switchable layers or exactly "
        f"{num_layers} comma-separated widths, each one of {allowed}"
    )
    if len(values) != 1:
        raise WidthsError(f"{name} was given {len(values)} times; {usage}")
    parts = [p.strip(" \t") for p in values[0].split(",")]
    if len(parts) > 4 * num_layers + 16:
        raise WidthsError(f"{name} has {len(parts)} entries; {usage}")
    widths: list[int] = []
    for part in parts:
        if _WIDTH_RE.fullmatch(part) is None:
            raise WidthsError(f"{name} entry {_shown(part)} is not a width; {usage}")
        bits = int(part)
        if bits not in bit_candidates:
            raise WidthsError(f"{UnknownBitWidthError(bits, tuple(bit_candidates))}; {usage}")
        widths.append(bits)
    if len(widths) == 1:
        widths = widths * num_layers
    if len(widths) != num_layers:
        length_error = ConfigLengthError(len(widths), num_layers)
        raise WidthsError(f"{length_error}; allowed widths: {allowed}")
    return widths


def check_pinned_fits(
    widths: Sequence[int],
    budget: float,
    table: CostTable,
    budget_given: bool,
    names: tuple[str, str] = ("X-BitOps-Budget", "X-Bit-Widths"),
) -> float:
    """The BitOps of a pinned configuration, refusing one that costs more than ``budget``
    (:class:`PinnedOverBudgetError`). ``names``: what the client called the budget and the
    widths, for the message."""
    cost = table.cost(list(widths))
    if cost > budget:
        where = f"the {names[0]}" if budget_given else "the server's default budget"
        raise PinnedOverBudgetError(
            f"the {names[1]} configuration costs {cost:.6g} BitOps, above {where} of {budget:.6g}",
            table.min_bitops,
            table.max_bitops,
        )
    return cost


def _shown(text: str) -> str:
    """A header value quoted for an error message, shortened and with odd characters escaped."""
    short = text if len(text) <= 40 else text[:40] + "..."
    return ascii(short)
