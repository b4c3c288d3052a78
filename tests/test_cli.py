"""The user commands (`medcloud login`, `datasets`, `experiments`, `infer`, `jobs`, `nextimage`) run as a user
runs them, in a subprocess against a real `medcloud serve`: output, `--json`, exit codes, no key printed."""

from __future__ import annotations

import csv
import json
import stat
import tarfile
from pathlib import Path

from client_helpers import (
    ORG,
    Faults,
    fault_proxy,
    home_fixture,  # noqa: F401  (the fixture `home`)
    medcloud,
    ok,
    served_fixture,  # noqa: F401  (the fixture `served`)
)

from medcloud.devserver import free_port

USER_COMMANDS = [
    ["login"], ["datasets", "list"], ["datasets", "create"], ["datasets", "delete"], ["experiments", "list"],
    ["experiments", "create"], ["experiments", "delete"], ["infer"], ["jobs", "list"], ["jobs", "create"],
    ["jobs", "watch"], ["jobs", "logs"], ["jobs", "cancel"], ["jobs", "download"], ["nextimage"],
]  # fmt: skip


def logged_in(env: dict[str, str], served) -> dict[str, str]:
    server, key = served
    ok(medcloud(env, "login", "--host", server.url, stdin=key + "\n"))
    return env


def test_guide_000_entirely_from_the_cli(served, home, local_dataset, demo_zips, tmp_path):
    server, key = served
    login = ok(medcloud(home, "login", "--host", server.url, stdin=key + "\n"))
    assert f"Logged in to {server.url} (org {ORG}) as user " in login.stdout
    profile = Path(home["MEDCLOUD_CONFIG_DIR"]) / "profiles.json"
    assert stat.S_IMODE(profile.stat().st_mode) == 0o600
    assert json.loads(profile.read_text())["profiles"]["default"] == {"host": server.url, "org": ORG, "api_key": key}

    ds = json.loads(ok(medcloud(home, "datasets", "create", "MONAI_CLOUD", str(local_dataset), "--json")).stdout)
    assert ds["client_url"] == str(local_dataset) and ds["type"] == "semantic_segmentation"
    listing = ok(medcloud(home, "datasets", "list"))
    assert listing.stderr == ""  # no server-style log lines (HTTP requests) in a user command's output
    table = listing.stdout.splitlines()
    assert table[0].split() == ["ID", "NAME", "TYPE", "URL", "MODIFIED"]
    assert any(line.startswith(ds["id"]) and "MONAI_CLOUD" in line for line in table[1:])
    created = ok(medcloud(
        home, "experiments", "create", "my_inbody_clf", "--bundle-url", str(demo_zips["classification"]),
        "--train-dataset", ds["id"], "--eval-dataset", ds["id"], "--realtime",
        "--override", "output_filename=realtime_inference_predictions.csv",
    ))  # fmt: skip
    assert created.stdout.startswith("Created experiment ")
    exp_id = created.stdout.split()[2]
    listed = json.loads(ok(medcloud(home, "experiments", "list", "--json")).stdout)
    assert [e["id"] for e in listed] == [exp_id] and listed[0]["realtime_infer"] is True

    entries = json.loads((local_dataset / "manifest.json").read_text())["data"]
    png = next(e for e in entries if e["image"]["path"][0].endswith("frame_000.png"))
    out = tmp_path / "predictions"
    infer = ok(medcloud(home, "infer", exp_id, png["image"]["id"], "-o", str(out)))
    assert infer.stdout.strip() == str(out / "realtime_inference_predictions.csv")
    rows = list(csv.reader((out / "realtime_inference_predictions.csv").open()))
    assert len(rows) == 1 and rows[0][0].endswith("frame_000.png")
    scores = [float(v) for v in rows[0][1:]]
    assert len(scores) == 2 and scores.index(max(scores)) == 0

    unlabeled = {e["image"]["id"] for e in entries if "label" not in e}
    assert ok(medcloud(home, "nextimage", ds["id"])).stdout.strip() in unlabeled
    in_use = medcloud(home, "datasets", "delete", ds["id"])
    assert in_use.returncode == 1 and "in use" in in_use.stderr and in_use.stderr.startswith("error: ")
    assert ok(medcloud(home, "experiments", "delete", exp_id)).stdout.strip() == f"Deleted experiment {exp_id}"
    ok(medcloud(home, "datasets", "delete", ds["id"]))
    assert json.loads(ok(medcloud(home, "datasets", "list", "--json")).stdout) == []
    for proc in (login, infer, created):
        assert key not in proc.stdout + proc.stderr


