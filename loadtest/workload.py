"""What the load generator sends: real test images as PNG, and a mix of budgets and widths.

A *workload* is a deterministic (seeded) sequence of requests. Request ``i`` takes image
``order[i % n]`` of the Fashion-MNIST test set (shuffled once), one budget from the budget
spec and one width choice from the widths spec, drawn independently. The same seed replays the
same requests, so two runs (adaptive against pinned, batching on against off) differ only in
what they are meant to compare.

Budget spec (``--budgets``), resolved against the served model's card (``GET /v1/model``):

* a comma-separated list of tokens, each equally likely: ``25M,50M,max``;
* or a distribution ``uniform:LO:HI`` / ``loguniform:LO:HI`` (tokens as bounds), reported in
  ``--budget-bins`` equal-width bins.

A token is an absolute budget in the header's syntax (``25000000``, ``2.5e7``, ``25M``), ``min``
or ``max`` (the cheapest and dearest configuration), ``P%`` (``min + P/100 * (max - min)``, so
one spec fits every model), or ``none`` (no header: the server's default budget).

Widths spec (``--widths``, repeatable, each equally likely): ``adaptive`` (no header: the
policy decides), one width for every layer (``4``) or one per layer (``8,4,4,3,...``), sent
as ``X-Bit-Widths``.
"""

from __future__ import annotations

import io
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from abn.data import load_fashion_mnist
from service.budget import BudgetSyntaxError, parse_budget_number

_PERCENT_RE = re.compile(r"([0-9]+(?:\.[0-9]*)?)%", re.ASCII)
ADAPTIVE = "adaptive"


class WorkloadError(ValueError):
    """A budget or widths spec the generator cannot use; the message says what is allowed."""


@dataclass(frozen=True)
class ModelRange:
    """The facts of the served model a spec is resolved against (from ``GET /v1/model``)."""

    min_bitops: float
    max_bitops: float
    bit_candidates: tuple[int, ...] = ()
    num_layers: int = 0

    @classmethod
    def from_card(cls, card: dict) -> ModelRange:
        return cls(
            min_bitops=float(card["min_bitops"]),
            max_bitops=float(card["max_bitops"]),
            bit_candidates=tuple(int(b) for b in card.get("bit_candidates", ())),
            num_layers=len(card.get("layers", ())),
        )


def resolve_budget_token(token: str, model: ModelRange) -> float | None:
    """BitOps meant by one budget token; ``None`` for ``none`` (no header)."""
    text = token.strip()
    lowered = text.lower()
    if lowered == "none":
        return None
    if lowered == "min":
        return model.min_bitops
    if lowered == "max":
        return model.max_bitops
    match = _PERCENT_RE.fullmatch(text)
    if match:
        fraction = float(match[1]) / 100.0
        if fraction > 1.0:
            raise WorkloadError(f"budget {text!r}: a percentage of the range is 0% to 100%")
        return model.min_bitops + fraction * (model.max_bitops - model.min_bitops)
    try:
        return parse_budget_number(text)
    except BudgetSyntaxError as err:
        raise WorkloadError(
            f"budget {text!r}: {err}; or min, max, P% of the model's range, or none"
        ) from err


def budget_header(value: float) -> str:
    """The header value for a budget: the next integer up, so that rounding can never turn
    ``min`` into a budget just below the cheapest configuration (a 422)."""
    return str(int(math.ceil(value - 1e-6)))


