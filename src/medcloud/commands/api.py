"""The user commands that call the API: `login`, `datasets list|create|delete`, `experiments ...`, `infer`,
`jobs list|create|watch|logs|cancel|download`, `nextimage`. Exit codes: see `commands/output.py`."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from medcloud.client import Client
from medcloud.client.errors import ClientError
from medcloud.client.profiles import DEFAULT_HOST, DEFAULT_PROFILE, Profile, load_profile, save_profile
from medcloud.commands.output import (
    EXIT_OK,
    print_json,
    print_table,
    reports_errors,
    short_time,
)

EXIT_CODES = "exit codes: 0 ok, 1 API error, 2 usage, 3 server unreachable or unavailable (503)"
_RAW = argparse.RawDescriptionHelpFormatter


def _connection_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--host", help="server URL (else MEDCLOUD_HOST, the profile, http://127.0.0.1:8000)")
    common.add_argument("--org", help="org (else MEDCLOUD_ORG, the profile, iasixjqzw1hj)")
    common.add_argument("--profile", help="a profile stored by `medcloud login --profile NAME`")
    common.add_argument("--retries", type=int, default=4, help="retries on connection errors and 503 (default 4)")
    common.add_argument("--json", action="store_true", help="print JSON for scripts instead of a table")
    return common


def client_for(args: argparse.Namespace) -> Client:
    """The command's client; the key comes from the environment or the profile, never from the command line."""
    return Client(args.host, org=args.org, profile=args.profile, retries=args.retries)


def add_command(
    sub: argparse._SubParsersAction, name: str, help: str, example: str, **kw: object
) -> argparse.ArgumentParser:
    epilog = f"example:\n  {example}\n\n{EXIT_CODES}"
    return sub.add_parser(name, help=help, description=help, epilog=epilog, formatter_class=_RAW, **kw)  # type: ignore[arg-type]


# login
@reports_errors
def cmd_login(args: argparse.Namespace) -> int:
    name = args.profile or DEFAULT_PROFILE
    old = load_profile(name) or Profile()
    host = (args.host or old.host or DEFAULT_HOST).rstrip("/")
    org = args.org or old.org
    key = args.key or _read_key(host)
    if not key:
        raise ClientError("No API key given.")
    with Client(host, key, org=org, retries=args.retries) as client:
        user_id = client.login()
        org = client.org
    path = save_profile(Profile(host=host, org=org, api_key=key), name)
    if args.json:
        print_json({"profile": name, "host": host, "org": org, "user_id": user_id, "file": str(path)})
    else:
        print(f"Logged in to {host} (org {org}) as user {user_id}; profile {name!r} saved in {path}.")
    return EXIT_OK


def _read_key(host: str) -> str:
    """The key typed without echo on a terminal, or the first line of a pipe (`echo $KEY | medcloud login`)."""
    if sys.stdin.isatty():
        return getpass.getpass(f"API key for {host}: ").strip()
    return sys.stdin.readline().strip()


# datasets
@reports_errors
def cmd_datasets_list(args: argparse.Namespace) -> int:
    with client_for(args) as client:
        found = list(client.datasets())
    if args.json:
        print_json(found)
    else:
        rows = [(d.id, d.name, d.type, d.client_url, short_time(d.last_modified)) for d in found]
        print_table(rows, ("ID", "NAME", "TYPE", "URL", "MODIFIED"))
    return EXIT_OK


@reports_errors
def cmd_datasets_create(args: argparse.Namespace) -> int:
    url = args.url
    if "://" not in url and Path(url).exists():  # a folder on this machine: the server must see the same path
        url = str(Path(url).resolve())
    with client_for(args) as client:
        ds = client.create_dataset(
            args.name, url, type=args.type, format=args.format, description=args.description,
            client_id=args.client_id, client_secret=_secret(args), filters=args.filters,
        )  # fmt: skip
    print_json(ds) if args.json else print(f"Created dataset {ds.id} ({ds.name}, {ds.client_url})")
    return EXIT_OK


def _secret(args: argparse.Namespace) -> str | None:
    import os

    if args.client_secret_env:
        value = os.environ.get(args.client_secret_env)
        if value is None:
            raise ClientError(f"--client-secret-env names {args.client_secret_env}, which is not set.")
        return value
    return args.client_secret


@reports_errors
def cmd_datasets_delete(args: argparse.Namespace) -> int:
    with client_for(args) as client:
        for dataset_id in args.ids:
            client.delete_dataset(dataset_id)
            print_json({"deleted": dataset_id}) if args.json else print(f"Deleted dataset {dataset_id}")
    return EXIT_OK


@reports_errors
def cmd_nextimage(args: argparse.Namespace) -> int:
    with client_for(args) as client:
        nxt = client.next_image(args.dataset)
    if args.json:
        print_json({"image": nxt.image, "meta": nxt.meta, "unlabeled": nxt.unlabeled})
    else:
        print(nxt.image)
    return EXIT_OK


def register(sub: argparse._SubParsersAction, datasets_sub: argparse._SubParsersAction) -> None:
    """Add `login`, `experiments`, `infer`, `jobs`, `nextimage` to `sub` and list/create/delete to `datasets_sub`."""
    from medcloud.commands import api_experiments, api_jobs

    common = _connection_options()
    login = add_command(
        sub, "login", "check an API key and store it in a profile (mode 0600)",
        "medcloud login --host http://127.0.0.1:8000 --org iasixjqzw1hj   # asks for the key", parents=[common],
    )  # fmt: skip
    login.add_argument(
        "--key", help="the API key (else read without echo, or from a pipe; a command line is visible to others)"
    )
    login.set_defaults(func=cmd_login)

    ls = add_command(datasets_sub, "list", "list your datasets", "medcloud datasets list --json", parents=[common])
    ls.set_defaults(func=cmd_datasets_list)
    create = add_command(
        datasets_sub, "create", "register a dataset: a folder or bucket with manifest.json, or a DICOMweb root",
        "medcloud datasets create spleen ./spleen   # a folder the server can read\n"
        "  MEDCLOUD_CLIENT_SECRET=... medcloud datasets create ct s3://bucket/ct --client-id AKIA... "
        "--client-secret-env MEDCLOUD_CLIENT_SECRET",
        parents=[common],
    )  # fmt: skip
    create.add_argument("name")
    create.add_argument("url", help="folder, s3://, az://, gs://, https:// bucket URL, or a DICOMweb root")
    create.add_argument("--type", default="semantic_segmentation")
    create.add_argument("--format", default="monai")
    create.add_argument("--description", default="")
    create.add_argument("--client-id", help="access key id / account name / DICOMweb user")
    create.add_argument("--client-secret-env", metavar="VAR", help="environment variable holding the secret")
    create.add_argument("--client-secret", help=argparse.SUPPRESS)  # visible to other users: prefer the variable
    create.add_argument("--filters", help="DICOMweb QIDO query, e.g. Modality=CT")
    create.set_defaults(func=cmd_datasets_create)
    delete = add_command(
        datasets_sub, "delete", "delete datasets", "medcloud datasets delete 5f0e...", parents=[common]
    )
    delete.add_argument("ids", nargs="+", metavar="DATASET")
    delete.set_defaults(func=cmd_datasets_delete)

    nxt = add_command(
        sub, "nextimage", "an unlabeled image of a dataset (its id; --json adds meta)",
        "medcloud nextimage 5f0e...", parents=[common],
    )  # fmt: skip
    nxt.add_argument("dataset", metavar="DATASET")
    nxt.set_defaults(func=cmd_nextimage)

    api_experiments.register(sub, common)
    api_jobs.register(sub, common)
