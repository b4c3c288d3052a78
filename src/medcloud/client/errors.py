"""Typed exceptions for the API's `{"error_desc", "error_code"}` answers and for transport failures."""

from __future__ import annotations

from typing import Any


class MedcloudError(Exception):
    """Base class of every client error; `message` is the server's `error_desc` (or ours), `status` the HTTP code.

    Example:
        >>> try:
        ...     client.dataset("1b4e28ba-2fa1-11d2-883f-0016d3cca427")
        ... except NotFound as err:
        ...     print(err.status, err.message)
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class BadRequest(MedcloudError):
    """400: the request was wrong (the server's sentence says what)."""


class Conflict(BadRequest):
    """409: the resource's state forbids the request (the hosted service answers most of these as 400)."""


class Unauthorized(MedcloudError):
    """401: the API key or the token was refused."""


class Forbidden(MedcloudError):
    """403: the key's user is not a member of the org."""


class NotFound(MedcloudError):
    """404: unknown id, or another user's."""


class PayloadTooLarge(BadRequest):
    """413: the body is over the server's limit."""


class ServerError(MedcloudError):
    """A 5xx other than 503: a bug or a crash on the server side."""


class Unavailable(MedcloudError):
    """503 after every retry: the server, its database or a model host is unavailable for now."""


class ConnectionFailed(MedcloudError):
    """The server could not be reached after every retry (refused, DNS, TLS, timeout)."""


class ClientError(MedcloudError):
    """Something this client was asked that cannot work (no key configured, an unsafe output name...)."""


_BY_STATUS: dict[int, type[MedcloudError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    503: Unavailable,
}


def error_for(status: int, body: Any, fallback: str) -> MedcloudError:
    """The typed exception for an error answer: `error_desc` when the body has it, else `fallback`."""
    message = fallback
    if isinstance(body, dict):
        desc = body.get("error_desc") or body.get("detail") or body.get("message")
        if isinstance(desc, str) and desc:
            message = desc
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else BadRequest
    return cls(message, status)
