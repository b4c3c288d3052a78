"""Rate limits and a short memory of bad keys for `/login` and `Authorization: ApiKey <key>`.

An API key is 256 random bits, so guessing one is hopeless; what a flood of keys does hurt is the
server: every key is a database lookup in the `auth` pool. So, per client address and per API process:

- `/login` takes `MEDCLOUD_LOGIN_RATE_PER_MINUTE` attempts a minute (a token bucket that holds a
  minute's worth, so a burst of that many passes at once);
- bad keys, at `/login` or as `ApiKey`, take `MEDCLOUD_AUTH_FAILURES_PER_MINUTE` a minute; past that,
  every key the address sends is answered 429 (with `Retry-After`) until the bucket refills, except
  keys found valid in the last `GOOD_KEY_TTL_S` (a shared proxy's users keep working). A lookup holds
  its token while it runs, so concurrent bad keys cannot outrun the limit; a valid key gives it back;
- a refused key is remembered for `MEDCLOUD_BAD_KEY_CACHE_S` as a keyed hash (a per-process random
  salt: never the key, nor a digest that could be matched against the database) and refused again
  without a lookup.

No answer is ever cached for a valid key (it is looked up on every request), so a revoked key is
refused at its next request. The memory of bad keys cannot refuse a key created later: a new key is
fresh random text, never one that was already sent (and a key is never un-revoked). The "client address" is the socket's peer (uvicorn's
`--forwarded-allow-ips` makes it the proxy's `X-Forwarded-For`); IPv6 addresses count per /64, the
block one host usually holds. Every table is bounded (least recently used entries go first).
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from medcloud.config import Settings
from medcloud.errors import TooManyRequests, Unauthorized

MAX_KEY_CHARS = 256  # our keys are 47 characters; a longer "key" is refused before it is hashed or looked up
MAX_ENTRIES = 10_000  # client addresses, bad keys and good keys remembered, each
GOOD_KEY_TTL_S = 600.0  # how long a valid key skips the bad-key bucket (it is still looked up every time)
INVALID_KEY = "Invalid API key."

Clock = Callable[[], float]


def client_address(host: str | None) -> str:
    """The address a limit counts against: IPv4 as is (also when IPv4-mapped), IPv6 by its /64."""
    if not host:
        return "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host  # a test client's "testclient", a Unix socket
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """A token bucket per key: `per_minute` tokens a minute, holding at most `per_minute` (0: no limit)."""

    def __init__(self, per_minute: int, *, clock: Clock = time.monotonic, max_keys: int = MAX_ENTRIES) -> None:
        self.per_minute, self.clock, self.max_keys = per_minute, clock, max_keys
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def _bucket(self, key: str) -> _Bucket:
        """The key's bucket refilled up to now (called under the lock)."""
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(tokens=float(self.per_minute), updated=now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(float(self.per_minute), bucket.tokens + elapsed * self.per_minute / 60.0)
            bucket.updated = now
        return bucket

    def _wait(self, bucket: _Bucket) -> float:
        return (1.0 - bucket.tokens) * 60.0 / self.per_minute

    def wait_s(self, key: str) -> float:
        """Seconds until `key` may act again; 0 when it may now. Takes nothing."""
        if self.per_minute <= 0:
            return 0.0
        with self._lock:
            bucket = self._bucket(key)
            return 0.0 if bucket.tokens >= 1.0 else self._wait(bucket)

    def take(self, key: str) -> float:
        """Take one token: 0 when there was one, else the seconds until there is one (nothing taken)."""
        if self.per_minute <= 0:
            return 0.0
        with self._lock:
            bucket = self._bucket(key)
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return self._wait(bucket)

    def spend(self, key: str) -> None:
        """Take one token if there is one: what has happened counts, even when it was over the limit."""
        self.take(key)

    def give_back(self, key: str) -> None:
        """Return a token taken for something that, as it turned out, does not count."""
        if self.per_minute <= 0:
            return
        with self._lock:
            bucket = self._bucket(key)
            bucket.tokens = min(float(self.per_minute), bucket.tokens + 1.0)


class KeyMemory:
    """Keys seen lately (refused ones, or valid ones), as salted hashes, each for `ttl_s` seconds (0: none)."""

    def __init__(self, ttl_s: float, *, clock: Clock = time.monotonic, max_keys: int = MAX_ENTRIES) -> None:
        self.ttl_s, self.clock, self.max_keys = ttl_s, clock, max_keys
        self._salt = secrets.token_bytes(32)
        self._until: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()

    def _digest(self, key: str) -> bytes:
        return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), key=self._salt, digest_size=32).digest()

    def __contains__(self, key: str) -> bool:
        if self.ttl_s <= 0:
            return False
        digest = self._digest(key)
        with self._lock:
            until = self._until.get(digest)
            if until is None:
                return False
            if self.clock() >= until:
                del self._until[digest]
                return False
            return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._until)

    def add(self, key: str) -> None:
        if self.ttl_s <= 0:
            return
        digest = self._digest(key)
        with self._lock:
            self._until[digest] = self.clock() + self.ttl_s
            self._until.move_to_end(digest)
            while len(self._until) > self.max_keys:
                self._until.popitem(last=False)

    def discard(self, key: str) -> None:
        digest = self._digest(key)
        with self._lock:
            self._until.pop(digest, None)

    def clear(self) -> None:
        with self._lock:
            self._until.clear()


