"""`create_app(settings)`: the FastAPI application, its routers and its lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from fastapi import FastAPI
from sqlalchemy import select

from medcloud import __version__, viewer
from medcloud.api import docs, errors, openapi
from medcloud.api.limits import BodyLimit
from medcloud.auth.limits import AuthGuard
from medcloud.auth.router import router as auth_router
from medcloud.config import Settings
from medcloud.context import Context
from medcloud.datasets.router import LABEL_PATH
from medcloud.datasets.router import router as datasets_router
from medcloud.experiments import realtime
from medcloud.experiments.orm import Experiment
from medcloud.experiments.router import router as experiments_router
from medcloud.inference.hosts import HostSpec
from medcloud.jobs.router import router as jobs_router
from medcloud.jobs.runner import Scheduler
from medcloud.leader import Role
from medcloud.learning.hub import LearningHub
from medcloud.workspaces.router import router as workspaces_router

log = logging.getLogger(__name__)


async def _sweep_cache(ctx: Context) -> None:
    """Evict expired cache entries now and then (off the event loop)."""
    while True:
        await asyncio.sleep(ctx.settings.cache_sweep_interval_s)
        try:
            removed = await asyncio.to_thread(ctx.cache.sweep)
            if removed:
                log.info("Evicted %d expired cached image(s)", removed)
        except Exception:
            log.exception("Cache sweep failed")


def _max_train_jobs(ctx: Context) -> int:
    if ctx.settings.max_train_jobs:
        return ctx.settings.max_train_jobs
    import torch

    return max(torch.cuda.device_count(), 1)


def _realtime_experiments(ctx: Context) -> dict[str, HostSpec]:
    """The experiments whose model should be serving: what a host backend reconciles with at start-up."""
    with ctx.db.session() as session:
        rows = session.scalars(select(Experiment).where(Experiment.realtime_infer.is_(True))).all()
        return {row.id: realtime.host_spec(row, ctx.settings) for row in rows if row.bundle_dir}


def create_app(
    settings: Settings | None = None,
    context: Context | None = None,
    startup: Sequence[Callable[[Context], Awaitable[None]]] = (),
) -> FastAPI:
    """Build the app; the context (DB, cache, model hosts) lives as long as the app runs.

    `startup`: coroutines run as tasks once the runner and the hub are up (the server answers meanwhile),
    cancelled at shutdown; `medcloud serve` prepares the annotation demo this way.
    """
    ctx = context or Context.build(settings or Settings())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Probe the model sandbox once, before any host or job starts (its mode is logged and in /health).
        await asyncio.to_thread(lambda: ctx.sandbox)
        sweeper = asyncio.create_task(_sweep_cache(ctx))

        async def start_duties() -> None:  # the leader's: the job scheduler and the annotation controllers
            await ctx.hosts.reconcile(await asyncio.to_thread(_realtime_experiments, ctx))
            ctx.hub = LearningHub(ctx)
            ctx.runner = Scheduler(ctx, ctx.jobs, max_parallel=_max_train_jobs(ctx), on_ended=ctx.hub.job_ended)
            await ctx.runner.start()
            await ctx.hub.start()

        async def stop_duties() -> None:
            await ctx.hub.stop()
            await ctx.runner.stop()

        # Leader (always, with one process): the duties are up when this returns. Follower (another process
        # leads on this database): ctx.runner and ctx.hub reach the leader's, and it takes over if that dies.
        role = Role(ctx, start=start_duties, stop=stop_duties)
        await role.begin()
        started = [asyncio.create_task(task(ctx)) for task in startup]
        try:
            yield
        finally:
            sweeper.cancel()
            for task in started:
                task.cancel()
            await role.end()
            await ctx.hosts.stop_all()
            ctx.close()

    # FastAPI's own /docs and /redoc load scripts from a CDN: /docs is served from vendored files instead.
    app = FastAPI(title="medcloud", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.context = ctx
    app.state.auth_guard = AuthGuard.from_settings(ctx.settings)  # limits on API keys, per process
    errors.install(app)
    openapi.install(app)
    docs.install(app, enabled=ctx.settings.api_docs)
    app.add_middleware(
        BodyLimit,
        max_bytes=ctx.settings.max_body_bytes,
        routes=[("PUT", LABEL_PATH, ctx.settings.max_label_body_bytes, "MEDCLOUD_MAX_LABEL_BODY_BYTES")],
    )
    for router in (auth_router, workspaces_router, datasets_router, experiments_router, jobs_router):
        app.include_router(router)
    viewer.install(app, ctx.settings)

    @app.get("/api/v1/health/liveness")
    def liveness() -> dict:
        return {"status": "ok"}

    @app.get("/api/v1/health/readiness")
    def readiness() -> dict:
        ready = {"status": "ok", "version": __version__, "model_sandbox": ctx.sandbox.describe()}
        return ready if ctx.demo is None else {**ready, "demo": ctx.demo.report()}

    return app
