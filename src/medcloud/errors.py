"""Domain errors raised by services and adapters; `api/errors.py` maps them to HTTP once."""

from __future__ import annotations


class MedcloudError(Exception):
    """Base class: `message` is a sentence meant for the client."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Invalid(MedcloudError):
    """The client sent something wrong (HTTP 400)."""


class NotFound(MedcloudError):
    """The resource does not exist or is not the caller's (HTTP 404)."""


class Conflict(MedcloudError):
    """The request is valid but the resource's state forbids it (HTTP 400, as the reference does)."""


class Unauthorized(MedcloudError):
    """Missing or bad credentials (HTTP 401)."""


class Forbidden(MedcloudError):
    """Authenticated, but not a member of the org (HTTP 403)."""


class Unavailable(MedcloudError):
    """A dependency (storage, model host) failed in a way that is not the client's fault (HTTP 503)."""


class TooManyRequests(MedcloudError):
    """The caller went over a rate limit (HTTP 429, with `Retry-After: retry_after_s`)."""

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = max(1, int(retry_after_s))
