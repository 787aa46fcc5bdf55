"""What `make stack` prints for another shell (simulator.devstack)."""

from __future__ import annotations

from pathlib import Path

from simulator.devstack import _shown, absolute_storage_url, exports_for
from videoqueue.settings import Settings


def test_a_relative_folder_is_made_absolute_so_any_directory_names_it(tmp_path: Path) -> None:
    assert absolute_storage_url("file://./videos", tmp_path) == f"file://{tmp_path.resolve() / 'videos'}"
    assert absolute_storage_url("file:///srv/videos", tmp_path) == "file:///srv/videos"
    assert absolute_storage_url("s3://bucket/clips", tmp_path) == "s3://bucket/clips"


def test_the_exports_name_redis_the_namespace_storage_and_the_simulator(tmp_path: Path) -> None:
    settings = Settings(redis_url="redis://127.0.0.1:6390/2", storage_url="s3://b/p", s3_endpoint_url="http://m:9000")
    exports = exports_for(settings, "dev", "http://127.0.0.1:8000", tmp_path)
    assert exports == {
        "REDIS_URL": "redis://127.0.0.1:6390/2",
        "VQ_NAMESPACE": "dev",
        "STORAGE_URL": "s3://b/p",
        "S3_ENDPOINT_URL": "http://m:9000",
        "BYTEPLUS_BASE_URL": "http://127.0.0.1:8000/api/v3",
        "BYTEPLUS_API_KEY": "dev-simulator-key",
        "VEO_BASE_URL": "http://127.0.0.1:8000/",
        "GOOGLE_API_KEY": "dev-simulator-google-key",
        "FETCH_ALLOW_HOSTS": "127.0.0.1:8000",
    }


def test_a_real_provider_key_is_never_exported(tmp_path: Path) -> None:
    settings = Settings(byteplus_api_key="real-secret-key")
    exports = exports_for(settings, "dev", None, tmp_path)
    assert "real-secret-key" not in repr(exports)
    assert "BYTEPLUS_API_KEY" not in exports


def test_a_password_in_a_url_is_masked() -> None:
    line = _shown("REDIS_URL", "redis://:hunter2@127.0.0.1:6379/0")
    assert "hunter2" not in line and "****" in line
    assert _shown("VQ_NAMESPACE", "dev") == "export VQ_NAMESPACE=dev"
