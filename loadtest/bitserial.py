"""Does the budget buy time? The bit-serial backend measured against the float path.

``python -m loadtest.bitserial`` (``make bench-bitserial``) writes ``docs/bitserial.md``,
``docs/bitserial/latency_vs_bitops.png`` and ``docs/bitserial/bench.json``, every figure from
this one run:

1. the served model's compute per uniform width, float and bit-serial, at batch 1 and 32,
   interleaved (:mod:`loadtest.bitserial_offline`);
2. adaptive batches of real test images at budgets across the feasible range: time per image
   against the BitOps the policy spent, and the line fitted through them;
3. ``abn serve`` driven by wrk at saturation, at the cheapest and the dearest budget and at
   the cheapest and dearest uniform widths pinned, with each backend (one server per backend,
   the loads interleaved over the rounds).
"""

from __future__ import annotations

import argparse
import random
import sys
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

import httpx
import torch

from abn.data import load_fashion_mnist
from abn.errors import ABNError
from abn.store import DEFAULT_MODEL_DIR
from loadtest.bitserial_offline import (
    AdaptivePoint,
    adaptive_latency,
    fit_summary,
    layer_profile,
    uniform_latency,
)
from loadtest.bitserial_page import write_page
from loadtest.machine import machine_info
from loadtest.server import ManagedServer
from loadtest.workload import Images, budget_header
from loadtest.wrk import WrkError, run_wrk, write_request_set
from service.model import ModelLoadError, ServedModel

COMPARED_BACKENDS = ("float", "bitserial")  # the float path against the kernel at every width


@dataclass(frozen=True)
class Config:
    model: Path
    out: Path
    work_dir: Path
    repeats: int
    adaptive_budgets: int
    rounds: int
    run_seconds: float
    connections: int
    requests: int
    served: bool


def parse_args(argv: list[str] | None) -> Config:
    p = argparse.ArgumentParser(prog="python -m loadtest.bitserial", description=__doc__)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--out", type=Path, default=Path("docs"), help="where the page goes")
    p.add_argument("--work-dir", type=Path, default=Path("runs/bitserial-bench"))
    p.add_argument("--repeats", type=int, default=20, help="rounds of the offline timings")
    p.add_argument("--adaptive-budgets", type=int, default=12)
    p.add_argument("--rounds", type=int, default=2, help="rounds of the served runs")
    p.add_argument("--run-seconds", type=float, default=10.0, help="each wrk run")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--requests", type=int, default=500, help="distinct requests per wrk set")
    p.add_argument("--no-served", dest="served", action="store_false", help="offline only")
    a = p.parse_args(argv)
    for name in ("repeats", "adaptive_budgets", "rounds", "connections", "requests"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if a.adaptive_budgets < 2:
        p.error("--adaptive-budgets must be at least 2 (a line needs two points)")
    return Config(**vars(a))


def offline(cfg: Config, pixels: torch.Tensor) -> dict[str, Any]:
    torch.set_num_threads(1)
    models = {b: ServedModel.load(cfg.model, "cpu", b) for b in COMPARED_BACKENDS}
    for m in models.values():
        m.warm_up(32)
    uniform = uniform_latency(models, pixels, cfg.repeats)
    low, high = models["float"].min_bitops, models["float"].max_bitops
    # geometric: the policy spends far below the dearest budgets, so spread the cheap end
    steps = cfg.adaptive_budgets - 1
    budgets = [low * (high / low) ** (i / steps) for i in range(cfg.adaptive_budgets)]
    points = adaptive_latency(models, pixels, budgets, max(3, cfg.repeats // 4))
    cost = models["float"].table.cost
    layers = models["float"].num_layers
    return {
        "uniform": [
            {
                "backend": c.backend,
                "bits": c.bits,
                "batch": c.batch,
                **ms,
                "bitops": cost([c.bits] * layers),
            }
            for c, ms in sorted(uniform.items(), key=lambda kv: astuple(kv[0]))
        ],
        "adaptive": [vars(p) for p in points],
        "fits": fits(uniform, points, cost, layers),
        "min_bitops": low,
        "max_bitops": high,
        "profile": layer_profile(
            models["bitserial"], pixels[:32], (1, 2, 8), max(5, cfg.repeats // 2)
        ),
    }


def fits(uniform: dict, points: list, cost, layers: int) -> dict[str, dict[str, float]]:
    """Lines of time against BitOps: over the adaptive batches (policy, re-runs included) and
    over the uniform widths at batch 32 (pinned: nothing but the widths changes), per backend
    and clock."""
    out = {}
    for backend in COMPARED_BACKENDS:
        pinned = [
            AdaptivePoint(backend, cost([c.bits] * layers), cost([c.bits] * layers), **ms)
            for c, ms in uniform.items()
            if c.backend == backend and c.batch == 32
        ]
        adaptive = [p for p in points if p.backend == backend]
        for clock in ("wall_ms", "cpu_ms"):
            out[f"adaptive {backend} {clock[:-3]}"] = fit_summary(adaptive, clock)
            out[f"uniform {backend} {clock[:-3]}"] = fit_summary(pinned, clock)
    return out


def request_sets(cfg: Config, images: Images, card: dict[str, Any]) -> dict[str, Path]:
    """One wrk request set per served load: the cheapest and the dearest budget (the policy
    decides), and the cheapest and dearest uniform widths pinned; the same images, in the
    same shuffled order, in every set."""
    order = list(range(len(images)))
    random.Random(0).shuffle(order)
    low, high = min(card["bit_candidates"]), max(card["bit_candidates"])
    loads = {
        "cheapest": {"X-BitOps-Budget": budget_header(card["min_bitops"])},
        "dearest": {"X-BitOps-Budget": budget_header(card["max_bitops"])},
        f"pinned all-{low}": {"X-Bit-Widths": str(low)},
        f"pinned all-{high}": {"X-Bit-Widths": str(high)},
    }
    sets = {}
    for name, extra in loads.items():
        headers = {"Content-Type": "image/png", **extra}
        items = [(images.png(order[i % len(order)]), headers) for i in range(cfg.requests)]
        sets[name] = write_request_set(cfg.work_dir / name.replace(" ", "-"), items)
    return sets


def served(cfg: Config, images: Images) -> list[dict[str, Any]]:
    """wrk at ``connections`` against one server per backend, the loads interleaved in a new
    order each round (round 0 warms the server up and is dropped)."""
    rows: list[dict[str, Any]] = []
    for backend in COMPARED_BACKENDS:
        log = cfg.work_dir / f"server-{backend}.log"
        with ManagedServer(cfg.model, log, backend=backend) as server:
            sets = request_sets(cfg, images, httpx.get(server.url + "/v1/model").json())
            for r in range(cfg.rounds + 1):
                names = list(sets)
                random.Random(r).shuffle(names)
                for name in names:
                    seconds = cfg.run_seconds if r else 2.0
                    url = server.url + "/classify"
                    result = run_wrk(url, sets[name], cfg.connections, seconds)
                    if r:
                        rows.append({"backend": backend, "load": name, "round": r})
                        rows[-1].update(result.to_dict())
    return rows


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    start = machine_info("cpu")
    try:
        test = load_fashion_mnist("test")
        results = {"offline": offline(cfg, test.images[:2048])}
        if cfg.served:
            results["served"] = served(cfg, Images.fashion_mnist(limit=cfg.requests))
    except (ABNError, ModelLoadError, WrkError, RuntimeError, TimeoutError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    results["machine"] = {"start": start, "end": machine_info("cpu")}
    results["command"] = "python -m loadtest.bitserial " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    page = write_page(cfg.out, results)
    print(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
