"""Where an object-storage dataset lives: `client_url` + credentials → an fsspec location.

URL forms: `s3://bucket/prefix`, `https://<bucket>.s3[.<region>].amazonaws.com/prefix`,
`https://<account>.blob.core.windows.net/<container>/prefix`, `gs://bucket/prefix`, a local path or
`file://` URL, and self-hosted endpoints `http(s)://host:port/...`: Azure (Azurite's path style) when
the first path segment equals `client_id` (the account), GCS (an emulator or a GCS-compatible store,
`http://host:port/<bucket>/prefix`) when `client_secret` is a service-account JSON key, otherwise S3
path style (MinIO, moto).

GCS credentials are a service-account key: the JSON key file's content as `client_secret` (datasets)
or `credentials` (workspaces). gcsfs signs its token requests with it; it is never shown or logged.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import os
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit
from urllib.request import url2pathname

import fsspec

from medcloud.egress import split_url
from medcloud.errors import Invalid

CONNECT_TIMEOUT_S = 3
# Schemes naming another machine; anything else (no scheme, file://, a drive letter) is this server's files.
REMOTE_SCHEMES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "http", "https"})
READ_TIMEOUT_S = 60
MAX_MANIFEST_BYTES = 256 * 1024**2
_SECRET_OPTIONS = {"key", "secret", "account_key", "sas_token", "connection_string", "token", "credential"}
_S3_HOST = re.compile(r"^(?:(?P<bucket>.+)\.)?s3(?:[.-](?P<region>[a-z0-9-]+))?\.amazonaws\.com(?:\.cn)?$")
_AZURE_HOST = re.compile(r"^(?P<account>[a-z0-9]+)\.blob\.core\.windows\.net$")
_GCS_SCOPE = "https://www.googleapis.com/auth/devstorage.full_control"  # what gcsfs asks for with access="full_control"
_GCS_HOST = re.compile(r"^(?:(?P<bucket>.+)\.)?storage\.googleapis\.com$")


@dataclass(frozen=True)
class StoreLocation:
    """Where a dataset lives: an fsspec protocol, its options (secrets inside) and the manifest's paths."""

    protocol: str  # "s3", "abfs", "gcs" or "file"
    storage_options: dict[str, Any] = field(hash=False)  # fsspec.filesystem(protocol, **storage_options)
    root: str  # fsspec path of the manifest's folder, no trailing slash
    manifest_path: str
    url: str = ""  # the client URL without secrets, for messages
    store: str | None = None  # identity of the store (endpoint/account); None = any of this protocol

    def __repr__(self) -> str:
        options = {k: ("***" if k in _SECRET_OPTIONS else v) for k, v in self.storage_options.items()}
        return (
            f"StoreLocation(protocol={self.protocol!r}, url={self.url!r}, root={self.root!r}, "
            f"manifest_path={self.manifest_path!r}, storage_options={options!r})"
        )

    __str__ = __repr__

    def filesystem(self) -> fsspec.AbstractFileSystem:
        """A fresh filesystem for this location (never shared with another dataset), failing fast."""
        if self.protocol == "gcs":
            fs = _gcs_filesystem(self)
        else:
            fs = fsspec.filesystem(self.protocol, **self.storage_options)
        if self.protocol in ("s3", "gcs"):
            fs.retries = 2  # s3fs/gcsfs own retry loops (class default 5-6)
        if self.protocol == "abfs":  # adlfs takes no retry settings: the SDK default backs off for a minute
            from azure.storage.blob.aio import BlobServiceClient
            from fsspec.asyn import sync

            old = fs.service_client
            fs.service_client = BlobServiceClient.from_connection_string(
                self.storage_options["connection_string"],
                retry_total=1,
                initial_backoff=0.3,
                increment_base=1,
                random_jitter_range=0.2,
                connection_timeout=CONNECT_TIMEOUT_S,
                read_timeout=READ_TIMEOUT_S,
                permit_redirects=False,  # the endpoint was checked against the egress policy, a redirect was not
            )
            sync(fs.loop, old.close)
        return fs

    def endpoints(self) -> list[str]:
        """The URLs the client chose that this location connects to, for the egress policy (default cloud
        endpoints of `s3://` and `gs://` are not among them)."""
        options = self.storage_options
        urls: list[str | None] = []
        if self.protocol == "s3":
            urls.append((options.get("client_kwargs") or {}).get("endpoint_url"))
        elif self.protocol == "abfs":
            match = re.search(r"BlobEndpoint=([^;]+);", options.get("connection_string", ""))
            urls.append(match[1] if match else None)
        elif self.protocol == "gcs":
            token = options.get("token")
            urls += [options.get("endpoint_url"), token.get("token_uri") if isinstance(token, dict) else None]
        return [str(url) for url in urls if url]

    def secrets(self) -> list[str]:
        """The secret strings inside `storage_options`, to scrub from any text shown or logged."""
        values: list[str] = []
        for key in _SECRET_OPTIONS & self.storage_options.keys():
            value = self.storage_options[key]
            if isinstance(value, dict):
                values += [v for v in value.values() if isinstance(v, str) and len(v) > 16]
            elif key == "connection_string":
                values += re.findall(r"(?:AccountKey|SharedAccessSignature)=([^;]+)", value)
            elif isinstance(value, str) and not (key == "token" and value == "anon"):  # gcsfs's "no credentials"
                values.append(value)
        return [v for v in values if v]


