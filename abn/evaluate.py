"""Accuracy and BitOps on the test set: every uniform width, random configurations, the best
static mixed configurations (searched on the validation split), and the adaptive policy across
budgets; Pareto tables (JSON, Markdown) and a plot of accuracy against mean BitOps (PNG).
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from abn.baselines import BaselineSuite, compare_with_baselines
from abn.bitops import CostTable, cost_table
from abn.data import EVALUATION_BATCH_SIZE, ImageSet, iterate_batches
from abn.datasource import load_for_model
from abn.latency import latency_markdown, measure_latency
from abn.policy import CompiledPolicy, WidthPolicy
from abn.preprocess import InputSpec, Normalizer
from abn.store import open_model_dir, update_manifest
from abn.supernet import Supernet

RANDOM_CONFIGS_SEED = 0  # the random configurations a report scores: one set, every run


@torch.no_grad()
def predictions(
    net: Supernet,
    data: ImageSet,
    input_spec: InputSpec,
    config: Sequence[int],
    batch_size: int = EVALUATION_BATCH_SIZE,
) -> torch.Tensor:
    """Predicted labels of every image of ``data`` at one configuration, in eval mode."""
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    normalize = Normalizer.for_spec(input_spec, device)
    out = []
    for images, _ in iterate_batches(data, batch_size, shuffle=False):
        out.append(net(normalize(images.to(device)), list(config)).argmax(1).cpu())
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
    compiled: CompiledPolicy,
    data: ImageSet,
    input_spec: InputSpec,
    budget: float,
    batch_size: int = EVALUATION_BATCH_SIZE,
) -> dict:
    """Accuracy, mean BitOps and budget violations of the policy at one budget, and (under
    ``"correct"``, a tensor to pop before writing JSON) each image's correctness."""
    normalizer = Normalizer.for_spec(input_spec, compiled.device)
    correct, spent, violations, widths, reruns = [], [], 0, [], 0
    for images, labels in iterate_batches(data, batch_size, shuffle=False):
        budgets = torch.full((images.shape[0],), budget, dtype=torch.float64)
        r = compiled.rollout(normalizer(images.to(compiled.device)), budgets)
        correct.append(r.logits.argmax(1).cpu() == labels)
        spent.append(r.bitops.cpu())
        violations += int((r.bitops.cpu() > budgets).sum())
        widths.append(r.widths.cpu())
        reruns += 0 if r.escalation is None else int((r.escalation > 0).sum())
    spent_all = torch.cat(spent)
    w = torch.cat(widths).float()
    correct_all = torch.cat(correct)
    return {
        "correct": correct_all,
        "budget": budget,
        "mean_bitops": float(spent_all.mean()),
        "accuracy": int(correct_all.sum()) / len(data),
        "violations": violations,
        "mean_widths": [round(v, 3) for v in w.mean(0).tolist()],
        "distinct_configs": int(torch.unique(torch.cat(widths), dim=0).shape[0]),
        "rerun_fraction": reruns / len(data),  # images the policy's last decision re-ran
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


def interpolate_uniform(uniform: list[dict], bitops: float) -> float:
    """Accuracy of the uniform-width curve at ``bitops``: piecewise linear in log BitOps between
    the uniform points (the axis the Pareto plot uses), flat beyond the cheapest and dearest."""
    points = sorted((math.log(u["bitops"]), u["accuracy"]) for u in uniform)
    x = math.log(bitops)
    if x <= points[0][0]:
        return points[0][1]
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return points[-1][1]


def mixing_summary(points: list[dict], uniform: list[dict]) -> dict:
    """How random per-layer configurations compare with the uniform curve: each one's accuracy
    minus the uniform curve at its BitOps, and the worst one against the cheapest uniform."""
    gaps = [p["accuracy"] - interpolate_uniform(uniform, p["bitops"]) for p in points]
    cheapest = min(uniform, key=lambda u: u["bitops"])["accuracy"]
    worst = min(p["accuracy"] for p in points)
    return {
        "mean_gap_to_uniform_curve": sum(gaps) / len(gaps),
        "min_gap_to_uniform_curve": min(gaps),
        "worst_minus_cheapest_uniform": worst - cheapest,
    }


def uniform_ordering(uniform: list[dict]) -> list[dict]:
    """Each width's accuracy against the next narrower width's (widths must buy accuracy)."""
    ordered = sorted(uniform, key=lambda u: u["bit_widths"][0])
    return [
        {
            "bits": hi["bit_widths"][0],
            "narrower": lo["bit_widths"][0],
            "difference": hi["accuracy"] - lo["accuracy"],
        }
        for lo, hi in itertools.pairwise(ordered)
    ]


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
    """Two panels: every family's accuracy against BitOps (each point with its 95 % binomial
    interval), and the policy's paired difference to each baseline per budget (95 % paired
    bootstrap interval), the comparison the targets are stated in."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    versus = report.get("versus_baselines", [])
    fig, axes = plt.subplots(1, 2 if versus else 1, figsize=(14 if versus else 8, 5.5))
    front_ax = axes[0] if versus else axes
    _plot_families(front_ax, report)
    front_ax.set_title(
        f"{report['model']['name']} {report['model']['version']}: accuracy vs BitOps"
    )
    if versus:
        _plot_versus(axes[1], versus)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _interval(points: list[dict], images: int) -> list[float]:
    """Half-width (pt) of each point's 95 % binomial interval over ``images`` test images."""
    return [196 * math.sqrt(p["accuracy"] * (1 - p["accuracy"]) / images) for p in points]


def _plot_families(ax, report: dict) -> None:  # noqa: ANN001 (a matplotlib Axes)
    n = report["test_images"]
    families = [
        ("static_uniform", "s--", "tab:gray", "uniform width (static)"),
        ("static_mixed", "o-", "tab:blue", "best static mixed (searched on val)"),
        ("confidence_cascade", "v:", "tab:purple", "confidence cascade (val)"),
        ("layerwise_cascade", "d:", "tab:green", "layer-wise cascade (val)"),
        ("adaptive", "^-", "tab:red", "adaptive policy (mean BitOps)"),
    ]
    for key, marker, color, label in families:
        points = report.get(key) or report.get("baselines", {}).get(key, [])
        if not points:
            continue
        ax.errorbar(
            [p["mean_bitops"] for p in points],
            [100 * p["accuracy"] for p in points],
            yerr=_interval(points, n),
            fmt=marker,
            color=color,
            ms=3,
            capsize=2,
            elinewidth=0.8,
            label=label,
        )
    for s in report["static_uniform"]:
        ax.annotate(
            f"{s['bit_widths'][0]}-bit",
            (s["bitops"], 100 * s["accuracy"]),
            textcoords="offset points",
            xytext=(4, -12),
            fontsize=8,
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
    ax.set_xscale("log")
    ax.set_xlabel("BitOps per image (mean for adaptive and cascades)")
    ax.set_ylabel("test accuracy (%), 95 % interval")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)


def _plot_versus(ax, versus: list[dict]) -> None:  # noqa: ANN001 (a matplotlib Axes)
    colors = {"best static": "tab:blue", "confidence cascade": "tab:purple"}
    names = [v["baseline"] for v in versus[0]["versus"]]
    for j, name in enumerate(names):
        rows = [(r["budget"], r["versus"][j]) for r in versus if r["versus"][j]["available"]]
        if not rows:
            continue
        budgets = [b * (1 + 0.04 * (j - 1)) for b, _ in rows]  # side by side, not on top
        diff = [100 * v["difference"] for _, v in rows]
        low = [d - 100 * v["low"] for d, (_, v) in zip(diff, rows, strict=True)]
        high = [100 * v["high"] - d for d, (_, v) in zip(diff, rows, strict=True)]
        ax.errorbar(
            budgets,
            diff,
            yerr=[low, high],
            fmt="o",
            ms=4,
            capsize=3,
            color=colors.get(name, "tab:green"),
            label=f"policy − {name}",
        )
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("budget (BitOps per image)")
    ax.set_ylabel("paired difference (pt), 95 % bootstrap interval")
    ax.set_title("policy against each baseline at equal or lower mean BitOps")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best", fontsize=8)


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}"


