"""``make bench``: the benchmark suite behind ``docs/benchmarks.md``, every figure from one run.

What it does, in order (about 4 minutes with the default 20-second runs on 2 cores):

1. offline batched throughput of the served network (:mod:`loadtest.offline`) on the adaptive
   budget mix, at the server's batch size and at 256;
2. starts ``abn serve`` (batching on, default settings) on a free port; a closed-loop sweep
   over ``--concurrencies``: saturation = the best throughput; at concurrency 32 it also
   gives "batching on" and the adaptive figure; then the same load pinned to the uniform
   configuration whose cost is closest to what adaptive requests spent; then an open loop at
   half the saturation rate for p50/p99; then the server's peak resident memory (VmHWM);
3. starts a second server with ``ABN_MAX_BATCH_SIZE=1`` and runs concurrency 32 against it;
4. offline throughput pinned to that uniform configuration (the policy's cost without HTTP);
5. writes ``docs/benchmarks.md``, the raw reports as JSON and a latency plot next to it.

The generator runs in this process, on the same machine as the server: on a small machine the
two compete for cores, so each run reports the client's CPU share (a client near 100% of a
core caps what the server can show). Speed is measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from abn.errors import DatasetNotFoundError
from abn.store import DEFAULT_MODEL_DIR
from loadtest.machine import cpu_ms_per_request, machine_info
from loadtest.offline import OfflineResult, measure, model_range
from loadtest.plots import plot_report
from loadtest.report import build_report, runs_table, summarize_run
from loadtest.runner import LoadConfig, RunResult, fetch_card, make_client, run_async, run_load
from loadtest.server import ManagedServer
from loadtest.workload import BudgetSpec, Images, ModelRange, Workload
from service.model import ModelLoadError, ServedModel, resolve_device

TARGETS = {
    "service_vs_offline": (">=", 0.60),
    "batching_on_vs_off": (">=", 4.0),
    "adaptive_overhead": ("<=", 0.10),
    "p99_over_p50_half_load": ("<=", 3.0),
}


@dataclass
class BenchConfig:
    model: Path
    data_dir: Path | None
    out: Path  # the Markdown page; raw JSON and the plot go to <out stem>/ next to it
    run_seconds: float = 20.0
    concurrencies: tuple[int, ...] = (8, 32, 128)
    budgets: str = "min,25%,50%,75%,max"
    batch_size: int = 32
    torch_threads: int = 1
    device: str = "auto"
    seed: int = 0
    large_batch: int = 256
    log_dir: Path = field(default_factory=lambda: Path("/tmp/abn-bench-logs"))

    @property
    def artifacts(self) -> Path:
        return self.out.with_suffix("")

    def server_settings(self, **extra: object) -> dict[str, object]:
        return {
            "device": self.device,
            "torch_threads": self.torch_threads,
            "max_batch_size": self.batch_size,
            **extra,
        }


def nearest_uniform(card: dict[str, Any], bitops: float) -> tuple[int, float]:
    """The uniform width whose configuration costs closest to ``bitops``, and its cost."""
    macs = sum(int(layer["macs"]) for layer in card["layers"])
    fixed = float(
        card.get("fixed_bitops", card["min_bitops"] - macs * min(card["bit_candidates"]) ** 2)
    )
    costs = {int(b): fixed + macs * int(b) ** 2 for b in card["bit_candidates"]}
    best = min(costs, key=lambda b: abs(costs[b] - bitops))
    return best, costs[best]


def verdict(name: str, value: float | None) -> str:
    if value is None:
        return "not measured"
    op, target = TARGETS[name]
    ok = value >= target if op == ">=" else value <= target
    return "met" if ok else "**MISSED**"


class Bench:
    """One run of the suite; ``results`` fills up as it goes and is what the page shows."""

    def __init__(self, cfg: BenchConfig) -> None:
        cfg.device = self.device = str(resolve_device(cfg.device))  # servers get the same
        self.cfg = cfg
        self.results: dict[str, Any] = {"config": _jsonable(asdict(cfg)), "device": self.device}
        self.reports: dict[str, dict[str, Any]] = {}

    # -- commands that reproduce each figure on their own -----------------------------------
    def cmd_offline(self, batch_size: int, widths: str | None = None) -> str:
        c = self.cfg
        args = ["python", "-m", "loadtest.offline", "--model", str(c.model), "--device"]
        args += [self.device, "--batch-size", str(batch_size), "--seconds", f"{c.run_seconds:g}"]
        args += ["--torch-threads", str(c.torch_threads), "--seed", str(c.seed)]
        args += ["--budgets", "none" if widths else c.budgets]
        if widths:
            args += ["--widths", widths]
        return shlex.join(args)

    def cmd_serve(self, **extra: object) -> str:
        env = " ".join(f"ABN_{k.upper()}={v}" for k, v in self.cfg.server_settings(**extra).items())
        return f"{env} abn serve --model {shlex.quote(str(self.cfg.model))} --port 8000"

    def cmd_load(self, *load: str, budgets: str | None = None, widths: str | None = None) -> str:
        c = self.cfg
        args = ["python", "-m", "loadtest", "--url", "http://127.0.0.1:8000", *load]
        args += ["--duration", f"{c.run_seconds:g}", "--budgets", budgets or c.budgets]
        args += ["--seed", str(c.seed)]
        if widths:
            args += ["--widths", widths]
        return shlex.join(args)

    # -- the steps ----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        c = self.cfg
        torch.set_num_threads(c.torch_threads)
        self.results["machine"] = machine_info(self.device)
        images = Images.fashion_mnist(c.data_dir)
        model = ServedModel.load(c.model, self.device)
        self.results["model"] = {"name": model.name, "version": model.version, "dir": str(c.model)}
        mr = model_range(model)
        workload = Workload(images, BudgetSpec.parse(c.budgets, mr), (None,), seed=c.seed)
        offline_s = max(2.0, c.run_seconds / 2)
        _say("offline, batch", c.batch_size)
        off = measure(model, workload, batch_size=c.batch_size, seconds=offline_s)
        _say("offline, batch", c.large_batch)
        off_large = measure(model, workload, batch_size=c.large_batch, seconds=offline_s)
        self.results["offline"] = {"batch": asdict(off), "large_batch": asdict(off_large)}

        self._served(images)
        self._unbatched(images)

        bits = self.results["pinned"]["bits"]
        pinned_load = Workload(images, BudgetSpec.parse("none", mr), (str(bits),), seed=c.seed)
        _say("offline pinned to", bits)
        off_pinned = measure(model, pinned_load, batch_size=c.batch_size, seconds=offline_s)
        self.results["offline"]["pinned"] = asdict(off_pinned)
        self._figures(off, off_pinned)
        return self.results

    def _served(self, images: Images) -> None:
        c = self.cfg
        settings = c.server_settings()
        with ManagedServer(c.model, c.log_dir / "batching-on.log", **settings) as server:
            self.results["rss_after_ready_mib"] = server.rss_mib()
            runs, card, pinned_bits = run_async(self._served_runs(server, images))
            self.results["peak_rss_mib"] = server.peak_rss_mib()
        self.results["pinned"] = pinned_bits
        self.reports["batching_on"] = build_report(
            runs["sweep"] + [runs["half"]],
            url="abn serve (batching on)",
            card=card,
            workload={
                "budgets": c.budgets,
                "widths": ["adaptive"],
                "seed": c.seed,
                "images": len(images),
            },
        )
        self.reports["pinned"] = build_report(
            [runs["pinned"]],
            url="abn serve (batching on)",
            card=card,
            workload={
                "budgets": "none",
                "widths": [str(pinned_bits["bits"])],
                "seed": c.seed,
                "images": len(images),
            },
        )
        self.results["sweep"] = [summarize_run(r) for r in runs["sweep"]]
        self.results["half_load"] = summarize_run(runs["half"])
        self.results["pinned_run"] = summarize_run(runs["pinned"])

    async def _measured(
        self, server: ManagedServer, name: str, client: Any, workload: Workload, cfg: LoadConfig
    ) -> RunResult:
        """One load run, with the server's CPU per answered request by thread kept as ``name``."""
        before = server.thread_cpu_seconds()
        result = await run_load(client, workload, cfg)
        after = server.thread_cpu_seconds()
        ok = summarize_run(result)["ok"]
        self.results.setdefault("server_cpu_ms_per_request", {})[name] = cpu_ms_per_request(
            server.pid, before, after, ok
        )
        return result

    async def _served_runs(
        self, server: ManagedServer, images: Images
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        c = self.cfg
        async with make_client(server.url, connections=max(256, *c.concurrencies)) as client:
            card = await fetch_card(client)
            mr_budgets = BudgetSpec.parse(c.budgets, _range(card))
            adaptive = Workload(images, mr_budgets, (None,), seed=c.seed)
            await self._warm_up(client, adaptive)
            sweep: list[RunResult] = []
            for conc in sorted(set(c.concurrencies) | {32}):
                config = LoadConfig("closed", concurrency=conc, duration=c.run_seconds)
                name = f"batching on, adaptive, concurrency {conc}"
                sweep.append(await self._measured(server, name, client, adaptive, config))
            at32 = next(r for r in sweep if r.config.concurrency == 32)
            spent = summarize_run(at32)["bitops"]["mean_used"] or card["max_bitops"]
            bits, cost = nearest_uniform(card, spent)
            pinned = Workload(images, BudgetSpec.parse("none", _range(card)), (str(bits),), c.seed)
            pinned_run = await self._measured(
                server,
                f"batching on, pinned {bits}-bit, concurrency 32",
                client,
                pinned,
                LoadConfig("closed", concurrency=32, duration=c.run_seconds),
            )
            saturation = max(summarize_run(r)["throughput_rps"] for r in sweep)
            half = LoadConfig("open", rate=saturation / 2, duration=c.run_seconds, seed=c.seed)
            half_run = await self._measured(
                server, "batching on, adaptive, half load", client, adaptive, half
            )
        runs = {"sweep": sweep, "pinned": pinned_run, "half": half_run}
        return runs, card, {"bits": bits, "cost": cost, "adaptive_mean_bitops": spent}

    async def _warm_up(self, client: Any, workload: Workload) -> None:
        """Open the connections and fill the server's caches before anything is measured."""
        config = LoadConfig("closed", concurrency=32, duration=min(2.0, self.cfg.run_seconds))
        await run_load(client, workload, config, progress=False)

    def _unbatched(self, images: Images) -> None:
        c = self.cfg
        settings = c.server_settings(max_batch_size=1)
        with ManagedServer(c.model, c.log_dir / "batching-off.log", **settings) as server:
            result = run_async(self._one_closed(server, images, 32))
            self.results["peak_rss_unbatched_mib"] = server.peak_rss_mib()
        self.results["batching_off"] = summarize_run(result)

    async def _one_closed(
        self, server: ManagedServer, images: Images, concurrency: int
    ) -> RunResult:
        async with make_client(server.url, connections=max(256, concurrency)) as client:
            card = await fetch_card(client)
            workload = Workload(
                images,
                BudgetSpec.parse(self.cfg.budgets, _range(card)),
                (None,),
                seed=self.cfg.seed,
            )
            await self._warm_up(client, workload)
            config = LoadConfig("closed", concurrency=concurrency, duration=self.cfg.run_seconds)
            name = f"batching off, adaptive, concurrency {concurrency}"
            return await self._measured(server, name, client, workload, config)

    def _figures(self, off: OfflineResult, off_pinned: OfflineResult) -> None:
        r = self.results
        sweep = r["sweep"]
        best = max(sweep, key=lambda s: s["throughput_rps"])
        at32 = next(s for s in sweep if s["config"]["concurrency"] == 32)
        pinned = r["pinned_run"]
        half = r["half_load"]["latency_ms"]
        r["figures"] = {
            "service_vs_offline": _ratio(best["throughput_rps"], off.images_per_second),
            "batching_on_vs_off": _ratio(
                at32["throughput_rps"], r["batching_off"]["throughput_rps"]
            ),
            "adaptive_overhead": (
                None
                if not at32["throughput_rps"]
                else pinned["throughput_rps"] / at32["throughput_rps"] - 1.0
            ),
            "p99_over_p50_half_load": _ratio(half["p99"], half["p50"]),
            "offline_adaptive_overhead": off_pinned.images_per_second / off.images_per_second - 1,
        }
        r["saturation"] = {
            "throughput_rps": best["throughput_rps"],
            "concurrency": best["config"]["concurrency"],
        }

    # -- the page -----------------------------------------------------------------------------
    def write(self, argv: Sequence[str]) -> Path:
        c = self.cfg
        c.artifacts.mkdir(parents=True, exist_ok=True)
        (c.artifacts / "bench.json").write_text(
            json.dumps({"results": self.results, "reports": self.reports}, indent=2) + "\n"
        )
        plot_report(self.reports["batching_on"], c.artifacts / "latency.png")
        c.out.write_text(render(self, argv))
        return c.out


def render(bench: Bench, argv: Sequence[str]) -> str:
    """``docs/benchmarks.md``."""
    c, r = bench.cfg, bench.results
    f, m, off = r["figures"], r["machine"], r["offline"]
    sat = r["saturation"]
    at32 = next(s for s in r["sweep"] if s["config"]["concurrency"] == 32)
    p = r["pinned"]
    half = r["half_load"]
    half_ms = half["latency_ms"]
    rel = c.artifacts.name
    levels = ",".join(map(str, sorted(set(c.concurrencies) | {32})))
    suite = shlex.join(["python", "-m", "loadtest.bench", *argv])
    rows = [
        (
            "Service throughput at saturation / offline batched throughput",
            "service_vs_offline",
            f"{_x(f['service_vs_offline'], '.2f')} ({sat['throughput_rps']:.0f} req/s at "
            f"concurrency {sat['concurrency']} / {off['batch']['images_per_second']:.0f} img/s "
            f"offline at batch {c.batch_size})",
            ">= 0.60",
        ),
        (
            "Batching on / off (ABN_MAX_BATCH_SIZE=1), concurrency 32",
            "batching_on_vs_off",
            f"{_x(f['batching_on_vs_off'], '.2f')}x ({at32['throughput_rps']:.0f} / "
            f"{r['batching_off']['throughput_rps']:.0f} req/s)",
            ">= 4x",
        ),
        (
            f"Adaptive overhead against pinned uniform {p['bits']}-bit, concurrency 32",
            "adaptive_overhead",
            f"{_x(_pct(f['adaptive_overhead']))} (pinned {r['pinned_run']['throughput_rps']:.0f} "
            f"vs adaptive {at32['throughput_rps']:.0f} req/s; "
            f"{p['cost'] / 1e6:.1f}M vs {p['adaptive_mean_bitops'] / 1e6:.1f}M BitOps)",
            "<= 10%",
        ),
        (
            "p99 / p50 latency at half the saturation rate",
            "p99_over_p50_half_load",
            f"{_x(f['p99_over_p50_half_load'], '.2f')} (p50 {_x(half_ms['p50'], '.1f')} ms, "
            f"p99 {_x(half_ms['p99'], '.1f')} ms at {half['offered_rps']:.0f} req/s)",
            "<= 3",
        ),
    ]
    lines = [
        "# Benchmarks",
        "",
        f"Written by `make bench` (`{suite}`, see `loadtest/bench.py`) on {m['date']}: every "
        "figure below comes from this one run. Model: "
        f"`{r['model']['name']}` {r['model']['version']} from `{r['model']['dir']}`.",
        "",
        "| machine | |",
        "|---|---|",
        f"| CPU | {m['cpu']} |",
        f"| cores | {m['cores']} |",
        f"| device | {r['device']}{' (' + m['gpu'] + ')' if m.get('gpu') else ''} |",
        f"| torch | {m['torch']} (threads: {c.torch_threads}) |",
        f"| Python | {m['python']} |",
        f"| date | {m['date']} |",
        f"| load average at start | {m['load_average']} |",
        "",
        "## Results",
        "",
        "| figure | measured | target | verdict |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {name} | {text} | {target} | {verdict(key, f[key])} |"
        for name, key, text, target in rows
    ]
    lines += [
        f"| Peak resident memory of the server (VmHWM) | {_x(r['peak_rss_mib'], '.0f')} MiB "
        f"({_x(r['rss_after_ready_mib'], '.0f')} MiB once ready; batching off: "
        f"{_x(r['peak_rss_unbatched_mib'], '.0f')} MiB) | - | - |",
        "",
    ]
    missed = [name for name, key, _, _ in rows if verdict(key, f[key]) == "**MISSED**"]
    if missed:
        lines += [
            "**Targets missed in this run:** " + "; ".join(missed) + ". Where the time goes, "
            "what was fixed and the before/after figures: [profiling.md](profiling.md).",
            "",
        ]
    cpu = r.get("server_cpu_ms_per_request") or {}
    if cpu:
        lines += [
            "Server CPU per answered request, by thread (from `/proc/<pid>/task/*/stat` around "
            "each run; the event loop does HTTP, PNG decoding, validation and metrics, the other "
            "threads are the model thread):",
            "",
            "| run | event loop (ms) | other threads (ms) | total (ms) |",
            "|---|---:|---:|---:|",
            *(
                f"| {name} | {v['event_loop']:.2f} | {v['other_threads']:.2f} | {v['total']:.2f} |"
                for name, v in cpu.items()
                if v is not None
            ),
            "",
        ]
    lines += [
        f"Offline, the policy's own cost: pinned uniform {p['bits']}-bit runs at "
        f"{off['pinned']['images_per_second']:.0f} img/s against "
        f"{off['batch']['images_per_second']:.0f} img/s adaptive "
        f"({_pct(f['offline_adaptive_overhead'])}). Offline at batch {c.large_batch}: "
        f"{off['large_batch']['images_per_second']:.0f} img/s.",
        "",
        "## How each figure is measured, and how to reproduce it alone",
        "",
        "The suite starts its own servers on free ports (settings as below) and drives them from "
        "its own process with the load generator; the commands give the same measurement by hand "
        "(`abn serve` in one terminal, the load in another). Budgets: "
        f"`{c.budgets}` (P% = min + P% of the model's BitOps range), each equally likely; images: "
        f"the Fashion-MNIST test set as PNG, seed {c.seed}; runs of {c.run_seconds:g} s after a "
        "2 s warm-up.",
        "",
        "1. **Service / offline.** Saturation is the best throughput of a closed-loop sweep over "
        f"concurrencies {levels}. Offline is "
        "`ServedModel.infer` (the server's own batch call: normalise, policy rollout grouped by "
        f"width, softmax) over batches of {c.batch_size} (the server's ABN_MAX_BATCH_SIZE) of the "
        "same images and budgets, no HTTP or PNG decoding, on the same torch threads.",
        "",
        _code(
            bench.cmd_offline(c.batch_size),
            bench.cmd_serve(),
            bench.cmd_load("--concurrency", levels),
        ),
        "",
        "2. **Batching on / off.** Concurrency 32 against the default server and against one with "
        "ABN_MAX_BATCH_SIZE=1.",
        "",
        _code(bench.cmd_serve(max_batch_size=1), bench.cmd_load("--concurrency", "32")),
        "",
        "3. **Adaptive overhead.** The concurrency-32 adaptive run against the same load pinned "
        f"(X-Bit-Widths: {p['bits']}, no budget header) to the uniform width whose cost is closest "
        "to the mean BitOps the adaptive requests spent. Overhead = pinned throughput / adaptive "
        "throughput - 1.",
        "",
        _code(bench.cmd_load("--concurrency", "32", budgets="none", widths=str(p["bits"]))),
        "",
        "4. **Latency at half load.** Open loop, Poisson arrivals at half the saturation "
        "throughput; latency from each request's scheduled send time.",
        "",
        _code(bench.cmd_load("--rate", format(half["config"]["rate"], ".0f"))),
        "",
        "5. **Peak memory.** VmHWM of `/proc/<server pid>/status` after every run above.",
        "",
        "## Runs",
        "",
        *runs_table(
            [*r["sweep"], half, r["pinned_run"], r["batching_off"]],
            names=[
                *(["batching on, adaptive"] * len(r["sweep"])),
                "batching on, adaptive, half load",
                f"batching on, pinned {p['bits']}-bit",
                "batching off, adaptive",
            ],
        ),
        "",
        "Client CPU is the load generator's share of one core; near 100% means the client, not "
        "the server, limited the run.",
        "",
        f"![latency against offered load, accuracy and BitOps per budget]({rel}/latency.png)",
        "",
        f"Raw reports: [`{rel}/bench.json`]({rel}/bench.json).",
        "",
    ]
    return "\n".join(lines)


def _code(*commands: str) -> str:
    """A fenced block of shell commands, indented to sit inside a numbered list item."""
    return "\n".join(["   ```", *(f"   {c}" for c in commands), "   ```"])


def _range(card: dict[str, Any]) -> ModelRange:
    return ModelRange.from_card(card)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _pct(value: float | None) -> str | None:
    return None if value is None else f"{100 * value:+.1f}%"


def _x(value: Any, fmt: str = "") -> str:
    if value is None:
        return "n/a"
    return format(value, fmt) if fmt else str(value)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}


