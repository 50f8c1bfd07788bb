"""The loaded model the service owns: supernet, policy, cost table, and one batched call.

Everything here is synchronous and CPU/GPU-bound; the batching engine calls :meth:`infer` in
its single worker thread, never on the event loop. After :meth:`ServedModel.load` the object
is read-only, so several apps (the tests) may share one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from abn.bitops import CostTable, cost_table
from abn.bitserial import BitSerialUnavailableError
from abn.devices import resolve_device
from abn.errors import ABNError, ConfigError
from abn.latency import measure_latency
from abn.policy import CompiledPolicy, WidthPolicy
from abn.preprocess import InputSpec, Normalizer
from abn.store import ModelDirectory, open_model_dir
from abn.supernet import Supernet
from service.accuracy import AccuracyTables
from service.backends import CHOICES, install_backend, resolve_backend

log = logging.getLogger("service")


class ModelLoadError(RuntimeError):
    """The model cannot be served; the message says why and what to do."""


@dataclass(frozen=True)
class BatchOutput:
    """One batch's answers, on the CPU: what the engine hands back per request."""

    probabilities: torch.Tensor  # (N, classes) float32
    widths: torch.Tensor  # (N, L) int64, one width per switchable layer: what answered
    bitops: torch.Tensor  # (N,) float64, every pass included
    first_pass: torch.Tensor | None = None  # (N, L) int64 first-pass widths, when there was one
    reran: torch.Tensor | None = None  # (N,) bool: which images the last decision re-ran


class CostFacts:
    """What the routes and metrics read of a model's cost table, for whatever holds one as
    ``table``: the served model, and a front end's view of the model process's
    (:class:`service.owner_facts.OwnerModel`)."""

    table: CostTable

    @property
    def layer_names(self) -> list[str]:
        return list(self.table.layer_names)

    @property
    def num_layers(self) -> int:
        return len(self.table.layer_macs)

    @property
    def bit_candidates(self) -> list[int]:
        return list(self.table.bit_candidates)

    @property
    def min_bitops(self) -> float:
        return self.table.min_bitops

    @property
    def max_bitops(self) -> float:
        return self.table.max_bitops


