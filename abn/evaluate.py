"""Accuracy and BitOps on the test set: every uniform width, random configurations, the best
static mixed configurations (searched on the validation split), and the adaptive policy across
budgets; Pareto tables (JSON, Markdown) and a plot of accuracy against mean BitOps (PNG).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from abn.bitops import CostTable, cost_table
from abn.data import ImageSet, iterate_batches, load_fashion_mnist
from abn.policy import WidthPolicy, rollout
from abn.preprocess import InputSpec, normalize
from abn.store import open_model_dir, update_manifest
from abn.supernet import Supernet


@torch.no_grad()
def predictions(
    net: Supernet,
    data: ImageSet,
    input_spec: InputSpec,
    config: Sequence[int],
    batch_size: int = 500,
) -> torch.Tensor:
    """Predicted labels of every image of ``data`` at one configuration, in eval mode."""
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    out = []
    for images, _ in iterate_batches(data, batch_size, shuffle=False):
        out.append(net(normalize(images.to(device), input_spec), list(config)).argmax(1).cpu())
    net.train(was_training)
    return torch.cat(out)


def static_accuracy(
    net: Supernet, data: ImageSet, input_spec: InputSpec, config: Sequence[int]
) -> float:
    # An exact fraction (correct / total), as adaptive_accuracy computes it: a float32 mean
    # would make an equal accuracy compare as lower (0.9083999991 < 0.9084) and report a
    # BitOps saving against a dearer configuration.
    correct = int((predictions(net, data, input_spec, config) == data.labels).sum())
    return correct / len(data)


@torch.no_grad()
def adaptive_accuracy(
    net: Supernet,
    table: CostTable,
    policy: WidthPolicy | None,
    data: ImageSet,
    input_spec: InputSpec,
    budget: float,
    batch_size: int = 500,
) -> dict:
    """Accuracy, mean BitOps and budget violations of the policy at one budget."""
    device = next(net.parameters()).device
    correct, spent, violations, widths = 0, [], 0, []
    for images, labels in iterate_batches(data, batch_size, shuffle=False):
        budgets = torch.full((images.shape[0],), budget, dtype=torch.float64)
        r = rollout(net, table, normalize(images.to(device), input_spec), budgets, policy)
        correct += int((r.logits.argmax(1).cpu() == labels).sum())
        spent.append(r.bitops.cpu())
        violations += int((r.bitops.cpu() > budgets).sum())
        widths.append(r.widths.cpu())
    spent_all = torch.cat(spent)
    w = torch.cat(widths).float()
    return {
        "budget": budget,
        "mean_bitops": float(spent_all.mean()),
        "accuracy": correct / len(data),
        "violations": violations,
        "mean_widths": [round(v, 3) for v in w.mean(0).tolist()],
        "distinct_configs": int(torch.unique(torch.cat(widths), dim=0).shape[0]),
    }


def greedy_static_search(
    net: Supernet, table: CostTable, data: ImageSet, input_spec: InputSpec
) -> list[dict]:
    """A Pareto path of static mixed configurations, on ``data`` (the validation split).

    From all-max, repeatedly lower the one layer whose next-lower width loses the least
    accuracy per BitOps saved, until every layer is at the minimum. Returns every configuration
    on the path with its validation accuracy.
    """
    bits = sorted(net.bit_candidates)
    config = net.uniform(bits[-1])
    path = [
        {
            "bit_widths": list(config),
            "bitops": table.cost(config),
            "val_accuracy": static_accuracy(net, data, input_spec, config),
        }
    ]
    steps = sum(len(bits) - 1 for _ in config)
    with tqdm(total=steps, desc="static search (val)", mininterval=2.0) as bar:
        while any(b > bits[0] for b in config):
            best = None
            for i, b in enumerate(config):
                if b == bits[0]:
                    continue
                trial = list(config)
                trial[i] = bits[bits.index(b) - 1]
                acc = static_accuracy(net, data, input_spec, trial)
                saved = table.cost(config) - table.cost(trial)
                score = (path[-1]["val_accuracy"] - acc) / saved
                if best is None or score < best[0]:
                    best = (score, trial, acc)
            assert best is not None
            config = best[1]
            path.append(
                {"bit_widths": list(config), "bitops": table.cost(config), "val_accuracy": best[2]}
            )
            bar.update(1)
    return path


def budgets_across(table: CostTable, count: int = 10) -> list[float]:
    """``count`` budgets spread geometrically from the cheapest to the dearest configuration."""
    low, high = table.min_bitops, table.max_bitops
    return [low * (high / low) ** (i / (count - 1)) for i in range(count)]


def best_static_under(static: list[dict], cost: float, key: str = "accuracy") -> dict | None:
    fits = [s for s in static if s["bitops"] <= cost * (1 + 1e-12)]
    return max(fits, key=lambda s: s[key]) if fits else None


def compare_adaptive(adaptive: list[dict], static: list[dict]) -> list[dict]:
    """For each budget: adaptive against the best static of equal or lower cost, and the
    BitOps saved against the cheapest static that is at least as accurate."""
    rows = []
    for a in adaptive:
        at_budget = best_static_under(static, a["budget"])
        at_mean = best_static_under(static, a["mean_bitops"])
        as_good = [s for s in static if s["accuracy"] >= a["accuracy"]]
        cheapest = min(as_good, key=lambda s: s["bitops"]) if as_good else None
        rows.append(
            {
                "budget": a["budget"],
                "adaptive_accuracy": a["accuracy"],
                "adaptive_mean_bitops": a["mean_bitops"],
                "best_static_within_budget": at_budget["accuracy"] if at_budget else None,
                "gain_vs_static_within_budget": a["accuracy"] - at_budget["accuracy"]
                if at_budget
                else None,
                "best_static_within_mean_bitops": at_mean["accuracy"] if at_mean else None,
                "gain_at_equal_mean_bitops": a["accuracy"] - at_mean["accuracy"]
                if at_mean
                else None,
                "bitops_saving_at_equal_accuracy": 1 - a["mean_bitops"] / cheapest["bitops"]
                if cheapest
                else None,
            }
        )
    return rows


def plot_pareto(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    uni = report["static_uniform"]
    ax.plot(
        [s["bitops"] for s in uni],
        [100 * s["accuracy"] for s in uni],
        "s--",
        color="tab:gray",
        label="uniform width (static)",
    )
    for s in uni:
        ax.annotate(
            f"{s['bit_widths'][0]}-bit",
            (s["bitops"], 100 * s["accuracy"]),
            textcoords="offset points",
            xytext=(4, -12),
            fontsize=8,
        )
    mixed = report.get("static_mixed", [])
    if mixed:
        ax.plot(
            [s["bitops"] for s in mixed],
            [100 * s["accuracy"] for s in mixed],
            "o-",
            color="tab:blue",
            ms=3,
            label="best static mixed (searched on val)",
        )
    rnd = report.get("random_configs", {}).get("points", [])
    if rnd:
        ax.scatter(
            [s["bitops"] for s in rnd],
            [100 * s["accuracy"] for s in rnd],
            s=6,
            color="tab:olive",
            alpha=0.4,
            label="random static configs",
        )
    ada = report.get("adaptive", [])
    if ada:
        ax.plot(
            [a["mean_bitops"] for a in ada],
            [100 * a["accuracy"] for a in ada],
            "^-",
            color="tab:red",
            label="adaptive policy (mean BitOps)",
        )
    ax.set_xscale("log")
    ax.set_xlabel("BitOps per image (mean for adaptive)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{report['model']['name']} {report['model']['version']}: accuracy vs BitOps")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}"


def markdown_report(report: dict) -> str:
    lines = [f"# {report['model']['name']} {report['model']['version']}: evaluation", ""]
    lines += [
        f"Test set: {report['test_images']} images. BitOps per image; "
        f"cheapest {report['min_bitops']:.4g}, dearest {report['max_bitops']:.4g}.",
        "",
    ]
    lines += ["## Uniform widths", "", "| widths | BitOps | accuracy (%) |", "|---|---:|---:|"]
    for s in report["static_uniform"]:
        lines.append(
            f"| all {s['bit_widths'][0]}-bit | {s['bitops']:.4g} | {_pct(s['accuracy'])} |"
        )
    rc = report.get("random_configs")
    if rc:
        lines += [
            "",
            f"## {rc['count']} random per-layer configurations",
            "",
            f"accuracy mean {_pct(rc['mean'])} %, min {_pct(rc['min'])} %, max {_pct(rc['max'])} %",
        ]
    if report.get("static_mixed"):
        lines += [
            "",
            "## Best static mixed configurations (greedy search on validation)",
            "",
            "| widths | BitOps | val acc (%) | test acc (%) |",
            "|---|---:|---:|---:|",
        ]
        for s in report["static_mixed"]:
            lines.append(
                f"| {','.join(map(str, s['bit_widths']))} | {s['bitops']:.4g} | "
                f"{_pct(s['val_accuracy'])} | {_pct(s['accuracy'])} |"
            )
    if report.get("adaptive"):
        lines += [
            "",
            "## Adaptive policy",
            "",
            "| budget | mean BitOps | accuracy (%) | violations | best static ≤ budget (%) "
            "| gain (pt) | best static ≤ mean BitOps (%) | gain at equal mean BitOps (pt) "
            "| BitOps saved at equal accuracy |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for a, c in zip(report["adaptive"], report["comparison"], strict=True):
            gain = c["gain_vs_static_within_budget"]
            geq = c["gain_at_equal_mean_bitops"]
            sav = c["bitops_saving_at_equal_accuracy"]
            lines.append(
                f"| {a['budget']:.4g} | {a['mean_bitops']:.4g} | {_pct(a['accuracy'])} | "
                f"{a['violations']} | {_pct(c['best_static_within_budget'])} | "
                f"{'n/a' if gain is None else f'{100 * gain:+.2f}'} | "
                f"{_pct(c['best_static_within_mean_bitops'])} | "
                f"{'n/a' if geq is None else f'{100 * geq:+.2f}'} | "
                f"{'n/a' if sav is None else f'{100 * sav:.1f} %'} |"
            )
        s = report["summary"]
        lines += [
            "",
            f"Budget violations over all test images and budgets: "
            f"**{s['violations']}**. Best gain at equal mean BitOps: "
            f"**{_pct(s['best_gain_at_equal_mean_bitops'])} pt**; best BitOps saving "
            f"at equal accuracy: **{_pct(s['best_bitops_saving'])} %**; worst shortfall "
            f"against the best static within budget: "
            f"**{_pct(s['worst_gap_vs_static_within_budget'])} pt**.",
        ]
    lines += ["", "![accuracy vs BitOps](pareto.png)", ""]
    return "\n".join(lines)


@dataclass
class EvaluateOptions:
    model: Path
    out: Path | None = None
    data_dir: str | None = None
    random_configs: int = 100
    budgets: int = 10
    search: bool = True
    search_images: int = 2000  # validation images scored per candidate in the search
    update_manifest: bool = True
    device: str = "cpu"


def evaluate_model(opts: EvaluateOptions) -> dict:
    md = open_model_dir(opts.model)
    net = md.load_supernet(opts.device).fold_for_inference()
    policy = md.load_policy(opts.device)
    table = cost_table(net)
    spec = md.input_spec
    test = load_fashion_mnist("test", opts.data_dir)
    val = load_fashion_mnist("val", opts.data_dir)
    report: dict = {
        "model": {"name": md.manifest["name"], "version": md.manifest["version"]},
        "test_images": len(test),
        "min_bitops": table.min_bitops,
        "max_bitops": table.max_bitops,
        "layers": table.to_dict()["layers"],
    }

    report["static_uniform"] = [
        {
            "bit_widths": net.uniform(b),
            "bitops": table.cost(net.uniform(b)),
            "accuracy": static_accuracy(net, test, spec, net.uniform(b)),
        }
        for b in tqdm(net.bit_candidates, desc="uniform widths")
    ]
    if opts.random_configs:
        rng = random.Random(0)
        points = []
        for _ in tqdm(range(opts.random_configs), desc="random configs", mininterval=2.0):
            config = [rng.choice(net.bit_candidates) for _ in range(net.num_switchable)]
            points.append(
                {
                    "bit_widths": config,
                    "bitops": table.cost(config),
                    "accuracy": static_accuracy(net, test, spec, config),
                }
            )
        accs = [p["accuracy"] for p in points]
        report["random_configs"] = {
            "count": len(points),
            "mean": sum(accs) / len(accs),
            "min": min(accs),
            "max": max(accs),
            "points": points,
        }
    static_all = list(report["static_uniform"])
    if opts.search and len(net.bit_candidates) > 1:
        path = greedy_static_search(net, table, val.subset(slice(0, opts.search_images)), spec)
        for p in tqdm(path, desc="searched configs on test", mininterval=2.0):
            p["accuracy"] = static_accuracy(net, test, spec, p["bit_widths"])
        report["static_mixed"] = path
        static_all += path
    if policy is not None:
        report["adaptive"] = [
            adaptive_accuracy(net, table, policy, test, spec, b)
            for b in tqdm(budgets_across(table, opts.budgets), desc="adaptive budgets")
        ]
        report["comparison"] = compare_adaptive(report["adaptive"], static_all)
        comp = report["comparison"]
        report["summary"] = {
            "violations": sum(a["violations"] for a in report["adaptive"]),
            "best_gain_at_equal_mean_bitops": max(
                (
                    c["gain_at_equal_mean_bitops"]
                    for c in comp
                    if c["gain_at_equal_mean_bitops"] is not None
                ),
                default=None,
            ),
            "best_bitops_saving": max(
                (
                    c["bitops_saving_at_equal_accuracy"]
                    for c in comp
                    if c["bitops_saving_at_equal_accuracy"] is not None
                ),
                default=None,
            ),
            "worst_gap_vs_static_within_budget": min(
                (
                    c["gain_vs_static_within_budget"]
                    for c in comp
                    if c["gain_vs_static_within_budget"] is not None
                ),
                default=None,
            ),
        }
    out = opts.out or (md.path / "evaluation")
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(markdown_report(report))
    plot_pareto(report, out / "pareto.png")
    if opts.update_manifest:
        static_card = [{k: s[k] for k in ("bit_widths", "bitops", "accuracy")} for s in static_all]
        adaptive_card = [
            {k: a[k] for k in ("budget", "mean_bitops", "accuracy")}
            for a in report.get("adaptive", [])
        ]
        summary = {k: report[k] for k in ("random_configs",) if k in report}
        if summary:
            summary["random_configs"] = {
                k: v for k, v in summary["random_configs"].items() if k != "points"
            }
        update_manifest(
            md.path,
            accuracy={
                "static": static_card,
                "adaptive": adaptive_card,
                "test_images": len(test),
                **summary,
            },
        )
    return report