def markdown_report(report: dict) -> str:
    """``report.md``: one section per table of the report, in the order a reader needs them."""
    lines = [f"# {report['model']['name']} {report['model']['version']}: evaluation", ""]
    lines += [
        f"Test set: {report['test_images']} images. BitOps per image; "
        f"cheapest {report['min_bitops']:.4g}, dearest {report['max_bitops']:.4g}.",
        "",
    ]
    lines += _uniform_markdown(report)
    lines += _random_configs_markdown(report.get("random_configs"))
    lines += _static_mixed_markdown(report.get("static_mixed"))
    if report.get("adaptive"):
        lines += _adaptive_markdown(report)
    lines += versus_markdown(report.get("versus_baselines", []))
    lines += latency_markdown(report.get("latency"))
    lines += ["", "![accuracy vs BitOps](pareto.png)", ""]
    return "\n".join(lines)


def _uniform_markdown(report: dict) -> list[str]:
    lines = ["## Uniform widths", "", "| widths | BitOps | accuracy (%) |", "|---|---:|---:|"]
    for s in report["static_uniform"]:
        lines.append(
            f"| all {s['bit_widths'][0]}-bit | {s['bitops']:.4g} | {_pct(s['accuracy'])} |"
        )
    if report.get("uniform_ordering"):
        steps = ", ".join(
            f"{o['narrower']}→{o['bits']}: {100 * o['difference']:+.2f}"
            for o in report["uniform_ordering"]
        )
        lines += ["", f"Each width against the next narrower one (pt): {steps}."]
    return lines