@dataclass(frozen=True)
class BudgetSpec:
    """A fixed list of budgets, or a distribution over a range split into report bins."""

    text: str
    kind: str  # "list", "uniform" or "loguniform"
    values: tuple[float | None, ...] = ()  # kind "list": the budgets, None = no header
    labels: tuple[str, ...] = ()  # kind "list": the token each budget came from
    low: float = 0.0
    high: float = 0.0
    bins: int = 5

    @classmethod
    def parse(cls, text: str, model: ModelRange, bins: int = 5) -> BudgetSpec:
        text = text.strip()
        head, _, rest = text.partition(":")
        if head.lower() in ("uniform", "loguniform"):
            parts = rest.split(":")
            if len(parts) != 2:
                raise WorkloadError(
                    f"budget spec {text!r}: write {head}:LOW:HIGH, e.g. {head}:min:max"
                )
            low, high = (resolve_budget_token(p, model) for p in parts)
            if low is None or high is None or not low < high:
                raise WorkloadError(f"budget spec {text!r}: needs numeric LOW < HIGH")
            if bins < 1:
                raise WorkloadError("--budget-bins must be at least 1")
            return cls(text, head.lower(), low=low, high=high, bins=bins)
        tokens = [t.strip() for t in text.split(",") if t.strip()]
        if not tokens:
            raise WorkloadError("empty budget spec; e.g. 25M,50M,max or uniform:min:max")
        values = tuple(resolve_budget_token(t, model) for t in tokens)
        return cls(text, "list", values=values, labels=tuple(tokens))

    def draw(self, rng: random.Random) -> tuple[float | None, str]:
        """One budget and the label of the group it is reported in."""
        if self.kind == "list":
            i = rng.randrange(len(self.values))
            return self.values[i], self.labels[i]
        if self.kind == "uniform":
            value = rng.uniform(self.low, self.high)
        else:
            value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        return value, self.bin_label(value)

    def bin_label(self, value: float) -> str:
        width = (self.high - self.low) / self.bins
        i = min(self.bins - 1, max(0, int((value - self.low) // width)))
        lo, hi = self.low + i * width, self.low + (i + 1) * width
        return f"{lo / 1e6:.4g}M-{hi / 1e6:.4g}M"


def parse_widths(specs: Sequence[str], model: ModelRange) -> tuple[str | None, ...]:
    """The ``X-Bit-Widths`` values to mix (``None`` = adaptive), checked against the model so a
    typo fails before the run rather than as thousands of 422s."""
    if not specs:
        return (None,)
    out: list[str | None] = []
    for spec in specs:
        text = spec.strip()
        if text.lower() == ADAPTIVE:
            out.append(None)
            continue
        try:
            widths = [int(w) for w in text.split(",")]
        except ValueError as err:
            raise WorkloadError(
                f"widths {text!r}: integers separated by commas, or adaptive"
            ) from err
        allowed = set(model.bit_candidates)
        if allowed and not set(widths) <= allowed:
            raise WorkloadError(
                f"widths {text!r}: allowed widths are {', '.join(map(str, sorted(allowed)))}"
            )
        if model.num_layers and len(widths) not in (1, model.num_layers):
            raise WorkloadError(
                f"widths {text!r}: give 1 width or {model.num_layers} (one per layer)"
            )
        out.append(",".join(str(w) for w in widths))
    return tuple(out)


@dataclass(frozen=True)
class PlannedRequest:
    """One request of the workload."""

    index: int
    image: int  # index into the image set
    budget: float | None  # None: no X-BitOps-Budget header
    widths: str | None  # None: adaptive (no X-Bit-Widths header)
    group: str  # the accuracy/BitOps report group: budget label, and widths when pinned

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "image/png"}
        if self.budget is not None:
            headers["X-BitOps-Budget"] = budget_header(self.budget)
        if self.widths is not None:
            headers["X-Bit-Widths"] = self.widths
        return headers


def group_label(budget_label: str, widths: str | None) -> str:
    budget_part = f"budget {budget_label}"
    return budget_part if widths is None else f"{budget_part}, widths {widths}"


@dataclass
class Images:
    """Test images (uint8, one channel) and their true labels, PNG-encoded on first use.

    Encoding lazily keeps a short run from paying for 10,000 encodings up front; each image is
    encoded once (tens of microseconds) and cached, so the cost stays off the measured path
    after the first pass.
    """

    pixels: np.ndarray  # (N, H, W) uint8
    labels: np.ndarray  # (N,) int
    _png: dict[int, bytes] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def png(self, i: int) -> bytes:
        data = self._png.get(i)
        if data is None:
            buffer = io.BytesIO()
            Image.fromarray(self.pixels[i]).save(buffer, format="PNG")
            data = self._png[i] = buffer.getvalue()
        return data

    @classmethod
    def fashion_mnist(cls, data_dir: str | Path | None = None, limit: int | None = None) -> Images:
        """The Fashion-MNIST test split (raises ``abn.errors.DatasetNotFoundError`` with the fix
        when the Debian package ``dataset-fashion-mnist`` is not installed)."""
        data = load_fashion_mnist("test", data_dir)
        pixels = data.images[:, 0].numpy()
        labels = data.labels.numpy()
        if limit is not None:
            pixels, labels = pixels[:limit], labels[:limit]
        return cls(np.ascontiguousarray(pixels), labels.astype(np.int64))


@dataclass
class Workload:
    """The seeded request sequence: ``plan(i)`` is request ``i``, for any ``i``."""

    images: Images
    budgets: BudgetSpec
    widths: tuple[str | None, ...]
    seed: int = 0
    _order: list[int] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self._order = list(range(len(self.images)))
        random.Random(self.seed).shuffle(self._order)

    def plan(self, i: int) -> PlannedRequest:
        rng = random.Random(self.seed * 1_000_003 + i)  # per index: any order, same requests
        budget, budget_label = self.budgets.draw(rng)
        widths = self.widths[rng.randrange(len(self.widths))]
        image = self._order[i % len(self._order)]
        return PlannedRequest(i, image, budget, widths, group_label(budget_label, widths))
