"""Microseconds per image of each convolution shape of a model, in the default (NCHW) layout
and in channels-last, at several batch sizes, on one torch thread.

Why the folded inference form runs channels-last on the CPU (``abn.layers.
inference_memory_format``): on the 2-core AMD EPYC VM the 16-channel 28x28 convolution of
``resnet8_fmnist`` took about 4x longer per image in NCHW from batch 16 on than at batch 8,
which channels-last does not (docs/profiling.md, issue 19's fourth pass). Run it on another
CPU to see whether the same holds there:

    .venv/bin/python scripts/conv_layout.py --arch resnet8_fmnist --batches 1,8,16,32
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from abn.bitops import cost_table
from abn.supernet import ARCHITECTURES, build_supernet

ConvShape = tuple[int, int, int, int, int]  # in channels, out channels, kernel, input size, stride


def conv_shapes(arch: str) -> list[ConvShape]:
    """Each distinct switchable convolution of ``arch``, with the input size it sees."""
    net = build_supernet(arch)
    table = cost_table(net)
    shapes: list[ConvShape] = []
    for layer, (_, size, _) in zip(net.switchable_layers, table.layer_input_shapes, strict=True):
        out_ch, in_ch, kernel = layer.weight.shape[0], layer.weight.shape[1], layer.weight.shape[-1]
        shape = (in_ch, out_ch, kernel, size, layer.stride)
        if shape not in shapes:
            shapes.append(shape)
    return shapes


def microseconds_per_image(shape: ConvShape, batch: int, layout: torch.memory_format) -> float:
    """Median over 40 calls, after 5 warm ones."""
    cin, cout, k, size, stride = shape
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cin, size, size, generator=gen).contiguous(memory_format=layout)
    w = torch.randn(cout, cin, k, k, generator=gen).contiguous(memory_format=layout)
    for _ in range(5):
        F.conv2d(x, w, None, stride, k // 2)
    times = []
    for _ in range(40):
        start = time.perf_counter()
        F.conv2d(x, w, None, stride, k // 2)
        times.append(time.perf_counter() - start)
    return 1e6 * statistics.median(times) / batch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--arch", default="resnet8_fmnist", choices=sorted(ARCHITECTURES))
    p.add_argument("--batches", default="1,8,16,32")
    args = p.parse_args()
    try:
        batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        batches = []
    if not batches or min(batches) < 1:
        p.error(f"--batches must be comma-separated positive integers, not {args.batches!r}")
    torch.set_num_threads(1)
    rows = []
    for shape in conv_shapes(args.arch):
        for batch in batches:
            nchw = microseconds_per_image(shape, batch, torch.contiguous_format)
            last = microseconds_per_image(shape, batch, torch.channels_last)
            rows.append(
                {
                    "conv (in, out, kernel, size, stride)": list(shape),
                    "batch": batch,
                    "nchw_us_per_image": round(nchw, 1),
                    "channels_last_us_per_image": round(last, 1),
                    "channels_last / nchw": round(last / nchw, 2),
                }
            )
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