def _random_configs_markdown(rc: dict | None) -> list[str]:
    if not rc:
        return []
    return [
        "",
        f"## {rc['count']} random per-layer configurations",
        "",
        f"accuracy mean {_pct(rc['mean'])} %, min {_pct(rc['min'])} %, "
        f"max {_pct(rc['max'])} %; "
        f"against the uniform curve at the same BitOps (log-linear interpolation): mean "
        f"{100 * rc['mean_gap_to_uniform_curve']:+.2f} pt, worst "
        f"{100 * rc['min_gap_to_uniform_curve']:+.2f} pt; worst configuration against the "
        f"cheapest uniform one: {100 * rc['worst_minus_cheapest_uniform']:+.2f} pt.",
    ]


def _static_mixed_markdown(rows: list[dict] | None) -> list[str]:
    if not rows:
        return []
    lines = [
        "",
        "## Best static mixed configurations (greedy search on validation)",
        "",
        "| widths | BitOps | val acc (%) | test acc (%) |",
        "|---|---:|---:|---:|",
    ]
    for s in rows:
        lines.append(
            f"| {','.join(map(str, s['bit_widths']))} | {s['bitops']:.4g} | "
            f"{_pct(s['val_accuracy'])} | {_pct(s['accuracy'])} |"
        )
    return lines


def _signed_pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:+.2f}"


