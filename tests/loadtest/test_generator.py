"""The load generator against a real ``abn serve`` of the tiny model: it counts, it stops at its
bounds in both modes, its accuracy per budget is right on known labels, and the CLI's reports
parse. Tiny runs only: speed is measured by ``make bench``, never asserted here."""

from __future__ import annotations

import asyncio
import gc
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import loadtest.runner
from abn.data import load_fashion_mnist
from loadtest.cli import main
from loadtest.report import summarize_run
from loadtest.runner import (
    LoadClient,
    LoadConfig,
    RunResult,
    fetch_card,
    make_client,
    run_async,
    run_load,
)
from loadtest.workload import BudgetSpec, Images, ModelRange, Workload, parse_widths
from service.model import ServedModel

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def images(tiny_fmnist_dir: Path) -> Images:
    data = load_fashion_mnist("test", tiny_fmnist_dir)
    return Images(data.images[:60, 0].numpy().copy(), data.labels[:60].numpy().copy())


def run(
    url: str,
    images: Images,
    config: LoadConfig,
    budgets: str = "min,50%,max",
    widths: tuple[str, ...] = (),
) -> tuple[RunResult, dict]:
    async def go() -> tuple[RunResult, dict]:
        async with make_client(url, connections=32) as client:
            card = await fetch_card(client)
            model = ModelRange.from_card(card)
            workload = Workload(
                images, BudgetSpec.parse(budgets, model), parse_widths(widths, model), seed=1
            )
            return await run_load(client, workload, config, progress=False), card

    return run_async(go())


def test_closed_loop_sends_exactly_the_request_count(server: str, images: Images) -> None:
    result, _ = run(server, images, LoadConfig("closed", concurrency=4, requests=37))
    assert [r.index for r in result.records] == list(range(37))
    assert all(r.status == 200 for r in result.records), summarize_run(result)["errors"]
    assert all(r.bitops is not None and r.bitops <= r.budget_applied for r in result.records)
    summary = summarize_run(result)
    assert summary["sent"] == summary["ok"] == 37
    assert sum(g["requests"] for g in summary["groups"]) == 37


def test_open_loop_stops_at_the_request_count(server: str, images: Images) -> None:
    result, _ = run(server, images, LoadConfig("open", rate=200.0, requests=25))
    assert len(result.records) == 25
    assert all(r.status == 200 for r in result.records)
    assert len(result.schedule_lag) == 25


def test_open_loop_stops_at_its_duration(server: str, images: Images) -> None:
    config = LoadConfig("open", rate=40.0, duration=0.5, arrivals="constant")
    result, _ = run(server, images, config)
    assert len(result.records) == 20  # sends at 0, 1/40, ..., 19/40 s; none at 0.5 s
    assert max(r.start for r in result.records) == pytest.approx(19 / 40, abs=1e-9)
    assert 0.45 < result.wall_seconds < 10.0
    assert summarize_run(result)["offered_rps"] == pytest.approx(40.0)


def test_closed_loop_stops_at_its_duration(server: str, images: Images) -> None:
    result, _ = run(server, images, LoadConfig("closed", concurrency=2, duration=0.4))
    assert result.records, "nothing was sent"
    assert all(r.start < 0.4 for r in result.records)  # nothing starts after the bound
    assert 0.4 <= result.wall_seconds < 10.0


def test_the_first_bound_reached_wins(server: str, images: Images) -> None:
    result, _ = run(server, images, LoadConfig("closed", concurrency=3, requests=5, duration=60))
    assert len(result.records) == 5 and result.wall_seconds < 30


