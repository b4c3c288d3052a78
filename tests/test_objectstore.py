"""Object-storage datasets against real servers (moto for S3, Azurite for Azure Blob) and local folders."""

from __future__ import annotations

import json
import re
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gcsfs
import pytest
from objectstore_contract import Store, assert_contract, write_dataset
from services import (
    AzuriteInfo,
    MotoInfo,
    free_port,
    moto_server,
    s3_client,
    upload_folder_to_azure,
    upload_folder_to_s3,
)

from medcloud.errors import Invalid, Unavailable
from medcloud.sources.objectstore import ObjectStoreSource, parse_client_url, resolve_root

pytest_plugins = ["services"]  # the session fixtures `azurite` and `s3_server`
BUCKET, CONTAINER = "medcloud-test", "medcloud"
FAST_S = 5.0  # every failure must be reported within this many seconds


def _local_store(base: Path, name: str, as_file_url: bool) -> Store:
    def put(folder: Path, prefix: str) -> None:
        shutil.copytree(folder, base / prefix, dirs_exist_ok=True)

    return Store(name, f"file://{base}" if as_file_url else str(base), None, None, put)


@pytest.fixture(scope="module", params=["local", "file-url", "s3-endpoint", "s3-scheme", "azurite"])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Store:
    kind = request.param
    if kind in ("local", "file-url"):
        return _local_store(tmp_path_factory.mktemp(kind), kind, kind == "file-url")
    if kind == "azurite":
        az: AzuriteInfo = request.getfixturevalue("azurite")
        return Store(
            kind,
            f"{az.endpoint}/{CONTAINER}",
            az.account,
            az.key,
            lambda folder, prefix: upload_folder_to_azure(az, folder, CONTAINER, prefix),
        )
    s3: MotoInfo = request.getfixturevalue("s3_server")
    put: Callable[[Path, str], None] = lambda folder, prefix: upload_folder_to_s3(s3, folder, BUCKET, prefix)  # noqa: E731
    if kind == "s3-endpoint":
        return Store(kind, f"{s3.endpoint_url}/{BUCKET}", s3.key, s3.secret, put)
    return Store(kind, f"s3://{BUCKET}", s3.key, s3.secret, put, endpoint_url=s3.endpoint_url)


def publish(store: Store, tmp_path: Path, **kwargs: Any) -> tuple[str, dict[str, bytes]]:
    """Write a dataset locally, put it in the store under a fresh prefix; (its URL, its files)."""
    prefix = f"ds-{uuid.uuid4().hex[:8]}"
    files = write_dataset(tmp_path / "src", **kwargs)
    store.put(tmp_path / "src", prefix)
    return store.url(prefix), files


def test_open_list_and_fetch_bytes(store: Store, tmp_path: Path) -> None:
    url, files = publish(store, tmp_path)
    assert_contract(store.open(url), files, tmp_path / "out")
    assert_contract(store.open(url + "/"), files, tmp_path / "out2")


def test_manifest_url_given_directly(store: Store, tmp_path: Path) -> None:
    url, files = publish(store, tmp_path, manifest_name="dataset.json")
    assert_contract(store.open(f"{url}/dataset.json"), files, tmp_path / "out")


def test_root_path_absolute_url_of_the_same_store(store: Store, tmp_path: Path) -> None:
    prefix = f"ds-{uuid.uuid4().hex[:8]}"
    files = write_dataset(tmp_path / "src", files_under="data", manifest={"root_path": store.url(f"{prefix}/data")})
    store.put(tmp_path / "src", prefix)
    source = store.open(store.url(prefix))
    assert source.root.endswith(f"{prefix}/data")
    assert_contract(source, files, tmp_path / "out")


def test_root_path_relative_to_the_manifest(store: Store, tmp_path: Path) -> None:
    url, files = publish(store, tmp_path, files_under="data", manifest={"root_path": "./data"})
    assert_contract(store.open(url), files, tmp_path / "out")


def test_unknown_image_is_invalid(store: Store, tmp_path: Path) -> None:
    url, _ = publish(store, tmp_path)
    with pytest.raises(Invalid) as err:
        store.open(url).fetch("nope", tmp_path / "out")
    assert err.value.message == "Image nope is not in the dataset."


