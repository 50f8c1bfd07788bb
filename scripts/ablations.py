"""Stage-1 ablations of Supernet 2.0, each against the full method on the same test images.

Every variant is the same fine-tuning run (from the same starting supernet, same steps, same
data order and random configurations) with one thing changed:

* ``full``: transitional BN, KL consistency term, per-width clipping (the shipped recipe);
* ``per_width_bn``: one BN per own width (Quantizable DNNs' bit-specific BN);
* ``shared_bn``: one BN for every width;
* ``no_kl``: random and min paths trained with CE only (``ce_weight 1, kl_weight 0``);
* ``shared_clipping``: one activation clipping level for every width.

Each is scored on the 10k test images at every uniform width and at ``--configs`` random
per-layer configurations (the same ones for every variant). The figure compared is the mean
accuracy over those configurations; the per-image correctness (averaged over the
configurations) gives a paired 95 % bootstrap interval for each variant minus ``full``.

Runs are cached under ``--work`` (a variant whose model directory exists is not retrained),
so an interrupted run resumes, and ``--train-only`` runs can train disjoint variants in
parallel before one scoring run. Results: ``--out``.json and a Markdown table on stdout.

    .venv/bin/python scripts/ablations.py --init-from model_store/fmnist-abn --steps 300 \\
        --work runs/ablations --out docs/results/ablations
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch
from tqdm import tqdm

from abn.data import FASHION_MNIST_INPUT, load_fashion_mnist
from abn.evaluate import predictions
from abn.stats import paired_difference
from abn.store import open_model_dir
from abn.train.supernet import SupernetTrainConfig, train_supernet

VARIANTS: dict[str, dict] = {
    "full": {},
    "per_width_bn": {"batch_norm": "per_width"},
    "shared_bn": {"batch_norm": "shared"},
    "no_kl": {"ce_weight": 1.0, "kl_weight": 0.0},
    "shared_clipping": {"shared_clipping": True},
}


def train_variant(name: str, args: argparse.Namespace) -> Path:
    out = args.work / name
    if (out / "manifest.json").is_file():
        return out
    cfg = SupernetTrainConfig(
        out=str(out),
        name=f"ablation-{name}",
        init_from=args.init_from,
        epochs=1,
        max_steps_per_epoch=args.steps,
        lr=args.lr,
        warmup_epochs=0.0,
        phase_in_epochs=0.0,
        calibration_rounds=args.calibration_rounds,
        checkpoints=str(args.work / f"{name}-checkpoints"),
        resume=True,
        **VARIANTS[name],
    )
    return train_supernet(cfg)


def score(path: Path, configs: list[list[int]]) -> tuple[dict, torch.Tensor]:
    """Accuracy per configuration and each image's correctness averaged over them."""
    test = load_fashion_mnist("test")
    net = open_model_dir(path).load_supernet().fold_for_inference()
    correct = torch.stack(
        [
            predictions(net, test, FASHION_MNIST_INPUT, c) == test.labels
            for c in tqdm(configs, desc=f"score {path.name}", mininterval=2.0)
        ]
    ).double()
    per_config = {
        ",".join(map(str, c)): float(v) for c, v in zip(configs, correct.mean(1), strict=True)
    }
    return per_config, correct.mean(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--init-from", required=True)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--calibration-rounds", type=int, default=5)
    parser.add_argument("--configs", type=int, default=20, help="random per-layer configs")
    parser.add_argument("--work", type=Path, default=Path("runs/ablations"))
    parser.add_argument("--out", type=Path, default=Path("docs/results/ablations"))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument(
        "--train-only",
        action="store_true",
        help="train the listed variants and stop (to run several in parallel, then score)",
    )
    args = parser.parse_args()
    if args.train_only:
        for name in args.variants:
            train_variant(name, args)
        return
    paths = {name: train_variant(name, args) for name in dict.fromkeys(["full", *args.variants])}
    net_bits = open_model_dir(paths["full"]).spec.bit_candidates
    layers = open_model_dir(paths["full"]).load_supernet().num_switchable
    rng = random.Random(0)
    configs = [[b] * layers for b in net_bits]
    configs += [[rng.choice(net_bits) for _ in range(layers)] for _ in range(args.configs)]
    scores = {name: score(path, configs) for name, path in paths.items()}
    rows = {}
    for name, (per_config, per_image) in scores.items():
        rows[name] = {
            "mean_accuracy": float(per_image.mean()),
            "uniform": {str(b): per_config[",".join([str(b)] * layers)] for b in net_bits},
            "vs_full": paired_difference(per_image, scores["full"][1]),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"steps": args.steps, "init_from": args.init_from, "configs": configs, "rows": rows}
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    print(
        "| variant | mean over configs (%) | vs full (pt, 95 % CI) | uniform "
        + "/".join(map(str, net_bits))
        + " (%) |"
    )
    print("|---|---:|---|---|")
    for name, r in rows.items():
        d = r["vs_full"]
        uni = " / ".join(f"{100 * v:.2f}" for v in r["uniform"].values())
        print(
            f"| {name} | {100 * r['mean_accuracy']:.2f} | {100 * d['difference']:+.2f} "
            f"[{100 * d['low']:+.2f}, {100 * d['high']:+.2f}] | {uni} |"
        )


if __name__ == "__main__":
    main()
