"""The multipart/form-data reply of real-time inference, byte for byte what MultipartEncoder makes."""

from __future__ import annotations

from typing import BinaryIO

from requests_toolbelt.multipart.encoder import MultipartEncoder


def multipart_stream(files: list[tuple[str, BinaryIO]], boundary: str | None = None) -> MultipartEncoder:
    """The same encoding over open files, read in chunks (`encoder.read(n)`), never whole in memory.

    A file given bare (not as a `(filename, file)` tuple) gets the same part headers as bytes do;
    `encoder.len` and `encoder.content_type` are the reply's Content-Length and Content-Type.
    """
    return MultipartEncoder(fields=[(name, handle) for name, handle in files], boundary=boundary)
