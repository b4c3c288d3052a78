"""HTTP to a MONAI Cloud API server: login for a bearer token, refresh, retries with backoff, typed errors.

Retries happen on connection errors and on 503 only (never on another status), with exponential
backoff that honours `Retry-After`. A request that may have reached the server (a read timeout) is
retried only when it is a GET. A 401 on a resource logs in again once, then raises `Unauthorized`.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from medcloud.client.errors import ConnectionFailed, Unauthorized, Unavailable, error_for
from medcloud.client.profiles import Settings

log = logging.getLogger("medcloud.client")
REFRESH_MARGIN_S = 60  # log in again this long before the token's `exp`
MAX_RETRY_AFTER_S = 60.0


def token_expiry(token: str) -> float | None:
    """The `exp` claim of a JWT (unverified: only to know when to log in again), or None."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return None


def _retry_after(resp: httpx.Response) -> float | None:
    raw = resp.headers.get("Retry-After")
    try:
        return min(max(float(raw), 0.0), MAX_RETRY_AFTER_S) if raw is not None else None
    except ValueError:
        return None


def _body(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return None


class Transport:
    """One HTTP session to one server and org, as one API key's user.

    Args:
        settings: host, org and API key.
        retries: how many times a failed attempt (connection error, 503) is tried again.
        backoff_s: the first wait; each retry doubles it (capped at 30 s), `Retry-After` wins when given.
        timeout_s: read timeout of a request (inference on a cold image can take minutes).
        sleep: how to wait between tries (tests may pass a recorder).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        retries: int = 4,
        backoff_s: float = 0.5,
        timeout_s: float = 300.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.retries = retries
        self.backoff_s = backoff_s
        self.sleep = sleep
        self.http = httpx.Client(timeout=httpx.Timeout(timeout_s, connect=10.0), follow_redirects=False)
        self.user_id: str | None = None
        self._token: str | None = None
        self._expires: float | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Transport({self.settings!r})"

    @property
    def base(self) -> str:
        """The org's API root, e.g. `http://127.0.0.1:8000/api/v1/orgs/iasixjqzw1hj`."""
        return f"{self.settings.host}/api/v1/orgs/{self.settings.org}"

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

    def _send(self, method: str, url: str, *, stream: bool = False, **kw: Any) -> httpx.Response:
        """One request with retries on connection errors and 503; the last 503 is returned, not raised.

        With `stream`, the body of the returned answer is not read yet (the caller closes it).
        """
        attempt = 0
        while True:
            try:
                resp = self.http.send(self.http.build_request(method, url, **kw), stream=stream)
            except httpx.TransportError as err:
                sent = not isinstance(err, httpx.ConnectError | httpx.ConnectTimeout)
                if attempt >= self.retries or (sent and method != "GET"):
                    raise ConnectionFailed(
                        f"Cannot reach {self.settings.host} ({type(err).__name__}: {err or 'no answer'}) "
                        f"after {attempt + 1} attempt(s)."
                    ) from None
                wait = None
            else:
                if resp.status_code != 503 or attempt >= self.retries:
                    return resp
                wait = _retry_after(resp)
                resp.close()
            delay = wait if wait is not None else min(self.backoff_s * 2**attempt, 30.0)
            log.debug("retrying %s %s in %.2f s (attempt %d)", method, url, delay, attempt + 1)
            self.sleep(delay)
            attempt += 1

    def login(self) -> None:
        """Exchange the API key for a bearer token (`POST /api/v1/login`)."""
        resp = self._send("POST", f"{self.settings.host}/api/v1/login", json={"ngc_api_key": self.settings.api_key})
        body = _body(resp)
        if resp.status_code not in (200, 201) or not isinstance(body, dict) or "token" not in body:
            err = error_for(resp.status_code, body, f"Login failed with HTTP {resp.status_code}.")
            err.message = f"Login to {self.settings.host} failed: {err.message}"
            err.args = (err.message,)
            raise err
        self._token = body["token"]
        self._expires = token_expiry(body["token"])
        self.user_id = body.get("user_id")

    def _auth(self, force: bool = False) -> dict[str, str]:
        with self._lock:
            stale = self._expires is not None and time.time() > self._expires - REFRESH_MARGIN_S
            if force or self._token is None or stale:
                self.login()
            return {"Authorization": f"Bearer {self._token}"}

    def request(
        self, method: str, path: str, *, expect: tuple[int, ...] = (200, 201), stream: bool = False, **kw: Any
    ) -> httpx.Response:
        """`method` on `{base}/{path}` as the logged-in user; an answer not in `expect` raises its typed error.

        With `stream`, a successful answer's body is left unread for the caller to iterate and close.
        """
        url = f"{self.base}/{path.lstrip('/')}"
        resp = self._send(method, url, stream=stream, headers=self._auth(), **kw)
        if resp.status_code == 401:  # the token expired or was revoked early: one new login
            resp.close()
            resp = self._send(method, url, stream=stream, headers=self._auth(force=True), **kw)
        if resp.status_code in expect:
            return resp
        resp.read()
        err = error_for(resp.status_code, _body(resp), f"HTTP {resp.status_code} on {method} {path}.")
        if isinstance(err, Unavailable):
            err.message = f"{err.message} (still 503 after {self.retries + 1} attempts)"
            err.args = (err.message,)
        if isinstance(err, Unauthorized):
            err.message = f"{err.message} (the API key was accepted at login, then refused)"
            err.args = (err.message,)
        raise err

    def download(self, path: str, target: Path) -> None:
        """GET `{base}/{path}` streamed into `target` through a `.part` file renamed at the end (whole or absent)."""
        tmp = target.with_name(f".{target.name}.part")
        resp = self.request("GET", path, expect=(200,), stream=True)
        try:
            with open(tmp, "wb") as handle:
                for chunk in resp.iter_bytes(1 << 20):
                    handle.write(chunk)
            os.replace(tmp, target)
        except httpx.TransportError as err:
            raise ConnectionFailed(
                f"The download from {self.settings.host} broke off ({type(err).__name__})."
            ) from None
        finally:
            resp.close()
            if tmp.exists():
                tmp.unlink()

    def json(self, method: str, path: str, **kw: Any) -> Any:
        """`request` and its JSON body."""
        return self.request(method, path, **kw).json()
