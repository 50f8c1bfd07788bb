"""CPU microseconds of the request path's pieces that issue 19's fifth pass changed, each the
old way and the new way, measured in this process (thread CPU time, median of rounds):

* the JSON body of a ``/classify`` answer: the standard library's encoder against orjson;
* the layer-width counters of 32 answered images under several workers (prometheus-client's
  multiprocess mode, a shared-file write per increment): one increment per layer and image,
  against one per (layer, width) pair of the batch (``ServiceMetrics.widths_chosen``);
* the access line, to a file, in the text format.

    .venv/bin/python scripts/hot_path_pieces.py --repeats 5
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable

import orjson

LAYERS = [f"layer{i}" for i in range(8)]
WIDTHS = [1, 2, 3, 4, 8]
BATCH = 32
ANSWER = {
    "id": "dcad2268bd9141a7978c8c37dca60433.9.1796185128563.ZHgX0RoaC-dc-oaM1DgIXw",
    "model": {"name": "fmnist-abn", "version": "2.1.0"},
    "label": 9,
    "class_name": "Ankle boot",
    "confidence": 0.9934419393539429,
    "top_k": [
        {"label": 9, "class_name": "Ankle boot", "probability": 0.9934419393539429},
        {"label": 7, "class_name": "Sneaker", "probability": 0.005773579236119986},
        {"label": 5, "class_name": "Sandal", "probability": 0.0006974957068450749},
        {"label": 8, "class_name": "Bag", "probability": 5.603607860393822e-05},
        {"label": 0, "class_name": "T-shirt/top", "probability": 2.2018590243533254e-05},
    ],
    "bit_widths": [3] * 8,
    "first_pass_bit_widths": None,
    "bitops": 90357760.0,
    "budget": 598138880.0,
    "policy": "pinned",
    "latency_ms": 15.40360300168686,
}


def cpu_us(call: Callable[[], object], calls: int) -> float:
    start = time.thread_time()
    for _ in range(calls):
        call()
    return (time.thread_time() - start) / calls * 1e6


def json_pieces() -> dict[str, Callable[[], object]]:
    standard = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return {
        "answer JSON, standard library": lambda: standard.encode(ANSWER).encode(),
        "answer JSON, orjson": lambda: orjson.dumps(ANSWER),
    }


def width_pieces(directory: str) -> dict[str, Callable[[], object]]:
    """Both ways on a multiprocess registry in ``directory``, per batch of 32 answers."""
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory  # before prometheus_client is imported
    from service.metrics import ServiceMetrics

    metrics = ServiceMetrics(BATCH, multiprocess_dir=directory)
    metrics.bind_model(
        name="m", version="1", device="cpu", layer_names=LAYERS, bit_candidates=WIDTHS,
        min_bitops=1e7, max_bitops=6e8,
    )  # fmt: skip
    batch = [[1, 1] + [3] * 6 if i % 3 else [1] * 8 for i in range(BATCH)]
    assert metrics.layer_widths is not None and metrics.layer_bits is not None
    children = {  # the old loop's series (the new name and the deprecated one), looked up once
        (layer, bits): (
            metrics.layer_widths.labels(layer=layer, width=str(bits)),
            metrics.layer_bits.labels(layer=layer, bits=str(bits)),
        )
        for layer in LAYERS
        for bits in WIDTHS
    }

    def per_image() -> None:
        for widths in batch:
            for layer, bits in zip(LAYERS, widths, strict=True):
                for child in children[(layer, bits)]:
                    child.inc()

    return {
        "32 answers' layer widths, one increment per layer and image": per_image,
        "32 answers' layer widths, widths_chosen": lambda: metrics.widths_chosen(batch),
    }


def access_line_piece(path: str) -> dict[str, Callable[[], object]]:
    from service.logs import access_line, configure_logging

    configure_logging("text", "info", open(path, "w"))  # noqa: SIM115 (kept open for the run)

    def line() -> None:
        access_line(
            method="POST", route="/classify", path="/classify", status=200,
            latency_ms=12.3456, budget=5.98e8, bitops=9.03e7,
        )  # fmt: skip

    return {"access line, text, to a file": line}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000, help="per measurement")
    parser.add_argument("--repeats", type=int, default=5, help="rounds; the median is reported")
    args = parser.parse_args()
    if args.calls < 1 or args.repeats < 1:
        parser.error("--calls and --repeats must be at least 1")
    with tempfile.TemporaryDirectory() as work:
        pieces = {
            **json_pieces(),
            **width_pieces(work),
            **access_line_piece(os.path.join(work, "access.log")),
        }
        runs: dict[str, list[float]] = {name: [] for name in pieces}
        for _ in range(args.repeats):  # interleaved, so every piece sees the same machine
            for name, call in pieces.items():
                runs[name].append(cpu_us(call, args.calls))
        logging.shutdown()
    for name, values in runs.items():
        print(f"{statistics.median(values):8.2f} µs  {name}")


if __name__ == "__main__":
    main()
