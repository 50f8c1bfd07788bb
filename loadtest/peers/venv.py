"""The peers' own virtual environment, made by the bench when it lacks what a peer needs.

LitServe and its dependencies must not enter the project's environment (what the tests and the
service run on), so the peers get their own, ``.venv-peers`` by default: ``python -m venv``,
then pip with the project's constraints file (torch stays the pinned CPU build) installing the
peers' frameworks and this project itself (editable), so the peers import the same ``abn`` the
service does. An environment that already imports everything is used as it is: the second
``make bench`` installs nothing, and pointing ``--peers-venv`` at the project's own ``.venv``
runs the in-repo peers (naive, lean) without any install, as the tests do.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

PEER_PACKAGES = ("litserve", "fastapi", "uvicorn")
# what abn needs: the peers run this checkout's abn (PYTHONPATH), on the environment's packages
MODEL_MODULES = ("torch", "safetensors", "PIL", "numpy")
ROOT = Path(__file__).resolve().parents[2]
CONSTRAINTS = ROOT / "constraints.txt"


class PeerEnvironmentError(RuntimeError):
    """The environment could not be made; the message has pip's last words."""


def python_of(venv: Path) -> Path:
    return venv / "bin" / "python"


def missing_modules(python: Path, modules: Iterable[str]) -> list[str]:
    """The modules ``python`` cannot import (all of them when it does not run)."""
    wanted = sorted(set(modules))
    if not python.exists():
        return wanted
    probe = (
        "import importlib.util as u, sys; print(*[m for m in sys.argv[1:] if not u.find_spec(m)])"
    )
    done = subprocess.run([str(python), "-c", probe, *wanted], capture_output=True, text=True)
    return wanted if done.returncode != 0 else done.stdout.split()


def ensure_environment(venv: Path, modules: Iterable[str], log: Path) -> Path:
    """The interpreter of ``venv``, made and installed first if it cannot import ``modules``
    (and what the model needs); pip's output goes to ``log``."""
    python = python_of(venv)
    modules = [*modules, *MODEL_MODULES]
    if not missing_modules(python, modules):
        return python
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        steps = [[sys.executable, "-m", "venv", str(venv)]] if not python.exists() else []
        pip = [str(python), "-m", "pip", "install", "--constraint", str(CONSTRAINTS)]
        steps.append([*pip, *PEER_PACKAGES, "-e", str(ROOT)])
        for step in steps:
            if subprocess.run(step, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
                tail = log.read_text(errors="replace")[-1500:]
                raise PeerEnvironmentError(f"{' '.join(step[:4])} ... failed:\n{tail}")
    still = missing_modules(python, modules)
    if still:
        raise PeerEnvironmentError(f"{venv}: still cannot import {', '.join(still)} (see {log})")
    return python
