"""The user's command line (`medcloud login`, `datasets`, `experiments`, `infer`, `jobs`, `nextimage`).

These commands talk to a medcloud server (or the hosted service) through `medcloud.client`; the
operator's commands (`serve`, `keys`, `db`, `demo`) stay in `medcloud/cli.py`. Each module registers
its subcommands: `api` (everything that calls the API) and `data` (`datasets build-manifest`,
`datasets upload`: local folders and object storage, no server needed).
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the user commands to `medcloud`'s subcommands."""
    from medcloud.commands import api, data

    datasets = sub.add_parser("datasets", help="list, create, delete datasets; build a manifest; upload a folder")
    datasets_sub = datasets.add_subparsers(dest="datasets_command", required=True, metavar="COMMAND")
    api.register(sub, datasets_sub)
    data.register(datasets_sub)
