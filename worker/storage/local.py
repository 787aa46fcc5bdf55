"""Storage in a local folder. Writes go to a temporary file beside the target (its partial
file, `.<name>.part`) and are renamed into place, so a reader never sees half a video."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
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

    def keys_starting_with(self, start: str, limit: int) -> list[str]:
        head, _, name = start.rpartition("/")
        folder = self._path(head) if head else self.root
        try:
            with os.scandir(folder) as entries:
                found = sorted(e.name for e in entries if e.name.startswith(name) and e.is_file())
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StorageError(f"cannot list {folder}: {exc}") from exc
        return [f"{head}/{n}" if head else n for n in found[:limit]]

    def _write_atomic(
        self, key: str, chunks: Iterator[bytes], check: Callable[[Path], object] | None = None
    ) -> StoredObject:
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            claimed = _claim_partial(target)
            if claimed is None:
                # Another live write of this key holds its partial file (a duplicate store
                # attempt): write beside it under a name of our own.
                fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
            else:
                fd, tmp_name = claimed
        except OSError as exc:
            raise StorageError(f"cannot write under {target.parent}: {exc}") from exc
        size = 0
        try:
            # mkstemp makes the file owner-only; stored videos are meant to be shared.
            os.fchmod(fd, 0o644)
            out = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            Path(tmp_name).unlink(missing_ok=True)
            raise
        # Closing the file releases the partial file's lock: the rename, or the removal
        # after a failure, happens before, so a writer waiting for the name finds it gone.
        with out:
            try:
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
        # The rename is durable only once the directory is: without this a crash could
        # lose a video whose job is already recorded as stored.
        _disk(_fsync_dir, target.parent)
        if claimed is None:
            # Temp files of other writes of the key under random names are leftovers of a
            # worker killed mid-write, or of a duplicate writing beside us, whose rename
            # will now fail and retry into a job already done: either way not needed. Only
            # on this rare path: the listing costs as much as the folder holds files. The
            # partial file stays: its holder renames it by name, so once gone a new one
            # made by a third write would be the file it renames into place, half written.
            # Its holder's whole file replaces ours when it lands, a copy of the same video.
            partial = _partial_of(target)
            for leftover in target.parent.glob(f".{glob.escape(target.name)}.*"):
                if leftover == partial:
                    _unlink_unless_held(partial)
                    continue
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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_CLAIM_TRIES = 5


def _unlink_unless_held(partial: Path) -> None:
    """Remove a partial file no live writer holds (an empty one `_claim_partial` opened on
    a filesystem without locks, or a dead writer's); leave one that is held."""
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno != errno.ENOLCK:
                return  # held by a live writer, who renames it or removes it
        with contextlib.suppress(OSError):
            if os.fstat(fd).st_ino == os.stat(partial).st_ino:
                partial.unlink()
    finally:
        os.close(fd)


def _partial_of(target: Path) -> Path:
    """The partial file of `target`: `.<name>.part` beside it."""
    return target.with_name(f".{target.name}.part")


def _claim_partial(target: Path) -> tuple[int, str] | None:
    """The partial file of `target` (`.<name>.part` beside it), opened for writing, emptied
    and locked (flock) for as long as the descriptor is open; None when another live
    writer holds it.

    One name per key, so that a write killed half way (SIGKILL, OOM) leaves its partial
    file where the next write of the key takes it over, instead of a leftover that only a
    listing of the whole folder would find. The lock tells a leftover (no holder: the
    kernel released a dead writer's lock) from a write in progress; the inode check after
    locking, that the file opened is still the one at that name and not one a writer
    renamed into place meanwhile. None too where the filesystem refuses locks."""
    partial = _partial_of(target)
    for _ in range(_CLAIM_TRIES):
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            # Held by a live writer; or a filesystem without locks (ENOLCK): then every
            # write goes under a random name, as before partial files.
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            held = os.fstat(fd)
            at_name = os.stat(partial)
        except FileNotFoundError:
            os.close(fd)
            continue  # renamed into place after we opened it: open the name again
        except BaseException:
            os.close(fd)
            raise
        if (held.st_dev, held.st_ino) != (at_name.st_dev, at_name.st_ino):
            os.close(fd)
            continue
        try:
            os.ftruncate(fd, 0)
        except BaseException:
            os.close(fd)
            raise
        return fd, str(partial)
    return None
