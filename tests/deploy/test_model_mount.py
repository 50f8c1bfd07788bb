"""A model directory mounted read-only is enough to serve: what compose.yaml and the
Kubernetes model-volume component do (docs/operations.md, "Changing the model without a
rebuild").

A real ``abn serve`` serves a copy of the tiny test model from a "store" folder with every
write bit cleared, as a ``:ro`` bind mount or a read-only PVC presents it, takes a request,
and stops; the folder must be byte for byte as it was, with nothing added (tests may run as
root, whom write bits do not stop, so the check is on the files themselves).
"""

from __future__ import annotations

import hashlib
import shutil
import stat
from pathlib import Path

import httpx
import pytest

from tests.service.helpers import ServerProcess, png

pytestmark = pytest.mark.timeout(300)  # may build the shared tiny model first


def snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    """Relative path -> (mode, sha256) of everything under ``folder``, folders included."""
    out = {}
    for path in sorted([folder, *folder.rglob("*")]):
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        out[str(path.relative_to(folder))] = (path.stat().st_mode, digest)
    return out


def test_a_read_only_model_directory_serves_and_stays_untouched(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    model = tmp_path / "models" / tiny_model_dir.name
    shutil.copytree(tiny_model_dir, model)
    for path in [model.parent, model, *model.rglob("*")]:
        path.chmod(stat.S_IMODE(path.stat().st_mode) & ~0o222)
    before = snapshot(model.parent)
    server = ServerProcess(model, tmp_path / "server.log")
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=30.0) as c:
            answer = c.post("/classify", content=png(3), headers={"Content-Type": "image/png"})
            assert answer.status_code == 200, answer.text
            card = c.get("/v1/model").json()
    finally:
        assert server.stop() == 0, server.log()
    assert card["name"] == answer.json()["model"]["name"]
    assert snapshot(model.parent) == before
    for path in [model.parent, model, *model.rglob("*")]:  # let pytest remove it
        path.chmod(stat.S_IMODE(path.stat().st_mode) | 0o200)
