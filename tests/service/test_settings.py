"""Settings from ABN_* variables, and `abn serve` options overriding them."""

from __future__ import annotations

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
