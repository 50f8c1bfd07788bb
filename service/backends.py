"""How the switchable layers compute (``ABN_BACKEND``), and what ``auto`` becomes here.

* ``float``: quantization simulated in float32; every width costs the same time.
* ``bitserial``: every width on the popcount kernel, whose time falls with BitOps (AVX-512
  VPOPCNTDQ CPUs); 8 bits is slower than float there.
* ``mixed``: each layer's call on whichever of the two measured faster at start for its width
  and group size (:func:`abn.bitserial.dispatch.use_fastest_kernels`), so no width is slower
  than on float and the narrow ones are faster.
* ``auto`` (the default): ``mixed`` where it can run (the CPU, a CPU with the kernel's
  features, a kernel that builds), else ``float``, with the reason logged.
"""

from __future__ import annotations

import logging
import time

import torch

from abn.bitops import CostTable
from abn.bitserial import BitSerialUnavailableError, use_bitserial
from abn.bitserial.cpu import require_kernel
from abn.bitserial.dispatch import use_fastest_kernels
from abn.supernet import Supernet

log = logging.getLogger("service")

BACKENDS = ("float", "bitserial", "mixed")  # what a loaded model runs on
CHOICES = ("auto", *BACKENDS)  # what ABN_BACKEND may say


def resolve_backend(choice: str, device: torch.device) -> str:
    """``auto`` as ``mixed`` where the bit-serial kernel can run on ``device``, else
    ``float``; any other choice as given (:func:`install_backend` refuses what cannot run)."""
    if choice != "auto":
        return choice
    if device.type != "cpu":
        return "float"
    try:
        require_kernel("avx512")
    except BitSerialUnavailableError as err:
        log.info("ABN_BACKEND=auto: float (%s)", err)
        return "float"
    return "mixed"


def install_backend(net: Supernet, table: CostTable, backend: str, *, auto: bool) -> str:
    """Put ``net``'s switchable layers on ``backend`` and return the backend they run on:
    ``float`` where an ``auto`` choice of ``mixed`` could not build its kernel (logged), the
    backend itself otherwise. Raises :class:`BitSerialUnavailableError` for an explicit
    choice that cannot run."""
    try:
        if backend == "bitserial":
            use_bitserial(net)
        elif backend == "mixed":
            started = time.perf_counter()
            kernels = use_fastest_kernels(net, table.layer_input_shapes)
            log.info(
                "ABN_BACKEND=mixed: both kernels timed per layer and width in %.2fs",
                time.perf_counter() - started,
            )
            for layer, widths in kernels.items():
                log.info("ABN_BACKEND=mixed: %s %s", layer, widths)
    except BitSerialUnavailableError as err:
        if not auto:
            raise
        log.warning("ABN_BACKEND=auto: float, the bit-serial kernel cannot run here (%s)", err)
        return "float"
    return backend
