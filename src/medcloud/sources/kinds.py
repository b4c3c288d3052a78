"""Dataset sources by their kind: chosen once, when a dataset is created, and stored (`datasets.source_kind`).

Every later step (opening the source for a request or a job, checking its egress, building a job's
ticket) goes by the stored kind, never by the URL again. Adding a kind is one entry in `KINDS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from medcloud import egress
from medcloud.config import Settings
from medcloud.sources.base import DataSource
from medcloud.sources.limits import SourceLimits

OBJECTSTORE = "objectstore"
DICOMWEB = "dicomweb"


@dataclass(frozen=True)
class SourceAddress:
    """Where a dataset's images are and how to sign in: what a stored row or a job ticket gives."""

    kind: str
    client_url: str
    client_id: str | None = None
    client_secret: str | None = None
    filters: str | None = None


def kind_for_new(client_url: str, filters: str | None) -> str:
    """The kind of a dataset being created: DICOMweb roots are recognised by their path (Orthanc's
    `/dicom-web`, `/dicomweb`, `/wado`, `/rs`) or by QIDO `filters`; anything else is object storage."""
    lowered = client_url.lower().rstrip("/")
    if filters is not None or any(tag in lowered for tag in ("dicom-web", "dicomweb", "/wado", "/rs")):
        return DICOMWEB
    return OBJECTSTORE


def is_local(client_url: str) -> bool:
    """Anything without a remote scheme is this server's own files: `FILE:///etc`, ` /etc` and `rel/dir` too."""
    from medcloud.sources.locations import REMOTE_SCHEMES

    return egress.scheme_of(client_url, what="client_url") not in REMOTE_SCHEMES


def _objectstore_endpoints(address: SourceAddress) -> list[str]:
    from medcloud.sources.locations import parse_client_url

    return parse_client_url(address.client_url, address.client_id, address.client_secret).endpoints()


def _dicomweb_endpoints(address: SourceAddress) -> list[str]:
    from medcloud.sources.dicomweb import parse_dicomweb_url

    root, _auth = parse_dicomweb_url(address.client_url, address.client_id, address.client_secret)
    return [root]


def _open_objectstore(
    address: SourceAddress, verify: bool, cache_key: str | None, limits: SourceLimits | None
) -> DataSource:
    from medcloud.sources.objectstore import ObjectStoreSource

    return ObjectStoreSource.open(
        address.client_url, address.client_id, address.client_secret, check_files=verify, cache_key=cache_key
    )


def _open_dicomweb(
    address: SourceAddress, verify: bool, cache_key: str | None, limits: SourceLimits | None
) -> DataSource:
    from medcloud.sources.dicomweb import DicomWebSource

    return DicomWebSource.open(
        address.client_url, address.client_id, address.client_secret, filters=address.filters, limits=limits
    )


@dataclass(frozen=True)
class SourceKind:
    """How one kind of source is reached: the hosts it connects to, and how it is opened."""

    endpoints: Callable[[SourceAddress], list[str]]
    open: Callable[[SourceAddress, bool, str | None, SourceLimits | None], DataSource]


KINDS: dict[str, SourceKind] = {
    OBJECTSTORE: SourceKind(_objectstore_endpoints, _open_objectstore),
    DICOMWEB: SourceKind(_dicomweb_endpoints, _open_dicomweb),
}


def check_egress(address: SourceAddress, settings: Settings) -> None:
    """The hosts a remote source would connect to pass the egress policy (blocking: resolves names).

    Checked when the dataset is created: storage and DICOMweb clients resolve names again themselves.
    """
    if is_local(address.client_url):
        return
    egress.check_urls(KINDS[address.kind].endpoints(address), egress.Policy.from_settings(settings), what="client_url")


def open_source(
    address: SourceAddress, *, verify: bool, cache_key: str | None = None, limits: SourceLimits | None = None
) -> DataSource:
    """Connect to the source (blocking I/O); `verify` also checks every listed file (at creation).

    `cache_key` (the dataset id) lets an object store's parsed manifest be reused while it is unchanged;
    `limits` caps what a DICOMweb source reads (the settings' defaults when None).
    """
    return KINDS[address.kind].open(address, verify, cache_key, limits)