def fails_fast(open_: Callable[[], object], error: type[Exception] = Invalid) -> str:
    """The message of the error `open_` raises, checking it came within FAST_S seconds."""
    start = time.monotonic()
    with pytest.raises(error) as err:
        open_()
    assert time.monotonic() - start < FAST_S, "the failure took too long to report"
    return str(err.value)


def test_missing_manifest(store: Store) -> None:
    url = store.url(f"empty-{uuid.uuid4().hex[:8]}")
    assert fails_fast(lambda: store.open(url)) == f"No manifest.json found at {url}."
    assert fails_fast(lambda: store.open(url + "/x.json")) == f"No manifest found at {url}/x.json."


def test_invalid_json(store: Store, tmp_path: Path) -> None:
    write_dataset(tmp_path / "src")
    (tmp_path / "src" / "manifest.json").write_bytes(b'{"data": [')
    prefix = f"ds-{uuid.uuid4().hex[:8]}"
    store.put(tmp_path / "src", prefix)
    message = fails_fast(lambda: store.open(store.url(prefix)))
    assert message.startswith(f"The manifest at {store.url(prefix)}/manifest.json is not valid JSON: ")


@pytest.mark.parametrize(
    "data, expected",
    [
        (
            [{"image": {"path": "imagesTr/x.nii.gz", "id": "x"}}],
            "File imagesTr/x.nii.gz listed in the manifest was not found.",
        ),
        (
            [
                {
                    "image": {"path": "imagesTr/a.nii.gz", "id": "a"},
                    "label": {"path": "labelsTr/zz.nii.gz", "id": "l"},
                }
            ],
            "File labelsTr/zz.nii.gz listed in the manifest was not found.",
        ),
        (
            [{"image": {"path": "../secret.bin", "id": "x"}}],
            "{manifest} lists the path '../secret.bin', which escapes the dataset root.",
        ),
        ([{"label": {"path": "labelsTr/a.nii.gz", "id": "l"}}], "{manifest} has no valid samples"),
    ],
)
def test_bad_manifest_content(store: Store, tmp_path: Path, data: list[Any], expected: str) -> None:
    url, _ = publish(store, tmp_path, manifest={"data": data})
    message = fails_fast(lambda: store.open(url))
    assert message.startswith(expected.format(manifest=f"The manifest at {url}/manifest.json"))


def test_root_path_on_another_store_is_invalid(store: Store, tmp_path: Path) -> None:
    url, _ = publish(store, tmp_path, manifest={"root_path": "https://elsewhere.blob.core.windows.net/c/data"})
    message = fails_fast(lambda: store.open(url))
    assert message == (
        f"The manifest's root_path https://elsewhere.blob.core.windows.net/c/data is not in the same storage as {url}."
    )


def test_azurite_wrong_key_is_rejected_and_not_mixed_with_good_credentials(
    azurite: AzuriteInfo, tmp_path: Path
) -> None:
    prefix = f"ds-{uuid.uuid4().hex[:8]}"
    write_dataset(tmp_path / "src")
    upload_folder_to_azure(azurite, tmp_path / "src", CONTAINER, prefix)
    url = f"{azurite.endpoint}/{CONTAINER}/{prefix}"
    good = ObjectStoreSource.open(url, azurite.account, azurite.key)  # a cached instance must not be reused
    wrong_key = "A" * 86 + "=="
    message = fails_fast(lambda: ObjectStoreSource.open(url, azurite.account, wrong_key))
    assert message == f"The storage credentials were rejected by {url}."
    assert ObjectStoreSource.open(url, azurite.account, azurite.key)._fs is not good._fs
    assert wrong_key not in repr(good.location) and azurite.key not in repr(good.location)


def test_azurite_missing_container(azurite: AzuriteInfo) -> None:
    url = f"{azurite.endpoint}/no-such-container/ds"
    message = fails_fast(lambda: ObjectStoreSource.open(url, azurite.account, azurite.key))
    assert message == f"The container no-such-container named in {url} does not exist."


