"""Milliseconds per ``ServedModel.infer`` call, pinned and adaptive, to compare two versions.

One torch thread; for each case, 5 timed rounds after 20 warm calls, the median round
reported. Run it once per checkout, alternating, in one session (the machine is shared):

    .venv/bin/python scripts/model_thread_latency.py model_store/fmnist-abn
    cd /tmp/abn-old && PYTHONPATH=$PWD /work/main/.venv/bin/python \\
        /work/main/scripts/model_thread_latency.py model_store/fmnist-abn
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from service.model import ServedModel


def median_ms(model: ServedModel, batch: int, pinned_bits: int | None) -> float:
    x = torch.randint(0, 256, (batch, 1, 28, 28), dtype=torch.uint8)
    budgets = torch.linspace(model.min_bitops, model.max_bitops, batch, dtype=torch.float64)
    pinned = None if pinned_bits is None else torch.full((batch, model.num_layers), pinned_bits)
    for _ in range(20):
        model.infer(x, budgets, pinned)
    calls = max(5, 200 // batch)
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            model.infer(x, budgets, pinned)
        rounds.append(1000 * (time.perf_counter() - start) / calls)
    return statistics.median(rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--pinned-bits", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = ServedModel.load(args.model, "cpu")
    model.warm_up(32)
    cases = {"batch 1 pinned": (1, args.pinned_bits), "batch 32 pinned": (32, args.pinned_bits)}
    cases["batch 32 adaptive"] = (32, None)
    print(json.dumps({k: round(median_ms(model, *v), 2) for k, v in cases.items()}))


if __name__ == "__main__":
    main()
