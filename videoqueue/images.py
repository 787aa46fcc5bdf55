"""Input images given as local files: read once in the producer, checked for size and
type, and carried to the worker through the job store (workers cannot read the
producer's disk)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

# Signatures of the image types both providers accept.
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
)


def sniff_image_type(head: bytes) -> str | None:
    """The MIME type of an image from its first bytes, or None if it is not PNG, JPEG or WebP."""
    for signature, mime in _SIGNATURES:
        if head.startswith(signature):
            return mime
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


@dataclass(frozen=True)
class ImageFile:
    """A checked local image."""

    name: str
    mime_type: str
    data: bytes

    @property
    def sha256(self) -> str:
        """Hex digest of the bytes, kept in the job record to identify the input."""
        return hashlib.sha256(self.data).hexdigest()


def read_image_file(path: str, max_bytes: int) -> ImageFile:
    """Read and check a local image; ValueError with a clear reason otherwise."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"{path} is not a readable file")
    size = file.stat().st_size
    if size > max_bytes:
        raise ValueError(f"{path} is {size} bytes; the limit is {max_bytes}")
    if size == 0:
        raise ValueError(f"{path} is empty")
    data = file.read_bytes()
    mime = sniff_image_type(data[:16])
    if mime is None:
        raise ValueError(f"{path} is not a PNG, JPEG or WebP image")
    return ImageFile(name=file.name, mime_type=mime, data=data)
