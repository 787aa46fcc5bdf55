"""The S3 backend's read, delete and probe against moto's S3 server (a real HTTP endpoint,
as MinIO or AWS would be), with the workers' own client settings."""

from __future__ import annotations

import json

import pytest

from simulator.stack import free_port
from tests.integration.conftest import S3Server
from videoqueue.settings import Settings
from worker.probe import Status
from worker.storage import StorageError, storage_at
from worker.storage.s3 import S3Storage

pytestmark = pytest.mark.integration


def settings_for(endpoint: str) -> Settings:
    return Settings(
        _env_file=None,
        s3_endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing-secret",
    )


@pytest.fixture
def storage(s3_server: S3Server) -> S3Storage:
    return S3Storage(s3_server.new_bucket(), "renders", settings_for(s3_server.endpoint))


def keys(s3_server: S3Server, bucket: str) -> list[str]:
    listing = s3_server.client().list_objects_v2(Bucket=bucket)
    return sorted(item["Key"] for item in listing.get("Contents", []))


def test_read_gives_the_bytes_under_the_prefix_or_none(storage: S3Storage, s3_server: S3Server) -> None:
    storage.put_json("j1.json", {"job_id": "j1"})
    assert keys(s3_server, storage.bucket) == ["renders/j1.json"]
    assert json.loads(storage.read("j1.json") or b"") == {"job_id": "j1"}
    assert storage.read("missing.json") is None


def test_delete_removes_the_object_and_a_missing_one_is_no_error(storage: S3Storage, s3_server: S3Server) -> None:
    storage.put_json("j1.json", {"job_id": "j1"})
    storage.put_json("j2.json", {"job_id": "j2"})
    storage.delete("j1.json")
    assert storage.read("j1.json") is None and storage.size("j1.json") is None
    assert keys(s3_server, storage.bucket) == ["renders/j2.json"]
    storage.delete("j1.json")
    assert keys(s3_server, storage.bucket) == ["renders/j2.json"]


def test_read_and_delete_in_a_missing_bucket_are_storage_errors(s3_server: S3Server) -> None:
    storage = S3Storage("vq-no-such-bucket", "", settings_for(s3_server.endpoint))
    with pytest.raises(StorageError, match=r"S3 read of s3://vq-no-such-bucket/j1\.json failed"):
        storage.read("j1.json")
    with pytest.raises(StorageError, match=r"S3 delete of s3://vq-no-such-bucket/j1\.json failed"):
        storage.delete("j1.json")


def test_an_unreachable_endpoint_is_a_storage_error() -> None:
    storage = S3Storage("videos", "", settings_for(f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(StorageError, match="S3 read"):
        storage.read("j1.json")


def test_probe_writes_reads_back_and_deletes(storage: S3Storage, s3_server: S3Server) -> None:
    probe = storage.probe()
    assert probe.status is Status.OK, probe.detail
    assert probe.detail == f"wrote, read back and deleted a probe under s3://{storage.bucket}/renders"
    assert keys(s3_server, storage.bucket) == []


def test_storage_at_reads_an_object_by_its_uri(storage: S3Storage, s3_server: S3Server) -> None:
    stored = storage.put_json("j1.json", {"video": {"bytes": 42}})
    found = storage_at(stored.uri, settings_for(s3_server.endpoint))
    assert found is not None
    backend, key = found
    assert key == "renders/j1.json"
    assert json.loads(backend.read(key) or b"") == {"video": {"bytes": 42}}


def test_keys_starting_with_lists_one_folder_level_by_name(storage: S3Storage, s3_server: S3Server) -> None:
    for key in ("0c1c0196-aa.json", "0c1c0196-aa.mp4", "0c1c0196-bb.json", "0c1d.json", "0c1c0196/nested.json"):
        storage.put_json(key, {})
    assert storage.keys_starting_with("0c1c0196", 10) == ["0c1c0196-aa.json", "0c1c0196-aa.mp4", "0c1c0196-bb.json"]
    assert storage.keys_starting_with("0c1c0196", 2) == ["0c1c0196-aa.json", "0c1c0196-aa.mp4"]
    assert storage.keys_starting_with("ffff", 10) == []
    # As the archive's lookup reaches it: the whole bucket, the folder in the key.
    found = storage_at(storage.uri("0c1c0196-bb"), settings_for(s3_server.endpoint))
    assert found is not None
    assert found[0].keys_starting_with(found[1], 10) == ["renders/0c1c0196-bb.json"]
    missing = S3Storage("vq-no-such-bucket", "", settings_for(s3_server.endpoint))
    with pytest.raises(StorageError, match=r"S3 listing of s3://vq-no-such-bucket/0c1c\*"):
        missing.keys_starting_with("0c1c", 10)
