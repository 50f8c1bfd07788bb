"""``make bench``: the service against its peers, side by side, every figure from one run.

What it does (about 10 minutes with the defaults on 2 cores):

1. makes (once) the peers' own environment, ``.venv-peers`` (:mod:`loadtest.peers.venv`);
2. ``--rounds`` rounds; in each, one server at a time, in the same order: ``abn serve`` (its
   defaults, on the CPU), then each peer (:mod:`loadtest.peers`: LitServe with its batching,
   naive FastAPI, the lean floor). Alternating servers round by round cancels drift (another
   job starting, the CPU's clock) out of the ratios. Against each: a short wrk warm-up, then
   wrk (:mod:`loadtest.wrk`) at every ``--concurrencies`` level with every request pinned to
   ``--bits`` in every layer, the same images in the same order. The service also gets the
   budget mix (adaptive) and the same images pinned to the uniform width whose cost is
   closest to what the adaptive requests spent, back to back at concurrency 32;
3. in the first round, before wrk, the Python generator (:mod:`loadtest.runner`) sends the
   budget mix to the service: it reads every answer, so it gives accuracy and BitOps per
   budget, which wrk cannot (its throughput is not a figure: it costs ~0.7 ms of CPU a request);
4. for every run: throughput and p50/p99 from wrk, the server's CPU per request and cores used
   summed over its whole process tree from ``/proc``, the client's CPU per request from
   ``wait4``; per server, the peak resident memory summed over its processes;
5. writes ``docs/benchmarks.md`` (:mod:`loadtest.bench_page`), ``bench.json`` and the plot.

Speed is measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from abn.errors import ABNError, DatasetNotFoundError
from abn.store import DEFAULT_MODEL_DIR, open_model_dir
from loadtest import bench_figures as bf
from loadtest.bench_page import render
from loadtest.machine import machine_info, usable_cores
from loadtest.peers.registry import JSON_BASE64, PEERS, PNG, PeerServer, parse_peers
from loadtest.peers.venv import PeerEnvironmentError, ensure_environment, missing_modules
from loadtest.plots import plot_report
from loadtest.proctree import snapshot, tree_memory_mib, usage_between
from loadtest.report import build_report, summarize_run
from loadtest.runner import LoadConfig, fetch_card, make_client, run_async, run_load
from loadtest.server import ManagedServer, parse_settings
from loadtest.workload import BudgetSpec, Images, ModelRange, Workload, budget_header
from loadtest.wrk import run_wrk, write_request_set


@dataclass
class BenchConfig:
    model: Path
    data_dir: Path | None
    out: Path  # the Markdown page; raw JSON and the plot go to <out stem>/ next to it
    run_seconds: float = 10.0
    warmup_seconds: float = 2.0
    warmup_connections: int = 32
    rounds: int = 2
    concurrencies: tuple[int, ...] = (1, 32, 128)
    budgets: str = "min,25%,50%,75%,max"
    bits: int = 4
    torch_threads: int = 1
    seed: int = 0
    peers: tuple[str, ...] = tuple(PEERS)
    peers_venv: Path = Path(".venv-peers")
    generator_concurrency: int = 8
    requests: int = 1000  # distinct requests wrk cycles through
    settings: dict[str, str] = field(default_factory=dict)  # the service's extra ABN_* settings
    work_dir: Path = Path("/tmp/abn-bench")

    @property
    def artifacts(self) -> Path:
        return self.out.with_suffix("")

    def service_settings(self) -> dict[str, str]:
        return {"ABN_DEVICE": "cpu", "ABN_TORCH_THREADS": str(self.torch_threads), **self.settings}


def nearest_uniform(card: dict[str, Any], bitops: float) -> tuple[int, float]:
    """The uniform width whose configuration costs closest to ``bitops``, and its cost."""
    macs = sum(int(layer["macs"]) for layer in card["layers"])
    fixed = float(
        card.get("fixed_bitops", card["min_bitops"] - macs * min(card["bit_candidates"]) ** 2)
    )
    costs = {int(b): fixed + macs * int(b) ** 2 for b in card["bit_candidates"]}
    best = min(costs, key=lambda b: abs(costs[b] - bitops))
    return best, costs[best]


class Bench:
    """One run of the suite; ``results`` fills up as it goes and is what the page shows."""

    def __init__(self, cfg: BenchConfig) -> None:
        self.cfg = cfg
        self.results: dict[str, Any] = {"config": _jsonable(asdict(cfg)), "runs": []}
        self.reports: dict[str, dict[str, Any]] = {}
        self.listings: dict[str, Path] = {}
        self.peak_rss: dict[str, float | None] = {}
        self.peer_python: dict[str, Path] = {}

    def run(self) -> dict[str, Any]:
        c = self.cfg
        self.results["machine"] = machine_info("cpu")
        self.images = Images.fashion_mnist(c.data_dir)
        shutil.rmtree(c.work_dir, ignore_errors=True)
        self._peer_environment()
        for round_index in range(c.rounds):
            self._service_round(round_index)
            for name in c.peers:
                if name in self.peer_python:
                    self._peer_round(name, round_index)
        self.results["load_average_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        means = bf.mean_runs(self.results["runs"])
        self.results["means"] = [
            {"server": s, "load": load, "connections": n, **m} for (s, load, n), m in means.items()
        ]
        self.results["peak_rss_mib"] = self.peak_rss
        self.results["figures"] = bf.figures(means, self.peak_rss)
        return self.results

    # -- the servers --------------------------------------------------------------------------
    def _peer_environment(self) -> None:
        """Where each peer runs; a peer that cannot run is recorded with the reason."""
        c = self.cfg
        status: dict[str, str] = {}
        self.results["peers"] = status
        if not c.peers:
            return
        wanted = {m for name in c.peers for m in PEERS[name].imports}
        try:
            python = ensure_environment(c.peers_venv, wanted, c.work_dir / "peers-pip.log")
        except PeerEnvironmentError as err:
            _say(f"peers' environment: {err}")
            python, status["environment error"] = Path(sys.executable), str(err).splitlines()[0]
        for name in c.peers:
            missing = missing_modules(python, PEERS[name].imports)
            if missing:
                status[name] = f"not measured: {python} cannot import {', '.join(missing)}"
            else:
                self.peer_python[name] = python
                status[name] = f"measured, run by {python}"

    def _service_round(self, round_index: int) -> None:
        c = self.cfg
        _say(f"round {round_index + 1}: abn serve")
        log = c.work_dir / f"service-{round_index}.log"
        with ManagedServer(c.model, log, **c.service_settings()) as server:
            card = httpx.get(server.url + "/v1/model", timeout=10).json()
            if not self.listings:
                self.results["model"] = {
                    "name": card["name"],
                    "version": card["version"],
                    "backend": card["backend"],
                }
                self._write_request_sets(card)
            self._wrk(
                server, "service", bf.PINNED, "pinned-png", c.warmup_seconds, c.warmup_connections
            )
            if round_index == 0:
                self._accuracy_run(server, card)
            for conc in c.concurrencies:
                self._measure(server, "service", bf.PINNED, "pinned-png", conc, round_index)
            for load in (bf.ADAPTIVE, bf.PINNED_NEAREST):
                self._measure(server, "service", load, load, bf.CONCURRENCY_ADAPTIVE, round_index)
            self._keep_peak("service", server)

    def _peer_round(self, name: str, round_index: int) -> None:
        c = self.cfg
        peer = PEERS[name]
        _say(f"round {round_index + 1}: {name}")
        server = PeerServer(
            peer,
            self.peer_python[name],
            c.model,
            c.work_dir / f"{name}-{round_index}.log",
            bits=c.bits,
            torch_threads=c.torch_threads,
            workers=usable_cores(),
        )
        listing = "pinned-json" if peer.body == JSON_BASE64 else "pinned-png"
        self.results.setdefault("commands", {})[name] = server.shell_command()
        try:
            with server:
                self._wrk(server, name, bf.PINNED, listing, c.warmup_seconds, c.warmup_connections)
                for conc in c.concurrencies:
                    self._measure(server, name, bf.PINNED, listing, conc, round_index)
                self._keep_peak(name, server)
        except (RuntimeError, TimeoutError) as err:  # one peer failing leaves the others
            _say(f"{name} failed: {err}")
            reason = str(err).splitlines()[0]
            self.results["peers"][name] = f"failed in round {round_index + 1}: {reason}"
            del self.peer_python[name]

    def _keep_peak(self, name: str, server: ManagedServer) -> None:
        peak = tree_memory_mib(server.pid, "VmHWM")
        if peak is not None:
            self.peak_rss[name] = max(peak, self.peak_rss.get(name) or 0.0)

    # -- the load -----------------------------------------------------------------------------
    def _wrk(
        self,
        server: ManagedServer,
        name: str,
        load: str,
        listing: str,
        seconds: float,
        conc: int,
    ) -> dict[str, Any]:
        before = snapshot(server.pid, time.monotonic())
        result = run_wrk(server.url + "/classify", self.listings[listing], conc, seconds)
        usage = usage_between(before, snapshot(server.pid, time.monotonic()))
        return {
            "server": name,
            "load": load,
            **result.to_dict(),
            "server_cpu_s": usage.cpu_seconds,
            "server_cores": usage.cores,
            "server_processes": usage.processes,
            "server_cpu_ms_per_request": 1000 * usage.cpu_seconds / result.ok
            if result.ok
            else None,
        }

    def _measure(
        self, server: ManagedServer, name: str, load: str, listing: str, conc: int, rnd: int
    ) -> None:
        _say(f"  {name}, {load}, concurrency {conc}")
        run = self._wrk(server, name, load, listing, self.cfg.run_seconds, conc)
        self.results["runs"].append({**run, "round": rnd})

    def _accuracy_run(self, server: ManagedServer, card: dict[str, Any]) -> None:
        """The budget mix through the Python generator: accuracy and BitOps per budget, and the
        mean BitOps that picks the pinned-nearest width."""
        c = self.cfg
        _say("  accuracy and BitOps per budget (Python generator)")
        workload = self._workload(card)
        config = LoadConfig("closed", concurrency=c.generator_concurrency, duration=c.run_seconds)

        async def go() -> Any:
            async with make_client(server.url, connections=c.generator_concurrency) as client:
                await fetch_card(client)
                return await run_load(client, workload, config, progress=False)

        result = run_async(go())
        spent = summarize_run(result)["bitops"]["mean_used"] or card["max_bitops"]
        bits, cost = nearest_uniform(card, spent)
        self.results["pinned_nearest"] = {"bits": bits, "cost": cost, "adaptive_mean_bitops": spent}
        self.reports["accuracy"] = build_report(
            [result],
            url="abn serve",
            card=card,
            workload={"budgets": c.budgets, "widths": ["adaptive"], "seed": c.seed},
        )
        self.listings[bf.PINNED_NEAREST] = self._request_set(
            bf.PINNED_NEAREST, card, PNG, pinned=str(bits)
        )

    # -- what is sent -------------------------------------------------------------------------
    def _workload(self, card: dict[str, Any]) -> Workload:
        budgets = BudgetSpec.parse(self.cfg.budgets, ModelRange.from_card(card))
        return Workload(self.images, budgets, (None,), seed=self.cfg.seed)

    def _write_request_sets(self, card: dict[str, Any]) -> None:
        bits = str(self.cfg.bits)
        self.listings["pinned-png"] = self._request_set("pinned-png", card, PNG, pinned=bits)
        self.listings["pinned-json"] = self._request_set("pinned-json", card, JSON_BASE64, bits)
        self.listings[bf.ADAPTIVE] = self._request_set(bf.ADAPTIVE, card, PNG, pinned=None)
        # the pinned-nearest set is written once the adaptive requests' mean cost is known

    def _request_set(self, name: str, card: dict[str, Any], body: str, pinned: str | None) -> Path:
        """The first ``requests`` of the seeded workload: same images, same order for every
        server; pinned ones carry ``X-Bit-Widths``, adaptive ones their budget."""
        workload = self._workload(card)
        items = []
        for i in range(self.cfg.requests):
            plan = workload.plan(i)
            png = self.images.png(plan.image)
            headers = {"Content-Type": "image/png"}
            if pinned is not None:
                headers["X-Bit-Widths"] = pinned
            elif plan.budget is not None:
                headers["X-BitOps-Budget"] = budget_header(plan.budget)
            if body == JSON_BASE64:
                png = json.dumps({"image": base64.b64encode(png).decode()}).encode()
                headers["Content-Type"] = "application/json"
            items.append((png, headers))
        return write_request_set(self.cfg.work_dir / name, items)

    # -- the page -----------------------------------------------------------------------------
    def write(self, argv: Sequence[str]) -> Path:
        c = self.cfg
        c.artifacts.mkdir(parents=True, exist_ok=True)
        (c.artifacts / "bench.json").write_text(
            json.dumps({"results": self.results, "reports": self.reports}, indent=2) + "\n"
        )
        plot_report(self.reports["accuracy"], c.artifacts / "accuracy.png")
        c.out.write_text(render(self.results, self.reports, argv, c.artifacts.name))
        return c.out


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}


def _say(*parts: object) -> None:
    print("bench:", *parts, file=sys.stderr, flush=True)


def _positive_ints(text: str) -> tuple[int, ...]:
    values = tuple(int(x) for x in text.split(",") if x.strip())
    if not values or min(values) < 1:
        raise ValueError
    return values


def _parser() -> argparse.ArgumentParser:
    d = BenchConfig(model=DEFAULT_MODEL_DIR, data_dir=None, out=Path("docs/benchmarks.md"))
    p = argparse.ArgumentParser(
        prog="python -m loadtest.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", type=Path, default=d.model)
    p.add_argument("--data-dir", type=Path, help="Fashion-MNIST IDX directory (default: Debian's)")
    p.add_argument("--out", type=Path, default=d.out)
    p.add_argument(
        "--run-seconds", type=float, default=d.run_seconds, help="seconds per measured run"
    )
    p.add_argument(
        "--warmup-seconds", type=float, default=d.warmup_seconds, help="wrk warm-up per server"
    )
    p.add_argument("--rounds", type=int, default=d.rounds, help="every server once per round")
    p.add_argument("--concurrencies", default=",".join(map(str, d.concurrencies)))
    p.add_argument("--budgets", default=d.budgets, help="the adaptive budget mix")
    p.add_argument("--bits", type=int, default=d.bits, help="the uniform width of pinned requests")
    p.add_argument(
        "--torch-threads", type=int, default=d.torch_threads, help="every server's torch threads"
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--peers", default=",".join(d.peers), help=f"of {', '.join(PEERS)}; or none")
    p.add_argument("--peers-venv", type=Path, default=d.peers_venv)
    p.add_argument("--generator-concurrency", type=int, default=d.generator_concurrency)
    p.add_argument("--requests", type=int, default=d.requests, help="distinct requests wrk cycles")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an ABN_* setting of the service, e.g. --set workers=2 (repeatable)",
    )
    p.add_argument("--work-dir", type=Path, default=d.work_dir)
    return p


def parse_config(argv: Sequence[str]) -> BenchConfig:
    """The options as a config; a mistake is one line and exit code 2 (argparse's ``error``)."""
    p = _parser()
    args = p.parse_args(argv)
    try:
        concurrencies = _positive_ints(args.concurrencies)
    except ValueError:
        p.error(f"--concurrencies {args.concurrencies!r}: positive integers, e.g. 1,32,128")
    try:
        peers = parse_peers(args.peers)
        settings = parse_settings(args.set)
    except ValueError as err:
        p.error(str(err))
    try:
        widths = open_model_dir(args.model).spec.bit_candidates
    except (ABNError, OSError, ValueError) as err:
        p.error(f"--model {args.model}: {err}")
    if args.bits not in widths:
        p.error(f"--bits {args.bits}: the model has widths {', '.join(map(str, widths))}")
    for name in ("run_seconds", "rounds", "requests", "generator_concurrency", "torch_threads"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    return BenchConfig(
        model=args.model,
        data_dir=args.data_dir,
        out=args.out,
        run_seconds=args.run_seconds,
        warmup_seconds=args.warmup_seconds,
        rounds=args.rounds,
        concurrencies=concurrencies,
        budgets=args.budgets,
        bits=args.bits,
        torch_threads=args.torch_threads,
        seed=args.seed,
        peers=peers,
        peers_venv=args.peers_venv,
        generator_concurrency=args.generator_concurrency,
        requests=args.requests,
        settings=settings,
        work_dir=args.work_dir,
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = parse_config(argv)
    bench = Bench(cfg)
    try:
        bench.run()
    except DatasetNotFoundError as err:
        print(f"bench: {err}", file=sys.stderr)
        return 2
    except (RuntimeError, TimeoutError) as err:  # a server or wrk that would not start or answer
        print(f"bench: {err}", file=sys.stderr)
        return 1
    out = bench.write(argv)
    for key, target in bf.TARGETS.items():
        value = bench.results["figures"][key]
        print(f"{key}: {value} ({target.verdict(value)})")
    print(f"wrote {out} and {cfg.artifacts}/")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
