"""docs/bitserial.md from one run of :mod:`loadtest.bitserial`: tables, targets, the plot.

Nothing here measures: it turns the run's results (also written as ``bench.json``) into the
page, so every figure on it comes from that run, and ``python -m loadtest.bitserial_page
docs/bitserial/bench.json`` rebuilds the page from the JSON alone. The exactness figures are
``scripts/bitserial_exactness.py``'s, read from its JSON when there.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (after choosing the backend)

ARTIFACTS = "bitserial"  # docs/bitserial/: the JSON, the plot, the exactness page
TOP1_TARGET = 0.9995


def _uniform(results: dict, backend: str, bits: int, batch: int, clock: str = "wall_ms") -> float:
    rows = results["offline"]["uniform"]
    return next(
        r[clock] for r in rows if (r["backend"], r["bits"], r["batch"]) == (backend, bits, batch)
    )


def uniform_table(results: dict) -> list[str]:
    bits = sorted({r["bits"] for r in results["offline"]["uniform"]})
    cost = {r["bits"]: r["bitops"] for r in results["offline"]["uniform"]}
    lines = [
        "Milliseconds per image, median; each clock's ratios: bit-serial against its own all-8 "
        "time and against the float path at the same width.",
        "",
        "| widths | BitOps | batch | float wall | bit-serial wall | / its 8-bit | / float | "
        "float CPU | bit-serial CPU | / its 8-bit | / float |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for batch in (1, 32):
        cells = []
        for b in bits:
            row = f"| all {b}-bit | {cost[b] / 1e6:.1f}M | {batch} |"
            for clock in ("wall_ms", "cpu_ms"):
                own8 = _uniform(results, "bitserial", max(bits), batch, clock)
                f = _uniform(results, "float", b, batch, clock)
                s = _uniform(results, "bitserial", b, batch, clock)
                row += f" {f:.3f} | {s:.3f} | {s / own8:.2f} | {s / f:.2f} |"
            cells.append(row)
        lines += cells
    return lines


def adaptive_table(results: dict) -> list[str]:
    off = results["offline"]
    lines = [
        "Batches of 32 test images, every image of a batch at the same budget, through the "
        "policy; milliseconds per image, median.",
        "",
        "| budget | float: BitOps spent | wall | CPU | bit-serial: BitOps spent | wall | CPU |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by = {(p["backend"], p["budget"]): p for p in off["adaptive"]}
    for budget in sorted({p["budget"] for p in off["adaptive"]}):
        f, s = by[("float", budget)], by[("bitserial", budget)]
        lines.append(
            f"| {budget / 1e6:.1f}M | {f['mean_bitops'] / 1e6:.1f}M | {f['wall_ms']:.3f} | "
            f"{f['cpu_ms']:.3f} | {s['mean_bitops'] / 1e6:.1f}M | {s['wall_ms']:.3f} | "
            f"{s['cpu_ms']:.3f} |"
        )
    lines += ["", *fit_lines(off["fits"], "adaptive"), ""]
    lines += [
        "The float path's time rises with the BitOps spent too: at higher budgets the policy's "
        "last decision re-runs later blocks, a second pass that costs the float path as much "
        "at any width. The uniform widths below change nothing but the widths:",
        "",
        *fit_lines(off["fits"], "uniform"),
    ]
    return lines


def fit_lines(fits: dict, kind: str) -> list[str]:
    lines = []
    for name, fit in fits.items():
        if not name.startswith(kind):
            continue
        lines.append(
            f"- {name}: ms/image = {fit['intercept_ms']:.3f} + "
            f"{fit['slope_ms_per_gbitop']:.3f} x GBitOps (R² {fit['r_squared']:.2f}); the part "
            f"proportional to BitOps is {100 * fit['share_at_low']:.0f} % of the fitted time at "
            f"{fit['bitops_low'] / 1e6:.1f}M BitOps and {100 * fit['share_at_high']:.0f} % at "
            f"{fit['bitops_high'] / 1e6:.1f}M."
        )
    return lines


def served_summary(results: dict) -> dict[tuple[str, str], dict[str, float]]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in results.get("served", []):
        groups.setdefault((row["backend"], row["load"]), []).append(row)
    return {
        k: {
            "rps": statistics.mean(r["throughput_rps"] for r in rows),
            "p50": statistics.mean(r["latency_ms"]["p50"] for r in rows),
            "p99": statistics.mean(r["latency_ms"]["p99"] for r in rows),
            "errors": sum(sum(r["errors"].values()) for r in rows),
        }
        for k, rows in groups.items()
    }


def served_table(results: dict) -> list[str]:
    summary = served_summary(results)
    if not summary:
        return ["Not measured in this run (`--no-served`)."]
    conns = results["served"][0]["connections"]
    lines = [
        f"wrk, {conns} connections, closed loop, mean over the rounds; `abn serve` with its "
        "defaults (one worker per core, one torch thread each).",
        "",
        "| backend | load | req/s | p50 ms | p99 ms | errors |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for (backend, load), s in sorted(summary.items()):
        lines.append(
            f"| {backend} | {load} | {s['rps']:.0f} | {s['p50']:.1f} | {s['p99']:.1f} | "
            f"{s['errors']} |"
        )
    points = [p for p in results["offline"]["adaptive"] if p["backend"] == "bitserial"]
    cheap = min(points, key=lambda p: p["budget"])
    dear = max(points, key=lambda p: p["budget"])
    lines += [
        "",
        "At a fixed number of connections p50 follows the CPU each request costs, and only the "
        "model's part of it depends on the budget: in the adaptive batches above the bit-serial "
        f"model took {cheap['cpu_ms']:.3f} ms of CPU per image at the cheapest budget and "
        f"{dear['cpu_ms']:.3f} ms at the dearest (where the policy spends "
        f"{dear['mean_bitops'] / 1e6:.0f}M BitOps on average, not the "
        f"{results['offline']['max_bitops'] / 1e6:.0f}M it may). Receiving, decoding and "
        "answering a request, and the batcher, cost the same at every budget and narrow the "
        "ratio.",
    ]
    return lines


def exactness(out: Path) -> dict | None:
    path = out / ARTIFACTS / "exactness.json"
    return json.loads(path.read_text()) if path.is_file() else None


def targets(results: dict, out: Path) -> list[str]:
    """Each target with its wall-clock figure (the verdict) and the CPU-time one beside it."""
    rows = []

    def both(fn) -> tuple[float, float]:
        return fn("wall_ms"), fn("cpu_ms")

    def u(backend: str, bits: int):
        return lambda clock: _uniform(results, backend, bits, 32, clock)

    r28 = both(lambda c: u("bitserial", 2)(c) / u("bitserial", 8)(c))
    rows.append(("all-2 / all-8, bit-serial, batch 32", r28, "<= 0.25", r28[0] <= 0.25))
    for b in (1, 2):
        r = both(lambda c, b=b: u("bitserial", b)(c) / u("float", b)(c))
        rows.append((f"all-{b} bit-serial / float, batch 32", r, "< 1", r[0] < 1))
    lines = [
        "| figure | measured (wall) | CPU time | target | verdict |",
        "|---|---:|---:|---:|---|",
    ]
    lines += [
        f"| {a} | {m[0]:.3f} | {m[1]:.3f} | {t} | {'met' if ok else '**MISSED**'} |"
        for a, m, t, ok in rows
    ]
    summary = served_summary(results)
    if ("bitserial", "cheapest") in summary:
        cheap, dear = summary[("bitserial", "cheapest")], summary[("bitserial", "dearest")]
        ratio = cheap["p50"] / dear["p50"]
        verdict = "met" if ratio <= 0.6 else "**MISSED**"
        lines.append(
            f"| served p50, cheapest / dearest budget (bit-serial, same connections) | "
            f"{ratio:.2f} ({cheap['p50']:.1f} / {dear['p50']:.1f} ms) | | <= 0.6 | {verdict} |"
        )
    exact = exactness(out)
    if exact:
        worst = min(r["top1_agree"] / r["images"] for r in exact["rows"])
        verdict = "met" if worst >= TOP1_TARGET else "**MISSED**"
        lines.append(
            f"| same top-1 as float, worst of {len(exact['rows'])} configurations on "
            f"{exact['meta']['images']} test images | {100 * worst:.2f} % | | >= 99.95 % | "
            f"{verdict} |"
        )
    return lines


def plot(results: dict, path: Path) -> None:
    off = results["offline"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, clock in zip(axes, ("wall", "cpu"), strict=True):
        for backend, colour in (("float", "tab:grey"), ("bitserial", "tab:blue")):
            pts = [p for p in off["adaptive"] if p["backend"] == backend]
            x = [p["mean_bitops"] / 1e6 for p in pts]
            y = [p[f"{clock}_ms"] for p in pts]
            ax.scatter(x, y, color=colour, label=f"{backend}, adaptive")
            uni = [r for r in off["uniform"] if r["backend"] == backend and r["batch"] == 32]
            ax.scatter(
                [r["bitops"] / 1e6 for r in uni],
                [r[f"{clock}_ms"] for r in uni],
                color=colour,
                marker="x",
                label=f"{backend}, uniform widths",
            )
            for kind, style in (("adaptive", "-"), ("uniform", "--")):
                fit = off["fits"][f"{kind} {backend} {clock}"]
                xs = [fit["bitops_low"] / 1e6, fit["bitops_high"] / 1e6]
                ys = [fit["intercept_ms"] + fit["slope_ms_per_gbitop"] * v / 1e3 for v in xs]
                ax.plot(xs, ys, color=colour, linewidth=1, linestyle=style)
        ax.set_title(f"{clock} time per image (batch 32, one thread; lines: fits)")
        ax.set_xlabel("BitOps per image (M)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("ms per image")
    axes[0].set_ylim(bottom=0)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def profile_table(results: dict) -> list[str]:
    profile = results["offline"].get("profile")
    if not profile:
        return []
    widths = sorted(profile, key=int)
    names = list(profile[widths[0]])
    lines = [
        "CPU milliseconds per image, batch 32, bit-serial backend: each switchable layer rerun "
        "on the input it saw in a real pass (one kernel call: quantize, pack, popcount GEMM, "
        "BN), and the rest of the call (float stem, ReLUs and residual sums, pooling, "
        "classifier, softmax, the per-layer Python of the layer-by-layer run).",
        "",
        "| part | " + " | ".join(f"all {w}-bit" for w in widths) + " |",
        "|---|" + "---:|" * len(widths),
    ]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(f"{profile[w][name]:.4f}" for w in widths) + " |")
    totals = " | ".join(f"{sum(profile[w].values()):.4f}" for w in widths)
    lines.append(f"| **total** | {totals} |")
    return lines


def header(results: dict) -> list[str]:
    start, end = results["machine"]["start"], results["machine"]["end"]
    return [
        "# The bit-serial backend: does the budget buy time?",
        "",
        f"Written by `{results['command']}` on {start['date']}; every figure below comes from "
        "this one run. Timings interleave their cells in a random order per round (medians), so"
        " ratios within a table are the figures to trust on a shared machine.",
        "",
        "| machine | |",
        "|---|---|",
        f"| CPU | {start['cpu']} |",
        f"| cores | {start['cores']} |",
        f"| torch | {start['torch']} |",
        f"| load average at start / end | {start['load_average']} / {end['load_average']} |",
        "",
    ]


ABOUT = [
    "## What it is",
    "",
    "`ABN_BACKEND=bitserial` runs the eight switchable layers of the served model on a C++ "
    "kernel (`abn/bitserial/csrc/bitserial.cpp`) whose work is proportional to the BitOps the "
    "budget counts; the stem, the classifier (both fixed at 8 bits), the policy, ReLUs, "
    "residual sums and pooling stay in torch. The default, `ABN_BACKEND=auto`, serves "
    "`mixed` where this kernel runs: each layer's call on whichever of this kernel and the "
    "float path measured faster at start for its width and group size "
    "([backends.md](backends.md)); this page compares the kernel at every width with float.",
    "",
    "- **At load**, every width's weight levels (the quantizer's own integers, "
    "`SwitchableWeightQuantizer.integer_levels`) are offset-encoded, `level = alpha * u + "
    "beta` with `u` unsigned (`b >= 2` bits: `u = level + 2^(b-1)`; 1 bit, levels -1/+1: "
    "`alpha = 2`, `beta = -1`), and packed into `b` bit-planes, one bit row per output "
    "channel in (kernel row, kernel column, channel) order. Each (input width, width) "
    "BatchNorm pair becomes one per-channel scale (times both quantizer steps) and shift.",
    "- **Per layer and width group**, the float input is quantized to levels exactly as the "
    "float path does (`clamp(x / step, 0, high)`, round half to even) into a zero-bordered "
    "NHWC byte map (the input is read channels-last, the CPU path's layout; level 0 is 0.0, "
    "so the conv's zero padding is exact); each output "
    "position's receptive field becomes one bit row per activation plane, one VPTESTMB per 64 "
    "levels; the popcount GEMM sums `2^(i+j) popcount(A_i AND U_j)` over the rows, eight "
    "output positions per 512-bit VPOPCNTQ, then `dot = alpha * sum + beta * sum(a)` and "
    "`y = dot * scale[pair] + shift[pair]`, written channels-last. A `b x b`-bit layer costs "
    "`b^2` "
    "binary GEMMs: the BitOps, plus fixed costs per layer (quantize, pack, the BN epilogue).",
    "- **Grouping** is the served path's: samples are grouped by width per layer and each "
    "group is one kernel call; every sample has its own BN pair.",
    "- **Built at install**: `make venv` (`scripts/apt-install.sh g++`, then `python -m "
    "abn.bitserial`) and the Dockerfile's builder stage compile two libraries into "
    "`abn/bitserial/_build/`, named by the hash of source and flags: the AVX-512 kernel "
    "(F/BW/DQ + VPOPCNTDQ) and a portable POPCNT one. A wheel carries the source and compiles "
    "on first use (seconds) into `_build/` or `~/.cache/abn-serve/bitserial`.",
    "- **Refused** at start, with the reason, where the CPU lacks one of `avx512f avx512bw "
    "avx512dq avx512_vpopcntdq` (read from `/proc/cpuinfo`): `ABN_BACKEND=bitserial: the "
    "bit-serial backend's avx512 kernel needs the CPU features avx512_vpopcntdq (this CPU "
    "lacks); use ABN_BACKEND=float on this machine`, and on a GPU (`ABN_DEVICE=cpu` is "
    "needed). The portable kernel computes the same and runs the tests anywhere; it is not "
    "served (slower than float).",
    "- **Exactness**: the same integers as the fake-quantized path; the logits are identical "
    "unless an activation lies within float rounding of a rounding boundary "
    f"([{ARTIFACTS}/exactness.md]({ARTIFACTS}/exactness.md)).",
    "",
]


def write_page(out: Path, results: dict[str, Any]) -> Path:
    artifacts = out / ARTIFACTS
    artifacts.mkdir(parents=True, exist_ok=True)
    (artifacts / "bench.json").write_text(json.dumps(results, indent=1, default=str))
    plot(results, artifacts / "latency_vs_bitops.png")
    lines = header(results) + ABOUT
    lines += ["## Targets (issue 18)", "", *targets(results, out), ""]
    lines += ["## Latency per uniform width", "", *uniform_table(results), ""]
    lines += ["## Adaptive requests: time against the BitOps spent", "", *adaptive_table(results)]
    lines += ["", f"![latency against BitOps]({ARTIFACTS}/latency_vs_bitops.png)", ""]
    lines += ["## Where the time goes", "", *profile_table(results), ""]
    lines += ["## Served, at saturation", "", *served_table(results), ""]
    if exactness(out):
        lines += [
            f"Exactness against the float path: [{ARTIFACTS}/exactness.md]"
            f"({ARTIFACTS}/exactness.md).",
            "",
        ]
    page = out / "bitserial.md"
    page.write_text("\n".join(lines))
    return page


def main(argv: list[str] | None = None) -> int:
    """Rebuild the page (into the JSON's grandparent, ``docs/``) from a run's ``bench.json``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not Path(args[0]).is_file():
        print("usage: python -m loadtest.bitserial_page docs/bitserial/bench.json", file=sys.stderr)
        return 2
    path = Path(args[0])
    print(write_page(path.parent.parent, json.loads(path.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
