"""A model directory: ``manifest.json`` plus safetensors weights, each verified by sha256.

Layout::

    model_store/<name>/
        manifest.json          name, version, architecture, bit candidates, classes, input,
                               files (sha256 + bytes of each), training, accuracy tables
        supernet.safetensors   the shared full-precision weights, steps, clip levels, all BNs
        policy.safetensors     the per-image width policy (once stage 2 has run)

Nothing is unpickled: tensors come from safetensors, everything else from JSON.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from abn.errors import ModelIntegrityError
from abn.policy import PolicySpec, WidthPolicy
from abn.preprocess import InputSpec
from abn.supernet import ResNetSpec, Supernet


def _default_model_dir() -> Path:
    """The shipped model: beside the package in a source checkout (an editable install too),
    else ``model_store/fmnist-abn`` under the working directory; a wheel carries no model, so
    an installed package run elsewhere is told to name one (``--model DIR``)."""
    beside = Path(__file__).resolve().parent.parent / "model_store" / "fmnist-abn"
    return beside if beside.is_dir() else Path("model_store") / "fmnist-abn"


DEFAULT_MODEL_DIR = _default_model_dir()
MANIFEST = "manifest.json"
SUPERNET_FILE = "supernet.safetensors"
POLICY_FILE = "policy.safetensors"
FORMAT_VERSION = 1
logger = logging.getLogger(__name__)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_json_atomic(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".manifest.")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a container's non-root user must read it
    os.replace(tmp, path)


def state_to_safetensors(module: torch.nn.Module, path: Path) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(path))
    os.chmod(path, 0o644)  # safetensors writes 0600; a container's non-root user must read it


@dataclass
class ModelDirectory:
    """A verified model directory: its manifest and the paths of its weight files."""

    path: Path
    manifest: dict[str, Any]

    @property
    def spec(self) -> ResNetSpec:
        return ResNetSpec.from_dict(self.manifest["architecture"])

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec.from_dict(self.manifest["input"])

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def has_policy(self) -> bool:
        return POLICY_FILE in self.manifest.get("files", {})

    def load_supernet(self, device: str | torch.device = "cpu") -> Supernet:
        net = Supernet(self.spec)
        load_state_strict(net, self.path / SUPERNET_FILE)
        return net.to(device).eval()

    def load_policy(self, device: str | torch.device = "cpu") -> WidthPolicy | None:
        """The trained width policy, or None when stage 2 has not run for this model."""
        if not self.has_policy:
            return None
        policy = WidthPolicy(PolicySpec.from_dict(self.manifest["policy"]["spec"]))
        load_state_strict(policy, self.path / POLICY_FILE)
        return policy.to(device).eval()


def load_state_strict(module: torch.nn.Module, path: Path) -> None:
    """Load a safetensors state dict, refusing missing, unexpected or misshapen tensors with
    their names."""
    state = load_file(str(path))
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshapen = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or misshapen:
        raise ModelIntegrityError(
            f"{path.name} does not match the architecture in the manifest: missing "
            f"{missing[:5]}, unexpected {unexpected[:5]}, wrong shape {misshapen[:5]}"
        )
    module.load_state_dict(state)


def open_model_dir(path: str | Path) -> ModelDirectory:
    """Read the manifest and verify the sha256 of every file it lists; raise naming the file."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not path.is_dir():
        raise ModelIntegrityError(
            f"model directory {path} does not exist; pass --model DIR (or set ABN_MODEL_DIR) "
            f"to name a directory holding {MANIFEST} and {SUPERNET_FILE}"
        )
    if not manifest_path.is_file():
        raise ModelIntegrityError(f"{manifest_path} is missing: {path} is not a model directory")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelIntegrityError(f"{manifest_path} is not valid JSON: {err}") from err
    files = manifest.get("files")
    if not isinstance(files, dict) or SUPERNET_FILE not in files:
        raise ModelIntegrityError(f"{manifest_path} lists no {SUPERNET_FILE} under 'files'")
    for name, entry in files.items():
        file_path = path / name
        if not file_path.is_file():
            raise ModelIntegrityError(f"{file_path} is listed in the manifest but missing")
        size = file_path.stat().st_size
        if size != entry.get("bytes", size):
            raise ModelIntegrityError(
                f"{file_path} has {size} bytes but the manifest says {entry['bytes']}: "
                f"the file is truncated or replaced"
            )
        actual = sha256_of(file_path)
        if actual != entry.get("sha256"):
            raise ModelIntegrityError(
                f"{file_path} fails its sha256 check (manifest {entry.get('sha256')}, file "
                f"{actual}): the file was altered or corrupted; refusing to load it"
            )
    return ModelDirectory(path, manifest)


