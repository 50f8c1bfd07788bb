"""Settings from ABN_* variables, and `abn serve` options overriding them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

import service.server
from abn.store import DEFAULT_MODEL_DIR
from commands.abn import main
from service.settings import Settings, unknown_variables

pytestmark = pytest.mark.timeout(60)


def test_defaults_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ABN_MODEL_DIR", "ABN_DEFAULT_BUDGET", "ABN_API_KEY", "ABN_PORT", "ABN_DEVICE"):
        monkeypatch.delenv(name, raising=False)
    s = Settings()
    assert s.model_dir == DEFAULT_MODEL_DIR and s.device == "auto" and s.port == 8000
    assert s.default_budget is None and s.api_key is None
    assert s.max_body_bytes == 10 * 1024 * 1024
    monkeypatch.setenv("ABN_DEFAULT_BUDGET", "25M")
    monkeypatch.setenv("ABN_API_KEY", "")
    monkeypatch.setenv("ABN_MAX_QUEUE_DELAY_SECONDS", "0.002")
    s = Settings()
    assert s.default_budget == 25e6 and s.api_key is None and s.max_queue_delay_seconds == 0.002
    for name, bad in (
        ("ABN_DEFAULT_BUDGET", "nan"),
        ("ABN_DEFAULT_BUDGET", "-1"),
        ("ABN_DEVICE", "tpu"),
        ("ABN_MAX_BATCH_SIZE", "0"),
    ):
        monkeypatch.setenv(name, bad)
        with pytest.raises(ValidationError):
            Settings()
        monkeypatch.delenv(name)


def test_serve_options_override_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[Settings] = []
    monkeypatch.setattr(service.server, "serve", lambda settings: seen.append(settings) or 0)
    monkeypatch.setenv("ABN_MODEL_DIR", "/env/model")
    monkeypatch.setenv("ABN_PORT", "9000")
    monkeypatch.setenv("ABN_HOST", "10.0.0.1")
    assert main(["serve"]) == 0
    assert seen[-1].model_dir == Path("/env/model") and seen[-1].port == 9000
    assert main(["serve", "--model", str(tmp_path), "--port", "1234", "--host", "127.0.0.1"]) == 0
    assert (seen[-1].model_dir, seen[-1].port, seen[-1].host) == (tmp_path, 1234, "127.0.0.1")
    monkeypatch.setenv("ABN_MAX_QUEUE_SIZE", "lots")
    assert main(["serve"]) == 2
    assert "ABN_MAX_QUEUE_SIZE" in capsys.readouterr().err


def test_safe_and_bounded_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ABN_HOST", "ABN_BODY_TIMEOUT_SECONDS", "ABN_LIMIT_CONCURRENCY"):
        monkeypatch.delenv(name, raising=False)
    s = Settings()
    assert s.host == "127.0.0.1"  # only the container opts into 0.0.0.0
    assert 0 < s.body_timeout_seconds <= 10 and 0 < s.header_timeout_seconds <= 10
    assert 0 < s.limit_concurrency <= 10_000


def test_a_misspelt_setting_stops_abn_serve(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[Settings] = []
    monkeypatch.setattr(service.server, "serve", lambda settings: seen.append(settings) or 0)
    monkeypatch.setenv("ABN_ABN_TORCH_THREADS", "1")  # what soak.py --set used to produce
    assert main(["serve"]) == 2 and not seen
    err = capsys.readouterr().err
    assert "ABN_ABN_TORCH_THREADS (did you mean ABN_TORCH_THREADS?)" in err
    monkeypatch.delenv("ABN_ABN_TORCH_THREADS")
    monkeypatch.setenv("ABN_FASHION_MNIST_DIR", "/data")  # the model library's, not a setting
    monkeypatch.setenv("ABN_TORCH_THREADS", "1")
    assert main(["serve"]) == 0 and seen[-1].torch_threads == 1
    assert unknown_variables({"ABN_BODY_TIMEOUT_SECONDS": "1", "PATH": "/bin"}) == []


# -- docs/api.md's settings table ------------------------------------------------------------
API_DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def documented_settings() -> dict[str, str]:
    """The ``## Settings`` table of docs/api.md: each variable named in a row's first cell ->
    its default cell (a row naming two variables, ``ABN_HOST``, ``ABN_PORT``, gives two)."""
    section = API_DOC.read_text().split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        if not line.startswith("| `ABN_"):
            continue
        name_cell, default_cell = (c.strip() for c in line.strip("|").split("|")[:2])
        names = re.findall(r"`(ABN_[A-Z0-9_]+)`", name_cell)
        defaults = default_cell.split(", ") if len(names) > 1 else [default_cell]
        rows.update(zip(names, defaults, strict=True))
    return rows


def shown_default(value: object) -> str:
    """A setting's default as the table writes it: ``unset`` for None, ``true``/``false``,
    whole floats without ``.0``."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def test_the_settings_table_in_the_docs_is_every_setting_with_its_default() -> None:
    documented = documented_settings()
    fields = {f"ABN_{name.upper()}": field for name, field in Settings.model_fields.items()}
    missing = sorted(fields.keys() - documented.keys())
    extra = sorted(documented.keys() - fields.keys())
    assert not missing, f"docs/api.md's settings table has no row for: {', '.join(missing)}"
    assert not extra, f"docs/api.md's settings table has rows no setting reads: {', '.join(extra)}"
    wrong = []
    for name, field in fields.items():
        cell = re.sub(r"\s*\(.*$", "", documented[name]).strip("`")  # "unset (= ...)": unset
        expected = shown_default(field.default)
        if not (cell == expected or (isinstance(field.default, Path) and expected.endswith(cell))):
            wrong.append(f"{name}: the table says {documented[name]!r}, Settings {expected!r}")
    assert not wrong, "docs/api.md's settings table gives other defaults:\n" + "\n".join(wrong)