def _say(*parts: object) -> None:
    print("bench:", *parts, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--data-dir", type=Path, help="Fashion-MNIST IDX directory (default: Debian's)")
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    p.add_argument("--run-seconds", type=float, default=20.0, help="seconds per measured run")
    p.add_argument("--concurrencies", default="8,32,128", help="closed-loop sweep (32 always in)")
    p.add_argument("--budgets", default="min,25%,50%,75%,max")
    p.add_argument("--batch-size", type=int, default=32, help="the servers' ABN_MAX_BATCH_SIZE")
    p.add_argument("--torch-threads", type=int, default=1, help="ABN_TORCH_THREADS and offline")
    p.add_argument("--large-batch", type=int, default=256, help="second offline batch size")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = BenchConfig(
        model=args.model,
        data_dir=args.data_dir,
        out=args.out,
        run_seconds=args.run_seconds,
        concurrencies=tuple(int(x) for x in args.concurrencies.split(",") if x.strip()),
        budgets=args.budgets,
        batch_size=args.batch_size,
        torch_threads=args.torch_threads,
        device=args.device,
        seed=args.seed,
        large_batch=args.large_batch,
    )
    try:
        bench = Bench(cfg)
        bench.run()
    except (DatasetNotFoundError, ModelLoadError) as err:
        print(f"bench: {err}", file=sys.stderr)
        return 2
    except (RuntimeError, TimeoutError) as err:  # a server that would not start or answer
        print(f"bench: {err}", file=sys.stderr)
        return 1
    out = bench.write(argv)
    f = bench.results["figures"]
    for key in TARGETS:
        print(f"{key}: {f[key]} ({verdict(key, f[key])})")
    print(f"wrote {out} and {cfg.artifacts}/")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
