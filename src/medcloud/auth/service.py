"""API keys (stored as hashes), login, bearer tokens, org membership, and listing/revoking keys."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import datetime

import jwt
from sqlalchemy import select
from sqlalchemy.orm import Session

from medcloud.auth.orm import ApiKey, KeyState, Membership, Org, User
from medcloud.db import utcnow
from medcloud.errors import Forbidden, NotFound, Unauthorized

KEY_PREFIX = "mck_"
HINT_CHARS = len(KEY_PREFIX) + 4  # shown by `keys list`; four random characters tell keys apart, not more
REVOKED = "The API key of this token was revoked or deleted; log in with a valid key."


class InvalidKey(Unauthorized):
    """No valid API key has this text (unknown or revoked): what `auth/limits.py` counts and remembers."""

    def __init__(self) -> None:
        super().__init__("Invalid API key.")


@dataclass(frozen=True)
class Principal:
    """The authenticated caller and the API key its token was minted from."""

    user_id: str
    key_id: str


@dataclass(frozen=True)
class KeyInfo:
    """An API key as `medcloud keys list` shows it (never the key itself)."""

    id: str
    user: str
    orgs: list[str]
    hint: str | None
    created: datetime
    last_login: datetime | None
    revoked_at: datetime | None


def _hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def issue_api_key(session: Session, *, org: str, user: str) -> tuple[str, str]:
    """Create org and user if needed, add the membership and a new key; return `(key id, key)` (shown once)."""
    if session.get(Org, org) is None:
        session.add(Org(name=org))
    db_user = session.scalar(select(User).where(User.name == user))
    if db_user is None:
        db_user = User(name=user)
        session.add(db_user)
        session.flush()
    member = session.scalar(select(Membership).where(Membership.user_id == db_user.id, Membership.org == org))
    if member is None:
        session.add(Membership(user_id=db_user.id, org=org))
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(user_id=db_user.id, key_hash=_hash_key(key))
    session.add(row)
    session.flush()
    session.add(KeyState(key_id=row.id, org=org, hint=key[:HINT_CHARS]))
    session.flush()
    return row.id, key


def create_api_key(session: Session, *, org: str, user: str) -> str:
    """`issue_api_key` for callers that need only the key."""
    return issue_api_key(session, org=org, user=user)[1]


def _state(session: Session, key_id: str) -> KeyState:
    state = session.get(KeyState, key_id)
    if state is None:  # a key created before key states were recorded
        state = KeyState(key_id=key_id)
        session.add(state)
    return state


def login(session: Session, *, api_key: str, signing_key: bytes, ttl_s: int) -> tuple[str, str]:
    """Exchange an API key for `(user_id, token)`; raises Unauthorized for an unknown or revoked key."""
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == _hash_key(api_key)))
    if row is None:
        raise InvalidKey()
    state = _state(session, row.id)
    if state.revoked_at is not None:
        raise InvalidKey()  # as unknown as a wrong one: a revoked key tells nothing
    state.last_login = utcnow()
    now = int(time.time())
    claims = {"sub": row.user_id, "key": row.id, "iat": now, "exp": now + ttl_s}
    return row.user_id, jwt.encode(claims, signing_key, algorithm="HS256")


def key_principal(session: Session, *, api_key: str) -> Principal:
    """The caller of an `Authorization: ApiKey <key>` request: the same checks as `login` (unknown or revoked
    key: 401), read from the database on every request, so a revocation takes effect at once.

    The key is looked up by its SHA-256 digest: one indexed query. Nothing valid is cached (a revocation
    takes effect at once); `auth/limits.py` remembers refused keys for a short while.
    """
    found = session.execute(
        select(ApiKey.id, ApiKey.user_id, KeyState.revoked_at)
        .outerjoin(KeyState, KeyState.key_id == ApiKey.id)
        .where(ApiKey.key_hash == _hash_key(api_key))
    ).first()
    if found is None or found.revoked_at is not None:
        raise InvalidKey()
    return Principal(user_id=found.user_id, key_id=found.id)


def verify_token(token: str, *, signing_key: bytes) -> Principal:
    """Decode a bearer token; raises Unauthorized when it is bad, expired, or names no key (minted before
    keys could be revoked: the client logs in again)."""
    try:
        claims = jwt.decode(token, signing_key, algorithms=["HS256"], options={"require": ["sub", "key", "exp"]})
    except jwt.PyJWTError as exc:
        raise Unauthorized("Invalid or expired token.") from exc
    return Principal(user_id=str(claims["sub"]), key_id=str(claims["key"]))


def require_member(session: Session, *, user_id: str, org: str) -> None:
    """Raise Forbidden unless the user belongs to the org."""
    member = session.scalar(select(Membership).where(Membership.user_id == user_id, Membership.org == org))
    if member is None:
        raise Forbidden(f"User is not a member of org {org}.")


def authorize(session: Session, *, principal: Principal, org: str) -> None:
    """Every request: the token's key still exists, is the user's and is not revoked (401), then membership (403).

    One primary-key join per request: revocation by another process (the CLI) takes effect at once.
    """
    query = (
        select(ApiKey.user_id, KeyState.revoked_at)
        .outerjoin(KeyState, KeyState.key_id == ApiKey.id)
        .where(ApiKey.id == principal.key_id)
    )
    found = session.execute(query).first()
    if found is None or found.user_id != principal.user_id or found.revoked_at is not None:
        raise Unauthorized(REVOKED)
    require_member(session, user_id=principal.user_id, org=org)


def list_keys(session: Session, *, org: str | None = None, user: str | None = None) -> list[KeyInfo]:
    """Every key, oldest first, filtered by org (the key's, else its user's memberships) and user name."""
    users = {u.id: u.name for u in session.scalars(select(User))}
    memberships: dict[str, list[str]] = {}
    for m in session.scalars(select(Membership).order_by(Membership.org)):
        memberships.setdefault(m.user_id, []).append(m.org)
    states = {s.key_id: s for s in session.scalars(select(KeyState))}
    out = []
    for row in session.scalars(select(ApiKey).order_by(ApiKey.created_on)):
        state = states.get(row.id)
        orgs = [state.org] if state is not None and state.org else memberships.get(row.user_id, [])
        info = KeyInfo(
            id=row.id,
            user=users.get(row.user_id, row.user_id),
            orgs=orgs,
            hint=state.hint if state else None,
            created=row.created_on,
            last_login=state.last_login if state else None,
            revoked_at=state.revoked_at if state else None,
        )
        if (org is None or org in info.orgs) and (user is None or info.user == user):
            out.append(info)
    return out


def revoke_key(session: Session, *, key_id: str) -> bool:
    """Revoke the key: it no longer logs in and its tokens stop working. False if it already was."""
    if session.get(ApiKey, key_id) is None:
        raise NotFound(f"API key {key_id} not found.")
    state = _state(session, key_id)
    if state.revoked_at is not None:
        return False
    state.revoked_at = utcnow()
    session.flush()
    return True
