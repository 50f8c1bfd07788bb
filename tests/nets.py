"""Random supernets made runnable in tests: BatchNorm statistics for every transitional pair.

A freshly built supernet has no BatchNorm statistics (every (input width, own width) pair has
``num_batches_tracked == 0``), and running it in eval mode or folding it is an error
(:class:`abn.errors.UncalibratedBatchNormError`). Two ways to give it some:

* :func:`calibrate`: the library's own calibration (:mod:`abn.calibrate`), on random inputs or
  on the batches given; real statistics of the net's own activations.
* :func:`give_bn_statistics`: random running statistics and affine parameters in every
  BatchNorm, marked as seen. Costs nothing (the ImageNet network included) and differs from
  pair to pair, so a test can tell which pair ran.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import nn

from abn.calibrate import calibrate_batch_norm
from abn.supernet import DEFAULT_BIT_CANDIDATES, Supernet

# How an UnknownBitWidthError names the default candidates: what the layer and supernet tests
# expect a refused width's message to list.
ALLOWED_WIDTHS = ", ".join(map(str, DEFAULT_BIT_CANDIDATES))


def random_batches(net: Supernet, batch_size: int = 8, seed: int = 0) -> Iterator[torch.Tensor]:
    """Endless normalised-looking inputs of the net's input shape."""
    spec = net.spec
    gen = torch.Generator().manual_seed(seed)
    shape = (batch_size, spec.in_channels, spec.input_size, spec.input_size)
    while True:
        yield torch.randn(shape, generator=gen)


def calibrate(
    net: Supernet,
    batches: Iterable[torch.Tensor] | None = None,
    *,
    rounds: int = 1,
    batch_size: int = 8,
    seed: int = 0,
) -> Supernet:
    """``net`` with every BN pair calibrated over ``rounds`` batches (of random inputs unless
    ``batches`` is given), in eval mode."""
    if batches is None:
        batches = random_batches(net, batch_size, seed)
    calibrate_batch_norm(net, iter(batches), rounds=rounds, seed=seed, progress=False)
    return net


def give_bn_statistics(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random, non-trivial running statistics and affine parameters in every BatchNorm of
    ``module``, each marked as estimated (``num_batches_tracked = 1``)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.3)
                m.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=gen))
                m.weight.copy_(0.5 + torch.rand(c, generator=gen))
                m.bias.copy_(torch.randn(c, generator=gen) * 0.2)
                m.num_batches_tracked.fill_(1)
    return module


def feeder_widths(net: Supernet, config: list[int]) -> list[int]:
    """Per switchable layer, the width of the layer whose output it reads, for a per-layer
    ``config``: a block's conv1 and shortcut read the block's input (produced at the previous
    block's conv2 width, or by the stem at its fixed width), its conv2 reads conv1."""
    width = {id(layer): bits for layer, bits in zip(net.switchable_layers, config, strict=True)}
    feeders: dict[int, int] = {}
    previous = net.spec.fixed_bits
    for block in net.blocks:
        feeders[id(block.conv1)] = previous
        feeders[id(block.conv2)] = width[id(block.conv1)]
        if block.shortcut is not None:
            feeders[id(block.shortcut)] = previous
        previous = width[id(block.conv2)]
    return [feeders[id(layer)] for layer in net.switchable_layers]
