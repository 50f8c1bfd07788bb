"""Compile the bit-serial kernels (``csrc/bitserial.cpp``) once, and load them with ctypes.

Built at install: ``make venv`` (and the Dockerfile) run ``python -m abn.bitserial``,
which compiles both kernels with the system's g++ into ``abn/bitserial/_build/``. At run
time :func:`load_kernel` loads the library whose name carries the hash of the source and the
flags, so a changed source is never run from a stale build. Where none was built (a wheel
installed without the build step), it is compiled on first use into the first writable of
the package's ``_build`` directory and ``$XDG_CACHE_HOME/abn-serve/bitserial`` (seconds; the
result is kept).

The library has a plain C ABI (no Python or torch headers): g++ alone builds it, and it links
libstdc++ statically so a slim runtime image without it still loads the library.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

from abn.bitserial.cpu import BitSerialUnavailableError, require_kernel

log = logging.getLogger("abn.bitserial")

SOURCE = Path(__file__).with_name("csrc") / "bitserial.cpp"
PACKAGE_BUILD_DIR = Path(__file__).with_name("_build")
COMMON_FLAGS = (  # -ffp-contract=off: no FMA, so both kernels round their results alike
    "-O3",
    "-std=c++17",
    "-ffp-contract=off",
    "-shared",
    "-fPIC",
    "-static-libstdc++",
    "-static-libgcc",
)
X86_FLAGS = {
    "scalar": ("-march=x86-64-v2",),  # POPCNT and SSE4.1 rounding
    "avx512": ("-march=x86-64-v4", "-mavx512vpopcntdq"),  # AVX-512 F/BW/DQ/VL + VPOPCNTDQ
}


class BitSerialLayer(ctypes.Structure):
    """``struct abn_bitserial_layer`` of the C source: one layer at one width."""

    _fields_ = [
        ("weights", ctypes.c_void_p),
        ("scale", ctypes.c_void_p),
        ("shift", ctypes.c_void_p),
        ("in_channels", ctypes.c_int64),
        ("out_channels", ctypes.c_int64),
        ("kernel", ctypes.c_int64),
        ("stride", ctypes.c_int64),
        ("padding", ctypes.c_int64),
        ("channels", ctypes.c_int64),
        ("row_words", ctypes.c_int64),
        ("weight_bits", ctypes.c_int64),
        ("act_bits", ctypes.c_int64),
        ("act_step", ctypes.c_float),
        ("act_high", ctypes.c_int64),
        ("alpha", ctypes.c_int64),
        ("beta", ctypes.c_int64),
    ]


def compiler() -> str:
    """The C++ compiler: ``$CXX``, else g++."""
    return os.environ.get("CXX", "g++")


def flags(kernel: str) -> tuple[str, ...]:
    if platform.machine() in ("x86_64", "AMD64"):
        return COMMON_FLAGS + X86_FLAGS[kernel]
    if kernel == "avx512":
        raise BitSerialUnavailableError("the avx512 bit-serial kernel exists on x86-64 only")
    return COMMON_FLAGS


def library_name(kernel: str) -> str:
    """The file name of a kernel's library: the source and the flags hashed into it."""
    digest = hashlib.sha256(SOURCE.read_bytes())
    digest.update(" ".join((compiler(), *flags(kernel))).encode())
    return f"libabn_bitserial_{kernel}_{digest.hexdigest()[:16]}.so"


def build_dirs() -> list[Path]:
    cache_home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return [PACKAGE_BUILD_DIR, cache_home / "abn-serve" / "bitserial"]


def build(kernel: str, directory: Path) -> Path:
    """Compile ``kernel`` into ``directory`` (atomically: a reader never sees half a file)."""
    cxx = compiler()
    if shutil.which(cxx) is None:
        raise BitSerialUnavailableError(
            f"the bit-serial backend needs a C++ compiler to build its kernel and {cxx!r} is "
            f"not installed (make venv installs g++; or set CXX)"
        )
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / library_name(kernel)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        partial = Path(tmp) / target.name
        command = [cxx, *flags(kernel), str(SOURCE), "-o", str(partial)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise BitSerialUnavailableError(
                f"building the bit-serial kernel failed: {' '.join(command)}\n{done.stderr}"
            )
        os.replace(partial, target)
    for stale in directory.glob(f"libabn_bitserial_{kernel}_*.so"):
        if stale != target:  # an older source's build; a process that mapped it keeps it
            stale.unlink(missing_ok=True)
    return target


def _writable(directory: Path) -> bool:
    existing = next((p for p in [directory, *directory.parents] if p.exists()), None)
    return existing is not None and os.access(existing, os.W_OK)


def library_path(kernel: str) -> Path:
    """A built library of ``kernel``: an existing one, else built now (and kept)."""
    name = library_name(kernel)
    for directory in build_dirs():
        if (directory / name).is_file():
            return directory / name
    directory = next((d for d in build_dirs() if _writable(d)), None)
    if directory is None:
        raise BitSerialUnavailableError(
            f"no built bit-serial kernel ({name}) and nowhere writable to build one: "
            f"{', '.join(str(d) for d in build_dirs())}; run python -m abn.bitserial"
        )
    log.info("building the bit-serial %s kernel into %s (not built at install)", kernel, directory)
    return build(kernel, directory)


def load_kernel(kernel: str) -> ctypes.CDLL:
    """The ``kernel`` library, after checking (every time: it is cheap) that this CPU can
    run it; loaded once per process."""
    require_kernel(kernel)
    return _load(kernel)


@cache
def _load(kernel: str) -> ctypes.CDLL:
    path = library_path(kernel)
    lib = ctypes.CDLL(str(path))
    lib.abn_bitserial_simd.restype = ctypes.c_int
    lib.abn_bitserial_conv.restype = ctypes.c_int
    lib.abn_bitserial_conv.argtypes = [
        ctypes.POINTER(BitSerialLayer),
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_void_p,
        ctypes.c_void_p,
    ]
    if bool(lib.abn_bitserial_simd()) != (kernel == "avx512"):
        raise BitSerialUnavailableError(f"{path} is not the {kernel} kernel")
    return lib
