"""The egress policy for every URL a client gives, local-path rules, and secrets in URLs never shown or logged."""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import make_api
from fakes import tiny_bundle_zip
from local_http import http_server
from services import AZURITE_ACCOUNT, upload_folder_to_azure, upload_folder_to_s3

from medcloud import egress
from medcloud.config import Settings
from medcloud.errors import Invalid

SECRET_SIG = "SIGsecret0123456789"
SECRET_PASSWORD = "pa55-SECRET-userinfo"
MALFORMED = "http://[::1/x"
PRIVATE_FORMS = [
    "http://0x7f000001/",
    "http://2130706433/",
    "http://127.1/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::1]/",
    "http://169.254.169.254/latest/meta-data/",
    "http://[fe80::1]/",
    "http://10.0.0.1/",
    "http://[fd00::1]/",
    "http://100.64.0.1/",
    "http://224.0.0.1/",
    "http://0.0.0.0/",
    "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 of 169.254.169.254
    "http://[2002:7f00:1::]/",  # 6to4 of 127.0.0.1
]


def default_policy() -> egress.Policy:
    return egress.Policy.from_settings(Settings())


@pytest.mark.parametrize("url", PRIVATE_FORMS)
def test_private_loopback_and_link_local_forms_are_refused(url: str) -> None:
    with pytest.raises(egress.EgressRefused, match="private, loopback"):
        egress.check_url(url, default_policy())


@pytest.mark.parametrize("url", ["file:///etc/passwd", "FILE:///etc/passwd", "gopher://example.org/", "ftp://x/y"])
def test_schemes_other_than_http_are_refused(url: str) -> None:
    with pytest.raises(egress.EgressRefused, match="not an http"):
        egress.check_url(url, default_policy())


@pytest.mark.parametrize("url", [MALFORMED, "http://host:99999/", "http://[zz::1]/"])
def test_malformed_urls_are_invalid_not_crashes(url: str) -> None:
    with pytest.raises(Invalid, match="not a valid URL"):
        egress.check_url(url, default_policy())


def test_operator_networks_and_private_switch_allow_what_they_name() -> None:
    networks = egress.Policy.from_settings(Settings(egress_allowed_networks=["127.0.0.0/8"]))
    assert egress.check_url("http://127.0.0.1:8/x", networks).addresses[0].exploded == "127.0.0.1"
    assert egress.check_url("http://[::ffff:127.0.0.2]/", networks).host == "::ffff:127.0.0.2"
    with pytest.raises(egress.EgressRefused):
        egress.check_url("http://10.0.0.1/", networks)
    egress.check_url("http://10.0.0.1/", egress.Policy.from_settings(Settings(egress_allow_private=True)))


def test_redact_url_hides_user_info_query_values_and_fragment() -> None:
    url = f"https://user:{SECRET_PASSWORD}@acct.blob.core.windows.net/c/p?sv=2024&sig={SECRET_SIG}#frag"
    assert egress.redact_url(url) == "https://***@acct.blob.core.windows.net/c/p?sv=***&sig=***#***"
    assert egress.redact_url(f"http://[::1/x?sig={SECRET_SIG}") == "http://[::1/x"
    assert egress.redact_url("/data/x") == "/data/x" and not egress.has_secrets("https://h/p")


def loopback_policy(**kw: object) -> egress.Policy:
    return egress.Policy.from_settings(Settings(egress_allowed_networks=["127.0.0.1/32"], **kw))


def test_download_rechecks_every_redirect_hop(tmp_path: Path) -> None:
    with (
        http_server("127.0.0.2", files={"/x": b"internal"}) as internal,
        http_server(redirects={"/x": f"{internal.url}/x"}) as public,
    ):
        with pytest.raises(egress.EgressRefused):
            egress.download(f"{public.url}/x", tmp_path / "x", loopback_policy())
        assert internal.hits == [] and not (tmp_path / "x").exists()


