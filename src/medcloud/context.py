"""The running server's shared parts, built once in the app lifespan (or by the CLI)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from medcloud.config import Settings
from medcloud.db import Database
from medcloud.secrets import SecretBox, derive_key, load_master_secret

if TYPE_CHECKING:
    from medcloud.inference.hosts import HostManager
    from medcloud.jobs.runner import LocalRunner
    from medcloud.learning.hub import LearningHub
    from medcloud.sources.cache import ImageCache


@dataclass
class Context:
    """Everything a request handler needs besides the request."""

    settings: Settings
    db: Database
    box: SecretBox
    signing_key: bytes
    cache: ImageCache
    hosts: HostManager = field(default=None)  # type: ignore[assignment]  # set in build()
    runner: LocalRunner | None = None  # started in the app lifespan
    hub: LearningHub | None = None  # started in the app lifespan
    background: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=4, thread_name_prefix="medcloud-bg")
    )

    @classmethod
    def build(cls, settings: Settings) -> Context:
        from medcloud.inference.hosts import HostManager
        from medcloud.sources.cache import ImageCache

        settings = settings.resolved()
        master = load_master_secret(settings.data_dir, settings.secret_key)
        return cls(
            settings=settings,
            db=Database(settings.sqlalchemy_url),
            box=SecretBox(master),
            signing_key=derive_key(master, "jwt"),
            cache=ImageCache(settings.data_dir / "cache", max_ttl_s=settings.image_cache_max_ttl_s),
            hosts=HostManager(settings.data_dir / "hosts", settings.host_python),
        )

    def close(self) -> None:
        self.background.shutdown(wait=False, cancel_futures=True)
        self.db.dispose()
