"""The multipart/form-data reply of real-time inference, byte for byte what MultipartEncoder makes."""

from __future__ import annotations

from typing import BinaryIO

from requests_toolbelt.multipart.encoder import MultipartEncoder


def encode_multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    """Encode `(name, content)` pairs; each part has only `Content-Disposition: form-data; name=...`.

    Returns the body and its content type (`multipart/form-data; boundary=<hex>`).
    """
    encoder = MultipartEncoder(fields=[(name, content) for name, content in files])
    return encoder.to_string(), encoder.content_type


def multipart_stream(files: list[tuple[str, BinaryIO]], boundary: str | None = None) -> MultipartEncoder:
    """The same encoding over open files, read in chunks (`encoder.read(n)`), never whole in memory.

    A file given bare (not as a `(filename, file)` tuple) gets the same part headers as bytes do;
    `encoder.len` and `encoder.content_type` are the reply's Content-Length and Content-Type.
    """
    return MultipartEncoder(fields=[(name, handle) for name, handle in files], boundary=boundary)
