"""Feature detection: a kernel the CPU cannot run is refused with the reason, before loading."""

from __future__ import annotations

import pytest

from abn.bitserial import cpu
from abn.bitserial.build import load_kernel
from abn.bitserial.cpu import BitSerialUnavailableError, require_kernel


def test_avx512_kernel_is_refused_without_vpopcntdq(monkeypatch) -> None:
    flags = frozenset({"popcnt", "avx512f", "avx512bw", "avx512dq"})
    monkeypatch.setattr(cpu, "cpu_flags", lambda: flags)
    with pytest.raises(BitSerialUnavailableError, match="avx512_vpopcntdq") as err:
        load_kernel("avx512")
    assert "ABN_BACKEND=float" in str(err.value)


def test_without_cpuinfo_nothing_is_assumed(monkeypatch) -> None:
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset())
    with pytest.raises(BitSerialUnavailableError, match="no /proc/cpuinfo"):
        require_kernel("scalar")


def test_an_unknown_kernel_names_the_known_ones() -> None:
    with pytest.raises(BitSerialUnavailableError, match="avx512, scalar"):
        require_kernel("neon")


def test_flags_are_read_from_the_flags_line(monkeypatch, tmp_path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu popcnt avx512f\n\nprocessor\t: 1\n")
    monkeypatch.setattr(cpu, "CPUINFO", info)
    cpu.cpu_flags.cache_clear()
    try:
        assert cpu.cpu_flags() == frozenset({"fpu", "popcnt", "avx512f"})
        assert cpu.missing_flags("avx512") == ["avx512bw", "avx512dq", "avx512_vpopcntdq"]
    finally:
        cpu.cpu_flags.cache_clear()
