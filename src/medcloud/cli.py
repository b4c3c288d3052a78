"""The `medcloud` command: `serve`, `keys create`, `demo`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from medcloud.config import Settings


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
    ctx = Context.build(settings)
    if settings.demo and not args.no_demo:
        from medcloud.demo.setup import prepare_demo

        prepare_demo(ctx, out=sys.stdout)
    uvicorn.run(create_app(context=ctx), host=settings.host, port=settings.port, log_level="info")
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    from medcloud.auth import service
    from medcloud.context import Context

    ctx = Context.build(_settings(args))
    with ctx.db.session() as session:
        key = service.create_api_key(session, org=args.org, user=args.user)
    print(f"Created an API key for user {args.user} in org {args.org}. It is shown only once:")
    print(key)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from medcloud.context import Context
    from medcloud.demo.setup import prepare_demo

    prepare_demo(Context.build(_settings(args)), out=sys.stdout)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medcloud", description="Self-hosted MONAI Cloud API server.")
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
    demo = sub.add_parser("demo", help="create the demo org, key, dataset and bundles, then exit")
    demo.add_argument("--data-dir", type=Path)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