def _adaptive_markdown(report: dict) -> list[str]:
    lines = [
        "",
        "## Adaptive policy",
        "",
        "| budget | mean BitOps | accuracy (%) | violations | best static ≤ budget (%) "
        "| gain (pt) | best static ≤ mean BitOps (%) | gain at equal mean BitOps (pt) "
        "| BitOps saved at equal accuracy |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for a, c in zip(report["adaptive"], report["comparison"], strict=True):
        saving = c["bitops_saving_at_equal_accuracy"]
        lines.append(
            f"| {a['budget']:.4g} | {a['mean_bitops']:.4g} | {_pct(a['accuracy'])} | "
            f"{a['violations']} | {_pct(c['best_static_within_budget'])} | "
            f"{_signed_pct(c['gain_vs_static_within_budget'])} | "
            f"{_pct(c['best_static_within_mean_bitops'])} | "
            f"{_signed_pct(c['gain_at_equal_mean_bitops'])} | "
            f"{'n/a' if saving is None else f'{100 * saving:.1f} %'} |"
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
    return lines


def versus_markdown(rows: list[dict]) -> list[str]:
    """The policy against each baseline per budget: paired test difference, 95 % interval."""
    if not rows:
        return []
    names = [v["baseline"] for v in rows[0]["versus"]]
    lines = [
        "",
        "## Against the baselines (paired, 95 % bootstrap interval, pt)",
        "",
        "Each baseline's operating point is the validation-best one of no greater (validation) "
        "mean BitOps that fits the budget.",
        "",
        "| budget | policy (%) | mean BitOps | " + " | ".join(names) + " |",
        "|---:|---:|---:|" + "---|" * len(names),
    ]
    for r in rows:
        cells = []
        for v in r["versus"]:
            if not v["available"]:
                cells.append("none fits")
                continue
            cells.append(
                f"{_pct(v['accuracy'])} @ {v['mean_bitops']:.3g}: {100 * v['difference']:+.2f} "
                f"[{100 * v['low']:+.2f}, {100 * v['high']:+.2f}]"
            )
        lines.append(
            f"| {r['budget']:.4g} | {_pct(r['accuracy'])} | {r['mean_bitops']:.4g} | "
            + " | ".join(cells)
            + " |"
        )
    return lines


@dataclass
class EvaluateOptions:
    model: Path
    out: Path | None = None
    data_dir: str | None = None  # Fashion-MNIST instead of the model's recorded data
    image_folder: str | None = None  # an image folder instead of the model's recorded data
    random_configs: int = 100
    budgets: int = 10
    search: bool = True
    search_images: int = 2000  # validation images scored per candidate in the search
    update_manifest: bool = True
    device: str = "cpu"
    latency: bool = True  # time every uniform width on opts.device (abn.latency)
    latency_batch_size: int = 32


def evaluate_model(opts: EvaluateOptions) -> dict:
    """Every table of the report (see the module docstring), written to ``opts.out``."""
    md = open_model_dir(opts.model)
    data = load_for_model(md, ["val", "test"], opts.data_dir, opts.image_folder)
    val, test = data["val"], data["test"]
    net = md.load_supernet(opts.device).fold_for_inference()
    policy = md.load_policy(opts.device)
    table = cost_table(net)
    spec = md.input_spec
    suite = BaselineSuite(net, table, val, test, spec)
    report: dict = {
        "model": {"name": md.manifest["name"], "version": md.manifest["version"]},
        "test_images": len(test),
        "min_bitops": table.min_bitops,
        "max_bitops": table.max_bitops,
        "layers": table.to_dict()["layers"],
    }
    report["static_uniform"] = [
        static_row(suite, net.uniform(b)) for b in tqdm(net.bit_candidates, desc="uniform widths")
    ]
    report["uniform_ordering"] = uniform_ordering(report["static_uniform"])
    if opts.latency:
        report["latency"] = measure_latency(net, table, spec, opts.latency_batch_size)
    if opts.random_configs:
        report["random_configs"] = random_configs(net, table, test, spec, report, opts)
    static_all = list(report["static_uniform"])
    if opts.search and len(net.bit_candidates) > 1:
        path = greedy_static_search(net, table, val.subset(slice(0, opts.search_images)), spec)
        report["static_mixed"] = [
            {**static_row(suite, p["bit_widths"]), "search_val_accuracy": p["val_accuracy"]}
            for p in tqdm(path, desc="searched configs", mininterval=2.0)
        ]
        static_all += report["static_mixed"]
    if len(net.bit_candidates) > 1:
        add_baselines(report, suite, static_all)
    if policy is not None:
        add_adaptive(report, suite, policy, static_all, opts)
    write_report(report, opts.out or (md.path / "evaluation"))
    if opts.update_manifest:
        tables = manifest_tables(report, static_all, len(test))
        extra = {"latency": report["latency"]} if opts.latency else {}
        update_manifest(md.path, accuracy=tables, **extra)
    return report


def static_row(suite: BaselineSuite, config: Sequence[int]) -> dict:
    """A static configuration's BitOps and accuracy on test and on the whole validation split."""
    labels_val, labels_test = suite.labels("val"), suite.labels("test")
    val = suite.scores("val", config).correct(labels_val)
    test = suite.scores("test", config).correct(labels_test)
    cost = suite.table.cost(config)
    return {
        "bit_widths": list(config),
        "bitops": cost,
        "accuracy": int(test.sum()) / len(test),
        "val_accuracy": int(val.sum()) / len(val),
        "mean_bitops": cost,
        "val_mean_bitops": cost,
    }


def random_configs(
    net: Supernet,
    table: CostTable,
    test: ImageSet,
    spec: InputSpec,
    report: dict,
    opts: EvaluateOptions,
) -> dict:
    """Accuracy of ``opts.random_configs`` random per-layer configurations, the same ones on
    every run (:data:`RANDOM_CONFIGS_SEED`), against the uniform curve."""
    rng = random.Random(RANDOM_CONFIGS_SEED)
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
    return {
        "count": len(points),
        "mean": sum(accs) / len(accs),
        "min": min(accs),
        "max": max(accs),
        **mixing_summary(points, report["static_uniform"]),
        "points": points,
    }


def add_baselines(report: dict, suite: BaselineSuite, static_all: list[dict]) -> None:
    """Cascade fronts (validation-chosen, test-scored) and the per-image oracle."""
    cascades = suite.cascades()
    report["baselines"] = {
        "confidence_cascade": cascades["confidence"],
        "layerwise_cascade": cascades["layerwise"],
        "oracle": suite.oracle([s["bit_widths"] for s in static_all]),
    }


def add_adaptive(
    report: dict,
    suite: BaselineSuite,
    policy: WidthPolicy,
    static_all: list[dict],
    opts: EvaluateOptions,
) -> None:
    """The policy at every budget, on test and validation, against every baseline."""
    net, table, spec = suite.net, suite.table, suite.spec
    budgets = budgets_across(table, opts.budgets)
    compiled = CompiledPolicy(net, table, policy, next(net.parameters()).device)
    runs = {
        split: [
            adaptive_accuracy(compiled, suite.splits[split], spec, b)
            for b in tqdm(budgets, desc=f"adaptive budgets ({split})")
        ]
        for split in ("test", "val")
    }
    cascades = {
        "confidence": report["baselines"]["confidence_cascade"],
        "layerwise": report["baselines"]["layerwise_cascade"],
    }
    report["versus_baselines"] = compare_with_baselines(
        suite, runs["test"], runs["val"], static_all, cascades
    )
    for split in ("test", "val"):
        for row in runs[split]:
            row.pop("correct")
    report["adaptive"] = runs["test"]
    report["adaptive_val"] = runs["val"]
    report["comparison"] = compare_adaptive(report["adaptive"], static_all)
    report["summary"] = adaptive_summary(report)


def adaptive_summary(report: dict) -> dict:
    comp = report["comparison"]

    def best(key: str, pick=max):  # noqa: ANN001, ANN202
        values = [c[key] for c in comp if c[key] is not None]
        return pick(values, default=None)

    return {
        "violations": sum(a["violations"] for a in report["adaptive"]),
        "best_gain_at_equal_mean_bitops": best("gain_at_equal_mean_bitops"),
        "best_bitops_saving": best("bitops_saving_at_equal_accuracy"),
        "worst_gap_vs_static_within_budget": best("gain_vs_static_within_budget", min),
    }


def write_report(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(markdown_report(report))
    plot_pareto(report, out / "pareto.png")


def manifest_tables(report: dict, static_all: list[dict], test_images: int) -> dict:
    """The accuracy tables the model card serves (``accuracy`` in the manifest)."""
    static_card = [{k: s[k] for k in ("bit_widths", "bitops", "accuracy")} for s in static_all]
    adaptive_card = [
        {k: a[k] for k in ("budget", "mean_bitops", "accuracy")} for a in report.get("adaptive", [])
    ]
    tables: dict = {"static": static_card, "adaptive": adaptive_card, "test_images": test_images}
    if "random_configs" in report:
        tables["random_configs"] = {
            k: v for k, v in report["random_configs"].items() if k != "points"
        }
    if "uniform_ordering" in report:
        tables["uniform_ordering"] = report["uniform_ordering"]
    if "baselines" in report:
        b = report["baselines"]
        keep = ("family", "dear", "threshold", "min_budget", "mean_bitops", "accuracy")
        tables["baselines"] = {
            "confidence_cascade": [{k: r[k] for k in keep} for r in b["confidence_cascade"]],
            "layerwise_cascade": [{k: r[k] for k in keep} for r in b["layerwise_cascade"]],
            "oracle": b["oracle"],
        }
    return tables
