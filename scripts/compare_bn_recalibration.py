"""Mixed-width accuracy before and after BN recalibration (docs/results.md).

Compares the last stage-1 checkpoint (runs/fmnist-abn/last.safetensors, before recalibration)
with the shipped model (after) on the first 3000 test images, at all-2, all-8 and six random
per-layer configurations. Run after `abn train supernet ... --recalibrate-bn`:

    .venv/bin/python scripts/compare_bn_recalibration.py
"""

import random

import torch
from safetensors.torch import load_file

from abn.data import load_fashion_mnist
from abn.evaluate import static_accuracy
from abn.store import open_model_dir
from abn.supernet import Supernet

torch.set_num_threads(1)
md = open_model_dir("model_store/fmnist-abn")
shipped = md.load_supernet().fold_for_inference()
raw = Supernet(md.spec)
t = load_file("runs/fmnist-abn/last.safetensors")
raw.load_state_dict({k[6:]: v for k, v in t.items() if k.startswith("model.")})
raw.fold_for_inference()
test = load_fashion_mnist("test").subset(slice(0, 3000))
rng = random.Random(0)
cfgs = [[2] * 8, [8] * 8] + [[rng.choice([2, 3, 4, 5, 6, 8]) for _ in range(8)] for _ in range(6)]
for c in cfgs:
    print(
        c,
        round(static_accuracy(raw, test, md.input_spec, c), 4),
        round(static_accuracy(shipped, test, md.input_spec, c), 4),
    )
