"""A cap on request bodies: 413 in the error shape, from Content-Length before reading, else while reading."""

from __future__ import annotations

import re
from collections.abc import Sequence

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from medcloud.api.errors import error_response


def too_large_message(max_bytes: int, setting: str = "MEDCLOUD_MAX_BODY_BYTES") -> str:
    return f"The request body is larger than this server accepts ({max_bytes} bytes, {setting})."


class BodyLimit:
    """ASGI middleware: a declared size over `max_bytes` is refused unread; a stream is cut when it passes it.

    The stream may be longer than its Content-Length (or have none, chunked), so counting is what
    protects; the header only lets us answer early. Past the cap the body's reader (`request.body()`
    in a handler) gets an HTTPException, which the app's error table turns into the 413 answer.
    """

    def __init__(
        self, app: ASGIApp, *, max_bytes: int, routes: Sequence[tuple[str, re.Pattern[str], int, str]] = ()
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        # (method, path pattern, cap, its setting's name): routes whose bodies are volumes, not JSON
        self.routes = tuple(routes)

    def cap(self, scope: Scope) -> tuple[int, str]:
        """The cap of this request and the setting that sets it: its route's own, else `max_bytes`."""
        for method, pattern, max_bytes, setting in self.routes:
            if scope.get("method") == method and pattern.fullmatch(scope.get("path", "")):
                return max_bytes, setting
        return self.max_bytes, "MEDCLOUD_MAX_BODY_BYTES"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes, setting = self.cap(scope)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            text = declared.decode("latin-1").strip()
            if not text.isdigit() or not text.isascii():
                await error_response(400, "Invalid Input. The Content-Length header is not a number.")(
                    scope, receive, send
                )
                return
            # Digits only, so int() is safe; a 5000-digit length is simply too large.
            if len(text) > 20 or int(text) > max_bytes:
                await error_response(413, too_large_message(max_bytes, setting))(scope, receive, send)
                return

        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    raise HTTPException(413, too_large_message(max_bytes, setting))
            return message

        await self.app(scope, limited, send)