@dataclass(frozen=True)
class _Parsed:
    protocol: str
    options: dict[str, Any]
    path: str
    store: str | None
    display: str


def parse_client_url(
    client_url: str, client_id: str | None, client_secret: str | None, *, endpoint_url: str | None = None
) -> StoreLocation:
    """Map a dataset's `client_url` and credentials to a `StoreLocation`; `Invalid` if unsupported."""
    parsed = _parse_store_url(client_url.strip(), client_id or None, client_secret or None, endpoint_url)
    path = parsed.path.rstrip("/") if parsed.path not in ("/", "") else parsed.path
    if path.lower().endswith(".json"):
        root, manifest_path = posixpath.dirname(path), path
    else:
        root, manifest_path = path, f"{path}/manifest.json" if path != "/" else "/manifest.json"
    if not root or (parsed.protocol != "file" and root.startswith("/")):
        raise Invalid(f"The client_url {parsed.display} names no bucket or container.")
    return StoreLocation(
        protocol=parsed.protocol,
        storage_options=parsed.options,
        root=root,
        manifest_path=manifest_path,
        url=parsed.display,
        store=parsed.store,
    )


def _parse_store_url(url: str, cid: str | None, secret: str | None, endpoint_url: str | None) -> _Parsed:
    parts = split_url(url, what="client_url")
    scheme, display = parts.scheme.lower(), _display(url)
    bucket_path = f"{parts.netloc}{parts.path}"
    if scheme in ("s3", "s3a"):
        return _s3(bucket_path, cid, secret, endpoint_url, None, display)
    if scheme in ("gs", "gcs"):
        return _gcs(bucket_path, secret, endpoint_url, display)
    if scheme in ("az", "abfs", "abfss"):
        if not cid:
            raise Invalid(f"An {scheme}:// client_url needs the storage account name as client_id.")
        endpoint = endpoint_url or f"https://{cid}.blob.core.windows.net"
        return _azure(bucket_path, cid, secret, endpoint.rstrip("/"), "", display)
    if scheme in ("", "file"):
        if scheme == "file" and parts.netloc not in ("", "localhost"):
            raise Invalid(f"The client_url {display} names a remote host; a file:// URL must be local.")
        local = url2pathname(unquote(parts.path)) if scheme else url
        path = Path(local).expanduser().absolute().as_posix()
        return _Parsed("file", {"skip_instance_cache": True}, posixpath.normpath(path), "file", display)
    if scheme in ("http", "https"):
        return _parse_http(parts, cid, secret, display)
    raise Invalid(f"The client_url {display} is not supported: use s3://, gs://, https://, a local path or file://.")


