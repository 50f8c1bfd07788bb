"""What ~2,000 slow connections cost the server: CPU per slow connection, and the cyclic
garbage collector's pauses in each worker (docs/operations.md, Slow and vanishing clients).

Starts ``abn serve`` (the shipped model) with ``scripts/gc_probe`` loaded into its processes,
lets ``loadtest.slow_clients`` open the connections (at nice 19, so they take only what the
server leaves), and over ``--seconds`` after the ramp reads the server's CPU and the probe's
collection counts. No other traffic: what is measured is the flood alone. ``--checkout DIR``
serves another checkout's code (a ``git worktree``) with the same tools, to compare::

    python scripts/flood_gc.py --set torch_threads=1 [--checkout /tmp/wt-old]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from abn.store import DEFAULT_MODEL_DIR
from loadtest.flood import start_slow_clients
from loadtest.proctree import process_tree, snapshot, usage_between
from loadtest.server import ManagedServer, parse_settings

PROBE = Path(__file__).resolve().parent / "gc_probe"


class ProbedServer(ManagedServer):
    """``abn serve`` with the collector probe in every process it starts."""

    def __init__(
        self, probe_dir: Path, checkout: Path | None, *args: object, **kwargs: object
    ) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.probe_dir = probe_dir
        self.checkout = checkout
        self.cwd = checkout  # its workers run ``python -m``, which imports from there first

    def environment(self) -> dict[str, str]:
        env = super().environment()
        paths = [str(PROBE), str(self.checkout or ""), env.get("PYTHONPATH")]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
        env["GC_PROBE_DIR"] = str(self.probe_dir)
        return env


def read_probe(probe_dir: Path, pids: set[int]) -> dict[int, dict]:
    out = {}
    for pid in pids:
        path = probe_dir / f"gc-{pid}.json"
        if path.exists():
            out[pid] = {int(g): v for g, v in json.loads(path.read_text()).items()}
    return out


def between(before: dict[int, dict], after: dict[int, dict]) -> dict[int, dict]:
    """Per process and generation: the collections in the interval, their CPU, the longest."""
    diff = {}
    for pid, gens in after.items():
        diff[pid] = {}
        for g, took in gens.items():
            new = took[len(before.get(pid, {}).get(g, [])) :]
            diff[pid][g] = {
                "collections": len(new),
                "cpu_ms": round(sum(new), 1),
                "longest_ms": round(max(new, default=0.0), 1),
            }
    return diff


def measure(args: argparse.Namespace, settings: dict[str, str], probe_dir: Path) -> dict:
    log = probe_dir / "server.log"
    with ProbedServer(probe_dir, args.checkout, args.model, log, **settings) as server:
        workers = set(process_tree(server.pid)) - {server.pid} or {server.pid}
        attack = start_slow_clients(server.port, args.connections, args.ramp + args.seconds + 2, 19)
        time.sleep(args.ramp + 1.5)  # the probe writes once a second
        gc_before = read_probe(probe_dir, workers)
        cpu_before = snapshot(server.pid, time.monotonic())
        time.sleep(args.seconds)
        cpu = usage_between(cpu_before, snapshot(server.pid, time.monotonic()))
        time.sleep(1.5)
        gc_after = read_probe(probe_dir, workers)
        out, err = attack.communicate(timeout=args.seconds + 60)
    if attack.returncode != 0:
        raise RuntimeError(f"slow_clients failed: {err[-2000:]}")
    flood = json.loads(out.strip().splitlines()[-1])
    rate = flood["opened"] / flood["seconds"]
    return {
        "slow_connections_per_second": round(rate, 1),
        "server_cores": round(cpu.cores, 3),
        "server_cpu_ms_per_slow_connection": round(1000 * cpu.cores / rate, 3),
        "gc_per_worker": between(gc_before, gc_after),
        "answers": flood["answers"],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--connections", type=int, default=2000)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--ramp", type=float, default=6.0)
    p.add_argument("--checkout", type=Path, default=None, help="serve this checkout's code")
    args = p.parse_args()
    args.model = args.model.resolve()
    try:
        settings = parse_settings(args.settings)
    except ValueError as err:
        p.error(str(err))
    with tempfile.TemporaryDirectory() as probe_dir:
        result = measure(args, settings, Path(probe_dir))
    gc_stats = result.pop("gc_per_worker")
    print(json.dumps(result))
    for pid, gens in gc_stats.items():
        print(f"worker {pid}: " + "; ".join(f"gen{g} {v}" for g, v in gens.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
