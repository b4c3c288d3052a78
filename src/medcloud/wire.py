"""What crosses between the server and model code: length-prefixed JSON frames with a size cap, nothing else.

Model code (a bundle) runs in the sandbox (`sandbox.py`) and is an attacker towards the server, so every
byte it sends is read as data: a 4-byte big-endian length, then that many bytes of UTF-8 JSON holding one
object. A frame over the cap, a length that does not arrive, bytes that are not JSON or nested too deep
are refused with `WireError`; nothing is ever unpickled or evaluated.

Example:
    >>> send(sock, {"op": "infer", "image": "/in/ct.nii.gz"})
    >>> reply = receive(sock, max_bytes=1 << 20)
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

HEADER = struct.Struct(">I")
DEFAULT_MAX_BYTES = 1 << 20  # replies of model code: a few names and a small report
MAX_DEPTH = 32


class WireError(ValueError):
    """The peer sent something that is not one well-formed frame within the cap."""


def encode(message: dict[str, Any]) -> bytes:
    body = json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
    return HEADER.pack(len(body)) + body


def send(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.sendall(encode(message))


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise EOFError("the peer closed the connection")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def receive(sock: socket.socket, *, max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, Any]:
    """One frame from `sock` (blocking; EOFError when the peer closed), refused past `max_bytes`."""
    (size,) = HEADER.unpack(_read_exactly(sock, HEADER.size))
    if size > max_bytes:
        raise WireError(f"a message of {size} bytes is over the {max_bytes}-byte cap")
    return decode(_read_exactly(sock, size))


def decode(body: bytes) -> dict[str, Any]:
    """A JSON object from untrusted bytes, or WireError."""
    try:
        value = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise WireError(f"the message is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise WireError("the message is not a JSON object")
    if _depth(value) > MAX_DEPTH:
        raise WireError("the message is nested too deep")
    return value


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


def pack_files(header: dict[str, Any], files: list[tuple[str, bytes]]) -> bytes:
    """One JSON header (with the files' names and sizes) followed by the files' bytes: how a Ray replica
    answers the API, so that only JSON and bytes cross, never a Python object."""
    head = {**header, "files": [[name, len(data)] for name, data in files]}
    return encode(head) + b"".join(data for _name, data in files)


def unpack_files(
    blob: bytes, *, max_header_bytes: int = DEFAULT_MAX_BYTES
) -> tuple[dict[str, Any], list[tuple[str, bytes]]]:
    """The inverse of `pack_files`, checking every length against the blob (WireError otherwise)."""
    if not isinstance(blob, (bytes, bytearray)) or len(blob) < HEADER.size:
        raise WireError("the answer is not a packed message")
    (size,) = HEADER.unpack_from(blob)
    if size > max_header_bytes or HEADER.size + size > len(blob):
        raise WireError("the answer's header is too long")
    header = decode(bytes(blob[HEADER.size : HEADER.size + size]))
    listed = header.get("files") or []
    files, offset = [], HEADER.size + size
    if not isinstance(listed, list):
        raise WireError("the answer's file list is not a list")
    for entry in listed:
        if not (
            isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str) and isinstance(entry[1], int)
        ):
            raise WireError("the answer's file list is malformed")
        name, length = entry
        if length < 0 or offset + length > len(blob):
            raise WireError("the answer's file sizes do not match its bytes")
        files.append((name, bytes(blob[offset : offset + length])))
        offset += length
    if offset != len(blob):
        raise WireError("the answer has bytes no file accounts for")
    return header, files
