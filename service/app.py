"""The FastAPI application: :func:`create_app` wires settings, state, routes and handlers.

``lifespan`` starts loading the model in the background (the server listens meanwhile and
answers ``/readyz`` 503) and, at shutdown, drains the batching engine so every accepted
request is answered before the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from service.classify import CLASSIFY_PATH, add_classify_route
from service.decode import configure_pillow
from service.errors import install_error_handlers
from service.middleware import RequestContextMiddleware
from service.model import ServedModel
from service.plain_route import HotLane
from service.routes import router
from service.schemas import REQUEST_ID_HEADER_DOC
from service.settings import Settings
from service.state import Loader, ServiceState, load_from_settings
from service.v2 import add_infer_route
from service.v2 import router as v2_router

API_VERSION = "1.0.0"
# Where Swagger UI's script, stylesheet and icon are served from: files installed with the
# fastapi-offline package, so /docs works without reaching a CDN (air-gapped clusters, strict
# CSPs). Under /docs, so a proxy that publishes /docs publishes its assets too.
DOCS_ASSETS_PATH = "/docs/assets"


def create_app(
    settings: Settings | None = None,
    *,
    model: ServedModel | None = None,
    loader: Loader | None = None,
    on_fatal: Callable[[str], None] | None = None,
) -> FastAPI:
    """A new app. ``model``: serve this already-loaded model (tests share one); ``loader``:
    how to load one (default: the settings' directory and device); ``on_fatal``: called with
    the reason when loading fails (``abn serve`` then exits non-zero)."""
    settings = settings or Settings()
    if model is not None:
        preloaded = model

        def loader(_: Settings) -> ServedModel:
            return preloaded

    state = ServiceState(settings, loader or load_from_settings, on_fatal)
    configure_pillow(settings.max_image_pixels)
    app = FastAPIOffline(
        title="abn-serve",
        version=API_VERSION,
        summary="Budget-aware adaptive-precision image classification",
        description="Classify an image under a per-request BitOps budget; see docs/api.md.",
        lifespan=_lifespan(state),
        static_url=DOCS_ASSETS_PATH,
        # No ReDoc: its bundle still loads a logo from a CDN. /docs is the one page.
        redoc_url=None,
        # Swagger UI would send the document to validator.swagger.io for its badge.
        swagger_ui_parameters={"validatorUrl": None},
        # FastAPI's OpenTelemetry hooks, off: the service's telemetry is its Prometheus metrics
        # and access log, and with them on FastAPI asks every request whether a provider is set
        # (docs/profiling.md)
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.service = state
    app.openapi = _document(app)  # type: ignore[method-assign]
    add_classify_route(app.router)  # first, as it is the first path of the document
    app.include_router(router)
    app.include_router(v2_router)
    add_infer_route(app.router)
    install_error_handlers(app)
    app.add_middleware(HotLane, routes=app.router.routes)  # inside the request middleware
    app.add_middleware(
        RequestContextMiddleware,
        metrics=lambda: state.metrics,
        known_paths=[
            CLASSIFY_PATH,
            *(getattr(r, "path", "") for r in [*router.routes, *v2_router.routes]),
        ],
        body_timeout_seconds=settings.body_timeout_seconds,
        access_log=settings.access_log,
    )
    return app


def _lifespan(state: ServiceState) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Load in the background while the server already answers (health 200, readiness 503);
    on shutdown drain, first stopping a load still under way."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(state.load(), name="abn-load")
        try:
            yield
        finally:
            state.begin_draining()
            if not loading.done():
                loading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loading
            await state.shutdown()

    return lifespan


def _document(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """``app.openapi`` with two facts FastAPI cannot express per route:

    * ``X-Request-ID`` is on every response of every route (the middleware adds it, errors
      included), so it is declared once here rather than in each route's ``responses``;
    * the bearer token is optional: it is needed only when the server has ``ABN_API_KEY``
      (``{}`` in an operation's ``security`` list means "no credentials" is accepted too)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for path_item in schema.get("paths", {}).values():
                for operation in path_item.values():
                    for response in operation.get("responses", {}).values():
                        response.setdefault("headers", {})["X-Request-ID"] = REQUEST_ID_HEADER_DOC
                    if operation.get("security") and {} not in operation["security"]:
                        operation["security"].append({})
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi
