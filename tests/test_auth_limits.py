"""Rate limits on /login and `Authorization: ApiKey`, and the short memory of bad keys (auth/limits.py).

The guard's clock is a fake one the tests move: nothing sleeps. Each test builds its own app with
small limits (the suite's defaults are far above what any other test sends).
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest
from conftest import Api, make_api
from fastapi.testclient import TestClient
from helpers import wait_for

from medcloud.auth import service as auth
from medcloud.auth.limits import AuthGuard, KeyMemory, RateLimiter, client_address


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fresh_guard(api: Api, clock: FakeClock) -> AuthGuard:
    """Replace the app's guard by one on `clock` (the logins of `make_api` are forgotten)."""
    guard = AuthGuard.from_settings(api.ctx.settings, clock=clock)
    api.client.app.state.auth_guard = guard
    return guard


def login(client: TestClient, key: str):  # type: ignore[no-untyped-def]
    return client.post("/api/v1/login", json={"ngc_api_key": key})


def with_key(api: Api, key: str, client: TestClient | None = None):  # type: ignore[no-untyped-def]
    return (client or api.client).get(api.url("datasets"), headers={"Authorization": f"ApiKey {key}"})


def assert_429(resp, setting: str) -> int:  # type: ignore[no-untyped-def]
    assert resp.status_code == 429, resp.text
    body = resp.json()
    assert set(body) == {"error_desc", "error_code"} and body["error_code"] == 429
    assert body["error_desc"].startswith("Too many") and setting in body["error_desc"]
    retry = int(resp.headers["Retry-After"])
    assert retry >= 1 and f"try again in {retry} s" in body["error_desc"]
    return retry


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every key lookup that reaches the database, by kind."""
    seen: list[str] = []
    real_login, real_principal = auth.login, auth.key_principal

    def counting_login(*args, **kw):  # type: ignore[no-untyped-def]
        seen.append("login")
        return real_login(*args, **kw)

    def counting_principal(*args, **kw):  # type: ignore[no-untyped-def]
        seen.append("apikey")
        return real_principal(*args, **kw)

    monkeypatch.setattr(auth, "login", counting_login)
    monkeypatch.setattr(auth, "key_principal", counting_principal)
    return seen


# The pieces -------------------------------------------------------------------------------------------------


def test_a_bucket_holds_a_minute_and_refills_at_its_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(6, clock=clock)  # one every 10 s, six at once
    assert [limiter.take("a") for _ in range(6)] == [0.0] * 6
    assert limiter.take("a") == pytest.approx(10.0)
    assert limiter.take("b") == 0.0  # another address has its own bucket
    clock.now += 4
    assert limiter.wait_s("a") == pytest.approx(6.0)
    clock.now += 6
    assert limiter.take("a") == 0.0 and limiter.take("a") > 0
    clock.now += 3600
    assert [limiter.take("a") for _ in range(7)].count(0.0) == 6  # never more than a minute's worth
    assert RateLimiter(0, clock=clock).take("a") == 0.0  # 0: no limit
    limiter.give_back("a")
    assert limiter.take("a") == 0.0 and limiter.take("a") > 0  # one token back, never above a minute's worth
    clock.now += 3600
    limiter.give_back("b")
    assert [limiter.take("b") for _ in range(7)].count(0.0) == 6


def test_tables_are_bounded() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1, clock=clock, max_keys=3)
    for address in "abcd":
        limiter.take(address)
    assert len(limiter._buckets) == 3 and "a" not in limiter._buckets
    bad = KeyMemory(60, clock=clock, max_keys=2)
    for key in ("k1", "k2", "k3"):
        bad.add(key)
    assert len(bad) == 2 and "k1" not in bad and "k3" in bad


def test_bad_keys_are_kept_as_salted_hashes_for_the_ttl() -> None:
    clock = FakeClock()
    bad = KeyMemory(30, clock=clock)
    key = "mck_" + "x" * 43
    bad.add(key)
    assert key in bad and "mck_other" not in bad
    stored = b"".join(bad._until)
    assert key.encode() not in stored and bytes.fromhex(hashlib.sha256(key.encode()).hexdigest()) not in stored
    assert hashlib.sha256(key.encode()).digest() not in bad._until  # not the digest the database stores
    clock.now += 29.9
    assert key in bad
    clock.now += 0.2
    assert key not in bad and len(bad) == 0  # expired and dropped
    off = KeyMemory(0, clock=clock)
    off.add(key)
    assert key not in off


def test_client_addresses_count_ipv6_per_64() -> None:
    assert client_address("10.1.2.3") == "10.1.2.3"
    assert client_address("::ffff:10.1.2.3") == "10.1.2.3"
    assert client_address("2001:db8:1:2:aaaa::1") == client_address("2001:db8:1:2:bbbb::7") == "2001:db8:1:2::/64"
    assert client_address("2001:db8:1:3::1") != client_address("2001:db8:1:2::1")
    assert client_address(None) == "unknown" and client_address("testclient") == "testclient"


# Through the API --------------------------------------------------------------------------------------------


def test_logins_past_the_rate_are_429_with_retry_after_until_the_bucket_refills(tmp_path: Path) -> None:
    with make_api(tmp_path / "data", login_rate_per_minute=4) as api:
        clock = FakeClock()
        fresh_guard(api, clock)
        for _ in range(4):
            assert login(api.client, api.keys["alice"]).status_code == 201
        retry = assert_429(login(api.client, api.keys["alice"]), "MEDCLOUD_LOGIN_RATE_PER_MINUTE")
        assert retry == 15  # 4 a minute: one every 15 s
        assert_429(login(api.client, api.keys["bob"]), "MEDCLOUD_LOGIN_RATE_PER_MINUTE")  # per address, any key
        # Another address is not limited by this one; bearer tokens are never limited.
        other = TestClient(api.client.app, client=("10.9.8.7", 4000))
        assert login(other, api.keys["bob"]).status_code == 201
        assert api.get("datasets").status_code == 200
        # Bodies that never reach the key check cost nothing.
        assert api.client.post("/api/v1/login", content=b"not json").status_code == 400
        clock.now += retry
        assert login(api.client, api.keys["alice"]).status_code == 201
        assert login(api.client, api.keys["alice"]).status_code == 429


def test_bad_keys_past_the_rate_make_every_key_of_that_address_429(tmp_path: Path, counted: list[str]) -> None:
    with make_api(tmp_path / "data", auth_failures_per_minute=3) as api:
        clock = FakeClock()
        fresh_guard(api, clock)
        counted.clear()  # the logins of make_api
        assert login(api.client, "mck_wrong-1").status_code == 401
        assert with_key(api, "mck_wrong-2").status_code == 401
        assert with_key(api, "mck_wrong-3").json() == {"error_desc": "Invalid API key.", "error_code": 401}
        assert counted == ["login", "apikey", "apikey"]
        # Over the limit: refused before any lookup, valid keys of this address too, at /login and as ApiKey.
        retry = assert_429(login(api.client, api.keys["alice"]), "MEDCLOUD_AUTH_FAILURES_PER_MINUTE")
        assert retry == 20
        assert_429(with_key(api, api.keys["alice"]), "MEDCLOUD_AUTH_FAILURES_PER_MINUTE")
        assert_429(with_key(api, "mck_wrong-4"), "MEDCLOUD_AUTH_FAILURES_PER_MINUTE")
        assert len(counted) == 3
        # Bearer tokens are checked without a key lookup: not limited. Another address is not limited.
        assert api.get("datasets").status_code == 200
        other = TestClient(api.client.app, client=("10.9.8.7", 4000))
        assert with_key(api, api.keys["alice"], client=other).status_code == 200
        clock.now += retry
        assert with_key(api, api.keys["alice"]).status_code == 200
        assert login(api.client, api.keys["bob"]).status_code == 201


def test_a_key_found_valid_lately_keeps_working_while_its_address_sends_bad_ones(
    tmp_path: Path, counted: list[str]
) -> None:
    """Users behind one proxy share its address: one of them sending bad keys does not lock out the others."""
    with make_api(tmp_path / "data", auth_failures_per_minute=2) as api:
        clock = FakeClock()
        guard = fresh_guard(api, clock)
        for _ in range(5):  # valid keys give their token back: no count however many
            assert with_key(api, api.keys["alice"]).status_code == 200
        assert guard.failures.wait_s("testclient") == 0
        assert with_key(api, "mck_bad-1").status_code == 401 and login(api.client, "mck_bad-2").status_code == 401
        assert_429(with_key(api, "mck_bad-3"), "MEDCLOUD_AUTH_FAILURES_PER_MINUTE")
        assert_429(with_key(api, api.keys["bob"]), "MEDCLOUD_AUTH_FAILURES_PER_MINUTE")  # not seen valid here
        counted.clear()
        assert with_key(api, api.keys["alice"]).status_code == 200  # seen valid: still served, still looked up
        assert counted == ["apikey"]
        with api.ctx.db.session() as session:  # revoked: refused at its next request, and forgotten as good
            key_id = next(k.id for k in auth.list_keys(session, user="alice"))
            auth.revoke_key(session, key_id=key_id)
        assert with_key(api, api.keys["alice"]).status_code == 401
        assert_429(with_key(api, api.keys["alice"]), "MEDCLOUD_AUTH_FAILURES_PER_MINUTE")
        clock.now += 601  # the memory of good keys is short too
        assert api.keys["alice"] not in guard.good_keys


def test_concurrent_bad_keys_get_no_more_lookups_than_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lookup holds its token while it runs: a burst of bad keys sent at once cannot outrun the bucket."""
    with make_api(tmp_path / "data", auth_failures_per_minute=3) as api:
        fresh_guard(api, FakeClock())
        gate, looked_up = threading.Event(), []
        real = auth.key_principal

        def slow_lookup(*args, **kw):  # type: ignore[no-untyped-def]
            looked_up.append(kw["api_key"])
            assert gate.wait(30), "the test never opened the gate"
            return real(*args, **kw)

        monkeypatch.setattr(auth, "key_principal", slow_lookup)
        answers: list[int] = []

        def send(n: int) -> None:
            answers.append(with_key(api, f"mck_burst-{n}").status_code)

        threads = [threading.Thread(target=send, args=(n,)) for n in range(10)]
        for thread in threads:
            thread.start()
        # Three lookups hold the three tokens; the seven others are answered 429 while those still run.
        wait_for(lambda: answers.count(429) == 7, 30, "seven 429s while three lookups hang")
        assert len(looked_up) == 3 and answers == [429] * 7
        gate.set()
        for thread in threads:
            thread.join(30)
        assert sorted(answers) == [401] * 3 + [429] * 7 and len(looked_up) == 3


