"""Time every uniform width of a model on this machine, as ``abn evaluate`` does for its
``latency`` table (abn/latency.py), without re-scoring accuracy: for re-timing a model on the
device that will serve it, or for the figures in README.md and docs/api.md.

    .venv/bin/python scripts/latency_table.py --model model_store/fmnist-abn --batch-size 32

``--backend`` times another backend of the switchable layers (service/backends.py): the
model card serves that backend's table measured at start, as this measures it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from abn.bitops import cost_table
from abn.bitserial import BitSerialUnavailableError
from abn.latency import latency_markdown, measure_latency
from abn.store import DEFAULT_MODEL_DIR, open_model_dir
from service.backends import BACKENDS, install_backend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="model directory")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=32, help="images per timed batch")
    parser.add_argument("--repeats", type=int, default=20, help="timed batches per width")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--backend", default="float", choices=BACKENDS, help="ABN_BACKEND")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    md = open_model_dir(args.model)
    net = md.load_supernet(args.device).fold_for_inference()
    costs = cost_table(net)
    try:
        install_backend(net, costs, args.backend, auto=False)
    except BitSerialUnavailableError as err:
        parser.exit(2, f"--backend {args.backend}: {err}\n")
    table = measure_latency(net, costs, md.input_spec, args.batch_size, args.repeats)
    table["backend"] = args.backend
    print("\n".join(latency_markdown(table)))


if __name__ == "__main__":
    main()
