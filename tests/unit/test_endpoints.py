"""Endpoint fingerprints: what a job records about the provider endpoint and account its task
was created with, and what `doctor` compares; never a secret."""

from __future__ import annotations

from typing import Any

from videoqueue.settings import Settings
from worker.providers import provider_endpoint
from worker.storage import storage_endpoint

KEY = "ark-secret-key-4f1c9e2b7a"
GOOGLE_KEY = "AIza-google-secret-81b3"


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


def test_byteplus_fingerprint_follows_endpoint_and_key_and_holds_no_secret() -> None:
    base = settings(byteplus_api_key=KEY, byteplus_base_url="http://127.0.0.1:8000/api/v3")
    endpoint = provider_endpoint("byteplus", base)
    assert endpoint.host == "127.0.0.1:8000"
    assert len(endpoint.fingerprint) == 12 and int(endpoint.fingerprint, 16) >= 0
    assert KEY not in repr(endpoint) and KEY[:6] not in endpoint.fingerprint
    # the same configuration, written with a trailing slash, is the same endpoint
    same = settings(byteplus_api_key=KEY, byteplus_base_url="http://127.0.0.1:8000/api/v3/")
    assert provider_endpoint("byteplus", same) == endpoint
    others = [
        settings(byteplus_api_key=KEY, byteplus_base_url="http://127.0.0.1:8001/api/v3"),
        settings(byteplus_api_key=KEY + "x", byteplus_base_url="http://127.0.0.1:8000/api/v3"),
        settings(byteplus_base_url="http://127.0.0.1:8000/api/v3"),  # no key at all
    ]
    prints = {provider_endpoint("byteplus", s).fingerprint for s in others}
    assert len(prints) == 3 and endpoint.fingerprint not in prints
    assert endpoint.describe() == f"endpoint host 127.0.0.1:8000 (fingerprint {endpoint.fingerprint})"


def test_veo_fingerprint_follows_key_or_project_and_location() -> None:
    keyed = provider_endpoint("veo", settings(google_api_key=GOOGLE_KEY))
    assert keyed.host == "aiplatform.googleapis.com" and GOOGLE_KEY not in repr(keyed)
    project = provider_endpoint("veo", settings(google_cloud_project="p1", google_cloud_location="europe-west4"))
    assert project.host == "europe-west4-aiplatform.googleapis.com"
    other_project = provider_endpoint("veo", settings(google_cloud_project="p2", google_cloud_location="europe-west4"))
    simulated = provider_endpoint("veo", settings(google_api_key=GOOGLE_KEY, veo_base_url="http://127.0.0.1:9/"))
    assert simulated.host == "127.0.0.1:9"
    assert len({keyed.fingerprint, project.fingerprint, other_project.fingerprint, simulated.fingerprint}) == 4
    # the same provider name in both never collides with byteplus's
    assert provider_endpoint("byteplus", settings()).fingerprint != provider_endpoint("veo", settings()).fingerprint


def test_storage_fingerprint_names_the_bucket_not_the_secret() -> None:
    s3 = settings(
        storage_url="s3://renders/videos",
        s3_endpoint_url="http://minio:9000",
        aws_access_key_id="AKIAEXAMPLE",
        aws_secret_access_key="very-secret",
    )
    endpoint = storage_endpoint(s3)
    assert endpoint.host == "renders at minio:9000"
    assert "AKIAEXAMPLE" not in repr(endpoint) and "very-secret" not in repr(endpoint)
    other_bucket = storage_endpoint(s3.model_copy(update={"storage_url": "s3://other/videos"}))
    local = storage_endpoint(settings(storage_url="file://./videos"))
    assert local.host == "local"
    assert len({endpoint.fingerprint, other_bucket.fingerprint, local.fingerprint}) == 3
