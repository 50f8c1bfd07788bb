"""What both training stages share: process group set-up, checkpoints, optimizer state I/O.

Checkpoints are safetensors (tensors) plus JSON (everything else), never pickles, so resuming
a run from an untrusted disk cannot execute code.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from abn.devices import resolve_device
from abn.errors import CheckpointMismatchError


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def step_generator(seed: int, step: int) -> torch.Generator:
    """The random draws of one training step (its configurations, its batch and budgets),
    seeded by (seed, step) alone: a resumed run draws what an uninterrupted one would."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def setup_distributed(device: str = "auto") -> DistContext:
    """Join the process group when launched by torchrun (gloo on CPU, nccl on GPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank if world_size > 1 else (dev.index or 0))
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistContext(rank, world_size, local_rank, dev)


def teardown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _split_optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for idx, entry in state["state"].items():
        plain["state"][str(idx)] = {}
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                plain["state"][str(idx)][key] = value
    return tensors, plain


def _join_optimizer_state(tensors: dict[str, torch.Tensor], plain: dict) -> dict:
    state: dict[int, dict] = {int(i): dict(v) for i, v in plain["state"].items()}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": plain["param_groups"]}


def save_checkpoint(
    directory: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    meta: dict[str, Any],
) -> Path:
    """Write ``last.safetensors`` + ``last.json`` atomically (a crash leaves the old pair)."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt_tensors, opt_plain = _split_optimizer_state(optimizer)
    tensors.update(opt_tensors)
    tmp = directory / "last.safetensors.tmp"
    save_file(tensors, str(tmp))
    meta_tmp = directory / "last.json.tmp"
    meta_tmp.write_text(json.dumps({**meta, "optimizer": opt_plain}, indent=1))
    os.replace(tmp, directory / "last.safetensors")
    os.replace(meta_tmp, directory / "last.json")
    return directory / "last.safetensors"


def load_checkpoint(
    directory: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    device: torch.device,
) -> dict[str, Any]:
    """Restore model and optimizer from :func:`save_checkpoint`; return its metadata."""
    path = directory / "last.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint to resume from: {path} does not exist")
    tensors = load_file(str(path), device=str(device))
    meta = json.loads((directory / "last.json").read_text())
    state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    check_checkpoint_fits(directory, model, state, meta)
    model.load_state_dict(state)
    if optimizer is not None:
        opt = {k: v for k, v in tensors.items() if k.startswith("optim.")}
        optimizer.load_state_dict(_join_optimizer_state(opt, meta["optimizer"]))
    return meta


def check_checkpoint_fits(
    directory: Path, model: torch.nn.Module, state: dict[str, torch.Tensor], meta: dict
) -> None:
    """Refuse, in one line, a checkpoint written for another network (architecture, classes,
    widths or input), before ``load_state_dict`` lists every mismatched tensor."""
    expected = model.state_dict()
    differ = [
        k for k, v in expected.items() if k not in state or tuple(state[k].shape) != v.shape
    ] + [k for k in state if k not in expected]
    if differ:
        config = meta.get("config", {})
        was = ", ".join(
            f"{key} {config[key]}" for key in ("arch", "model", "bit_candidates") if key in config
        )
        raise CheckpointMismatchError(
            f"the checkpoint in {directory} was written for another network ({was or 'unknown'}"
            f"; {len(differ)} tensors differ, e.g. {differ[0]}); drop --resume to start "
            f"afresh, or pass --checkpoints DIR to keep the old run"
        )


def has_checkpoint(directory: Path) -> bool:
    return (directory / "last.safetensors").is_file() and (directory / "last.json").is_file()
