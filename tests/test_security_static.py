"""Static guarantees, read from the source: nothing is ever unpickled, and the container runs
as a non-root user with everything its entry point imports.

Unpickling a model file runs whatever code the file carries, so a tampered model directory
would be remote code execution; the project loads tensors from safetensors and everything
else from JSON. These tests fail the moment a loader that can unpickle appears in the shipped
packages - also in a new file, also under an alias - rather than relying on review.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("abn", "service", "loadtest", "commands")
# Modules whose loaders unpickle (or execute) what they read.
PICKLING_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve"}
PICKLING_MODULES |= {"marshal", "torch.serialization"}


def sources() -> list[Path]:
    files = sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))
    assert len(files) > 20 and all(f.stat().st_size for f in files if f.name != "__init__.py")
    return files


def code_only(text: str) -> str:
    """The source without comments and string literals (docstrings may say 'pickle')."""
    kept = []
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type not in (tokenize.COMMENT, tokenize.STRING):
            kept.append(token.string)
    return " ".join(kept)


def dotted(node: ast.AST) -> str:
    """``torch.load`` for the expression ``torch.load`` (empty when not a plain name chain)."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def unpickling_sites(path: Path) -> list[str]:
    """Every place in one file that imports a pickling module or calls a loader that can
    unpickle: ``torch.load`` (any arguments), ``np.load``/``numpy.load`` unless
    ``allow_pickle`` is literally False, ``pandas.read_pickle``."""
    text = path.read_text()
    tree = ast.parse(text, filename=str(path))
    label = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
    found = []
    for node in ast.walk(tree):
        where = f"{label}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            found += [f"{where} import {a.name}" for a in node.names if a.name in PICKLING_MODULES]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            names = {a.name for a in node.names}
            if module in PICKLING_MODULES or (module == "torch" and "load" in names):
                found.append(f"{where} from {module} import {', '.join(sorted(names))}")
        elif isinstance(node, ast.Call):
            name = dotted(node.func)
            if name in ("torch.load", "torch.serialization.load") or name.endswith("read_pickle"):
                found.append(f"{where} {name}(...)")
            elif name in ("np.load", "numpy.load"):
                allow = [k for k in node.keywords if k.arg == "allow_pickle"]
                if allow and not (
                    isinstance(allow[0].value, ast.Constant) and allow[0].value.value is False
                ):
                    found.append(f"{where} {name}(..., allow_pickle=...)")
    # grep-style, on the code without comments and strings: catches what the AST walk might
    # not (a loader reached through getattr or an alias)
    code = code_only(text)
    for pattern in (r"\btorch \. load\b", r"\bpickle\b", r"allow_pickle = True", r"\bdill\b"):
        if re.search(pattern, code):
            found.append(f"{label}: matches {pattern!r}")
    return found


def test_nothing_in_the_code_base_can_unpickle() -> None:
    sites = [site for path in sources() for site in unpickling_sites(path)]
    assert not sites, "loaders that can unpickle:\n" + "\n".join(sites)


@pytest.mark.parametrize(
    "snippet",
    [
        "import torch\nstate = torch.load(path)",
        "import torch\nstate = torch.load(path, weights_only=True)",
        "import pickle\n",
        "from pickle import loads\n",
        "from torch import load\n",
        "import numpy as np\nx = np.load(p, allow_pickle=True)",
        "import numpy\nx = numpy.load(p, allow_pickle=flag)",
        "import pandas as pd\nx = pd.read_pickle(p)",
        "import joblib\n",
        "loader = getattr(__import__('pic' + 'kle'), 'load')\nimport dill",
    ],
)
def test_the_scanner_finds_each_way_to_unpickle(snippet: str, tmp_path: Path) -> None:
    """The check itself is checked: each of these is caught."""
    path = tmp_path / "probe.py"
    path.write_text(snippet)
    assert unpickling_sites(path), snippet


def test_the_scanner_accepts_safe_loading(tmp_path: Path) -> None:
    path = tmp_path / "probe.py"
    path.write_text(
        '"""Nothing is unpickled."""\nimport numpy as np\nfrom safetensors.torch import '
        "load_file\nx = np.load(p, allow_pickle=False)\ny = np.load(p)  # no pickle\n"
    )
    assert unpickling_sites(path) == []


def test_the_model_store_loads_only_safetensors_and_json() -> None:
    store = (ROOT / "abn" / "store.py").read_text()
    assert "from safetensors.torch import load_file" in store
    assert "json.loads" in store


# -- the container ------------------------------------------------------------------------------
def final_stage(dockerfile: str) -> list[str]:
    """The instructions of the last stage (continuation lines joined, comments dropped)."""
    joined = re.sub(r"\\\n", " ", dockerfile)
    lines = [line.strip() for line in joined.splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    starts = [i for i, line in enumerate(instructions) if line.upper().startswith("FROM ")]
    assert starts, "no FROM in the Dockerfile"
    return instructions[starts[-1] :]


def test_the_container_runs_as_a_non_root_user() -> None:
    stage = final_stage((ROOT / "Dockerfile").read_text())
    users = [line.split(None, 1)[1].strip() for line in stage if line.upper().startswith("USER ")]
    assert users, "the final stage never sets USER: the service would run as root"
    user, _, group = users[-1].partition(":")
    assert user not in ("root", "0") and not user.startswith("$"), users[-1]
    assert group not in ("root", "0"), users[-1]
    # and the entry point comes after it, so nothing the service runs is root's
    last_user = max(i for i, line in enumerate(stage) if line.upper().startswith("USER "))
    entry = [i for i, line in enumerate(stage) if line.upper().startswith(("ENTRYPOINT", "CMD"))]
    assert entry and min(entry) > last_user


def test_the_image_holds_every_package_its_entry_point_needs() -> None:
    """The console scripts' packages are copied into the image and let through
    .dockerignore (the image's ``abn`` would otherwise fail to import at start)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    packages = {target.split(":")[0].split(".")[0] for target in project["scripts"].values()}
    packages |= {"abn", "service"}
    dockerfile = (ROOT / "Dockerfile").read_text()
    ignore = (ROOT / ".dockerignore").read_text().split()
    for package in sorted(packages):
        assert re.search(rf"^COPY {package} \./{package}$", dockerfile, re.M), package
        assert f"!{package}/" in ignore, package
