"""The report's PNG: latency against offered load, accuracy and BitOps per budget group.

Matplotlib with the Agg backend (no display needed); one figure, three panels, so a single
image in the Markdown tells the whole story.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend


def _latency_panel(ax: Any, runs: list[dict[str, Any]]) -> None:
    if len(runs) > 1:
        x = [r["offered_rps"] for r in runs]
        for p, style in (("p50", "o-"), ("p90", "s-"), ("p95", "^-"), ("p99", "v-")):
            ax.plot(x, [r["latency_ms"][p] or float("nan") for r in runs], style, label=p)
        ax.set_xlabel("offered load (req/s)")
        ax.set_title("latency against offered load")
        ax.legend()
    else:
        lat = runs[0]["latency_ms"] if runs else {}
        names = ["p50", "p90", "p95", "p99", "max"]
        ax.bar(names, [lat.get(n) or 0.0 for n in names], color="tab:blue")
        ax.set_title(f"latency ({runs[0]['config']['label']})" if runs else "latency")
    ax.set_ylabel("latency (ms)")
    ax.grid(True, alpha=0.3)


def _groups_panels(ax_acc: Any, ax_bits: Any, groups: list[dict[str, Any]]) -> None:
    names = [g["group"].removeprefix("budget ") for g in groups]
    pos = list(range(len(groups)))
    ax_acc.bar(pos, [100 * (g["accuracy"] or 0.0) for g in groups], color="tab:green")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.set_title("accuracy per budget")
    width = 0.4
    ax_bits.bar(
        [p - width / 2 for p in pos],
        [(g["mean_budget"] or 0.0) / 1e6 for g in groups],
        width,
        label="budget",
        color="tab:gray",
    )
    ax_bits.bar(
        [p + width / 2 for p in pos],
        [(g["mean_used"] or 0.0) / 1e6 for g in groups],
        width,
        label="used",
        color="tab:orange",
    )
    ax_bits.set_ylabel("BitOps per image (millions)")
    ax_bits.set_title("BitOps used against budget")
    ax_bits.legend()
    for ax in (ax_acc, ax_bits):
        ax.set_xticks(pos, names, rotation=30, ha="right", fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)


def plot_report(report: dict[str, Any], path: Path) -> Path:
    """Write the three-panel PNG for ``report`` (see :mod:`loadtest.report`) to ``path``."""
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    _latency_panel(axes[0], report["runs"])
    _groups_panels(axes[1], axes[2], report["groups_all_runs"])
    model = report.get("model", {})
    fig.suptitle(f"{model.get('name')} {model.get('version')} - {report.get('url')}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
