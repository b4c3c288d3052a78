"""The multipart/form-data reply of real-time inference, byte for byte what MultipartEncoder makes."""

from __future__ import annotations

from requests_toolbelt.multipart.encoder import MultipartEncoder


def encode_multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    """Encode `(name, content)` pairs; each part has only `Content-Disposition: form-data; name=...`.

    Returns the body and its content type (`multipart/form-data; boundary=<hex>`).
    """
    encoder = MultipartEncoder(fields=[(name, content) for name, content in files])
    return encoder.to_string(), encoder.content_type
