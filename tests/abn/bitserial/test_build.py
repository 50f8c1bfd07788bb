"""Building the kernels: named by the hash of source and flags, built once, kept."""

from __future__ import annotations

import pytest

from abn.bitserial import build
from abn.bitserial.cpu import BitSerialUnavailableError


def test_a_missing_library_is_built_once_into_the_first_writable_directory(
    monkeypatch, tmp_path
) -> None:
    monkeypatch.setattr(build, "build_dirs", lambda: [tmp_path / "kernels"])
    path = build.library_path("scalar")
    assert path.parent == tmp_path / "kernels" and path.name == build.library_name("scalar")
    assert path.stat().st_size > 0

    def no_rebuild(*_args):
        raise AssertionError("rebuilt although the library exists")

    monkeypatch.setattr(build, "build", no_rebuild)
    assert build.library_path("scalar") == path


def test_an_older_build_of_the_same_kernel_is_removed(tmp_path) -> None:
    stale = tmp_path / "libabn_bitserial_scalar_0000000000000000.so"
    stale.write_bytes(b"old")
    built = build.build("scalar", tmp_path)
    assert built.is_file() and not stale.exists()


def test_no_compiler_is_one_clear_error(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    with pytest.raises(BitSerialUnavailableError, match="no-such-compiler-here"):
        build.build("scalar", tmp_path)


def test_the_name_changes_with_the_flags(monkeypatch) -> None:
    before = build.library_name("scalar")
    monkeypatch.setenv("CXX", "clang++")
    assert build.library_name("scalar") != before


def test_the_cli_builds_every_kernel(tmp_path, capsys) -> None:
    from abn.bitserial.__main__ import main

    assert main(["--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.split()
    assert sorted(p.split("/")[-1].split("_")[2] for p in printed) == ["avx512", "scalar"]