def test_a_train_job_from_the_cli_watched_to_done_with_its_log_followed(
    served, home, local_dataset, demo_zips, tmp_path
):
    env = logged_in(home, served)
    ds = json.loads(ok(medcloud(env, "datasets", "create", "train", str(local_dataset), "--json")).stdout)["id"]
    exp = json.loads(ok(medcloud(
        env, "experiments", "create", "train", "--arch", "monai_segmentation", "--bundle-url",
        str(demo_zips["segmentation"]), "--train-dataset", ds, "--eval-dataset", ds, "--json",
    )).stdout)["id"]  # fmt: skip
    job = ok(medcloud(env, "jobs", "create", exp, "train", "--spec", "epochs=2", "--spec", "val_interval=1",
                      "--spec", "finetune=true")).stdout.strip()  # fmt: skip
    assert len(job) == 36
    logs = ok(medcloud(env, "jobs", "logs", "-f", exp, job))  # returns once the job has ended
    assert "Epoch" in logs.stdout
    watch = ok(medcloud(env, "jobs", "watch", exp, job))  # not a TTY: plain lines on stderr, the end on stdout
    assert watch.stdout.strip() == "Done: Done."
    assert watch.stderr.splitlines()[-1].startswith(f"job {job} Done  epoch ") and "/2  key_metric 0." in watch.stderr
    table = ok(medcloud(env, "jobs", "list", exp)).stdout.splitlines()
    assert table[0].split()[:3] == ["ID", "ACTION", "STATUS"] and table[1].split()[:3] == [job, "train", "Done"]
    download = ok(medcloud(env, "jobs", "download", exp, job, "-o", str(tmp_path)))
    with tarfile.open(download.stdout.strip()) as archive:
        assert f"{job}/results/models/model.pt" in archive.getnames()
    cancel = ok(medcloud(env, "jobs", "cancel", exp, job))
    assert "already ended" in cancel.stdout


def test_a_wrong_key_exits_1_with_a_clear_message_and_saves_nothing(served, home):
    server, _ = served
    wrong = "nvapi-wrong-key-do-not-print-me"
    login = medcloud(home, "login", "--host", server.url, stdin=wrong + "\n")
    assert login.returncode == 1
    assert login.stderr.strip() == f"error: Login to {server.url} failed: Invalid API key. (HTTP 401)"
    assert wrong not in login.stdout + login.stderr
    assert not (Path(home["MEDCLOUD_CONFIG_DIR"]) / "profiles.json").exists()
    listed = medcloud({**home, "MONAI_API_KEY": wrong}, "datasets", "list", "--host", server.url)
    assert listed.returncode == 1 and "Invalid API key" in listed.stderr and wrong not in listed.stderr


def test_an_unreachable_host_is_retried_then_exits_3(home):
    host = f"http://127.0.0.1:{free_port()}"
    proc = medcloud({**home, "MEDCLOUD_API_KEY": "k"}, "datasets", "list", "--host", host, "--retries", "2")
    assert proc.returncode == 3
    assert proc.stderr.startswith(f"error: Cannot reach {host} (ConnectError") and "after 3 attempt(s)" in proc.stderr
    assert proc.stdout == ""


def test_503_is_retried_and_one_that_stays_exits_3(served, home):
    server, key = served
    env = {**home, "MEDCLOUD_API_KEY": key}
    faults = Faults(suffix="/experiments", status=503, count=2, retry_after="0")
    with fault_proxy(server.url, faults) as proxy:
        ok(medcloud(env, "experiments", "list", "--host", proxy, "--json"))
        assert faults.seen.count(f"GET /api/v1/orgs/{ORG}/experiments") == 3  # two 503s, then the answer
        faults.count = 10
        stays = medcloud(env, "experiments", "list", "--host", proxy, "--retries", "2")
    assert stays.returncode == 3
    assert stays.stderr.strip() == "error: injected by the test proxy (still 503 after 3 attempts)"


def test_usage_errors_exit_2_and_every_command_has_an_example(home):
    assert medcloud(home, "infer").returncode == 2
    no_key = medcloud(home, "datasets", "list")
    assert no_key.returncode == 2 and "No API key" in no_key.stderr
    bad_point = medcloud({**home, "MEDCLOUD_API_KEY": "k"}, "infer", "e", "i", "--points", "1,2")
    assert bad_point.returncode == 2 and "three integers" in bad_point.stderr
    for command in USER_COMMANDS:
        text = ok(medcloud(home, *command, "--help")).stdout
        assert "example:\n  medcloud " + " ".join(command) in text, command
        assert "exit codes: 0 ok, 1 API error, 2 usage, 3 server unreachable" in text