def test_download_stops_at_the_byte_cap_with_or_without_a_length(tmp_path: Path) -> None:
    for length in (True, False):
        with (
            http_server(files={"/big": bytes(300_000)}, length=length) as server,
            pytest.raises(egress.DownloadFailed, match="larger than 100000 bytes"),
        ):
            egress.download(f"{server.url}/big", tmp_path / "big", loopback_policy(egress_max_bytes=100_000))
        assert not (tmp_path / "big").exists()


def test_download_stops_at_its_deadline(tmp_path: Path) -> None:
    with http_server(files={"/slow": bytes(65536 * 20)}, drip_s=0.2) as server:
        start = time.monotonic()
        with pytest.raises(egress.DownloadFailed, match="did not download within"):
            egress.download(f"{server.url}/slow", tmp_path / "slow", loopback_policy(egress_deadline_s=1))
        assert time.monotonic() - start < 5
    assert not (tmp_path / "slow").exists()


# --- client URLs over the API ----------------------------------------------------------------------------------


@pytest.fixture
def strict_api(tmp_path: Path) -> Iterator[object]:
    """A server with the production egress defaults (nothing private allowed), local bundle paths allowed."""
    with make_api(tmp_path / "strict", egress_allowed_networks=[]) as running:
        yield running


def experiment_with_train_config(api, tmp_path: Path, dataset_id: str) -> str:  # type: ignore[no-untyped-def]
    archive = tiny_bundle_zip(tmp_path / "t.zip")
    import zipfile

    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("tiny/configs/train.json", "{}")
    resp = api.post(
        "experiments",
        json={"name": "t", "network_arch": "monai_custom", "bundle_url": str(archive), "train_datasets": [dataset_id]},
    )
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def local_dataset_id(api, root: Path) -> str:  # type: ignore[no-untyped-def]
    resp = api.post("datasets", json={"name": "local", "client_url": str(root)})
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def test_malformed_urls_are_400_everywhere(api, local_dataset, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for client_url in (MALFORMED, f"{MALFORMED}/dicom-web", "s3://b/p?x=[::1"):
        resp = api.post("datasets", json={"name": "x", "client_url": client_url})
        assert resp.status_code == 400, (client_url, resp.text)
    resp = api.post("experiments", json={"name": "x", "network_arch": "monai_custom", "bundle_url": MALFORMED})
    assert resp.status_code == 400, resp.text
    details = {"cloud_bucket_name": "b", "endpoint_url": MALFORMED, "access_key": "a", "secret_key": "s"}
    resp = api.post("workspaces", json={"name": "w", "cloud_type": "aws", "cloud_specific_details": details})
    assert resp.status_code == 400, resp.text
    exp_id = experiment_with_train_config(api, tmp_path, local_dataset_id(api, local_dataset))
    job = {"action": "train", "specs": {"tracking": "mlflow", "tracking_uri": MALFORMED}}
    resp = api.post(f"experiments/{exp_id}/jobs", json=job)
    assert resp.status_code == 400 and "not a valid URL" in resp.json()["error_desc"], resp.text


@pytest.mark.parametrize("form", ["FILE:///etc", " /etc", "relative/dir", "file://localhost/etc", "~/x", "c:/x"])
def test_dataset_local_path_variants_are_refused_when_local_paths_are_off(tmp_path: Path, form: str) -> None:
    with make_api(tmp_path / "locked", dataset_allow_local_paths=False) as api:
        resp = api.post("datasets", json={"name": "x", "client_url": form})
        assert resp.status_code == 400 and "not allowed" in resp.json()["error_desc"], resp.text


def test_local_workspace_is_refused_when_local_paths_are_off(tmp_path: Path) -> None:
    body = {"name": "w", "cloud_type": "local", "cloud_specific_details": {"cloud_bucket_name": str(tmp_path)}}
    with make_api(tmp_path / "locked", dataset_allow_local_paths=False) as api:
        resp = api.post("workspaces", json=body)
        assert resp.status_code == 400 and "not allowed" in resp.json()["error_desc"], resp.text
        inline = {"name": "e", "network_arch": "monai_custom", "bundle_url": str(tiny_bundle_zip(tmp_path / "b.zip"))}
        resp = api.post(
            "experiments", json={**inline, "cloud_details": {"cloud_type": "local", **body["cloud_specific_details"]}}
        )
        assert resp.status_code == 400 and "not allowed" in resp.json()["error_desc"], resp.text


@pytest.mark.parametrize("root_path", ["/etc", "../outside", "file:///etc", "imagesTr/../.."])
def test_manifest_root_path_must_stay_in_the_dataset_folder(api, local_dataset, tmp_path: Path, root_path: str) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "ds" / "inner"
    shutil.copytree(local_dataset, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "root_path": root_path}))
    resp = api.post("datasets", json={"name": "x", "client_url": str(folder)})
    assert resp.status_code == 400, resp.text
    assert "outside the dataset's folder" in resp.json()["error_desc"]


