"""What one app instance holds, and the readiness lifecycle around loading the model.

Phases: ``loading`` -> ``warming`` -> ``ready`` -> ``draining`` (or ``failed``). The model is
loaded in the background after the server starts listening, so ``/healthz`` and ``/readyz``
answer (200 and 503) while a large model loads instead of the port being closed.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import secrets
from collections.abc import Callable
from typing import Literal

import torch
from fastapi import Request

from service.engine import BatchingEngine
from service.errors import NotReady, ShuttingDown
from service.feedback import RecentPredictions
from service.metrics import ServiceMetrics
from service.model import ModelLoadError, ServedModel
from service.multiprocess_metrics import multiprocess_dir
from service.owner_client import OwnerEngine, connect_owner
from service.owner_facts import OwnerModel
from service.settings import Settings, runs_inline
from service.signed_ids import SignedIds
from service.supervisor import OWNER_SOCKET_VARIABLE
from service.worker_readiness import WorkerReadiness

log = logging.getLogger("service")

Phase = Literal["loading", "warming", "ready", "draining", "failed"]
Loader = Callable[[Settings], ServedModel]


def load_from_settings(settings: Settings) -> ServedModel:
    return ServedModel.load(settings.model_dir, settings.device, settings.backend)


def feedback_key(settings: Settings) -> bytes:
    """``ABN_FEEDBACK_KEY``, or a key of this process alone (``abn serve`` sets one for all its
    workers when the setting is unset, see :mod:`service.supervisor`)."""
    if settings.feedback_key is not None:
        return settings.feedback_key.get_secret_value().encode()
    return secrets.token_bytes(32)


class ServiceState:
    """Shared by every route through :func:`get_state`."""

    def __init__(
        self,
        settings: Settings,
        loader: Loader = load_from_settings,
        on_fatal: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.loader = loader
        self.on_fatal = on_fatal
        self.metrics = ServiceMetrics(
            settings.max_batch_size,
            deprecated_names=settings.deprecated_metrics,
            multiprocess_dir=multiprocess_dir(),
        )
        self.predictions = RecentPredictions(
            settings.feedback_capacity, settings.feedback_ttl_seconds
        )
        self.phase: Phase = "loading"
        self.model: ServedModel | OwnerModel | None = None
        self.engine: BatchingEngine | OwnerEngine | None = None
        self.default_budget: float = float("inf")
        self.model_ref: dict[str, str] = {}  # the response's "model", built once at load
        self.load_error: str | None = None
        self.workers = WorkerReadiness.from_environment()  # the server's other processes
        # set by service/supervisor.py when one model process serves every front end
        self.owner_socket = os.environ.get(OWNER_SOCKET_VARIABLE) or None

    # -- lifecycle --------------------------------------------------------------------------
    async def load(self) -> None:
        """Load and warm up the model (or, as a front end of a model process, connect to it),
        start the engine, become ready; on failure say why and stay 503."""
        s = self.settings
        try:
            if s.torch_threads is not None:
                torch.set_num_threads(s.torch_threads)
            opened = await (self._connect_owner() if self.owner_socket else self._load_here())
            if opened is None or self.phase == "draining":
                return
            model, engine = opened
            self._bind(model)
            self.model = model
            if self.phase == "draining":
                return
            engine.count_widths = self.metrics.widths_chosen
            engine.start()
            self.engine = engine
            # What exists now (torch, the model, FastAPI) lives as long as the process: frozen,
            # it is out of the cyclic collector's reach. Measured on the 2-core machine, a full
            # collection over it took 0.11-0.14 s (~200k objects); under load that pause stops the
            # event loop and, through the GIL, the model thread (docs/profiling.md).
            gc.collect()
            gc.freeze()
            self.phase = "ready"
            self.workers.mark_ready()
            log.info("ready: %s %s on %s", model.name, model.version, model.device)
        except Exception as err:
            self.phase = "failed"
            self.load_error = str(err) if isinstance(err, ModelLoadError) else repr(err)
            log.error("the model could not be loaded: %s", self.load_error)
            if self.on_fatal is not None:
                self.on_fatal(self.load_error)

    async def _load_here(self) -> tuple[ServedModel, BatchingEngine] | None:
        """This process's own model and batcher; None when a signal came while loading."""
        s = self.settings
        model = await asyncio.to_thread(self.loader, s)
        if self.phase == "draining":
            return None
        self.phase = "warming"
        await asyncio.to_thread(model.warm_up, s.max_batch_size)
        engine = BatchingEngine(
            model,
            max_batch_size=s.max_batch_size,
            max_queue_delay_seconds=s.max_queue_delay_seconds,
            max_queue_size=s.max_queue_size,
            metrics=self.metrics,
            inline=runs_inline(s.batch_execution, model.device.type),
        )
        return model, engine

    async def _connect_owner(self) -> tuple[OwnerModel, OwnerEngine]:
        """The model process's facts and the link to it (``ABN_MODEL_PROCESS=shared``): it
        accepts the connection once its model is ready, so this waits as long as it loads."""
        assert self.owner_socket is not None
        return await connect_owner(self.owner_socket, self._lost_owner)

    def _lost_owner(self, reason: str) -> None:
        """The model process went away while serving: not ready, and the process stops."""
        self.phase = "failed"
        self.load_error = reason
        log.error("%s", reason)
        if self.on_fatal is not None:
            self.on_fatal(reason)

    def _bind(self, model: ServedModel | OwnerModel) -> None:
        """What the routes and metrics need of the model, fixed once at load."""
        s = self.settings
        if s.default_budget is not None and s.default_budget < model.min_bitops:
            raise ModelLoadError(
                f"ABN_DEFAULT_BUDGET={s.default_budget:.6g} is below the cheapest "
                f"configuration of this model ({model.min_bitops:.6g} BitOps); feasible "
                f"budgets are {model.min_bitops:.6g} to {model.max_bitops:.6g}"
            )
        self.default_budget = s.default_budget if s.default_budget is not None else model.max_bitops
        self.metrics.bind_model(
            name=model.name,
            version=model.version,
            device=str(model.device),
            layer_names=model.layer_names,
            bit_candidates=model.bit_candidates,
            min_bitops=model.min_bitops,
            max_bitops=model.max_bitops,
        )
        self.model_ref = {"name": model.name, "version": model.version}
        self.predictions.signed = SignedIds(
            feedback_key(s), f"{model.name}\0{model.version}", s.feedback_ttl_seconds
        )

    def begin_draining(self) -> None:
        """Readiness 503 and new requests refused, at once; queued ones still finish.

        Called from the SIGTERM handler, so it only flips flags.
        """
        if self.phase != "failed":
            self.phase = "draining"
        if self.engine is not None:
            self.engine.stop_accepting()

    def abandon_queued(self) -> None:
        """The shutdown grace is ending: answer requests still queued with 503 now, while
        their connections are open (see :meth:`BatchingEngine.abandon_queued`)."""
        self.begin_draining()
        if self.engine is not None:
            count = self.engine.abandon_queued(
                "the server shut down before this request could run; retry on another instance"
            )
            if count:
                log.warning("shutdown grace ending: %d queued request(s) answered 503", count)

    async def shutdown(self) -> None:
        self.begin_draining()
        if self.engine is not None:
            await self.engine.drain(self.settings.shutdown_timeout_seconds)

    # -- for routes -------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.phase == "ready"

    @property
    def all_ready(self) -> bool:
        """Ready, and so is every other worker of the server: what ``/readyz`` reports."""
        return self.ready and self.workers.all_ready()

    def not_ready_error(self) -> NotReady | ShuttingDown:
        if self.phase == "draining":
            return ShuttingDown()
        if self.phase == "failed":
            return NotReady(f"the model failed to load: {self.load_error}")
        if self.phase == "ready":  # this worker is, others are not yet
            ready, expected = self.workers.count()
            return NotReady(
                f"{ready} of {expected} workers are ready; retry shortly",
                headers={"Retry-After": "1"},
            )
        return NotReady(f"the model is {self.phase}; retry shortly", headers={"Retry-After": "1"})

    def serving(self) -> tuple[ServedModel | OwnerModel, BatchingEngine | OwnerEngine]:
        """The model and engine, or 503 while loading, warming, draining or failed."""
        if not self.ready or self.model is None or self.engine is None:
            raise self.not_ready_error()
        if not self.engine.accepting:
            raise ShuttingDown()
        return self.model, self.engine

    def loaded_model(self) -> ServedModel | OwnerModel:
        """The model once loaded (also while draining), else 503."""
        if self.model is None:
            raise self.not_ready_error()
        return self.model


async def get_state(request: Request) -> ServiceState:
    """FastAPI dependency: the app's :class:`ServiceState`."""
    return request.app.state.service
