"""JSON ↔ core values shared by the routes: model references, images, vectors."""

from __future__ import annotations

import base64
import binascii
import re

import numpy as np

from lens_server.errors import InvalidInput

_DATA_URI = re.compile(r"^data:([^;,]*)((?:;[^;,]*)*),", re.IGNORECASE)


def model_ref(spec: str | None) -> tuple[str, int]:
    """`"NAME"`, `"NAME:VERSION"` or nothing (the default model) → (name, version)."""
    if not spec:
        return "", 0
    name, sep, version = spec.rpartition(":")
    if not sep:
        return spec, 0
    if not version.isdigit() or int(version) < 1:
        raise InvalidInput(f"model {spec!r}: the version after ':' must be a number >= 1")
    return name, int(version)


def is_image_uri(text: str) -> bool:
    """Whether `text` is a data URI whose media type is an image."""
    found = _DATA_URI.match(text[:256])
    return found is not None and found.group(1).lower().startswith("image/")


def image_bytes(text: str, where: str) -> bytes:
    """A `data:image/...;base64,` URI or bare base64 → the encoded image's bytes."""
    payload = text
    found = _DATA_URI.match(text[:256])
    if found:
        media, params = found.group(1).lower(), found.group(2).lower()
        if not media.startswith("image/"):
            raise InvalidInput(f"{where}: data URI of type {media or 'none'!r} is not an image")
        if ";base64" not in params:
            raise InvalidInput(f"{where}: data URI is not base64-encoded")
        payload = text[found.end() :]
    elif text.startswith(("http://", "https://")):
        raise InvalidInput(
            f"{where}: image URLs are not fetched by this server (start it with "
            "--allow-url-fetch); send the image as base64 or a data URI"
        )
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{where}: not valid base64") from None
    if not data:
        raise InvalidInput(f"{where}: the image is empty")
    return data


def encode_codes(codes: np.ndarray, encoding_format: str) -> list[list[int]] | list[str]:
    """(n, cols) int8/uint8 codes → JSON arrays of integers, or base64 of each row's bytes."""
    if encoding_format == "base64":
        return [base64.b64encode(row.tobytes()).decode() for row in codes]
    return list(codes.tolist())


def encode_vectors(vectors: np.ndarray, encoding_format: str) -> list[list[float] | str]:
    """(n, dim) float32 → JSON arrays, or base64 of each row's little-endian float32 bytes."""
    rows = vectors.astype("<f4", copy=False)
    if encoding_format == "base64":
        return [base64.b64encode(row.tobytes()).decode() for row in rows]
    return list(rows.tolist())
