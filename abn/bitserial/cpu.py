"""Which bit-serial kernel this CPU can run: its feature flags, read once at start.

The fast kernel needs AVX-512 F, BW and DQ (packing, 64-bit lanes, int64 -> float) and
VPOPCNTDQ (a popcount of eight 64-bit words per instruction); the portable kernel needs only
POPCNT. Linux lists what the CPU has *and* the kernel enabled (XSAVE state) as the ``flags``
of ``/proc/cpuinfo``, which is what is read here; elsewhere nothing is known, and the
backend is refused rather than run into an illegal instruction.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from abn.errors import ABNError

CPUINFO = Path("/proc/cpuinfo")
AVX512_FLAGS = ("avx512f", "avx512bw", "avx512dq", "avx512_vpopcntdq")
KERNELS = ("avx512", "scalar")  # fastest first


class BitSerialUnavailableError(ABNError, RuntimeError):
    """The bit-serial backend cannot run here (CPU features, or no compiler to build it)."""


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of the first processor in ``/proc/cpuinfo`` (empty if unknown)."""
    if not CPUINFO.is_file():
        return frozenset()
    for line in CPUINFO.read_text().splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def missing_flags(kernel: str) -> list[str]:
    """The CPU flags ``kernel`` needs that this CPU lacks."""
    needed = AVX512_FLAGS if kernel == "avx512" else ("popcnt",)
    flags = cpu_flags()
    return [f for f in needed if f not in flags]


def require_kernel(kernel: str) -> None:
    """Refuse, with the reason, a kernel this CPU cannot run."""
    if kernel not in KERNELS:
        raise BitSerialUnavailableError(
            f"unknown bit-serial kernel {kernel!r}; choose one of {', '.join(KERNELS)}"
        )
    missing = missing_flags(kernel)
    if missing:
        have = "no /proc/cpuinfo to read" if not cpu_flags() else "this CPU lacks"
        raise BitSerialUnavailableError(
            f"the bit-serial backend's {kernel} kernel needs the CPU features "
            f"{', '.join(missing)} ({have}); use ABN_BACKEND=float on this machine"
        )