def _parse_http(parts: Any, cid: str | None, secret: str | None, display: str) -> _Parsed:
    host = (parts.hostname or "").lower()
    path = unquote(parts.path).lstrip("/")
    if m := _AZURE_HOST.match(host):
        return _azure(path, m["account"], secret, f"https://{host}", parts.query, display)
    if m := _S3_HOST.match(host):
        return _s3(f"{m['bucket']}/{path}" if m["bucket"] else path, cid, secret, None, m["region"], display)
    if m := _GCS_HOST.match(host):
        return _gcs(f"{m['bucket']}/{path}" if m["bucket"] else path, secret, None, display)
    base = f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"
    first, _, rest = path.partition("/")
    if cid and first == cid:
        return _azure(rest, cid, secret, f"{base}/{first}", parts.query, display)
    if _is_service_account_key(secret):
        return _gcs(path, secret, base, display)
    return _s3(path, cid, secret, base, None, display)


def _s3(
    path: str, cid: str | None, secret: str | None, endpoint: str | None, region: str | None, display: str
) -> _Parsed:
    if bool(cid) != bool(secret):
        raise Invalid(
            "Give both client_id and client_secret (access key and secret key), or neither for a public bucket."
        )
    options: dict[str, Any] = {"key": cid, "secret": secret} if cid else {"anon": True}
    client_kwargs = {k: v for k, v in (("endpoint_url", endpoint), ("region_name", region)) if v}
    options |= {
        "client_kwargs": client_kwargs,
        "skip_instance_cache": True,
        "config_kwargs": {
            "connect_timeout": CONNECT_TIMEOUT_S,
            "read_timeout": READ_TIMEOUT_S,
            "retries": {"max_attempts": 2, "mode": "standard"},
        },
    }
    return _Parsed("s3", options, path, f"s3:{endpoint}" if endpoint else None, display)


def _azure(path: str, account: str, secret: str | None, endpoint: str, query: str, display: str) -> _Parsed:
    conn = f"BlobEndpoint={endpoint};"
    sas = secret if secret and "sig=" in secret else (query if "sig=" in query else None)
    if sas:
        conn += f"SharedAccessSignature={sas.lstrip('?')};"
    elif secret:
        try:
            base64.b64decode(secret, validate=True)
        except (binascii.Error, ValueError):
            raise Invalid("The client_secret is not a valid Azure account key or SAS token.") from None
        scheme = endpoint.split(":", 1)[0]
        conn = f"DefaultEndpointsProtocol={scheme};AccountName={account};AccountKey={secret};{conn}"
    options = {
        "connection_string": conn,
        "skip_instance_cache": True,
        "connection_timeout": CONNECT_TIMEOUT_S,
        "read_timeout": READ_TIMEOUT_S,
    }
    return _Parsed("abfs", options, path, f"azure:{endpoint}", display)


def _is_service_account_key(secret: str | None) -> bool:
    """Whether `secret` is the content of a Google service-account JSON key file."""
    if not secret or not secret.lstrip().startswith("{"):
        return False
    try:
        info = json.loads(secret)
    except ValueError:
        return False
    return isinstance(info, dict) and info.get("type") == "service_account"


def _gcs_token(secret: str | None) -> Any:
    """gcsfs's `token`: "anon" without credentials, else the key file's JSON as a dict."""
    if not secret:
        return "anon"
    invalid = Invalid(
        "The client_secret for a Google Cloud Storage dataset must be a service-account JSON key (the key file's content)."
    )
    try:
        token = json.loads(secret)
    except ValueError:
        raise invalid from None
    if not isinstance(token, dict) or "type" not in token:
        raise invalid
    return token


def _gcs_filesystem(location: StoreLocation) -> fsspec.AbstractFileSystem:
    """gcsfs's JSON-API filesystem; a service-account key is turned into a token here, once, or refused.

    `gcsfs.core.GCSFileSystem`, not `gcsfs.GCSFileSystem`: since 2026 the latter is by default an
    experimental subclass that asks each bucket's storage layout over gRPC first — a 60 s wait on an
    offline machine or against an emulator, for every dataset opened. The key's first token is asked
    for here because gcsfs retries a refused key as if its token had expired (six tries, about 30 s)
    and, when google-auth cannot read a key, silently falls back to another credential type and fails
    with a bare `KeyError`. Messages name the store, never the key.
    """
    from gcsfs.core import GCSFileSystem

    options = dict(location.storage_options)
    token = options.get("token")
    if isinstance(token, dict) and token.get("type") == "service_account":
        options["token"] = _service_account_credentials(token, location)
    return GCSFileSystem(**options)


