"""abn.latency: every uniform width timed through the serving path, reported per device."""

from __future__ import annotations

import torch

from abn.bitops import cost_table
from abn.data import FASHION_MNIST_INPUT
from abn.latency import latency_markdown, measure_latency
from abn.supernet import build_supernet
from tests.nets import calibrate


def test_every_uniform_width_gets_a_timed_row() -> None:
    torch.manual_seed(0)
    net = calibrate(build_supernet("resnet8_fmnist")).eval().fold_for_inference()
    table = cost_table(net)
    latency = measure_latency(net, table, FASHION_MNIST_INPUT, batch_size=3, repeats=2, warmup=1)
    assert latency["device"] == "cpu" and latency["batch_size"] == 3 and latency["repeats"] == 2
    assert [r["bit_widths"] for r in latency["rows"]] == [
        net.uniform(b) for b in net.bit_candidates
    ]
    for row in latency["rows"]:
        assert row["bitops"] == table.cost(row["bit_widths"])
        assert 0 < row["batch_ms"] <= row["batch_ms_p90"]
        assert abs(row["ms_per_image"] - row["batch_ms"] / 3) < 1e-3
    text = "\n".join(latency_markdown(latency))
    assert "batch 3" in text and text.count("| all ") == len(net.bit_candidates)
    assert latency_markdown(None) == []
