"""ABN_BACKEND: what ``auto`` becomes on this machine, and the fallback when the kernel
cannot run."""

from __future__ import annotations

import logging

import pytest
import torch

from abn.bitserial import BitSerialUnavailableError, cpu
from service import backends
from service.backends import install_backend, resolve_backend
from service.model import ServedModel

RUNNABLE = not cpu.missing_flags("avx512")
ALL_FLAGS = frozenset(cpu.AVX512_FLAGS) | {"popcnt"}


def test_auto_is_mixed_on_a_cpu_with_the_kernel_and_float_elsewhere(monkeypatch) -> None:
    monkeypatch.setattr(cpu, "cpu_flags", lambda: ALL_FLAGS)
    assert resolve_backend("auto", torch.device("cpu")) == "mixed"
    assert resolve_backend("auto", torch.device("cuda")) == "float"
    monkeypatch.setattr(cpu, "cpu_flags", lambda: ALL_FLAGS - {"avx512_vpopcntdq"})
    assert resolve_backend("auto", torch.device("cpu")) == "float"
    for explicit in ("float", "bitserial", "mixed"):
        assert resolve_backend(explicit, torch.device("cpu")) == explicit


def test_auto_falls_back_to_float_when_the_kernel_cannot_build(
    monkeypatch, tiny_model_dir, caplog
) -> None:
    def no_compiler(*_args, **_kwargs):
        raise BitSerialUnavailableError("no g++ to build the kernel")

    monkeypatch.setattr(backends, "use_fastest_kernels", no_compiler)
    loaded = ServedModel.load(tiny_model_dir, "cpu", "float")
    net, table = loaded.net, loaded.table
    with caplog.at_level(logging.WARNING, logger="service"):
        assert install_backend(net, table, "mixed", auto=True) == "float"
    assert "no g++" in caplog.text
    with pytest.raises(BitSerialUnavailableError, match="no g"):
        install_backend(net, table, "mixed", auto=False)


def test_the_card_names_the_backend_auto_resolved_to(tiny_model_dir) -> None:
    model = ServedModel.load(tiny_model_dir, "cpu", "auto")
    assert model.card()["backend"] == ("mixed" if RUNNABLE else "float")