@dataclass
class ModelDescription:
    """What the manifest says about a model besides its weights and their checksums, as the
    trainer gives it (the HTTP model card, ``service.schemas.ModelCard``, is read from the
    whole manifest)."""

    name: str
    version: str
    classes: list[str]
    input_spec: InputSpec
    training: dict[str, Any] = field(default_factory=dict)
    accuracy: dict[str, Any] = field(default_factory=lambda: {"static": [], "adaptive": []})
    data: dict[str, Any] | None = None  # where the images came from (abn.datasource)


def save_model_dir(path: str | Path, net: Supernet, card: ModelDescription) -> ModelDirectory:
    """Write the supernet and a fresh manifest. A policy already in the directory is kept only
    when the supernet is unchanged: a policy learnt on other weights (or classes) is dropped."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    old = {}
    if (path / MANIFEST).is_file():
        old = json.loads((path / MANIFEST).read_text())
    state_to_safetensors(net, path / SUPERNET_FILE)
    old_sha = old.get("files", {}).get(SUPERNET_FILE, {}).get("sha256")
    if "policy" in old and old_sha != sha256_of(path / SUPERNET_FILE):
        del old["policy"]
        (path / POLICY_FILE).unlink(missing_ok=True)
        logger.warning(
            "%s: the supernet changed, so its old policy no longer fits and was removed; "
            "train a new one with: abn train policy --model %s",
            path,
            path,
        )
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": card.name,
        "version": card.version,
        "architecture": net.spec.to_dict(),
        "bit_candidates": list(net.bit_candidates),
        "classes": list(card.classes),
        "input": card.input_spec.to_dict(),
        "files": {},
        "training": card.training,
        "accuracy": card.accuracy,
    }
    if card.data:
        manifest["data"] = card.data
    if "policy" in old and (path / POLICY_FILE).is_file():
        manifest["policy"] = old["policy"]
    return _rehash(path, manifest)


def save_policy(path: str | Path, policy: torch.nn.Module, policy_info: dict) -> ModelDirectory:
    """Add (or replace) the policy weights in a model directory and record them in the manifest."""
    path = Path(path)
    manifest = json.loads((path / MANIFEST).read_text())
    state_to_safetensors(policy, path / POLICY_FILE)
    manifest["policy"] = policy_info
    return _rehash(path, manifest)


def update_manifest(path: str | Path, **fields: Any) -> ModelDirectory:
    """Replace top-level manifest fields (e.g. ``accuracy``) and rehash."""
    path = Path(path)
    manifest = json.loads((path / MANIFEST).read_text())
    manifest.update(fields)
    return _rehash(path, manifest)


def _rehash(path: Path, manifest: dict) -> ModelDirectory:
    names = [SUPERNET_FILE] + ([POLICY_FILE] if "policy" in manifest else [])
    manifest["files"] = {
        n: {"sha256": sha256_of(path / n), "bytes": (path / n).stat().st_size} for n in names
    }
    _write_json_atomic(path / MANIFEST, manifest)
    return ModelDirectory(path, manifest)
