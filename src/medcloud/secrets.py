"""The server's master secret, and encryption at rest of the secrets clients give us."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets as pysecrets
import tempfile
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

MIN_SECRET_BYTES = 32
SECRET_FILE = "secret.key"


def load_master_secret(data_dir: Path, configured: str | None) -> bytes:
    """The configured secret, else one generated once into `data_dir/secret.key` (mode 0600)."""
    if configured:
        if len(configured.encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"MEDCLOUD_SECRET_KEY must be at least {MIN_SECRET_BYTES} bytes long.")
        return configured.encode()
    path = data_dir / SECRET_FILE
    if not path.exists():
        _create_secret_file(path)
    secret = path.read_text().strip().encode()
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(
            f"{path} holds {len(secret)} bytes; a secret key needs at least {MIN_SECRET_BYTES} bytes (was the file "
            "truncated or edited?). Restore it from a backup, or set MEDCLOUD_SECRET_KEY to the old key. Only if "
            "this server never stored credentials or issued tokens with it: delete the file and start again to "
            "generate a new one (stored client secrets then cannot be decrypted)."
        )
    return secret


def _create_secret_file(path: Path) -> None:
    """Write a new key so that `path` appears complete or not at all, and never replaces another's.

    The key is written and fsynced under a temporary name, then hard-linked to `path`: the link fails
    if a concurrent first start got there first, and then both use that one.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mode 0600
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(pysecrets.token_hex(32))
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return
        _fsync_dir(path.parent)  # the new name survives a crash too
    finally:
        os.unlink(tmp)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def derive_key(master: bytes, purpose: str) -> bytes:
    """A 32-byte key for one purpose, so token signing and encryption never share a key."""
    return hmac.new(master, purpose.encode(), hashlib.sha256).digest()


class SecretBox:
    """Encrypts small dicts of secrets (storage keys, passwords) for the database."""

    def __init__(self, master: bytes) -> None:
        self._fernet = Fernet(base64.urlsafe_b64encode(derive_key(master, "secrets-at-rest")))

    def seal(self, values: dict[str, str | None]) -> str:
        return self._fernet.encrypt(json.dumps(values).encode()).decode()

    def open(self, sealed: str | None) -> dict[str, str | None]:
        if not sealed:
            return {}
        try:
            return json.loads(self._fernet.decrypt(sealed.encode()))
        except InvalidToken as exc:  # the master secret changed: say so instead of a stack trace
            raise RuntimeError("Stored secrets cannot be decrypted with this server's secret key.") from exc
