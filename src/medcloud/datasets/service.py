"""Datasets: create after checking the source, list, patch, delete, and open their DataSource."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from medcloud import egress
from medcloud.config import Settings
from medcloud.datasets.orm import Dataset, ServedImage
from medcloud.datasets.schemas import DatasetCreate, DatasetOut, DatasetPatch
from medcloud.db import Database, get_owned
from medcloud.errors import Conflict, Unavailable
from medcloud.secrets import SecretBox
from medcloud.sources import kinds, local_roots
from medcloud.sources.base import DataSource
from medcloud.sources.kinds import SourceAddress
from medcloud.sources.limits import SourceLimits
from medcloud.sources.manifest_cache import MANIFESTS


def address_of(row: Dataset, box: SecretBox) -> SourceAddress:
    """Where the dataset's images are, with its own credentials (unsealed), of its stored kind."""
    secrets = box.open(row.sealed_secrets)
    return SourceAddress(
        kind=row.source_kind,
        client_url=secrets.get("client_url") or row.client_url,  # sealed when it holds a secret
        client_id=secrets.get("client_id"),
        client_secret=secrets.get("client_secret"),
        filters=row.filters,
    )


def check_local(client_url: str, *, org: str, settings: Settings) -> None:
    """A local `client_url` is allowed for `org` (`sources/local_roots.py`); remote ones pass (blocking)."""
    if kinds.is_local(client_url):
        local_roots.check_client_url(client_url, org=org, settings=settings)


def source_of(row: Dataset, box: SecretBox, *, settings: Settings) -> DataSource:
    """The dataset's source, opened with the server's limits; a local one is checked against its org's
    roots again (the operator may have narrowed them since, or a link may have been swapped)."""
    address = address_of(row, box)
    check_local(address.client_url, org=row.org, settings=settings)
    return kinds.open_source(address, verify=False, cache_key=row.id, limits=SourceLimits.from_settings(settings))


def to_out(row: Dataset) -> DatasetOut:
    return DatasetOut.model_validate(row)


def create(session: Session, *, org: str, user_id: str, body: DatasetCreate, kind: str, box: SecretBox) -> DatasetOut:
    row = Dataset(
        org=org,
        user_id=user_id,
        name=body.name,
        description=body.description,
        type=body.type,
        format=body.format,
        source_kind=kind,
        # A URL holding a secret (a SAS `sig=`, `user:pass@`) is kept redacted in clear, whole only sealed.
        client_url=egress.redact_url(body.client_url),
        filters=body.filters,
        sealed_secrets=box.seal(
            {
                "client_id": body.client_id,
                "client_secret": body.client_secret,
                **({"client_url": body.client_url} if egress.has_secrets(body.client_url) else {}),
            }
        ),
    )
    session.add(row)
    session.flush()
    return to_out(row)


def get_row(session: Session, *, org: str, user_id: str, dataset_id: str) -> Dataset:
    return get_owned(session, Dataset, dataset_id, org=org, user_id=user_id, kind="Dataset")


def list_all(session: Session, *, org: str, user_id: str) -> list[DatasetOut]:
    rows = session.scalars(select(Dataset).where(Dataset.org == org, Dataset.user_id == user_id))
    return [to_out(row) for row in rows]


def patch(session: Session, *, row: Dataset, body: DatasetPatch) -> DatasetOut:
    for key, value in body.model_dump(exclude_none=True).items():
        setattr(row, key, value)
    session.flush()
    MANIFESTS.forget(row.id)  # whatever the patch changed, the next read starts afresh
    return to_out(row)


def delete(session: Session, *, row: Dataset, users: list[str]) -> DatasetOut:
    """Delete unless `users` (experiments referencing it) is non-empty."""
    if users:
        raise Conflict(f"Dataset in use by experiment(s) {', '.join(users)}.")
    out = to_out(row)
    session.execute(ServedImage.__table__.delete().where(ServedImage.dataset_id == row.id))
    session.delete(row)
    MANIFESTS.forget(row.id)
    return out


_pick_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
PICK_ATTEMPTS = 50


def pick_least_recently_served(db: Database, candidates: list[str], *, dataset_id: str) -> str | None:
    """Choose the candidate served longest ago (never-served first) and mark it served now.

    The mark is a conditional write: an UPDATE of the `served_at` that was read (or an INSERT that the
    unique (dataset, image) constraint refuses when another picker inserted first). A picker that loses,
    in this process or another sharing the database, reads again and takes the next image, so two
    annotators asking at the same moment get two different images while others are left. One lock per
    dataset keeps this process's threads from racing each other for nothing.
    """
    if not candidates:
        return None
    with _pick_locks[dataset_id]:
        for _attempt in range(PICK_ATTEMPTS):  # each lost attempt is another picker's success
            choice = _try_pick(db, candidates, dataset_id=dataset_id)
            if choice is not None:
                return choice
    raise Unavailable("nextimage: too many annotators asked at the same moment; try again.")


def _try_pick(db: Database, candidates: list[str], *, dataset_id: str) -> str | None:
    """One attempt: the image marked served by this call, or None when another picker changed it first."""
    table = ServedImage.__table__
    try:
        with db.session() as session:
            served = dict(
                session.execute(
                    select(ServedImage.image_id, ServedImage.served_at).where(ServedImage.dataset_id == dataset_id)
                ).all()
            )
            choice = min(candidates, key=lambda image_id: served.get(image_id, -1.0))
            now = max(time.time(), served.get(choice, 0.0) + 1e-6)  # later than the one replaced, even if clocks differ
            if choice in served:
                won = session.execute(
                    update(table)
                    .where(
                        table.c.dataset_id == dataset_id,
                        table.c.image_id == choice,
                        table.c.served_at == served[choice],
                    )
                    .values(served_at=now)
                ).rowcount
                return choice if won == 1 else None
            session.add(ServedImage(dataset_id=dataset_id, image_id=choice, served_at=now))
        return choice
    except IntegrityError:  # another picker inserted the same never-served image first
        return None
