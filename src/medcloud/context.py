"""The running server's shared parts, built once in the app lifespan (or by the CLI)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from medcloud.config import Settings
from medcloud.db import Database
from medcloud.pools import Pools
from medcloud.secrets import SecretBox, derive_key, load_master_secret

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from medcloud.demo.background import DemoProgress
    from medcloud.events import Events
    from medcloud.execution.base import HostBackend, JobBackend
    from medcloud.jobs.runner import Scheduler
    from medcloud.learning.hub import LearningHub
    from medcloud.sandbox import Sandbox
    from medcloud.sources.cache import ImageCache


T = TypeVar("T")


@dataclass
class Context:
    """Everything a request handler needs besides the request."""

    settings: Settings
    db: Database
    box: SecretBox
    signing_key: bytes
    cache: ImageCache
    hosts: HostBackend = field(default=None)  # type: ignore[assignment]  # set in build(): execution/choose.py
    jobs: JobBackend = field(default=None)  # type: ignore[assignment]  # set in build(): execution/choose.py
    runner: Scheduler | None = None  # started in the app lifespan
    hub: LearningHub | None = None  # started in the app lifespan
    background: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=4, thread_name_prefix="medcloud-bg")
    )
    pools: Pools = field(default=None)  # type: ignore[assignment]  # one bounded pool per kind of blocking work
    demo: DemoProgress | None = None  # `medcloud serve` with the demo: its background preparation

    def __post_init__(self) -> None:
        if self.pools is None:
            self.pools = Pools(self.settings)

    @property
    def sandbox(self) -> Sandbox:
        """Who model code runs as (built on first use: it probes the machine once, in a subprocess)."""
        from medcloud.sandbox import sandbox_for

        return sandbox_for(self.settings)

    @classmethod
    def build(cls, settings: Settings) -> Context:
        from medcloud.execution import choose
        from medcloud.sources.cache import ImageCache

        settings = settings.resolved()
        master = load_master_secret(settings.data_dir, settings.secret_key)
        pools = Pools(settings)
        return cls(
            settings=settings,
            db=Database(settings.sqlalchemy_url),
            box=SecretBox(master),
            signing_key=derive_key(master, "jwt"),
            cache=ImageCache(
                settings.data_dir / "cache",
                max_ttl_s=settings.image_cache_max_ttl_s,
                max_bytes=settings.image_cache_max_bytes,
            ),
            hosts=choose.host_backend(settings, executor=pools.executor("model")),
            jobs=choose.job_backend(settings),
            pools=pools,
        )

    async def in_session(self, work: Callable[[Session], T]) -> T:
        """`work(session)` in one DB session (committed when it returns), in the `db` pool: never on the loop."""

        def run() -> T:
            with self.db.session() as session:
                return work(session)

        return await self.pools.run("db", run)

    @property
    def events(self) -> Events:
        """Tell the scheduler and the annotation controllers, wherever they run (`events.py`)."""
        from medcloud.events import Events

        return Events(self.db)

    def close(self) -> None:
        self.background.shutdown(wait=False, cancel_futures=True)
        self.pools.shutdown()
        self.db.dispose()
