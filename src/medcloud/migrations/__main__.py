"""`python -m medcloud.migrations revision -m MESSAGE [--url URL]`: draft a revision from the models' changes.

For developers: it compares the models with a database at the newest revision (a temporary SQLite one by
default) and writes `versions/<rev>_<slug>.py` to check and edit by hand (name the revision `000N_...`).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from alembic import command
from sqlalchemy import create_engine

from medcloud.db import import_models
from medcloud.migrations import alembic_config, head, upgrade


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m medcloud.migrations", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    revision = sub.add_parser("revision", help="draft a new revision from the models")
    revision.add_argument("-m", "--message", required=True)
    revision.add_argument("--rev-id", help="the revision id, e.g. 0004_something")
    revision.add_argument("--url", help="a database at the newest revision to compare with")
    args = parser.parse_args()
    import_models()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.url or f"sqlite:///{Path(tmp) / 'draft.db'}"
        engine = create_engine(url)
        upgrade(engine, fast_new=False)
        with engine.begin() as connection:
            config = alembic_config(connection)
            command.revision(config, message=args.message, autogenerate=True, rev_id=args.rev_id, head=head())
        engine.dispose()


if __name__ == "__main__":
    main()