def _service_account_credentials(info: dict[str, Any], location: StoreLocation) -> Any:
    """google-auth credentials for a service-account key, with a fresh token; `Invalid` when refused."""
    import google.auth.exceptions
    import requests
    from google.auth.transport.requests import Request
    from google.oauth2 import service_account

    missing = [k for k in ("client_email", "private_key", "token_uri") if not isinstance(info.get(k), str)]
    if missing:
        raise Invalid(f"The service-account key for {location.url} lacks {', '.join(missing)}.")
    try:
        credentials = service_account.Credentials.from_service_account_info(info, scopes=[_GCS_SCOPE])
    except (ValueError, TypeError, KeyError):
        raise Invalid(f"The service-account key for {location.url} has no valid PEM private_key.") from None
    with requests.Session() as session:
        session.request = functools.partial(session.request, timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S))  # type: ignore[method-assign]
        try:
            credentials.refresh(Request(session))
        except google.auth.exceptions.RefreshError as exc:
            raise Invalid(
                f"The storage credentials were rejected by {location.url}: {_scrub(exc, location)}."
            ) from None
        except google.auth.exceptions.TransportError as exc:
            raise Invalid(
                f"Could not reach the token_uri of the credentials for {location.url}: {_scrub(exc, location)}."
            ) from None
    return credentials


def _scrub(exc: BaseException, location: StoreLocation) -> str:
    """The first line of an auth error, without any secret of `location`."""
    text = (str(exc.args[0] if exc.args else exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    for secret in location.secrets():
        if len(secret) >= 6:
            text = text.replace(secret, "***")
    return text.rstrip(".") or type(exc).__name__


def _gcs(path: str, secret: str | None, endpoint: str | None, display: str) -> _Parsed:
    token = _gcs_token(secret)
    options = {"token": token, "skip_instance_cache": True, "requests_timeout": READ_TIMEOUT_S}
    if endpoint:
        options["endpoint_url"] = endpoint
    return _Parsed("gcs", options, path, f"gcs:{endpoint}" if endpoint else None, display)


def _display(url: str) -> str:
    """The URL without user info, query (SAS tokens) or fragment."""
    try:
        parts = urlsplit(url)
    except ValueError:  # malformed (`http://[::1/x`): show only what cannot hold a secret
        return re.sub(r"//[^/?#]*@", "//", re.split(r"[?#]", url, maxsplit=1)[0])
    if not parts.scheme or len(parts.scheme) == 1:
        return url
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def resolve_root(
    location: StoreLocation,
    root_path: str | None,
    client_id: str | None,
    client_secret: str | None,
    *,
    endpoint_url: str | None = None,
) -> str:
    """The fsspec path of a manifest's `root_path` (URL, absolute or relative) in `location`'s store."""
    text = (root_path or "").strip()
    if text in ("", ".", "./"):
        return location.root
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text):
        try:  # credentials that cannot even apply to the URL's kind of store mean another store
            other = _parse_store_url(text, client_id or None, client_secret or None, endpoint_url)
        except Invalid:
            other = None
        if other is None or other.protocol != location.protocol or other.store not in (None, location.store):
            raise Invalid(f"The manifest's root_path {_display(text)} is not in the same storage as {location.url}.")
        path = other.path
    elif text.startswith("/"):
        path = text if location.protocol == "file" else text.lstrip("/")
    else:
        path = f"{location.root}/{text}"
    path = posixpath.normpath(path)
    if path.startswith("..") or path == "." or (location.protocol != "file" and path.startswith("/")):
        raise Invalid(f"The manifest's root_path {root_path!r} is outside the storage of {location.url}.")
    if location.protocol == "file" and not _inside(path, location.root):
        # A local dataset reads this server's disk: only its own folder, whatever the manifest says.
        raise Invalid(
            f"The manifest's root_path {root_path!r} is outside the dataset's folder {location.url}; "
            "a local dataset's files must be inside its own folder."
        )
    return path


def _inside(path: str, root: str) -> bool:
    """`path` is `root` or below it, links resolved (a link inside the folder may point anywhere)."""
    real, base = os.path.realpath(path), os.path.realpath(root)
    return real == base or real.startswith(base.rstrip("/") + "/")
