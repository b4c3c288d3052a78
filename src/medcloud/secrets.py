"""The server's master secret, and encryption at rest of the secrets clients give us."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets as pysecrets
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken


def load_master_secret(data_dir: Path, configured: str | None) -> bytes:
    """The configured secret, else one generated once into `data_dir/secret.key` (mode 0600)."""
    if configured:
        if len(configured.encode()) < 32:
            raise ValueError("MEDCLOUD_SECRET_KEY must be at least 32 bytes long.")
        return configured.encode()
    path = data_dir / "secret.key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(pysecrets.token_hex(32))
    return path.read_text().strip().encode()


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
