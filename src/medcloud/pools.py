"""Bounded thread pools, one per kind of blocking work, so slow work never queues the fast.

FastAPI's sync routes, `run_in_threadpool` and `asyncio.to_thread` all share one process-wide pool:
forty hung bundle downloads there would stall the token check of every request. Each kind gets
its own executor instead, sized by `MEDCLOUD_POOL_<KIND>_THREADS`:

- `auth`: the token's key and org membership check of every request, and login (fast DB work);
- `db`: the metadata DB and small local work of plain routes;
- `files`: local files that can be large (job logs and results, inference outputs, removing folders);
- `storage`: datasets' buckets and DICOMweb servers, image URLs (deadline `MEDCLOUD_POOL_STORAGE_DEADLINE_S`);
- `bundle`: fetching and unpacking bundles (deadline `MEDCLOUD_POOL_BUNDLE_DEADLINE_S`);
- `model`: talking to model-host processes (their own timeouts apply).

A deadline counts from the request's arrival in the pool, queueing included: the request then
answers 503, and work that had not started yet is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Literal, ParamSpec, TypeVar

from medcloud.config import Settings
from medcloud.errors import Unavailable

Kind = Literal["auth", "db", "files", "storage", "bundle", "model"]
KINDS: tuple[Kind, ...] = ("auth", "db", "files", "storage", "bundle", "model")
_WHAT = {"storage": "Reading the dataset's storage", "bundle": "Fetching the bundle"}

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")


class Pools:
    """The server's executors by kind, and `run()` to await blocking work in one of them."""

    def __init__(self, settings: Settings) -> None:
        self._executors: dict[str, ThreadPoolExecutor] = {
            kind: ThreadPoolExecutor(
                max_workers=getattr(settings, f"pool_{kind}_threads"), thread_name_prefix=f"medcloud-{kind}"
            )
            for kind in KINDS
        }
        self._deadlines: dict[str, float | None] = {
            "storage": settings.pool_storage_deadline_s,
            "bundle": settings.pool_bundle_deadline_s,
        }

    def executor(self, kind: Kind) -> Executor:
        return self._executors[kind]

    async def run(self, kind: Kind, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn(*args, **kwargs)` in the `kind` pool; Unavailable when the kind's deadline passes first."""
        return await self.run_abandoning(kind, None, fn, *args, **kwargs)

    async def run_abandoning(
        self, kind: Kind, abandoned: Callable[[], None] | None, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """`run()`, and `abandoned()` once `fn` has ended if the request stopped waiting for it meanwhile
        (its deadline passed, or it was cancelled): what `fn` leaves behind is then nobody's, so it is undone."""
        loop = asyncio.get_running_loop()
        lock = threading.Lock()
        state = {"ended": False, "abandoned": False}

        def call() -> T:
            try:
                return fn(*args, **kwargs)
            finally:
                with lock:
                    state["ended"] = True
                    undo = state["abandoned"] and abandoned is not None
                if undo:
                    _quietly(abandoned)

        def give_up() -> None:
            with lock:
                state["abandoned"] = True
                ended = state["ended"]
            if ended and abandoned is not None:  # it ended just now, and its result will not be used
                self._executors[kind].submit(_quietly, abandoned)

        future = loop.run_in_executor(self._executors[kind], call)
        deadline = self._deadlines.get(kind)
        try:
            if not deadline:
                return await future
            # On timeout wait_for cancels the future, which takes queued work off the pool's queue.
            return await asyncio.wait_for(future, deadline)
        except TimeoutError:
            give_up()
            raise Unavailable(
                f"Error: {_WHAT[kind]} took longer than {deadline:g} s (the server is busy or the remote end "
                "is slow); try again later."
            ) from None
        except asyncio.CancelledError:
            give_up()
            raise

    def shutdown(self) -> None:
        """Stop taking work; threads still blocked on I/O end on their own (they are not joined)."""
        for executor in self._executors.values():
            executor.shutdown(wait=False, cancel_futures=True)


def _quietly(undo: Callable[[], None]) -> None:
    try:
        undo()
    except Exception:
        log.exception("Undoing abandoned work failed")
