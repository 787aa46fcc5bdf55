"""The reference transfers of the transfer benchmark, each in a fresh process so that its
memory is its own, all reading the simulator's video URL:

    s3          the stdlib's HTTP response handed to boto3's `upload_fileobj` (the same
                client and TransferConfig as `S3Storage`). It is a file object as is;
                an httpx stream would need an adapter like the one under test.
    file        httpx, the worker's client: `iter_bytes()` written to a file, fsync'd.
    file-stdlib the stdlib's HTTP response copied to a file (`shutil.copyfileobj`), fsync'd.

    python -m bench.transfer_reference KIND URL TARGET   (TARGET: s3://bucket/key or a path)

Prints one JSON object: bytes, seconds, rss_before_mib, hwm_mib, peak_rss_growth_mib.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import httpx

from videoqueue.settings import Settings
from worker.storage.s3 import S3Storage

MIB = 1024 * 1024
KINDS = ("s3", "file", "file-stdlib")


def proc_status_kib(field: str, pid: int | str = "self") -> int:
    """A kB field (VmRSS, VmHWM) of /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak(pid: int | str = "self") -> None:
    """Reset the process's VmHWM to its current RSS (Linux: clear_refs, value 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def _s3(target: str) -> tuple[S3Storage, str]:
    """The S3 storage our worker would build from this environment, and the key."""
    parts = urlsplit(target)
    return S3Storage(parts.netloc, "", Settings(_env_file=None)), parts.path.lstrip("/")


def _fsynced(target: str, write: Callable[[IO[bytes]], object]) -> int:
    with open(target, "wb") as out:
        write(out)
        out.flush()
        os.fsync(out.fileno())
        return out.tell()


def _transfer(kind: str, url: str, target: str, client: httpx.Client) -> int:
    if kind == "file":
        with client.stream("GET", url) as response:
            response.raise_for_status()
            return _fsynced(target, lambda out: out.writelines(response.iter_bytes()))
    with urllib.request.urlopen(url, timeout=60) as source:
        if kind == "file-stdlib":
            return _fsynced(target, lambda out: shutil.copyfileobj(source, out))
        storage, key = _s3(target)
        storage.client.upload_fileobj(source, storage.bucket, key, Config=storage.transfer)
        return int(storage.client.head_object(Bucket=storage.bucket, Key=key)["ContentLength"])


def measure(kind: str, url: str, target: str) -> dict[str, Any]:
    """Stream `url` to `target` once; time it and the peak RSS above the start."""
    # Warm-up: build the clients (boto3 loads its service model), as the worker has.
    client = httpx.Client(timeout=60)
    if kind == "s3":
        storage, key = _s3(target)
        storage.client.put_object(Bucket=storage.bucket, Key=f"{key}.warm-up", Body=b"x")
    reset_peak()
    before = proc_status_kib("VmRSS")
    started = time.perf_counter()
    size = _transfer(kind, url, target, client)
    seconds = time.perf_counter() - started
    hwm = proc_status_kib("VmHWM")
    return {
        "bytes": size,
        "seconds": seconds,
        "rss_before_mib": before / 1024,
        "hwm_mib": hwm / 1024,
        "peak_rss_growth_mib": (hwm - before) / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("url")
    parser.add_argument("target")
    args = parser.parse_args()
    print(json.dumps(measure(args.kind, args.url, args.target)))


if __name__ == "__main__":
    main()
