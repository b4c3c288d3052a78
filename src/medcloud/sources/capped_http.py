"""A byte cap on every answer a `requests.Session` reads: a transport adapter that refuses a declared
Content-Length above the cap and stops reading a body (chunked, or decompressing to more than it said)
as soon as it passes the cap.

Mounted on a DICOMweb source's session (`sources/dicomweb.py`), so a WADO-RS series, its metadata and
QIDO answers are each capped at `MEDCLOUD_WADO_MAX_BYTES` whoever reads them (our own multipart reader or
dicomweb-client's). The count is of decoded bytes, what lands in memory or on disk.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from medcloud.errors import Invalid

SETTING = "MEDCLOUD_WADO_MAX_BYTES"
_READ_CHUNK = 1 << 16


class AnswerTooLarge(Invalid):
    """An HTTP answer was larger than the cap (HTTP 400 once it reaches the API)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(
            f"The DICOMweb server's answer is larger than this server reads ({max_bytes:,} bytes, {SETTING})."
        )
        self.max_bytes = max_bytes


class ByteCapAdapter(HTTPAdapter):
    """`HTTPAdapter` whose responses raise `AnswerTooLarge` past `max_bytes` of body."""

    def __init__(self, max_bytes: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_bytes = max_bytes

    def build_response(self, req: requests.PreparedRequest, resp: Any) -> requests.Response:
        response = super().build_response(req, resp)
        declared = (response.headers.get("Content-Length") or "").strip()
        if declared.isdigit() and int(declared) > self.max_bytes:
            response.close()  # nothing of the body is read
            raise AnswerTooLarge(self.max_bytes)
        response.raw = _CountedBody(resp, self.max_bytes)
        return response


def mount(session: requests.Session, max_bytes: int) -> None:
    """Cap every http(s) answer of `session` at `max_bytes`."""
    adapter = ByteCapAdapter(max_bytes)
    session.mount("http://", adapter)
    session.mount("https://", adapter)


class _CountedBody:
    """A urllib3 response whose reads are counted; past the cap the connection is closed and reading raises."""

    def __init__(self, raw: Any, max_bytes: int) -> None:
        self._raw = raw
        self._max_bytes = max_bytes
        self._seen = 0

    def __getattr__(self, name: str) -> Any:  # everything else is the real response's
        return getattr(self._raw, name)

    def _count(self, size: int) -> None:
        self._seen += size
        if self._seen > self._max_bytes:
            self._raw.close()
            raise AnswerTooLarge(self._max_bytes)

    def stream(self, amt: int | None = _READ_CHUNK, decode_content: bool | None = None) -> Iterator[bytes]:
        for chunk in self._raw.stream(amt, decode_content=decode_content):
            self._count(len(chunk))
            yield chunk

    def read(self, amt: int | None = None, *args: Any, **kwargs: Any) -> bytes:
        if amt is not None:
            data = self._raw.read(amt, *args, **kwargs)
            self._count(len(data))
            return data
        parts = []  # read everything, but never more than the cap and one chunk
        while data := self._raw.read(_READ_CHUNK, *args, **kwargs):
            self._count(len(data))
            parts.append(data)
        return b"".join(parts)
