"""The benchmark's and soak's server starter: settings reach ``abn serve`` under the right names,
and a name it does not know stops the run instead of being ignored."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.server import ManagedServer, parse_settings, setting_variable

pytestmark = pytest.mark.timeout(180)  # the shared tiny model may be built in setup


def test_setting_names_are_normalised_once() -> None:
    assert setting_variable("torch_threads") == "ABN_TORCH_THREADS"
    assert setting_variable("ABN_TORCH_THREADS") == "ABN_TORCH_THREADS"  # not ABN_ABN_...
    assert setting_variable("abn_torch_threads") == "ABN_TORCH_THREADS"
    assert parse_settings(["ABN_TORCH_THREADS=1", "max_queue_delay_seconds=0.002"]) == {
        "ABN_TORCH_THREADS": "1",
        "ABN_MAX_QUEUE_DELAY_SECONDS": "0.002",
    }
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_settings(["torch_threads"])


def test_an_unknown_setting_stops_the_server_at_once(tiny_model_dir: Path, tmp_path: Path) -> None:
    server = ManagedServer(tiny_model_dir, tmp_path / "server.log", torch_thread=1)
    with pytest.raises(RuntimeError, match="did you mean ABN_TORCH_THREADS"):
        server.start(ready_timeout=30)


def test_the_slow_client_tool_is_bounded_and_local(capsys: pytest.CaptureFixture[str]) -> None:
    from loadtest.slow_clients import main

    assert main(["--host", "192.0.2.1", "--port", "8000"]) == 2
    assert "loopback" in capsys.readouterr().err
    assert main(["--port", "8000", "--connections", "20001"]) == 2
    assert main(["--port", "8000", "--seconds", "601"]) == 2
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0 and "usage:" in capsys.readouterr().out
