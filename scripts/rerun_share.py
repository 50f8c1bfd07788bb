"""How often the served policy's last decision re-runs an image, and from where, under a
budget mix: the share of test images per option (stop, or re-run from block k at b bits),
and per configuration of the first pass.

A re-run is a second pass through the network from a block boundary, so on the float path,
where a pass costs the same at every width, this share is most of what an adaptive request
costs beyond a pinned one (docs/profiling.md, issue 19's third pass):

    .venv/bin/python scripts/rerun_share.py --images 960
"""

from __future__ import annotations

import argparse
import collections
import random

import torch

from abn.data import load_fashion_mnist
from loadtest.bench import BenchConfig
from loadtest.workload import BudgetSpec, ModelRange
from service.model import ModelLoadError, ServedModel


def shares(
    model: ServedModel, images: torch.Tensor, seed: int, batch: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Share of ``images`` per last-decision option, and per first-pass configuration,
    budgets drawn from the bench's mix (``BenchConfig.budgets``); the model's policy must take
    a last decision (:func:`takes_last_decision`)."""
    assert model.policy is not None
    mix = BudgetSpec.parse(BenchConfig.budgets, ModelRange(model.min_bitops, model.max_bitops))
    rng = random.Random(seed)
    budgets = torch.tensor([mix.draw(rng)[0] for _ in range(len(images))], dtype=torch.float64)
    counts: collections.Counter[int] = collections.Counter()
    first_passes: collections.Counter[str] = collections.Counter()
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            x = model.normalizer(images[start : start + batch])
            result = model.compiled.rollout(x, budgets[start : start + batch])
            counts.update(result.escalation.tolist())
            first_passes.update(",".join(map(str, row)) for row in result.first_pass.tolist())
    options = model.policy.spec.escalations
    named = {0: "stop"} | {
        k + 1: f"re-run from block {block} at {bits} bits"
        for k, (block, bits) in enumerate(options)
    }
    n = len(images)
    options_share = {named[k]: v / n for k, v in sorted(counts.items())}
    return options_share, {config: v / n for config, v in first_passes.most_common()}


def takes_last_decision(model: ServedModel) -> bool:
    return model.policy is not None and model.policy.escalation is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="model_store/fmnist-abn")
    parser.add_argument("--images", type=int, default=960, help="the first N test images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    if not 1 <= args.images <= 10_000 or args.batch < 1:
        parser.error("--images must be 1 to 10000 and --batch at least 1")
    torch.set_num_threads(1)
    try:
        model = ServedModel.load(args.model, "cpu")
    except ModelLoadError as err:
        parser.error(str(err))
    if not takes_last_decision(model):
        parser.error(f"{args.model}: its policy takes no last decision, so nothing re-runs")
    images = load_fashion_mnist("test").images[: args.images]
    options, first_passes = shares(model, images, args.seed, args.batch)
    for option, share in options.items():
        print(f"{100 * share:5.1f} %  {option}")
    for config, share in first_passes.items():
        print(f"{100 * share:5.1f} %  first pass at widths {config}")


if __name__ == "__main__":
    main()