class ServedModel(CostFacts):
    """A model directory loaded for inference on one device."""

    def __init__(
        self,
        directory: ModelDirectory,
        net: Supernet,
        policy: WidthPolicy | None,
        table: CostTable,
        device: torch.device,
        backend: str = "float",
    ) -> None:
        self.directory = directory
        self.net = net
        self.policy = policy
        self.table = table
        self.device = device
        self.backend = backend  # how the switchable layers compute (service.backends.BACKENDS)
        # the manifest's latency table was measured on the float path; another backend's is
        # measured here, at warm-up (:meth:`warm_up`)
        self.latency: dict[str, Any] | None = (
            directory.manifest.get("latency") if backend == "float" else None
        )
        self.input_spec: InputSpec = directory.input_spec
        self.classes: list[str] = directory.classes
        self.name = str(directory.manifest.get("name", directory.path.name))
        self.version = str(directory.manifest.get("version", "unknown"))
        self.accuracy = AccuracyTables(directory.manifest.get("accuracy"))
        # what every batch would otherwise rebuild: the rollout's constants, normalisation's
        self.compiled = CompiledPolicy(net, table, policy, device)
        self.normalizer = Normalizer.for_spec(self.input_spec, device)

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", backend: str = "float") -> ServedModel:
        """Verify, load, move to the device and fold every width's weights once (packed into
        bit-planes as well for the bit-serial backend)."""
        started = time.perf_counter()
        try:
            target = resolve_device(device)
        except ConfigError as err:
            raise ModelLoadError(f"ABN_DEVICE={device}: {err}") from err
        try:
            directory = open_model_dir(path)
            net = directory.load_supernet(target).fold_for_inference()
            policy = directory.load_policy(target)
        except ABNError as err:
            raise ModelLoadError(f"cannot load the model directory {path}: {err}") from err
        except (OSError, KeyError, ValueError, TypeError) as err:
            raise ModelLoadError(
                f"cannot load the model directory {path}: {type(err).__name__}: {err}"
            ) from err
        if backend not in CHOICES:
            raise ModelLoadError(
                f"ABN_BACKEND must be one of {', '.join(CHOICES)}, not {backend!r}"
            )
        table = cost_table(net)
        runs_on = resolve_backend(backend, target)
        try:
            runs_on = install_backend(net, table, runs_on, auto=backend == "auto")
        except BitSerialUnavailableError as err:
            raise ModelLoadError(f"ABN_BACKEND={backend}: {err}") from err
        if len(directory.classes) != net.spec.num_classes:
            raise ModelLoadError(
                f"{path}: the manifest names {len(directory.classes)} classes but the network "
                f"has {net.spec.num_classes} outputs"
            )
        log.info(
            "loaded %s %s on %s, %s backend, in %.2fs (%s policy)",
            directory.manifest.get("name"),
            directory.manifest.get("version"),
            target,
            runs_on,
            time.perf_counter() - started,
            "learned" if policy is not None else "fallback",
        )
        return cls(directory, net, policy, table, target, runs_on)

    # -- facts ------------------------------------------------------------------------------

    @property
    def policy_kind(self) -> str:
        return "learned" if self.policy is not None else "uniform_fallback"

    def card(self) -> dict[str, Any]:
        """The model card of ``GET /v1/model`` (docs/api.md), plus a few useful extras."""
        manifest = self.directory.manifest
        return {
            "name": self.name,
            "version": self.version,
            "classes": list(self.classes),
            "input": self.input_spec.to_dict(),
            "layers": [
                {"name": n, "macs": int(m)}
                for n, m in zip(self.table.layer_names, self.table.layer_macs, strict=True)
            ],
            "bit_candidates": self.bit_candidates,
            "min_bitops": self.min_bitops,
            "max_bitops": self.max_bitops,
            "fixed_bitops": self.table.fixed_bitops,
            "accuracy": {
                "static": self.accuracy.static,
                "adaptive": self.accuracy.adaptive,
                "baselines": self.accuracy.baselines,
            },
            "latency": self.latency,
            "architecture": str(manifest.get("architecture", {}).get("name", "")),
            "policy": self.policy_kind,
            "device": str(self.device),
            "backend": self.backend,
        }

    # -- inference --------------------------------------------------------------------------
    def infer(
        self, images: torch.Tensor, budgets: torch.Tensor, pinned: torch.Tensor | None
    ) -> BatchOutput:
        """Classify a batch, each image at its own widths (policy, or pinned row when non-zero).

        ``images``: uint8 ``(N, C, H, W)``; ``budgets``: float64 ``(N,)``; ``pinned``: int64
        ``(N, L)`` or None. Runs layer by layer with samples grouped by width
        (:meth:`CompiledPolicy.rollout`).
        """
        with torch.inference_mode():
            x = self.normalizer(images.to(self.device, non_blocking=True))
            if pinned is not None and bool((pinned != 0).all()):
                return self._infer_pinned(x, pinned)
            result = self.compiled.rollout(
                x,
                budgets.to(self.device),
                pinned=None if pinned is None else pinned.to(self.device),
            )
            probabilities = torch.softmax(result.logits.float(), dim=1)
            first_pass = reran = None
            if result.escalation is not None:
                first_pass, reran = result.first_pass.long().cpu(), (result.escalation > 0).cpu()
            return BatchOutput(
                probabilities.cpu(),
                result.widths.long().cpu(),
                result.bitops.double().cpu(),
                first_pass,
                reran,
            )

    def _infer_pinned(self, x: torch.Tensor, pinned: torch.Tensor) -> BatchOutput:
        """Every sample pinned: no policy and no budget to track, so the plain forward pass at
        the pinned widths (one configuration for the whole batch when the rows agree, as
        uniform requests do), which computes exactly what the rollout would without its
        per-layer bookkeeping."""
        rows = pinned.tolist()
        same = all(row == rows[0] for row in rows)
        logits = self.net(x, rows[0] if same else pinned.to(self.device))
        probabilities = torch.softmax(logits.float(), dim=1)
        costs = [self.table.cost(rows[0])] * len(rows) if same else map(self.table.cost, rows)
        bitops = torch.tensor(list(costs), dtype=torch.float64)
        return BatchOutput(probabilities.cpu(), pinned.long().cpu(), bitops)

    def warm_up(self, max_batch_size: int) -> None:
        """Run every width once (and one mixed adaptive batch) so no request pays first-call
        costs: allocator growth, kernel selection, lazy CUDA initialisation."""
        spec = self.input_spec
        n = self.num_layers
        one = torch.zeros(1, spec.channels, spec.height, spec.width, dtype=torch.uint8)
        for bits in self.bit_candidates:
            self.infer(one, torch.tensor([self.max_bitops]), torch.full((1, n), bits))
        batch = max(1, min(max_batch_size, 64))
        images = torch.randint(
            0, 256, (batch, spec.channels, spec.height, spec.width), dtype=torch.uint8
        )
        budgets = torch.linspace(self.min_bitops, self.max_bitops, batch, dtype=torch.float64)
        self.infer(images, budgets, None)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        if self.backend != "float":  # the card's latency table, on this backend and machine
            measured = measure_latency(
                self.net, self.table, self.input_spec, batch, 5, 1, progress=False
            )
            self.latency = measured | {"backend": self.backend, "measured": "at start"}
