"""Storage in a local folder. Writes go to a temporary file beside the target and are
renamed into place, so a reader never sees half a video."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from videoqueue.endpoints import Endpoint, fingerprint
from worker.probe import Probe
from worker.storage.base import MediaCheck, StorageError, StoredObject, checked_chunks, round_trip_probe


def _disk(call: Callable[..., Any], *args: Any) -> Any:
    """A filesystem call whose failure (disk full, temp file gone) is worth a retry."""
    try:
        return call(*args)
    except OSError as exc:
        raise StorageError(f"local storage: {exc}") from exc


class LocalStorage:
    """Videos and manifests under one directory."""

    @staticmethod
    def endpoint(url: str) -> Endpoint:
        """The storage endpoint of STORAGE_URL `url` (`file://...`): host `local`, the
        fingerprint over the URL."""
        return Endpoint("storage", "local", fingerprint("file", url.rstrip("/")))

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

    def read(self, key: str) -> bytes | None:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc}") from exc

    def delete(self, key: str) -> None:
        """Also removes the directories the key leaves empty, up to the root (as S3 has
        no directories, none is left behind)."""
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot delete {path}: {exc}") from exc
        for parent in path.parents:
            if parent == self.root:
                break
            try:
                parent.rmdir()
            except OSError:  # not empty (another key, or someone's file), or gone already
                break

    def probe(self) -> Probe:
        return round_trip_probe(self, self.root.as_uri())

    def iter_json(self) -> Iterator[tuple[str, dict[str, Any]]]:
        if not self.root.is_dir():
            return
        for path in sorted(self.root.glob("*.json")):
            try:
                yield path.name, json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise StorageError(f"cannot read {path}: {exc}") from exc

    def _write_atomic(
        self, key: str, chunks: Iterator[bytes], check: Callable[[Path], object] | None = None
    ) -> StoredObject:
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
                    _disk(out.write, chunk)
                    size += len(chunk)
                _disk(out.flush)
                _disk(os.fsync, out.fileno())
            if check is not None:
                check(Path(tmp_name))  # the whole file, before it is at `key`
            _disk(os.replace, tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        # The key now holds a whole file. Temp files of other writes of it are leftovers of
        # a worker killed mid-write (SIGKILL, OOM), or of a duplicate whose rename will now
        # fail and retry into a job already done: either way not needed.
        for leftover in target.parent.glob(f".{target.name}.*"):
            with contextlib.suppress(OSError):
                leftover.unlink()
        return StoredObject(uri=target.as_uri(), size=size)

    def put_video(
        self, key: str, chunks: Iterator[bytes], expected_size: int | None, check: MediaCheck | None = None
    ) -> StoredObject:
        verify = None if check is None else (lambda path: check.verify(path, self.uri(key)))
        return self._write_atomic(key, checked_chunks(chunks, expected_size), verify)

    def put_json(self, key: str, data: dict[str, Any]) -> StoredObject:
        body = json.dumps(data, indent=2, sort_keys=True).encode()
        return self._write_atomic(key, iter([body]))

    def put_bytes(self, key: str, data: bytes, content_type: str) -> StoredObject:
        return self._write_atomic(key, iter([data]))