@pytest.mark.parametrize("form", ["endpoint", "scheme"])
def test_s3_missing_bucket(s3_server: MotoInfo, form: str) -> None:
    url = f"{s3_server.endpoint_url}/no-such-bucket/ds" if form == "endpoint" else "s3://no-such-bucket/ds"
    endpoint = None if form == "endpoint" else s3_server.endpoint_url
    message = fails_fast(lambda: ObjectStoreSource.open(url, s3_server.key, s3_server.secret, endpoint_url=endpoint))
    assert message == f"The bucket no-such-bucket named in {url} does not exist."


def test_s3_anonymous_access_to_a_private_bucket_is_rejected(s3_server: MotoInfo, tmp_path: Path) -> None:
    prefix = f"ds-{uuid.uuid4().hex[:8]}"
    write_dataset(tmp_path / "src")
    upload_folder_to_s3(s3_server, tmp_path / "src", BUCKET, prefix)
    url = f"{s3_server.endpoint_url}/{BUCKET}/{prefix}"
    assert fails_fast(lambda: ObjectStoreSource.open(url, None, None)) == (
        f"The storage credentials were rejected by {url}. No credentials were given and anonymous access "
        "is not allowed."
    )


@pytest.mark.parametrize("kind", ["s3", "azure"])
def test_refused_port_fails_fast_naming_the_url(kind: str) -> None:
    port = free_port()  # nothing listens there
    if kind == "s3":
        url, cid, secret = f"http://127.0.0.1:{port}/bucket/ds", "key-id", "top-secret-value"
    else:
        url, cid, secret = (
            f"http://127.0.0.1:{port}/devstoreaccount1/c/ds",
            "devstoreaccount1",
            "c2VjcmV0a2V5",
        )
    message = fails_fast(lambda: ObjectStoreSource.open(url, cid, secret))
    assert message.startswith(f"Could not reach {url}: ") and secret not in message


def test_store_down_after_open_is_unavailable(tmp_path: Path) -> None:
    write_dataset(tmp_path / "src")
    with moto_server() as s3:
        upload_folder_to_s3(s3, tmp_path / "src", BUCKET, "ds")
        source = ObjectStoreSource.open(f"{s3.endpoint_url}/{BUCKET}/ds", s3.key, s3.secret)
    message = fails_fast(lambda: source.fetch("img-a", tmp_path / "out"), Unavailable)
    assert message.startswith(f"Could not reach {s3.endpoint_url}/{BUCKET}/ds: ")
    assert not list((tmp_path / "out").rglob("*.part"))


def test_file_removed_after_open_is_named(s3_server: MotoInfo, tmp_path: Path) -> None:
    prefix = f"ds-{uuid.uuid4().hex[:8]}"
    write_dataset(tmp_path / "src")
    upload_folder_to_s3(s3_server, tmp_path / "src", BUCKET, prefix)
    source = ObjectStoreSource.open(f"{s3_server.endpoint_url}/{BUCKET}/{prefix}", s3_server.key, s3_server.secret)
    s3_client(s3_server).delete_object(Bucket=BUCKET, Key=f"{prefix}/imagesTr/b.nii.gz")
    message = fails_fast(lambda: source.fetch("img-b", tmp_path / "out"))
    assert message == "File imagesTr/b.nii.gz listed in the manifest was not found."


def test_unchecked_open_still_fetches_folders(s3_server: MotoInfo, tmp_path: Path) -> None:
    prefix = f"ds-{uuid.uuid4().hex[:8]}"
    files = write_dataset(tmp_path / "src")
    upload_folder_to_s3(s3_server, tmp_path / "src", BUCKET, prefix)
    url = f"s3://{BUCKET}/{prefix}"
    source = ObjectStoreSource.open(
        url, s3_server.key, s3_server.secret, endpoint_url=s3_server.endpoint_url, check_files=False
    )
    assert_contract(source, files, tmp_path / "out")


# --- URL forms (no server needed; GCS cannot be reached here, so only its parsing is tested) ---

