"""Accuracy of a supernet at static configurations (adaptive evaluation builds on this)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from abn.data import ImageSet, iterate_batches
from abn.preprocess import InputSpec, normalize
from abn.supernet import Supernet


@torch.no_grad()
def predictions(
    net: Supernet,
    data: ImageSet,
    input_spec: InputSpec,
    config: Sequence[int],
    batch_size: int = 500,
) -> torch.Tensor:
    """Predicted labels of every image of ``data`` at one configuration, in eval mode."""
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    out = []
    for images, _ in iterate_batches(data, batch_size, shuffle=False):
        out.append(net(normalize(images.to(device), input_spec), list(config)).argmax(1).cpu())
    net.train(was_training)
    return torch.cat(out)


def static_accuracy(
    net: Supernet, data: ImageSet, input_spec: InputSpec, config: Sequence[int]
) -> float:
    return float((predictions(net, data, input_spec, config) == data.labels).float().mean())
