"""Offline batched throughput: the served network without HTTP, the reference for the service.

The same code path the server's model thread runs per batch (``ServedModel.infer``: normalise,
``abn.policy.CompiledPolicy.rollout`` layer by layer with samples grouped by width, softmax, copy
to CPU), fed the same images and the same budget/width mix as the load generator (the
workload's requests ``0..N-1``), at a fixed batch size, on the same number of torch threads.
What it leaves out is exactly what the service adds: HTTP, PNG decoding, queueing and batch
assembly.

``python -m loadtest.offline --model DIR --batch-size 32 --seconds 10`` prints images/s.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from loadtest.workload import BudgetSpec, Images, ModelRange, Workload, parse_widths
from service.model import ServedModel


@dataclass(frozen=True)
class OfflineResult:
    images_per_second: float
    batch_size: int
    batches: int
    images: int
    seconds: float
    mean_bitops: float
    accuracy: float
    torch_threads: int
    device: str


def model_range(model: ServedModel) -> ModelRange:
    return ModelRange(
        model.min_bitops, model.max_bitops, tuple(model.bit_candidates), model.num_layers
    )


def workload_tensors(
    workload: Workload, model: ServedModel, n: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images (uint8, N x C x H x W), budgets, pinned widths (0 = adaptive) and true labels of
    the workload's first ``n`` requests: the served mix, as tensors."""
    spec = model.input_spec
    plans = [workload.plan(i) for i in range(n)]
    pixels = torch.from_numpy(workload.images.pixels[[p.image for p in plans]])
    images = pixels.reshape(n, spec.channels, spec.height, spec.width).contiguous()
    budgets = torch.tensor(
        [p.budget if p.budget is not None else model.max_bitops for p in plans],
        dtype=torch.float64,
    )
    pinned = torch.zeros(n, model.num_layers, dtype=torch.int64)
    for row, p in enumerate(plans):
        if p.widths is not None:
            widths = [int(w) for w in p.widths.split(",")]
            pinned[row] = torch.tensor(widths * model.num_layers if len(widths) == 1 else widths)
    labels = torch.from_numpy(workload.images.labels[[p.image for p in plans]])
    return images, budgets, pinned, labels


def measure(
    model: ServedModel,
    workload: Workload,
    *,
    batch_size: int,
    seconds: float,
    pool: int = 2048,
) -> OfflineResult:
    """Images/s of ``model.infer`` over batches of ``batch_size`` cut from the first ``pool``
    requests of ``workload``, repeated until ``seconds`` have passed (after one warm-up batch).
    """
    n = max(batch_size, min(pool, len(workload.images)))
    images, budgets, pinned, labels = workload_tensors(workload, model, n)
    any_pinned = bool((pinned != 0).any())
    starts = list(range(0, n - batch_size + 1, batch_size)) or [0]

    def run(start: int) -> tuple[torch.Tensor, torch.Tensor]:
        stop = start + batch_size
        out = model.infer(
            images[start:stop], budgets[start:stop], pinned[start:stop] if any_pinned else None
        )
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
        return out.probabilities.argmax(1), out.bitops

    run(starts[0])  # warm-up
    done = correct = 0
    bitops = 0.0
    batches = 0
    t0 = time.perf_counter()
    while True:
        for start in starts:
            predicted, spent = run(start)
            stop = start + batch_size
            correct += int((predicted == labels[start:stop]).sum())
            bitops += float(spent.sum())
            done += len(predicted)
            batches += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            break
    return OfflineResult(
        images_per_second=done / elapsed,
        batch_size=batch_size,
        batches=batches,
        images=done,
        seconds=elapsed,
        mean_bitops=bitops / done,
        accuracy=correct / done,
        torch_threads=torch.get_num_threads(),
        device=str(model.device),
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.offline", description=__doc__)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--budgets", default="min,25%,50%,75%,max")
    p.add_argument("--widths", action="append", default=[])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--data-dir", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(args.torch_threads)
    model = ServedModel.load(args.model, args.device)
    mr = model_range(model)
    workload = Workload(
        Images.fashion_mnist(args.data_dir),
        BudgetSpec.parse(args.budgets, mr),
        parse_widths(args.widths, mr),
        seed=args.seed,
    )
    result = measure(model, workload, batch_size=args.batch_size, seconds=args.seconds)
    print(json.dumps(asdict(result), indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
