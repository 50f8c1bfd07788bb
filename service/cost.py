"""What a request may spend: its budget and pinned widths, from headers or v2 parameters.

One function, :func:`cost_request`, for every route that classifies (``POST /classify`` with
its ``X-BitOps-Budget`` and ``X-Bit-Widths`` headers, ``POST /v2/models/{name}/infer`` with
its ``budget`` and ``bit_widths`` parameters), and one place where the budget and width
errors of :mod:`service.budget` become the 422s the API documents, each with its own
``error_type``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from abn.errors import BudgetError
from service.budget import (
    PinnedOverBudgetError,
    WidthsError,
    check_pinned_fits,
    parse_bit_widths,
    parse_budget_header,
)
from service.errors import Unprocessable
from service.model import ServedModel

# Most specific first: a pinned configuration over the budget is a BudgetError too.
_ERROR_TYPES: tuple[tuple[type[Exception], str], ...] = (
    (PinnedOverBudgetError, "bit_widths_over_budget"),
    (BudgetError, "invalid_budget"),
    (WidthsError, "invalid_bit_widths"),
)


@dataclass(frozen=True, slots=True)
class CostRequest:
    """The budget that applies to each image of a request, and the pinned widths (None: the
    policy decides)."""

    budget: float
    pinned: list[int] | None

    @property
    def policy(self) -> str:
        return "adaptive" if self.pinned is None else "pinned"


@dataclass(frozen=True, slots=True)
class CostNames:
    """What the client called the budget and the widths, so a message names what was sent."""

    budget: str = "X-BitOps-Budget"
    widths: str = "X-Bit-Widths"


HEADERS = CostNames()


def cost_request(
    budget_values: Sequence[str],
    width_values: Sequence[str],
    model: ServedModel,
    default_budget: float,
    names: CostNames = HEADERS,
) -> CostRequest:
    """The cost request from the values given for the budget and the widths (each a list: a
    header may be sent twice, which is refused); no budget value means ``default_budget``.

    Raises :class:`Unprocessable` (422) with ``invalid_budget``, ``invalid_bit_widths`` or
    ``bit_widths_over_budget`` and a message that says what is allowed."""
    try:
        budget = (
            parse_budget_header(budget_values, model.table, names.budget)
            if budget_values
            else default_budget
        )
        if not width_values:
            return CostRequest(budget, None)
        pinned = parse_bit_widths(
            width_values, model.bit_candidates, model.num_layers, names.widths
        )
        check_pinned_fits(
            pinned,
            budget,
            model.table,
            budget_given=bool(budget_values),
            names=(names.budget, names.widths),
        )
        return CostRequest(budget, pinned)
    except (BudgetError, WidthsError) as err:
        error_type = next(kind for cls, kind in _ERROR_TYPES if isinstance(err, cls))
        raise Unprocessable(str(err), error_type=error_type) from err
