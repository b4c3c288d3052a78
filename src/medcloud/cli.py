"""The `medcloud` command: `serve`, `keys create|list|revoke`, `db upgrade|current`, `demo`."""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from medcloud.config import Settings

if TYPE_CHECKING:
    from medcloud.db import Database


def _settings(args: argparse.Namespace) -> Settings:
    updates = {
        k: v
        for k, v in {
            "data_dir": getattr(args, "data_dir", None),
            "host": getattr(args, "host", None),
            "port": getattr(args, "port", None),
        }.items()
        if v is not None
    }
    return Settings(**updates).resolved()


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from medcloud.app import create_app
    from medcloud.context import Context

    settings = _settings(args)
    demo = settings.demo and not args.no_demo
    startup = []
    if demo:
        from medcloud.demo.setup import with_demo_local_paths

        settings = with_demo_local_paths(settings)  # the demo org's datasets are folders in data/demo
    ctx = Context.build(settings)
    if demo:  # the server answers at once; the demo is trained and set up meanwhile (progress in /health)
        from medcloud.demo.background import DemoProgress, prepare_demo_in_background

        ctx.demo = DemoProgress()
        startup.append(prepare_demo_in_background)
    uvicorn.run(create_app(context=ctx, startup=startup), host=settings.host, port=settings.port, log_level="info")
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    from medcloud.auth import service
    from medcloud.context import Context

    ctx = Context.build(_settings(args))
    with ctx.db.session() as session:
        key_id, key = service.issue_api_key(session, org=args.org, user=args.user)
    print(f"Created API key {key_id} for user {args.user} in org {args.org}. It is shown only once:")
    print(key)
    return 0


def _database(args: argparse.Namespace) -> Database:
    """The metadata DB alone: managing keys needs neither the secret nor the caches."""
    from medcloud.db import Database

    return Database(_settings(args).sqlalchemy_url)


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


def cmd_keys_list(args: argparse.Namespace) -> int:
    from medcloud.auth import service

    db = _database(args)
    with db.session() as session:
        keys = service.list_keys(session, org=args.org, user=args.user)
    db.dispose()
    rows = [("ID", "HINT", "USER", "ORG", "CREATED", "LAST LOGIN", "REVOKED")]
    for k in keys:
        hint = f"{k.hint}..." if k.hint else "-"
        orgs = ",".join(k.orgs) or "-"
        rows.append((k.id, hint, k.user, orgs, _when(k.created), _when(k.last_login), _when(k.revoked_at)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from medcloud.auth import service
    from medcloud.errors import NotFound

    db = _database(args)
    try:
        with db.session() as session:
            revoked = service.revoke_key(session, key_id=args.key_id)
    except NotFound as exc:
        print(exc.message, file=sys.stderr)
        return 1
    finally:
        db.dispose()
    if revoked:
        print(f"Revoked API key {args.key_id}: it no longer logs in, and tokens minted from it stop working.")
    else:
        print(f"API key {args.key_id} was already revoked.")
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    """Migrate the metadata database to the newest revision (`serve` does it too when it starts)."""
    from medcloud import migrations
    from medcloud.db import Database

    url = _settings(args).sqlalchemy_url
    db = Database(url, migrate=False)
    try:
        before = migrations.current(db.engine)
        after = migrations.upgrade(db.engine)
    finally:
        db.dispose()
    if before == after:
        print(f"The database is at the newest revision already ({after}).")
    else:
        print(f"Migrated the database from {before or 'no revision'} to {after}.")
    return 0


def cmd_db_current(args: argparse.Namespace) -> int:
    """Print the database's revision and the newest one; exit 1 when it needs `medcloud db upgrade`."""
    from medcloud import migrations
    from medcloud.db import Database

    db = Database(_settings(args).sqlalchemy_url, migrate=False)
    try:
        at = migrations.current(db.engine)
    finally:
        db.dispose()
    print(f"current: {at or 'none'}")
    print(f"newest:  {migrations.head()}")
    return 0 if at == migrations.head() else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from medcloud.context import Context
    from medcloud.demo.setup import prepare_demo, with_demo_models

    settings = with_demo_models(_settings(args), out=sys.stdout)  # built now, so `serve` finds it cached
    prepare_demo(Context.build(settings), out=sys.stdout)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medcloud",
        description="medcloud: a self-hosted MONAI Cloud API server (serve, keys, db, demo) and its command line "
        "for users (login, datasets, experiments, infer, jobs, nextimage).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--data-dir", type=Path)
    serve.add_argument("--no-demo", action="store_true", help="skip the demo org, dataset and bundles")
    serve.set_defaults(func=cmd_serve)
    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="create an API key (printed as the last line)")
    create.add_argument("--org", required=True)
    create.add_argument("--user", required=True)
    create.add_argument("--data-dir", type=Path)
    create.set_defaults(func=cmd_keys_create)
    listing = keys.add_parser("list", help="list API keys (ids, never the keys)")
    listing.add_argument("--org", help="only keys of this org")
    listing.add_argument("--user", help="only keys of this user")
    listing.add_argument("--data-dir", type=Path)
    listing.set_defaults(func=cmd_keys_list)
    revoke = keys.add_parser("revoke", help="revoke an API key: no more logins, and its tokens stop working")
    revoke.add_argument("key_id", metavar="KEY_ID", help="the key's id, as `keys list` and `keys create` show it")
    revoke.add_argument("--data-dir", type=Path)
    revoke.set_defaults(func=cmd_keys_revoke)
    db = sub.add_parser(
        "db", help="the metadata database's schema (MEDCLOUD_DATABASE_URL, else SQLite in the data dir)"
    )
    db_sub = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_sub.add_parser("upgrade", help="migrate to the newest schema (serve does it when it starts)")
    upgrade.add_argument("--data-dir", type=Path)
    upgrade.set_defaults(func=cmd_db_upgrade)
    current = db_sub.add_parser("current", help="print the schema revision; exit 1 when an upgrade is due")
    current.add_argument("--data-dir", type=Path)
    current.set_defaults(func=cmd_db_current)
    demo = sub.add_parser("demo", help="create the demo org, key, dataset and bundles, then exit")
    demo.add_argument("--data-dir", type=Path)
    demo.set_defaults(func=cmd_demo)
    from medcloud.commands import register

    register(sub)  # the user's commands: login, datasets, experiments, infer, jobs, nextimage
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