AZ_KEY = "c2VjcmV0LWFjY291bnQta2V5LWZvci10ZXN0cw=="
SA_JSON = json.dumps(
    {
        "type": "service_account",
        "project_id": "p",
        "private_key": "-----BEGIN PRIVATE KEY-----x",
        "client_email": "sa@p.iam.gserviceaccount.com",
    }
)


@pytest.mark.parametrize(
    "url, cid, secret, protocol, root, manifest, options",
    [
        (
            "s3://bkt/pre/fix",
            "AK",
            "SK",
            "s3",
            "bkt/pre/fix",
            "bkt/pre/fix/manifest.json",
            {"key": "AK", "secret": "SK"},
        ),
        ("s3://bkt", None, None, "s3", "bkt", "bkt/manifest.json", {"anon": True}),
        (
            "https://my.bkt.s3.amazonaws.com/pre/",
            "AK",
            "SK",
            "s3",
            "my.bkt/pre",
            "my.bkt/pre/manifest.json",
            {},
        ),
        (
            "https://bkt.s3.eu-west-1.amazonaws.com/pre/m.json",
            "AK",
            "SK",
            "s3",
            "bkt/pre",
            "bkt/pre/m.json",
            {"client_kwargs": {"region_name": "eu-west-1"}},
        ),
        (
            "https://s3.us-east-2.amazonaws.com/bkt/pre",
            None,
            None,
            "s3",
            "bkt/pre",
            "bkt/pre/manifest.json",
            {"client_kwargs": {"region_name": "us-east-2"}},
        ),
        (
            "http://minio.local:9000/bkt/pre",
            "AK",
            "SK",
            "s3",
            "bkt/pre",
            "bkt/pre/manifest.json",
            {"client_kwargs": {"endpoint_url": "http://minio.local:9000"}},
        ),
        (
            "gs://bkt/pre",
            None,
            SA_JSON,
            "gcs",
            "bkt/pre",
            "bkt/pre/manifest.json",
            {"token": json.loads(SA_JSON)},
        ),
        ("gs://bkt/pre", None, None, "gcs", "bkt/pre", "bkt/pre/manifest.json", {"token": "anon"}),
        ("https://storage.googleapis.com/bkt/pre", None, None, "gcs", "bkt/pre", "bkt/pre/manifest.json", {}),
        ("file:///data/my%20ds", None, None, "file", "/data/my ds", "/data/my ds/manifest.json", {}),
        ("/data/ds/list.JSON", None, None, "file", "/data/ds", "/data/ds/list.JSON", {}),
    ],
)
def test_url_forms(
    url: str,
    cid: str | None,
    secret: str | None,
    protocol: str,
    root: str,
    manifest: str,
    options: dict[str, Any],
) -> None:
    loc = parse_client_url(url, cid, secret)
    assert (loc.protocol, loc.root, loc.manifest_path) == (protocol, root, manifest)
    assert loc.storage_options["skip_instance_cache"] is True
    for key, value in options.items():
        assert loc.storage_options[key] == value
    for value in [*(json.loads(secret).values() if protocol == "gcs" and secret else [secret or ""])]:
        if len(value) > 16:  # every secret value is hidden and known for scrubbing
            assert value not in repr(loc) and value in loc.secrets()


@pytest.mark.parametrize(
    "url, cid, secret, endpoint, root",
    [
        (
            "https://acct.blob.core.windows.net/cont/sub",
            None,
            AZ_KEY,
            "https://acct.blob.core.windows.net",
            "cont/sub",
        ),
        (
            "http://127.0.0.1:10000/devstoreaccount1/cont/pre",
            "devstoreaccount1",
            AZ_KEY,
            "http://127.0.0.1:10000/devstoreaccount1",
            "cont/pre",
        ),
        ("az://cont/pre", "acct", AZ_KEY, "https://acct.blob.core.windows.net", "cont/pre"),
    ],
)
def test_azure_url_forms_use_a_connection_string(
    url: str, cid: str | None, secret: str, endpoint: str, root: str
) -> None:
    loc = parse_client_url(url, cid, secret)
    assert (loc.protocol, loc.root) == ("abfs", root)
    conn = loc.storage_options["connection_string"]
    assert f"BlobEndpoint={endpoint};" in conn and f"AccountKey={AZ_KEY};" in conn
    assert AZ_KEY not in repr(loc) and AZ_KEY not in str(loc)