def test_accuracy_per_budget_on_known_labels(
    server: str, images: Images, tiny_model_dir: Path
) -> None:
    """Labels set from the model's own pinned predictions, half of them then made wrong: the
    report must give exactly the fraction of right labels in each group."""
    model = ServedModel.load(tiny_model_dir, "cpu")
    n = len(images)
    x = torch.from_numpy(images.pixels).unsqueeze(1)
    predicted = {
        bits: model.infer(
            x, torch.full((n,), model.max_bitops), torch.full((n, model.num_layers), bits)
        )
        .probabilities.argmax(1)
        .numpy()
        for bits in (2, 8)
    }
    labels = predicted[8].copy()
    labels[::2] = (labels[::2] + 1) % 10  # every other image: the 8-bit answer is wrong
    known = Images(images.pixels, labels)
    result, card = run(
        server,
        known,
        LoadConfig("closed", concurrency=4, requests=n),
        budgets="none",
        widths=("2", "8"),
    )
    assert all(r.status == 200 for r in result.records)
    groups = {g["group"]: g for g in summarize_run(result)["groups"]}
    workload = Workload(known, BudgetSpec.parse("none", ModelRange.from_card(card)), ("2", "8"), 1)
    for bits in (2, 8):
        plans = [workload.plan(i) for i in range(n) if workload.plan(i).widths == str(bits)]
        expected = np.mean([predicted[bits][p.image] == labels[p.image] for p in plans])
        group = groups[f"budget none, widths {bits}"]
        assert group["requests"] == len(plans)
        assert group["accuracy"] == pytest.approx(expected)
        cost = next(s["bitops"] for s in card["accuracy"]["static"] if s["bit_widths"][0] == bits)
        assert group["mean_used"] == pytest.approx(cost)
    assert 0 < groups["budget none, widths 8"]["accuracy"] < 1  # the labels were half wrong


def test_cli_sweep_writes_json_markdown_and_png(
    server: str, tiny_fmnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--url", server, "--rate", "100,200", "--requests", "10", "--budgets", "min,max"]
    argv += ["--widths", "adaptive", "--widths", "4", "--data-dir", str(tiny_fmnist_dir)]
    argv += ["--out", str(tmp_path), "--name", "sweep", "--no-progress", "--images", "40"]
    assert main(argv) == 0
    report = json.loads((tmp_path / "sweep.json").read_text())
    assert [r["sent"] for r in report["runs"]] == [10, 10]
    for run_ in report["runs"]:
        assert set(run_["latency_ms"]) == {"p50", "p90", "p95", "p99", "max", "mean"}
        assert {"throughput_rps", "offered_rps", "errors", "accuracy", "bitops"} <= set(run_)
    groups = report["groups_all_runs"]
    assert sum(g["requests"] for g in groups) == 20
    assert all({"accuracy", "mean_used", "mean_budget"} <= set(g) for g in groups)
    assert report["machine"]["cores"] >= 1 and report["model"]["name"] == "tiny-test"
    markdown = (tmp_path / "sweep.md").read_text()
    assert "| open loop, 100 req/s (poisson) |" in markdown
    assert "budget max, widths 4" in markdown and "python -m loadtest --url" in markdown
    assert (tmp_path / "sweep.png").read_bytes().startswith(b"\x89PNG")
    assert "open loop, 200 req/s" in capsys.readouterr().out


def test_cli_without_the_dataset_says_how_to_get_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--concurrency", "1", "--requests", "1", "--data-dir", str(tmp_path / "nowhere")]
    assert main(argv) == 2
    assert "dataset-fashion-mnist" in capsys.readouterr().err


def test_cli_refuses_an_unbounded_run() -> None:
    with pytest.raises(SystemExit):
        main(["--concurrency", "1"])


def test_the_client_spreads_requests_over_its_small_pools(server: str) -> None:
    async def go() -> tuple[int, list[int], list[int], list[int]]:
        async with LoadClient(server, connections=10, timeout=30.0, headers={}) as client:
            tasks = [asyncio.create_task(client.get("/healthz")) for _ in range(12)]
            await asyncio.sleep(0)  # every task has started and picked its pool
            started = client.in_flight
            statuses = [r.status_code for r in await asyncio.gather(*tasks)]
            return client.pools, started, statuses, client.in_flight

    pools, started, statuses, done = run_async(go())
    assert pools == 3  # 10 connections, at most 4 per pool
    assert started == [4, 4, 4]  # each request went to the least busy pool
    assert statuses == [200] * 12
    assert done == [0, 0, 0]


def test_the_collector_is_paused_during_a_run_and_restored_after(
    server: str, images: Images, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[bool] = []
    real_send = loadtest.runner._send

    async def spying_send(*args: object, **kwargs: object) -> object:
        seen.append(gc.isenabled())
        return await real_send(*args, **kwargs)

    monkeypatch.setattr(loadtest.runner, "_send", spying_send)
    assert gc.isenabled()
    run(server, images, LoadConfig("closed", concurrency=2, requests=4))
    assert seen == [False] * 4
    assert gc.isenabled()