def test_a_refused_key_is_refused_from_memory_until_its_ttl(tmp_path: Path, counted: list[str]) -> None:
    with make_api(tmp_path / "data", bad_key_cache_s=30, auth_failures_per_minute=1000) as api:
        clock = FakeClock()
        guard = fresh_guard(api, clock)
        counted.clear()  # the logins of make_api
        bad = "mck_not-a-key-at-all"
        for _ in range(5):
            assert with_key(api, bad).json() == {"error_desc": "Invalid API key.", "error_code": 401}
        assert login(api.client, bad).status_code == 401
        assert counted == ["apikey"]  # looked up once; /login and ApiKey share the memory
        assert len(guard.bad_keys) == 1
        clock.now += 31
        assert with_key(api, bad).status_code == 401
        assert counted == ["apikey", "apikey"]
        # A key too long to be ours is refused without being looked up (nor remembered).
        assert login(api.client, "mck_" + "y" * 5000).json() == {"error_desc": "Invalid API key.", "error_code": 401}
        assert counted == ["apikey", "apikey"] and len(guard.bad_keys) == 1
        # A good key is never remembered: each request looks it up.
        assert with_key(api, api.keys["alice"]).status_code == 200
        assert with_key(api, api.keys["alice"]).status_code == 200
        assert counted[-2:] == ["apikey", "apikey"] and len(guard.bad_keys) == 1