def test_azure_sas_in_the_url_is_used_and_hidden() -> None:
    loc = parse_client_url("https://acct.blob.core.windows.net/cont/p?sv=2024&sp=rl&sig=SECRETSIG", None, None)
    assert "SharedAccessSignature=sv=2024&sp=rl&sig=SECRETSIG;" in loc.storage_options["connection_string"]
    assert loc.url == "https://acct.blob.core.windows.net/cont/p" and "SECRETSIG" not in repr(loc)


def test_self_hosted_endpoint_and_relative_local_path() -> None:
    s3 = parse_client_url("s3://bkt/p", "AK", "SK", endpoint_url="http://127.0.0.1:9000")
    assert s3.storage_options["client_kwargs"] == {"endpoint_url": "http://127.0.0.1:9000"}
    local = parse_client_url("rel/ds", None, None)
    assert local.root == (Path.cwd() / "rel/ds").as_posix()


@pytest.mark.parametrize(
    "url, cid, secret, message",
    [
        ("ftp://host/x", None, None, "The client_url ftp://host/x is not supported"),
        ("s3://bkt/p", "AK", None, "Give both client_id and client_secret"),
        (
            "https://acct.blob.core.windows.net/c/p",
            "acct",
            "not a key!",
            "The client_secret is not a valid Azure account key",
        ),
        ("gs://bkt/p", None, "plain-text", "The client_secret for a Google Cloud Storage dataset must be"),
        (
            "http://127.0.0.1:9000/",
            "AK",
            "SK",
            "The client_url http://127.0.0.1:9000/ names no bucket or container.",
        ),
        ("file://otherhost/data", None, None, "a file:// URL must be local"),
        ("az://c/p", None, AZ_KEY, "needs the storage account name as client_id"),
    ],
)
def test_unsupported_urls_are_invalid(url: str, cid: str | None, secret: str | None, message: str) -> None:
    with pytest.raises(Invalid, match=re.escape(message)) as err:
        parse_client_url(url, cid, secret)
    assert secret is None or secret not in err.value.message


def test_filesystems_are_never_shared_between_datasets() -> None:
    first = parse_client_url("s3://bkt/p", "AK1", "SK1", endpoint_url="http://127.0.0.1:9")
    second = parse_client_url("s3://bkt/p", "AK2", "SK2", endpoint_url="http://127.0.0.1:9")
    assert first.filesystem() is not second.filesystem()
    assert first.filesystem() is not first.filesystem()
    assert isinstance(parse_client_url("gs://bkt/p", None, None).filesystem(), gcsfs.core.GCSFileSystem)


@pytest.mark.parametrize(
    "root_path, expected",
    [
        (None, "bkt/ds"),
        (".", "bkt/ds"),
        ("data", "bkt/ds/data"),
        ("../shared/x", "bkt/shared/x"),
        ("/other-bkt/sub", "other-bkt/sub"),
        ("s3://bkt/abs", "bkt/abs"),
        ("http://127.0.0.1:9/bkt/u", "bkt/u"),
    ],
)
def test_resolve_root(root_path: str | None, expected: str) -> None:
    loc = parse_client_url("http://127.0.0.1:9/bkt/ds", "AK", "SK")
    assert resolve_root(loc, root_path, "AK", "SK") == expected


@pytest.mark.parametrize(
    "root_path, message",
    [
        ("../../../x", "is outside the storage of"),
        ("http://127.0.0.1:10/bkt/u", "is not in the same storage as"),
        ("gs://bkt/u", "is not in the same storage as"),
    ],
)
def test_resolve_root_refuses_other_stores(root_path: str, message: str) -> None:
    loc = parse_client_url("http://127.0.0.1:9/bkt/ds", "AK", "SK")
    with pytest.raises(Invalid, match=message):
        resolve_root(loc, root_path, "AK", "SK")
