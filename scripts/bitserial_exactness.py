"""Does the bit-serial backend compute what the fake-quantized float path computes?

On the Fashion-MNIST test set (all 10,000 images by default), at every uniform width and at
random per-layer configurations (each applied to the whole set), plus one run where every
image has a random configuration of its own (mixed width groups in every batch): top-1
agreement between ``ABN_BACKEND=float`` and ``bitserial``, and how far their logits are apart.

Two causes of difference, told apart here: float rounding (the float path sums its
convolution in float32, the bit-serial path exactly in integers, then scales once), which
bounds the logits' difference by ``--bound``; and, rarely, an activation lying within that
rounding of a quantizer's rounding boundary, which then lands one level apart in the two
paths and moves the logits by more. The page reports both.

    .venv/bin/python scripts/bitserial_exactness.py [--images 10000] [--configs 20]

writes docs/bitserial/exactness.md and .json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from abn.bitserial import BitSerialUnavailableError, use_bitserial
from abn.data import load_fashion_mnist
from abn.errors import DatasetNotFoundError
from abn.preprocess import normalize
from abn.store import DEFAULT_MODEL_DIR, open_model_dir

OUT = Path("docs/bitserial")
BATCH = 500


def logits_of(net: torch.nn.Module, x: torch.Tensor, config: torch.Tensor) -> torch.Tensor:
    """Logits of ``x`` with per-sample configurations ``config`` (N, L), in batches."""
    parts = [net(x[i : i + BATCH], config[i : i + BATCH]) for i in range(0, len(x), BATCH)]
    return torch.cat(parts)


def compare(name: str, ref: torch.Tensor, got: torch.Tensor, bound: float) -> dict:
    diff = (ref - got).abs().amax(dim=1)
    return {
        "configuration": name,
        "images": len(ref),
        "top1_agree": int((ref.argmax(1) == got.argmax(1)).sum()),
        "within_bound": int((diff <= bound).sum()),
        "max_abs_diff": float(diff.max()),
        "max_abs_diff_within_bound_images": float(diff[diff <= bound].max()),
    }


def configurations(net, count: int, n_images: int, seed: int) -> list[tuple[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    bits = torch.tensor(net.bit_candidates)
    layers = net.num_switchable
    out = [(f"all {b}-bit", torch.full((n_images, layers), b)) for b in net.bit_candidates]
    for _ in range(count):
        config = bits[torch.randint(len(bits), (layers,), generator=g)]
        out.append((",".join(map(str, config.tolist())), config.expand(n_images, layers)))
    mixed = bits[torch.randint(len(bits), (n_images, layers), generator=g)]
    out.append(("a random configuration per image", mixed))
    return out


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# Bit-serial backend: exactness against the fake-quantized path",
        "",
        f"Written by `{meta['command']}` on {meta['date']}: model `{meta['model']}`, "
        f"{meta['images']} Fashion-MNIST test images, kernel `{meta['kernel']}`. The stated "
        f"bound: the logits of an image differ by at most {meta['bound']:g} (float rounding), "
        f"unless one of its activations sat within float rounding of a quantizer's rounding "
        f"boundary and the two paths rounded it to neighbouring levels (a float32 sum in one, "
        f"an exact integer sum in the other); the last column shows that where no such level "
        f"moved the logits are identical, since every switchable layer and the classifier "
        f"quantize their input.",
        "",
        "| configuration | top-1 agrees | logits within bound | max abs logit difference | "
        "max within the bound |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        n = r["images"]
        lines.append(
            f"| {r['configuration']} | {r['top1_agree']} / {n} "
            f"({100 * r['top1_agree'] / n:.2f} %) | {r['within_bound']} / {n} | "
            f"{r['max_abs_diff']:.3g} | {r['max_abs_diff_within_bound_images']:.3g} |"
        )
    worst = min(r["top1_agree"] / r["images"] for r in rows)
    lines += ["", f"Lowest top-1 agreement over all rows: {100 * worst:.3f} %.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--configs", type=int, default=20, help="random configurations")
    parser.add_argument("--bound", type=float, default=1e-4, help="float-rounding bound")
    parser.add_argument("--kernel", default="avx512", choices=("avx512", "scalar"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    try:
        directory = open_model_dir(args.model)
        test = load_fashion_mnist("test")
        reference = directory.load_supernet("cpu").fold_for_inference()
        bitserial = use_bitserial(directory.load_supernet("cpu"), args.kernel)
    except (DatasetNotFoundError, BitSerialUnavailableError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    x = normalize(test.images[: args.images], directory.input_spec)
    rows = []
    with torch.inference_mode():
        for name, config in configurations(reference, args.configs, len(x), args.seed):
            row = compare(
                name, logits_of(reference, x, config), logits_of(bitserial, x, config), args.bound
            )
            print(json.dumps(row), flush=True)
            rows.append(row)
    meta = {
        "command": " ".join(["python scripts/bitserial_exactness.py", *(argv or sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": f"{directory.manifest['name']} {directory.manifest['version']}",
        "images": len(x),
        "kernel": args.kernel,
        "bound": args.bound,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "exactness.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (OUT / "exactness.md").write_text(markdown(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