def test_revoking_and_creating_keys_take_effect_at_once(tmp_path: Path) -> None:
    with make_api(tmp_path / "data") as api:
        clock = FakeClock()
        fresh_guard(api, clock)
        key = api.keys["alice"]
        assert with_key(api, key).status_code == 200
        assert login(api.client, key).status_code == 201
        with api.ctx.db.session() as session:
            key_id = next(k.id for k in auth.list_keys(session, user="alice"))
            assert auth.revoke_key(session, key_id=key_id)
        assert with_key(api, key).status_code == 401  # no positive cache kept it alive
        assert login(api.client, key).status_code == 401
        # Misses are remembered, yet a key created after them works at its first request.
        with api.ctx.db.session() as session:
            new_key = auth.create_api_key(session, org="acme", user="alice")
        assert with_key(api, new_key).status_code == 200
        assert login(api.client, new_key).status_code == 201


def test_limits_are_off_at_zero(tmp_path: Path) -> None:
    with make_api(tmp_path / "data", login_rate_per_minute=0, auth_failures_per_minute=0, bad_key_cache_s=0) as api:
        fresh_guard(api, FakeClock())
        for n in range(40):
            assert login(api.client, f"mck_bad-{n % 3}").status_code == 401
            assert with_key(api, f"mck_bad-{n % 3}").status_code == 401
        assert login(api.client, api.keys["alice"]).status_code == 201


def test_the_document_describes_429_on_login_and_on_secured_routes(api: Api) -> None:
    document = api.client.get("/openapi.json").json()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            limited = path == "/api/v1/login" or "/orgs/" in path
            assert ("429" in operation["responses"]) == limited, (method, path)
            if limited:
                answer = operation["responses"]["429"]
                assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
                assert "Retry-After" in answer["headers"]
