"""Create, read, update and delete workspaces; credentials are checked by connecting."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from medcloud.config import Settings
from medcloud.db import get_owned
from medcloud.errors import Conflict
from medcloud.secrets import SecretBox
from medcloud.workspaces import storage
from medcloud.workspaces.orm import Workspace
from medcloud.workspaces.schemas import (
    SECRET_DETAIL_KEYS,
    CloudDetails,
    WorkspaceCreate,
    WorkspaceOut,
    WorkspacePatch,
)


def _split(details: CloudDetails) -> tuple[dict, dict]:
    raw = details.model_dump(exclude_none=True)
    public = {k: v for k, v in raw.items() if k not in SECRET_DETAIL_KEYS}
    secret = {k: v for k, v in raw.items() if k in SECRET_DETAIL_KEYS}
    return storage.split_secrets(public, secret)


def to_out(row: Workspace) -> WorkspaceOut:
    return WorkspaceOut(
        id=row.id,
        name=row.name,
        description=row.description,
        cloud_type=row.cloud_type,
        cloud_specific_details=storage.split_secrets(dict(row.details), {})[0],  # redacted, rows of old too
        created_on=row.created_on,
        last_modified=row.last_modified,
    )


def verify(*, cloud_type: str, details: CloudDetails, settings: Settings, org: str) -> None:
    """Connect with the given details, allowed for `org` (blocking I/O: call from a worker thread)."""
    public, secret = _split(details)
    storage.check_policy(cloud_type, public, secret, settings, org=org)
    storage.check(storage.location(cloud_type, public, secret, settings))


def create(session: Session, *, org: str, user_id: str, body: WorkspaceCreate, box: SecretBox) -> WorkspaceOut:
    public, secret = _split(body.cloud_specific_details)
    row = Workspace(
        org=org,
        user_id=user_id,
        name=body.name,
        description=body.description,
        cloud_type=body.cloud_type.value,
        details=public,
        sealed_secrets=box.seal(secret),
    )
    session.add(row)
    session.flush()
    return to_out(row)


def get_row(session: Session, *, org: str, user_id: str, workspace_id: str) -> Workspace:
    return get_owned(session, Workspace, workspace_id, org=org, user_id=user_id, kind="Workspace")


def list_all(session: Session, *, org: str, user_id: str) -> list[WorkspaceOut]:
    rows = session.scalars(select(Workspace).where(Workspace.org == org, Workspace.user_id == user_id))
    return [to_out(row) for row in rows]


def patch(session: Session, *, row: Workspace, body: WorkspacePatch, box: SecretBox) -> WorkspaceOut:
    if body.name is not None:
        row.name = body.name
    if body.description is not None:
        row.description = body.description
    if body.cloud_specific_details is not None:
        public, secret = _split(body.cloud_specific_details)
        row.details, row.sealed_secrets = public, box.seal(secret)
    session.flush()
    return to_out(row)


def delete(session: Session, *, row: Workspace, users: list[str]) -> WorkspaceOut:
    """Delete unless `users` (names of experiments/datasets using it) is non-empty."""
    if users:
        raise Conflict(f"Workspace in use by {', '.join(users)}.")
    out = to_out(row)
    session.delete(row)
    return out
