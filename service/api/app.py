"""The app factory: `create_app(settings)` wires routes, errors, logging, metrics and the
lifespan that opens the database, loads the model once per process and runs the background
triage refresh."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

import service
from service.api.body_cap import BodyCapMiddleware
from service.api.logs import RequestIdMiddleware, configure_logging
from service.api.metrics import MetricsMiddleware
from service.api.problems import UnhandledErrorMiddleware, install_problem_handlers
from service.api.refresher import BackgroundRefresher
from service.api.routes import claims, evidence, health, listings, model, photos, queue
from service.api.runtime import Runtime
from service.api.security_headers import SecurityHeadersMiddleware
from service.config import Settings

WEB_DIR = Path(__file__).resolve().parents[1] / "web"
DESCRIPTION = """Scores the photo evidence of marketplace quality claims and orders the
reviewers' queue. Authenticate with `Authorization: Bearer <API key>` (create keys with
`triage keys create`). Every error is an `application/problem+json` document."""


class _LateMetrics:
    """Records request metrics once the lifespan has built the registry (it needs the model
    version), while the middleware stack itself must be fixed when the app is created."""

    def __init__(self, app: ASGIApp, owner: FastAPI) -> None:
        self.app = app
        self.owner = owner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime: Runtime | None = getattr(self.owner.state, "runtime", None)
        if runtime is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await MetricsMiddleware(self.app, runtime.metrics)(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.log_level)
        runtime = await run_in_threadpool(Runtime.start, settings)
        app.state.runtime = runtime
        refresher = BackgroundRefresher(
            lambda should_stop: runtime.refresh_stale_triage(should_stop=should_stop),
            interval=settings.resolved_triage_refresh_interval,
            lock_path=settings.refresh_lock_path,
        )
        refresher.start()
        app.state.triage_refresher = refresher
        try:
            yield
        finally:
            # Before closing the runtime: a round in progress still uses its database.
            await refresher.stop()
            await run_in_threadpool(runtime.close)
            del app.state.runtime

    # /docs and /redoc with their scripts served from the package, not from a CDN: an offline
    # deployment (or a browser without internet) would otherwise get blank pages.
    app = FastAPIOffline(
        title="Evidence Triage",
        version=service.__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    install_problem_handlers(app)
    for module in (health, model, listings, claims, evidence, queue, photos):
        app.include_router(module.router)
    if WEB_DIR.is_dir():
        # The reviewer page (built separately); html=True serves index.html at /review/.
        app.mount("/review", StaticFiles(directory=WEB_DIR, html=True), name="review")

        @app.get("/", include_in_schema=False)
        def home() -> RedirectResponse:
            return RedirectResponse("/review/")

    # Innermost: its 500 passes through the metrics, the request id and the security headers.
    app.add_middleware(UnhandledErrorMiddleware)
    app.add_middleware(BodyCapMiddleware, max_bytes=settings.limits.max_json_bytes)
    app.add_middleware(_LateMetrics, owner=app)
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(SecurityHeadersMiddleware)
    return app
