"""In-process timings of the served model's compute, float against bit-serial, in one run.

Every figure is a median over repeats in which all the cells (backend x width x batch size)
run in a fresh random order, so a neighbour's load on a shared machine falls on all of them
alike and the ratios between cells hold up better than the absolute times. What is timed is
:meth:`service.model.ServedModel.infer`: normalisation, the layer-by-layer rollout (policy or
pinned widths), softmax; one torch thread, the server's setting per worker on this machine.
Each call is timed twice: wall clock (the latency) and the calling thread's CPU time, which
leaves out the waits for a core that a busy shared machine adds (the compute is one thread).
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass

import torch

from service.model import ServedModel

BATCH_SIZES = (1, 32)


@dataclass(frozen=True)
class Cell:
    backend: str
    bits: int
    batch: int


def _time_infer(model: ServedModel, images, budgets, pinned) -> tuple[float, float, object]:
    """Wall and thread-CPU seconds of one :meth:`ServedModel.infer`, and its output."""
    wall, cpu = time.perf_counter(), time.thread_time()
    out = model.infer(images, budgets, pinned)
    return time.perf_counter() - wall, time.thread_time() - cpu, out


def _medians(samples: list[tuple[float, float]], per: int) -> dict[str, float]:
    """Median wall and CPU milliseconds per image of ``(wall_s, cpu_s)`` samples."""
    return {
        "wall_ms": 1000.0 * statistics.median(w for w, _ in samples) / per,
        "cpu_ms": 1000.0 * statistics.median(c for _, c in samples) / per,
    }


def uniform_latency(
    models: dict[str, ServedModel], images: torch.Tensor, repeats: int, seed: int = 0
) -> dict[Cell, dict[str, float]]:
    """Median milliseconds per image (wall, CPU) of every uniform width, per backend and
    batch size."""
    any_model = next(iter(models.values()))
    cells = [
        Cell(name, bits, batch)
        for name in models
        for bits in any_model.bit_candidates
        for batch in BATCH_SIZES
    ]
    times: dict[Cell, list[tuple[float, float]]] = {c: [] for c in cells}
    rng = random.Random(seed)
    layers = any_model.num_layers
    for r in range(repeats + 1):  # the first round warms up and is dropped
        rng.shuffle(cells)
        for c in cells:
            batch = images[(r * c.batch) % (len(images) - c.batch) :][: c.batch]
            budgets = torch.full((c.batch,), any_model.max_bitops, dtype=torch.float64)
            pinned = torch.full((c.batch, layers), c.bits, dtype=torch.long)
            wall, cpu, _ = _time_infer(models[c.backend], batch, budgets, pinned)
            if r:
                times[c].append((wall, cpu))
    return {c: _medians(t, c.batch) for c, t in times.items()}


@dataclass(frozen=True)
class AdaptivePoint:
    backend: str
    budget: float
    mean_bitops: float  # per image, as the policy spent it
    wall_ms: float  # per image
    cpu_ms: float


def adaptive_latency(
    models: dict[str, ServedModel],
    images: torch.Tensor,
    budgets: list[float],
    repeats: int,
    batch: int = 32,
    seed: int = 0,
) -> list[AdaptivePoint]:
    """Batches of real test images at one budget each, through the policy: time per image
    against the BitOps the policy spent on them (each budget's median over repeats)."""
    cells = [(name, b) for name in models for b in budgets]
    times: dict[tuple[str, float], list[tuple[float, float]]] = {c: [] for c in cells}
    spent: dict[tuple[str, float], list[float]] = {c: [] for c in cells}
    rng = random.Random(seed)
    for r in range(repeats + 1):
        rng.shuffle(cells)
        for name, budget in cells:
            part = images[(r * batch) % (len(images) - batch) :][:batch]
            per_image = torch.full((batch,), budget, dtype=torch.float64)
            wall, cpu, out = _time_infer(models[name], part, per_image, None)
            if r:
                times[(name, budget)].append((wall, cpu))
                spent[(name, budget)].append(float(out.bitops.mean()))
    points = []
    for name, budget in sorted(cells):
        ms = _medians(times[(name, budget)], batch)
        points.append(AdaptivePoint(name, budget, statistics.mean(spent[(name, budget)]), **ms))
    return points


@dataclass(frozen=True)
class LineFit:
    """``ms_per_image = intercept_ms + slope_ms_per_gbitop * GBitOps``, least squares."""

    intercept_ms: float
    slope_ms_per_gbitop: float
    r_squared: float

    def share_proportional(self, bitops: float) -> float:
        """The part of the fitted time at ``bitops`` that grows with BitOps."""
        variable = self.slope_ms_per_gbitop * bitops / 1e9
        return variable / (self.intercept_ms + variable)


def fit_line(points: list[AdaptivePoint], clock: str = "wall_ms") -> LineFit:
    """The least-squares line of ``clock`` (``wall_ms`` or ``cpu_ms``) against BitOps."""
    x = torch.tensor([p.mean_bitops / 1e9 for p in points], dtype=torch.float64)
    y = torch.tensor([getattr(p, clock) for p in points], dtype=torch.float64)
    design = torch.stack([torch.ones_like(x), x], dim=1)
    (a, b) = torch.linalg.lstsq(design, y[:, None]).solution[:, 0].tolist()
    residual = float(((y - (a + b * x)) ** 2).sum())
    total = float(((y - y.mean()) ** 2).sum())
    return LineFit(a, b, 1.0 - residual / total if total > 0 else 1.0)


def fit_summary(points: list[AdaptivePoint], clock: str) -> dict[str, float]:
    """The fitted line over ``points`` and, at both ends of their BitOps, the part of the time
    that is proportional to BitOps."""
    fit = fit_line(points, clock)
    low = min(p.mean_bitops for p in points)
    high = max(p.mean_bitops for p in points)
    return vars(fit) | {
        "bitops_low": low,
        "bitops_high": high,
        "share_at_low": fit.share_proportional(low),
        "share_at_high": fit.share_proportional(high),
    }


def layer_profile(
    model: ServedModel, images: torch.Tensor, widths: tuple[int, ...], repeats: int
) -> dict[int, dict[str, float]]:
    """Where a pinned batch's CPU time goes, per uniform width: each switchable layer rerun on
    the input it saw in a real pass (median of ``repeats``, ms per image), and the rest of
    :meth:`ServedModel.infer` (stem, residual sums, pooling, classifier, policy and Python)."""
    layers = model.net.switchable_layers
    n = len(images)
    profile = {}
    for bits in widths:
        seen: dict[str, tuple] = {}

        def record(module: torch.nn.Module, args: tuple, seen: dict = seen) -> None:
            seen.setdefault(module.name, args)

        hooks = [layer.register_forward_pre_hook(record) for layer in layers]
        budgets = torch.full((n,), model.max_bitops, dtype=torch.float64)
        pinned = torch.full((n, model.num_layers), bits, dtype=torch.long)
        try:
            model.infer(images, budgets, pinned)
        finally:
            for h in hooks:
                h.remove()
        total = statistics.median(
            _time_infer(model, images, budgets, pinned)[1] for _ in range(repeats)
        )
        row = {}
        with torch.inference_mode():
            for layer in layers:
                samples = []
                for _ in range(repeats):
                    start = time.thread_time()
                    layer(*seen[layer.name])
                    samples.append(time.thread_time() - start)
                row[layer.name] = 1000.0 * statistics.median(samples) / n
        row["rest"] = 1000.0 * total / n - sum(row.values())
        profile[bits] = row
    return profile
