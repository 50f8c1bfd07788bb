"""Where an adaptive batch's time goes: the first pass, the policy's decisions, each re-run.

Times ``ServedModel.infer`` on consecutive batches of Fashion-MNIST test images under the
budget mix of ``scripts/infer_latency.py`` (``budget_mix``), on one torch thread, with the
rollout's pieces wrapped in timers: the width decisions (and within them the pooling of the
activation, the budget state, the MLP), the last decision, and every re-run by (block, width)
with the images it took. Milliseconds per call, means over the calls; the wrappers add a few
microseconds each, so compare pieces with each other, not with other scripts' totals.

    .venv/bin/python scripts/adaptive_pieces.py --backend mixed
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from infer_latency import budget_mix  # scripts/, on the path when a script runs

import abn.policy as policy
from abn.data import load_fashion_mnist
from service.backends import CHOICES
from service.model import ServedModel

spent: Counter[str] = Counter()
counts: Counter[str] = Counter()


def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[name] += time.perf_counter() - start

    return wrapper


def instrument() -> None:
    """Wrap the rollout's pieces (module attributes, so every caller sees the wrappers)."""
    chooser, compiled, tracker = policy._PolicyChooser, policy.CompiledPolicy, policy.BudgetTracker
    chooser.__call__ = timed("width decisions", chooser.__call__)
    policy.pooled_features = timed("  pooling the activation", policy.pooled_features)
    tracker.state = timed("  budget state", tracker.state)
    policy.WidthPolicy.forward = timed("  policy MLP", policy.WidthPolicy.forward)
    compiled._escalate = timed("last decision and re-runs", compiled._escalate)
    rerun = compiled._rerun

    def counted_rerun(self, result, given, block, width, rows) -> None:
        key = f"  re-run from block {block} at {width} bits"
        counts[key] += len(rows)
        counts[key + " (calls)"] += 1
        timed(key, rerun)(self, result, given, block, width, rows)

    compiled._rerun = counted_rerun


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="model_store/fmnist-abn")
    p.add_argument("--backend", default="mixed", choices=CHOICES)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--calls", type=int, default=30)
    args = p.parse_args()
    torch.set_num_threads(1)
    model = ServedModel.load(args.model, "cpu", args.backend)
    model.warm_up(64)
    images = load_fashion_mnist("test").images[: args.batch * args.calls]
    budgets = budget_mix(model, args.batch)
    batches = [images[i * args.batch :][: args.batch] for i in range(args.calls)]
    model.infer(batches[0], budgets, None)
    instrument()
    start = time.perf_counter()
    for x in batches:
        model.infer(x, budgets, None)
    total = time.perf_counter() - start
    ms = {k: 1000 * v / args.calls for k, v in spent.items()}
    print(f"backend {model.backend}, batch {args.batch}, {args.calls} calls, ms per call:")
    print(f"{'whole call':44s} {1000 * total / args.calls:6.2f}")
    print(
        f"{'first pass (the call less the last decision)':44s} "
        f"{1000 * total / args.calls - ms['last decision and re-runs']:6.2f}"
    )
    nested = ["width decisions", "  pooling the activation", "  budget state", "  policy MLP"]
    reruns = sorted(k for k in ms if k.startswith("  re-run"))
    for name in [*nested, "last decision and re-runs", *reruns]:
        value = ms.get(name, 0.0)
        images_per_call = counts.get(name, 0) / args.calls
        extra = f"   {images_per_call:.1f} images" if name in counts else ""
        print(f"{name:44s} {value:6.2f}{extra}")


if __name__ == "__main__":
    main()
