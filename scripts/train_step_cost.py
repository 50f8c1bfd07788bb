"""Cost of one stage-1 training step against one FP32 step of the same network, in one run.

Issue 12's target: a step of the joint recipe (max + min + ``num_random`` random paths) costs at
most 1.5 x (number of paths) x one FP32 step. Both are timed interleaved, on the same random
Fashion-MNIST-shaped batches, after warm-up, and the medians are compared: the ratio is what
this machine's noise leaves stable, not the absolute milliseconds.

    .venv/bin/python scripts/train_step_cost.py --arch resnet8_fmnist --batch-size 128
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from abn.supernet import Supernet
from abn.train.supernet import (
    JointForward,
    SupernetTrainConfig,
    joint_loss,
    make_optimizer,
    model_spec,
    step_configs,
)


def make_step(cfg: SupernetTrainConfig, steps_per_epoch: int = 100):  # noqa: ANN201
    """A closure running one optimisation step of ``cfg``'s recipe on a given batch."""
    net = Supernet(model_spec(cfg, 10)).train()
    model = JointForward(net)
    optimizer = make_optimizer(net, cfg)
    counter = iter(range(10**9))

    def step(x: torch.Tensor, y: torch.Tensor) -> int:
        configs = step_configs(net, cfg, next(counter) + steps_per_epoch, steps_per_epoch)
        loss, _ = joint_loss(model(x, configs), y, cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return len(configs)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet8_fmnist")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-random", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    joint = make_step(SupernetTrainConfig(arch=args.arch, num_random=args.num_random))
    fp32 = make_step(SupernetTrainConfig(arch=args.arch, fp32=True))
    x = torch.randn(args.batch_size, 1, 28, 28)
    y = torch.randint(0, 10, (args.batch_size,))
    times: dict[str, list[float]] = {"joint": [], "fp32": []}
    paths = 0
    for i in range(args.repeats + 2):  # the first two rounds warm up
        for name, step in (("fp32", fp32), ("joint", joint)):
            t0 = time.perf_counter()
            n = step(x, y)
            if i >= 2:
                times[name].append(time.perf_counter() - t0)
            if name == "joint":
                paths = n
    joint_ms = statistics.median(times["joint"]) * 1e3
    fp32_ms = statistics.median(times["fp32"]) * 1e3
    ratio = joint_ms / (paths * fp32_ms)
    print(
        f"{args.arch}, batch {args.batch_size}, {args.threads} threads: joint step "
        f"({paths} paths) {joint_ms:.1f} ms, FP32 step {fp32_ms:.1f} ms; joint / (paths x FP32) "
        f"= {ratio:.2f} (target <= 1.5)"
    )


if __name__ == "__main__":
    main()
