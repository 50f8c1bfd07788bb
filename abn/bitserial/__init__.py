"""Bit-serial CPU execution of the switchable layers: time that falls with BitOps.

A ``b x b``-bit conv runs as ``b * b`` binary convs of bit-planes (AND + popcount over
packed 64-bit words), so its cost is proportional to the BitOps the budget counts. The stem,
the classifier and the policy stay float (they are fixed at 8 bits, or not switchable).
"""

from __future__ import annotations

from abn.bitserial.conv import BitSerialConv
from abn.bitserial.cpu import KERNELS, BitSerialUnavailableError
from abn.supernet import Supernet

__all__ = ["BitSerialUnavailableError", "KERNELS", "use_bitserial"]


def use_bitserial(net: Supernet, kernel: str = "avx512") -> Supernet:
    """Fold ``net`` for inference and run its switchable layers on the bit-serial kernel.

    Refuses (:class:`BitSerialUnavailableError`) a network off the CPU or a kernel this CPU
    cannot run; the float path is untouched until every layer is packed.
    """
    device = next(net.parameters()).device
    if device.type != "cpu":
        raise BitSerialUnavailableError(
            f"the bit-serial backend runs on the CPU; the network is on {device} "
            f"(set ABN_DEVICE=cpu)"
        )
    net.fold_for_inference()
    forms = [BitSerialConv(layer, kernel) for layer in net.switchable_layers]
    for layer, form in zip(net.switchable_layers, forms, strict=True):
        layer.use_inference_form(form)
    return net