@pytest.mark.parametrize(
    "client_url",
    [
        "http://169.254.169.254/dicom-web",
        "http://127.0.0.1:9/bucket/prefix",
        "http://[::ffff:127.0.0.1]:9/dicom-web",
        "http://0x7f000001:9/bucket/prefix",
    ],
)
def test_dataset_urls_to_private_addresses_are_refused(strict_api, client_url: str) -> None:  # type: ignore[no-untyped-def]
    resp = strict_api.post(
        "datasets", json={"name": "x", "client_url": client_url, "client_id": "a", "client_secret": "b"}
    )
    assert resp.status_code == 400 and "private, loopback" in resp.json()["error_desc"], resp.text


def test_storage_endpoints_and_token_uri_to_private_addresses_are_refused(strict_api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    details = {"cloud_bucket_name": "b", "endpoint_url": "http://127.0.0.1:9", "access_key": "a", "secret_key": "s"}
    resp = strict_api.post("workspaces", json={"name": "w", "cloud_type": "aws", "cloud_specific_details": details})
    assert resp.status_code == 400 and "private, loopback" in resp.json()["error_desc"], resp.text
    key = json.dumps({"type": "service_account", "token_uri": "http://169.254.169.254/token", "private_key": "k"})
    gcp = {"cloud_bucket_name": "b", "credentials": key}
    resp = strict_api.post("workspaces", json={"name": "w", "cloud_type": "gcp", "cloud_specific_details": gcp})
    assert resp.status_code == 400 and "token_uri" in resp.json()["error_desc"], resp.text
    resp = strict_api.post("datasets", json={"name": "x", "client_url": "gs://bkt/p", "client_secret": key})
    assert resp.status_code == 400 and "private, loopback" in resp.json()["error_desc"], resp.text
    bundle = str(tiny_bundle_zip(tmp_path / "b.zip"))
    inline = {"cloud_type": "aws", **details}
    resp = strict_api.post(
        "experiments", json={"name": "e", "network_arch": "monai_custom", "bundle_url": bundle, "cloud_details": inline}
    )
    assert resp.status_code == 400 and "private, loopback" in resp.json()["error_desc"], resp.text


def test_tracking_uri_is_checked_and_may_not_hold_credentials(api, local_dataset, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    exp_id = experiment_with_train_config(api, tmp_path, local_dataset_id(api, local_dataset))
    jobs = f"experiments/{exp_id}/jobs"
    cases = {
        "http://169.254.169.254/": "private, loopback",
        f"http://user:{SECRET_PASSWORD}@127.0.0.1:5000": "may not hold credentials",
        "file:///tmp/mlruns": "not an http",
    }
    for uri, fragment in cases.items():
        resp = api.post(jobs, json={"action": "train", "specs": {"tracking": "mlflow", "tracking_uri": uri}})
        assert resp.status_code == 400 and fragment in resp.json()["error_desc"], (uri, resp.text)
        assert SECRET_PASSWORD not in resp.text
    annotation = {"round_size": 1, "train_spec": {"tracking": "mlflow", "tracking_uri": "http://169.254.169.254/"}}
    resp = api.post(jobs, json={"action": "annotation", "specs": annotation})
    assert resp.status_code == 400, resp.text


# --- secrets in URLs ---------------------------------------------------------------------------------------------


def db_dump(api) -> str:  # type: ignore[no-untyped-def]
    return "\n".join(sqlite3.connect(api.ctx.settings.data_dir / "medcloud.db").iterdump())


def test_dataset_sas_token_and_user_info_are_never_shown_logged_or_stored_in_clear(  # type: ignore[no-untyped-def]
    api, azurite, s3_server, local_dataset, caplog
):
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    caplog.set_level(logging.DEBUG)
    upload_folder_to_azure(azurite, local_dataset, "dssas", "p")
    upload_folder_to_s3(s3_server, local_dataset, "dsuserinfo", "p")
    sas = generate_container_sas(
        AZURITE_ACCOUNT,
        "dssas",
        account_key=azurite.key,
        permission=ContainerSasPermissions(read=True, list=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    sig = dict(p.split("=", 1) for p in sas.split("&"))["sig"]
    userinfo = s3_server.endpoint_url.replace("http://", f"http://user:{SECRET_PASSWORD}@")
    bodies = [
        {"client_url": f"{azurite.endpoint}/dssas/p?{sas}", "client_id": AZURITE_ACCOUNT},
        {"client_url": f"{userinfo}/dsuserinfo/p", "client_id": s3_server.key, "client_secret": s3_server.secret},
    ]
    for body in bodies:
        resp = api.post("datasets", json={"name": "remote", **body})
        assert resp.status_code == 201, resp.text
        dataset_id = resp.json()["id"]
        # The whole URL is still what the server uses (sealed): the dataset keeps working.
        nxt = api.post(f"datasets/{dataset_id}/jobs", json={"action": "nextimage"})
        assert nxt.status_code == 201, nxt.text
        shown = [resp.text, api.get(f"datasets/{dataset_id}").text, api.get("datasets").text, nxt.text]
        for text in shown:
            assert sig not in text and SECRET_PASSWORD not in text
    assert "sig=***" in api.get("datasets").text
    for text in (caplog.text, db_dump(api)):
        assert sig not in text and SECRET_PASSWORD not in text


def test_inline_cloud_details_keep_only_known_keys_in_clear(api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    details = {
        "cloud_type": "aws",
        "cloud_bucket_name": "b",
        "endpoint_url": f"http://127.0.0.1:9/?sig={SECRET_SIG}",
        "session_token": "unknown-key-SECRET",
        "access_key": "ak",
        "secret_key": "sk-SECRET",
    }
    body = {"name": "e", "network_arch": "monai_custom", "bundle_url": str(tiny_bundle_zip(tmp_path / "b.zip"))}
    resp = api.post("experiments", json={**body, "cloud_details": details})
    assert resp.status_code == 201, resp.text
    dump = db_dump(api)
    for secret in (SECRET_SIG, "unknown-key-SECRET", "sk-SECRET"):
        assert secret not in dump and secret not in resp.text
    with api.ctx.db.session() as session:
        from medcloud.experiments.orm import Experiment

        row = session.get(Experiment, resp.json()["id"])
        assert row.cloud_details == {
            "cloud_type": "aws",
            "cloud_bucket_name": "b",
            "endpoint_url": "http://127.0.0.1:9/?sig=***",
        }
        sealed = api.ctx.box.open(row.sealed_cloud_secrets)
        assert sealed["session_token"] == "unknown-key-SECRET" and SECRET_SIG in sealed["endpoint_url"]


def test_workspace_endpoint_with_a_secret_is_shown_redacted(api) -> None:  # type: ignore[no-untyped-def]
    from medcloud.workspaces import service
    from medcloud.workspaces.schemas import CloudDetails

    public, secret = service._split(
        CloudDetails(cloud_bucket_name="b", endpoint_url=f"http://u:{SECRET_PASSWORD}@h:9/?sig={SECRET_SIG}")
    )
    assert public["endpoint_url"] == "http://***@h:9/?sig=***"
    assert SECRET_SIG in secret["endpoint_url"] and SECRET_PASSWORD in secret["endpoint_url"]


# --- inference on image URLs -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image_api(tmp_path_factory: pytest.TempPathFactory, demo_zips) -> Iterator[tuple[object, str, Path]]:  # type: ignore[no-untyped-def]
    """A real-time experiment on a server that allows 127.0.0.1 only, with a 1-byte cap on the URL-image cache."""
    from medcloud.demo.synthetic import write_demo_dataset

    images = write_demo_dataset(tmp_path_factory.mktemp("images"), n_ct=2, n_rgb=1).parent
    with make_api(
        tmp_path_factory.mktemp("imageapi") / "data",
        egress_allowed_networks=["127.0.0.1/32"],
        url_image_cache_max_bytes=1,
    ) as api:
        resp = api.post(
            "experiments",
            json={
                "name": "rt",
                "network_arch": "monai_custom",
                "realtime_infer": True,
                "bundle_url": f"file://{demo_zips['segmentation']}",
            },
        )
        assert resp.status_code == 201, resp.text
        yield api, resp.json()["id"], images


def infer(api, exp_id: str, image: str):  # type: ignore[no-untyped-def]
    return api.post(f"experiments/{exp_id}/jobs", json={"action": "inference", "specs": {"image": image}})


def test_image_url_to_a_refused_address_is_400_without_a_request(image_api) -> None:  # type: ignore[no-untyped-def]
    api, exp_id, images = image_api
    with http_server("127.0.0.2", files={"/ct.nii.gz": (images / "imagesTr/ct_000.nii.gz").read_bytes()}) as other:
        for url in (f"{other.url}/ct.nii.gz", "http://169.254.169.254/latest/meta-data/", MALFORMED):
            resp = infer(api, exp_id, url)
            assert resp.status_code == 400, (url, resp.text)
        assert other.hits == []


def test_image_url_redirect_to_a_refused_address_is_400(image_api) -> None:  # type: ignore[no-untyped-def]
    api, exp_id, images = image_api
    with (
        http_server("127.0.0.2", files={"/ct.nii.gz": (images / "imagesTr/ct_000.nii.gz").read_bytes()}) as other,
        http_server(redirects={"/ct.nii.gz": f"{other.url}/ct.nii.gz"}) as allowed,
    ):
        resp = infer(api, exp_id, f"{allowed.url}/ct.nii.gz")
        assert resp.status_code == 400 and "private, loopback" in resp.json()["error_desc"], resp.text
        assert allowed.hits == ["/ct.nii.gz"] and other.hits == []


def test_image_url_secrets_stay_out_of_logs_and_the_cache_keeps_within_its_size(image_api, caplog) -> None:  # type: ignore[no-untyped-def]
    api, exp_id, images = image_api
    caplog.set_level(logging.DEBUG)
    files = {f"/{i}.nii.gz": (images / f"imagesTr/ct_00{i}.nii.gz").read_bytes() for i in range(2)}
    with http_server(files=files) as server:
        base = server.url.replace("http://", f"http://user:{SECRET_PASSWORD}@")
        for i in range(2):
            resp = infer(api, exp_id, f"{base}/{i}.nii.gz?sig={SECRET_SIG}")
            assert resp.status_code == 201, resp.text
            assert SECRET_SIG.encode() not in resp.content and SECRET_PASSWORD.encode() not in resp.content
        missing = infer(api, exp_id, f"{base}/missing.nii.gz?sig={SECRET_SIG}")
        assert missing.status_code == 400 and SECRET_SIG not in missing.text and SECRET_PASSWORD not in missing.text
    assert SECRET_SIG not in caplog.text and SECRET_PASSWORD not in caplog.text
    from medcloud.experiments.realtime import URL_IMAGES
    from medcloud.sources.cache import _digest

    entries = [p for p in (api.ctx.cache.root / _digest(URL_IMAGES)).iterdir() if (p / "entry.json").exists()]
    assert len(entries) == 1  # over the cap: only the image just served is kept
