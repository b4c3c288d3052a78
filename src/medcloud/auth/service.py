"""API keys (stored as hashes), login, bearer tokens and org membership."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

import jwt
from sqlalchemy import select
from sqlalchemy.orm import Session

from medcloud.auth.orm import ApiKey, Membership, Org, User
from medcloud.errors import Forbidden, Unauthorized

KEY_PREFIX = "mck_"


@dataclass(frozen=True)
class Principal:
    """The authenticated caller."""

    user_id: str


def _hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(session: Session, *, org: str, user: str) -> str:
    """Create org and user if needed, add the membership, and return a new key (shown once)."""
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
    session.add(ApiKey(user_id=db_user.id, key_hash=_hash_key(key)))
    session.flush()
    return key


def login(session: Session, *, api_key: str, signing_key: bytes, ttl_s: int) -> tuple[str, str]:
    """Exchange an API key for `(user_id, token)`; raises Unauthorized for an unknown key."""
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == _hash_key(api_key)))
    if row is None:
        raise Unauthorized("Invalid API key.")
    now = int(time.time())
    token = jwt.encode({"sub": row.user_id, "iat": now, "exp": now + ttl_s}, signing_key, algorithm="HS256")
    return row.user_id, token


def verify_token(token: str, *, signing_key: bytes) -> Principal:
    """Decode a bearer token; raises Unauthorized when it is bad or expired."""
    try:
        claims = jwt.decode(token, signing_key, algorithms=["HS256"], options={"require": ["sub", "exp"]})
    except jwt.PyJWTError as exc:
        raise Unauthorized("Invalid or expired token.") from exc
    return Principal(user_id=str(claims["sub"]))


def require_member(session: Session, *, user_id: str, org: str) -> None:
    """Raise Forbidden unless the user belongs to the org."""
    member = session.scalar(select(Membership).where(Membership.user_id == user_id, Membership.org == org))
    if member is None:
        raise Forbidden(f"User is not a member of org {org}.")
