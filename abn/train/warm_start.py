"""Starting a supernet from another one of the same layer shapes but a different candidate
set or BatchNorm layout (``abn train supernet --init-from``).

The reference recipe starts stage 1 from a trained network rather than from random weights.
What carries over: every full-precision weight (stem, switchable convs, classifier), the
weight step and activation clipping level of each width both networks have, and, for every
BN pair of the target, the BN of the source that ran at the nearest own width (affine
parameters and statistics, which calibration re-estimates anyway). A width the source lacks
starts from its nearest width's clipping level and from a weight step computed afresh from
the loaded weight (at 1 bit the binary scale ``mean|w|``).
"""

from __future__ import annotations

import torch

from abn.errors import ConfigError
from abn.layers import SwitchableConvBN
from abn.quant import FULL_PRECISION, initial_weight_step
from abn.supernet import Supernet


def _nearest(width: int, available: tuple[int, ...]) -> int:
    return min(available, key=lambda b: (abs(b - width), -b))


def _shapes(net: Supernet) -> list[tuple[int, ...]]:
    """Shapes of the conv and linear weights (BN and quantizer parameters vary with the set)."""
    return [tuple(p.shape) for p in net.parameters() if p.dim() > 1]


@torch.no_grad()
def _copy_matching(source: torch.nn.Module, target: torch.nn.Module) -> None:
    """Copy every tensor both state dicts name with the same shape (the FP32 reference's
    classifier keeps a clip level for "width 32" that an 8-bit classifier does not have)."""
    theirs = source.state_dict()
    ours = target.state_dict()
    target.load_state_dict(
        {k: theirs[k] if k in theirs and theirs[k].shape == v.shape else v for k, v in ours.items()}
    )


@torch.no_grad()
def _transfer_layer(source: SwitchableConvBN, target: SwitchableConvBN) -> None:
    target.weight.copy_(source.weight)
    src_bits = source.bit_candidates
    for bits in target.bit_candidates:
        if bits in src_bits:
            target.weight_quantizer.steps[str(bits)].copy_(source.weight_quantizer.steps[str(bits)])
        else:
            step = initial_weight_step(target.weight, bits)
            target.weight_quantizer.steps[str(bits)].fill_(step)
        near = _nearest(bits, src_bits)  # the width itself when the source has it
        if target.act_quantizer.switchable and near < FULL_PRECISION:
            clip = source.act_quantizer.clip_levels[
                str(near) if source.act_quantizer.switchable else "shared"
            ]
            target.act_quantizer.clip_levels[str(bits)].copy_(clip)
    middle = _nearest(target.bit_candidates[len(target.bit_candidates) // 2], src_bits)
    if not target.act_quantizer.switchable and middle < FULL_PRECISION:
        # one level for every width: the source's level at the middle width
        clip = source.act_quantizer.clip_level(middle)
        target.act_quantizer.clip_levels["shared"].copy_(clip)
    for in_bits in target.input_widths:
        src_in = _nearest(in_bits, source.input_widths)
        for bits in target.bit_candidates:
            src_bn = source.bn.norm_for(src_in, _nearest(bits, src_bits))
            target.bn.norm_for(in_bits, bits).load_state_dict(src_bn.state_dict())


@torch.no_grad()
def warm_start(source: Supernet, target: Supernet) -> None:
    """Copy what ``source`` knows into ``target`` (see the module docstring).

    Raises :class:`~abn.errors.ConfigError` (a ``ValueError``) when the two networks' layers
    do not have the same shapes: a warm start across architectures would be a silent
    re-initialisation.
    """
    if _shapes(source) != _shapes(target) or source.spec.num_classes != target.spec.num_classes:
        raise ConfigError(
            f"cannot start {target.spec.name} from {source.spec.name}: the layer shapes or the "
            f"number of classes differ; --init-from needs the same architecture"
        )
    for src, dst in ((source.stem, target.stem), (source.classifier, target.classifier)):
        _copy_matching(src, dst)
    for src, dst in zip(source.switchable_layers, target.switchable_layers, strict=True):
        _transfer_layer(src, dst)
