"""Which of this server's folders an org's local datasets and `local` workspaces may use.

Local paths are off unless `MEDCLOUD_DATASET_ALLOW_LOCAL_PATHS` is true. When on, a folder must resolve
(every link followed) inside one of the org's roots in `MEDCLOUD_DATASET_LOCAL_ROOTS`, a JSON object from
org id to absolute folders where `"*"` lists folders every org may use. An org with no root has no
local paths at all: turning the switch on without saying where is refused with a sentence naming the
setting, never taken as "anywhere". Checked when a dataset or workspace is created or changed, and again
each time the API opens a local dataset (a root removed later, or a link swapped, takes effect at once).
Blocking: resolving links reads the disk, so call from a worker thread.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from medcloud.errors import Invalid

if TYPE_CHECKING:
    from medcloud.config import Settings

ALLOW_SETTING = "MEDCLOUD_DATASET_ALLOW_LOCAL_PATHS"
ROOTS_SETTING = "MEDCLOUD_DATASET_LOCAL_ROOTS"
EVERY_ORG = "*"


def roots_of(org: str, settings: Settings) -> list[str]:
    """The folders `org` may use: its own, then those of every org."""
    roots = settings.dataset_local_roots
    return [*roots.get(org, []), *(roots.get(EVERY_ORG, []) if org != EVERY_ORG else [])]


def is_inside(path: str, root: str) -> bool:
    """`path` is `root` or below it once both have every link resolved (a path no file can have is not)."""
    try:
        real, base = os.path.realpath(path), os.path.realpath(root)
    except ValueError:  # an embedded NUL character
        return False
    return real == base or real.startswith(base.rstrip("/") + "/")


def check_folder(folder: str, *, org: str, settings: Settings, what: str, shown: str | None = None) -> None:
    """`Invalid` unless local paths are on and `folder` resolves inside one of `org`'s roots.

    `what` names the kind ("Datasets", "Workspaces") in the refusal when local paths are off; `shown` is
    how the client wrote the folder (the message never shows where a link leads).
    """
    if not settings.dataset_allow_local_paths:
        raise Invalid(f"{what} on this server's own folders are not allowed ({ALLOW_SETTING}).")
    roots = roots_of(org, settings)
    if not roots:
        raise Invalid(
            f"{what} on this server's own folders are allowed only inside folders the operator lists for the "
            f"org, and org {org} has none ({ROOTS_SETTING})."
        )
    if "\0" in folder:
        raise Invalid(f"The folder {shown or folder!r} contains a NUL character; no folder has such a name.")
    if any(is_inside(folder, root) for root in roots):
        return
    raise Invalid(
        f"The folder {shown or folder} is not inside a folder allowed for org {org} ({', '.join(roots)}), "
        f"links resolved ({ROOTS_SETTING})."
    )


def check_client_url(client_url: str, *, org: str, settings: Settings) -> None:
    """A local dataset's `client_url` (a path or `file://` URL, of its folder or its manifest) is allowed."""
    from medcloud.sources.locations import parse_client_url

    if not settings.dataset_allow_local_paths:  # before parsing: a refusal says why, whatever the form
        raise Invalid(f"Datasets on this server's own folders are not allowed ({ALLOW_SETTING}).")
    location = parse_client_url(client_url, None, None)
    for path in dict.fromkeys((location.root, location.manifest_path)):  # a manifest may be a link too
        check_folder(path, org=org, settings=settings, what="Datasets", shown=location.url)
