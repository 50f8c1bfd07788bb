"""Calibrating transitional BatchNorm: every (input width, own width) pair of every layer gets
running statistics estimated under the per-layer configurations the policy will produce.

Training updates a pair's statistics only on the steps whose paths happen to use it, with an
exponential average dominated by the last few of those steps; after training, the statistics
are re-estimated from scratch, with the weights frozen, as a cumulative average over
``rounds`` batches per pair.

The configurations are *balanced* random per-layer configurations: one round is ``n**2``
configurations (``n`` candidate widths) in which the layer at feeding depth ``d`` runs at
``perm_d[(a + b * d) mod n]`` for ``(a, b)`` over every pair of positions, with a fresh random
permutation ``perm_d`` of the widths per depth and round. Consecutive depths then meet every
(feeder width, own width) pair exactly once per round, so ``rounds`` rounds give every pair of
every layer at least ``rounds`` batches (exactly ``rounds``, except the first block's layers:
fed by the stem's one fixed width, each of their pairs comes up ``n`` times a round), where
uniformly random configurations need about twice the batches before the rarest pair reaches
the same count. Each layer's width is still uniform
over the candidates, and the widths upstream of a pair are random, not fixed.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from tqdm import tqdm

from abn.errors import UncalibratedBatchNormError
from abn.supernet import Supernet


def feeding_depths(net: Supernet) -> list[int]:
    """Depth of each switchable layer in the chain of feeders (conv1 and shortcut of block
    ``k`` read the same input, depth ``2k``; its conv2 reads conv1, depth ``2k + 1``)."""
    depths = []
    for k, block in enumerate(net.blocks):
        for layer in block.switchable_layers():
            depths.append(2 * k + (1 if layer is block.conv2 else 0))
    return depths


def balanced_round(net: Supernet, generator: torch.Generator) -> list[list[int]]:
    """One round of ``n**2`` configurations covering every BN pair of every layer once, in a
    random order."""
    bits = net.bit_candidates
    n = len(bits)
    depths = feeding_depths(net)
    perms = [torch.randperm(n, generator=generator).tolist() for _ in range(max(depths) + 1)]
    configs = [
        [bits[perms[d][(a + b * d) % n]] for d in depths] for a in range(n) for b in range(n)
    ]
    order = torch.randperm(len(configs), generator=generator).tolist()
    return [configs[i] for i in order]


def check_calibrated(net: Supernet) -> None:
    """Raise :class:`UncalibratedBatchNormError` for the first layer with an unseen pair."""
    for layer in net.switchable_layers:
        unseen = layer.bn.unseen_pairs()
        if unseen:
            raise UncalibratedBatchNormError(layer.name, unseen)


@torch.no_grad()
def calibrate_batch_norm(
    net: Supernet,
    batches: Iterator[torch.Tensor],
    rounds: int = 10,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Re-estimate every BN pair's running statistics, ``rounds`` batches per pair.

    ``batches`` yields normalised input batches (on the network's device) and must yield at
    least ``rounds * n**2`` of them. Leaves the network in eval mode; raises if a pair is left
    unseen (which the balanced design rules out unless ``batches`` runs dry).
    """
    norms = [bn for layer in net.switchable_layers for bn in layer.bn.norms.values()]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration batches
    generator = torch.Generator().manual_seed(seed)
    schedule = [c for _ in range(rounds) for c in balanced_round(net, generator)]
    net.train()
    try:
        for config in tqdm(schedule, desc="BN calibration", disable=not progress, mininterval=2):
            x = next(batches, None)
            if x is None:
                break
            net(x, config)
    finally:
        for bn in norms:
            bn.momentum = 0.1
        net.eval()
    check_calibrated(net)
    return {
        "rounds": rounds,
        "batches": len(schedule),
        "batches_per_pair": rounds,
    }  # the minimum; see above
