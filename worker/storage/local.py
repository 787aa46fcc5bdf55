"""Storage in a local folder. Writes go to a temporary file beside the target and are
renamed into place, so a reader never sees half a video."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from worker.storage.base import StorageError, StoredObject, checked_chunks


class LocalStorage:
    """Videos and manifests under one directory."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise ValueError(f"key {key!r} escapes the storage root")
        return path

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()

    def size(self, key: str) -> int | None:
        path = self._path(key)
        return path.stat().st_size if path.is_file() else None

    def iter_json(self) -> Iterator[tuple[str, dict[str, Any]]]:
        if not self.root.is_dir():
            return
        for path in sorted(self.root.glob("*.json")):
            try:
                yield path.name, json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise StorageError(f"cannot read {path}: {exc}") from exc

    def _write_atomic(self, key: str, chunks: Iterator[bytes]) -> StoredObject:
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        except OSError as exc:
            raise StorageError(f"cannot write under {target.parent}: {exc}") from exc
        size = 0
        try:
            # mkstemp makes the file owner-only; stored videos are meant to be shared.
            os.fchmod(fd, 0o644)
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return StoredObject(uri=target.as_uri(), size=size)

    def put_video(self, key: str, chunks: Iterator[bytes], expected_size: int | None) -> StoredObject:
        return self._write_atomic(key, checked_chunks(chunks, expected_size))

    def put_json(self, key: str, data: dict[str, Any]) -> StoredObject:
        body = json.dumps(data, indent=2, sort_keys=True).encode()
        return self._write_atomic(key, iter([body]))
