"""Tables of orgs, users, memberships and hashed API keys."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from medcloud.db import Base, Timestamped, new_id


class Org(Base, Timestamped):
    __tablename__ = "orgs"
    name: Mapped[str] = mapped_column(String(128), primary_key=True)


class User(Base, Timestamped):
    __tablename__ = "users"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(256), unique=True)


class Membership(Base, Timestamped):
    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("user_id", "org"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    org: Mapped[str] = mapped_column(ForeignKey("orgs.name"), index=True)


class ApiKey(Base, Timestamped):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)


class KeyState(Base):
    """What is known of an API key besides its hash: org and hint at creation, last login, revocation.

    A table of its own (not columns of `api_keys`) so an existing database gains it by `create_all`;
    keys created before it have no row until they are used or revoked.
    """

    __tablename__ = "api_key_states"
    key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"), primary_key=True)
    org: Mapped[str | None] = mapped_column(String(128), default=None)
    hint: Mapped[str | None] = mapped_column(String(16), default=None)  # the key's first characters
    last_login: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
