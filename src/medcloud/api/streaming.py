"""Response bodies read in chunks from a file-like in the `files` pool, so no reply is held whole in memory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from medcloud.pools import Pools

CHUNK_BYTES = 1 << 20


async def chunks(pools: Pools, read: Callable[[int], bytes], *, close: Callable[[], None]) -> AsyncIterator[bytes]:
    """Yield `read(CHUNK_BYTES)` until it returns nothing; `close()` (quick, no I/O wait) runs however it ends.

    Each read is one short call in the `files` pool: a slow client holds no thread between chunks.
    """
    try:
        while chunk := await pools.run("files", read, CHUNK_BYTES):
            yield chunk
    finally:
        close()
