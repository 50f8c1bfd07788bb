"""Wall-clock latency of every uniform configuration on the device that runs the model.

BitOps (:mod:`abn.bitops`) are the papers' accounting unit: what a configuration would cost on
hardware with low-bit integer arithmetic. This project simulates quantization (weights and
activations are rounded to their grid and computed in float32), so on a CPU or GPU without such
kernels every width takes the same time. This table is the honest counterpart: measured through
the path the service runs for a batch pinned to one uniform width (folded weights, the plain
forward pass: the service runs every fully pinned batch that way, without the rollout's
per-layer bookkeeping), one pinned batch at a time, the widths interleaved within each repeat
so a neighbour's load on a shared machine falls on all of them alike.
"""

from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path

import torch
from tqdm import tqdm

from abn.bitops import CostTable
from abn.preprocess import InputSpec, normalize
from abn.supernet import Supernet


def device_name(device: torch.device) -> str:
    """What the device is, in words: the GPU's name, or the CPU's model name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def measure_latency(
    net: Supernet,
    table: CostTable,
    input_spec: InputSpec,
    batch_size: int = 32,
    repeats: int = 20,
    warmup: int = 3,
    progress: bool = True,
) -> dict:
    """Median and 90th-percentile time of one pinned batch at every uniform width; the
    progress bar is for a person at a terminal (``abn evaluate``), not a server's log."""
    device = next(net.parameters()).device
    shape = (batch_size, input_spec.channels, input_spec.height, input_spec.width)
    images = torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(0))
    x = normalize(images.to(torch.uint8).to(device), input_spec)
    bits = list(net.bit_candidates)
    times: dict[int, list[float]] = {b: [] for b in bits}
    for i in tqdm(
        range(warmup + repeats), desc="latency per width", mininterval=2.0, disable=not progress
    ):
        for b in bits:
            _synchronize(device)
            start = time.perf_counter()
            net(x, b)
            _synchronize(device)
            if i >= warmup:
                times[b].append(1000 * (time.perf_counter() - start))
    rows = []
    for b in bits:
        ms = sorted(times[b])
        rows.append(
            {
                "bit_widths": net.uniform(b),
                "bitops": table.cost(net.uniform(b)),
                "batch_ms": round(statistics.median(ms), 3),
                "batch_ms_p90": round(ms[min(len(ms) - 1, int(0.9 * len(ms)))], 3),
                "ms_per_image": round(statistics.median(ms) / batch_size, 4),
            }
        )
    return {
        "device": str(device),
        "device_name": device_name(device),
        "batch_size": batch_size,
        "torch_threads": torch.get_num_threads(),
        "repeats": repeats,
        "rows": rows,
    }


_BACKEND_NOTES = {  # by the table's "backend" (a table without one is the float path's)
    "float": "Quantization is simulated (float32 arithmetic at every width), so BitOps are an "
    "accounting unit here, not time.",
    "bitserial": "Every width on the popcount kernel: time falls with BitOps.",
    "mixed": "Each layer's call on whichever of the popcount kernel and the float path measured "
    "faster for its width and group size (docs/backends.md).",
}


def latency_markdown(latency: dict | None) -> list[str]:
    """The latency table of the evaluation report."""
    if not latency:
        return []
    lines = [
        "",
        f"## Latency per uniform width ({latency['device']}: {latency['device_name']}, "
        f"batch {latency['batch_size']}, {latency['torch_threads']} threads, median of "
        f"{latency['repeats']})",
        "",
        _BACKEND_NOTES.get(latency.get("backend", "float"), ""),
        "",
        "| widths | BitOps | batch (ms) | p90 (ms) | per image (ms) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in latency["rows"]:
        lines.append(
            f"| all {r['bit_widths'][0]}-bit | {r['bitops']:.4g} | {r['batch_ms']:.2f} | "
            f"{r['batch_ms_p90']:.2f} | {r['ms_per_image']:.3f} |"
        )
    return lines