def _too_many(what: str, wait_s: float, setting: str) -> TooManyRequests:
    retry = max(1, math.ceil(wait_s))
    return TooManyRequests(
        f"Too many {what} from this address; try again in {retry} s ({setting}).", retry_after_s=retry
    )


class AuthGuard:
    """The limits of one API process, checked on the event loop around each key's lookup in the `auth` pool.

    A lookup takes a token from its address's bad-key bucket *before* it runs and gives it back when the
    key is valid: a thousand concurrent bad keys get no more lookups than the bucket holds. A key found
    valid lately (`GOOD_KEY_TTL_S`) is looked up without a token, so clients behind a shared proxy keep
    working while someone at the same address sends bad keys; it is still looked up every time (a
    revoked key is refused at once, and forgotten).
    """

    def __init__(self, *, login_per_minute: int, failures_per_minute: int, bad_key_ttl_s: float, clock: Clock) -> None:
        self.logins = RateLimiter(login_per_minute, clock=clock)
        self.failures = RateLimiter(failures_per_minute, clock=clock)
        self.bad_keys = KeyMemory(bad_key_ttl_s, clock=clock)
        self.good_keys = KeyMemory(GOOD_KEY_TTL_S, clock=clock)

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock = time.monotonic) -> AuthGuard:
        return cls(
            login_per_minute=settings.login_rate_per_minute,
            failures_per_minute=settings.auth_failures_per_minute,
            bad_key_ttl_s=settings.bad_key_cache_s,
            clock=clock,
        )

    def admit(self, address: str, key: str, *, login: bool) -> bool:
        """Before a key is looked up: 429 when the address is over a limit, 401 for a key known to be bad.

        Returns whether a bad-key token was taken for the lookup (`accepted`/`undecided` give it back).
        """
        charged = False
        if key not in self.good_keys:
            wait = self.failures.take(address)
            if wait > 0:
                raise _too_many("bad API keys", wait, "MEDCLOUD_AUTH_FAILURES_PER_MINUTE")
            charged = True
        if login:
            wait = self.logins.take(address)
            if wait > 0:
                self.undecided(address, charged=charged)
                raise _too_many("logins", wait, "MEDCLOUD_LOGIN_RATE_PER_MINUTE")
        if len(key) > MAX_KEY_CHARS or key in self.bad_keys:
            raise Unauthorized(INVALID_KEY)  # its token stays taken: a bad key counts
        return charged

    def accepted(self, address: str, key: str, *, charged: bool) -> None:
        """The lookup found a valid key: its token comes back and the key skips the bucket for a while."""
        self.undecided(address, charged=charged)
        self.good_keys.add(key)

    def refused(self, address: str, key: str, *, charged: bool) -> None:
        """The lookup found no valid key: it counts against the address; the key is remembered for a while."""
        if not charged:
            self.failures.spend(address)
        self.good_keys.discard(key)
        self.bad_keys.add(key)

    def undecided(self, address: str, *, charged: bool) -> None:
        """The lookup said nothing about the key (the database failed, another limit answered): no count."""
        if charged:
            self.failures.give_back(address)
