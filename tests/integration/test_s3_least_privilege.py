"""Object storage with the least privilege (issue 17): real `celery worker` processes store
videos into moto's S3 server, over HTTP, with the key of an IAM user holding only the
policy docs/production.md gives, and `videoqueue doctor` passes with that key and names
the missing action with a key that lacks one.

moto checks signatures and IAM policies once INITIAL_NO_AUTH_ACTION_COUNT requests have
been served unchecked (moto/core/authorization.py; S3 requests included, against the
object's ARN). That count is read from moto's environment at start, and /moto-api/reset-auth
sets it on a running server (as moto's own `set_initial_no_auth_action_count` does in
server mode): the server here starts with none checked, the default credentials make the
bucket, the users, their policies and keys, then checking is switched on for every request."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
import redis
from botocore.exceptions import ClientError

from producer import JobStatus, VideoRequest
from simulator.stack import free_port, start_moto
from tests.integration.conftest import CLEAN_SIMULATOR, REDIS_URL, SIM_GOOGLE_KEY, SIM_KEY, Simulator, Stack
from tests.integration.helpers import served_size, wait_for
from videoqueue import keys
from videoqueue.settings import Settings
from worker.doctor import Status, run_doctor

pytestmark = pytest.mark.integration

DOCS = Path(__file__).resolve().parents[2] / "docs" / "production.md"
PREFIX = "renders"
PAD = 9 * 1024 * 1024  # more than one 8 MiB part: a real multipart upload


def documented_policy(bucket: str) -> dict[str, Any]:
    """The workers' policy as docs/production.md gives it, for `bucket` and PREFIX."""
    text = DOCS.read_text()
    found = re.search(r"<!-- policy:workers .*?-->\s*```json\n(.*?)```", text, re.S)
    assert found, "docs/production.md has no workers' policy block"
    policy: dict[str, Any] = json.loads(found.group(1).replace("BUCKET", bucket).replace("PREFIX", PREFIX))
    return policy


# moto 5.2's server authorizes some S3 requests by their API operation instead of the IAM
# action AWS checks (HeadObject needs s3:GetObject on AWS; the three multipart calls
# s3:PutObject): each documented action also grants moto's names for its operations, and
# nothing more. ListMultipartUploads (s3:ListBucketMultipartUploads on AWS,
# s3:ListMultipartUploads to moto) stays refused under either name.
MOTO_OPERATIONS = {
    "s3:GetObject": ["s3:HeadObject"],
    "s3:PutObject": ["s3:CreateMultipartUpload", "s3:UploadPart", "s3:CompleteMultipartUpload"],
}


def for_moto(policy: dict[str, Any]) -> dict[str, Any]:
    """`policy` with moto's operation names added to the IAM actions that cover them."""
    statements = []
    for statement in policy["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        extra = [name for action in actions for name in MOTO_OPERATIONS.get(action, [])]
        statements.append({**statement, "Action": actions + extra})
    return {**policy, "Statement": statements}


def without_action(policy: dict[str, Any], action: str) -> dict[str, Any]:
    statements = []
    for statement in policy["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        kept = [a for a in actions if a != action]
        if kept:
            statements.append({**statement, "Action": kept})
    return {**policy, "Statement": statements}


@dataclass(frozen=True)
class Key:
    id: str
    secret: str

    def env(self, endpoint: str) -> dict[str, str]:
        return {
            "S3_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": self.id,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_REGION": "us-east-1",
        }

    def s3(self, endpoint: str) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.id,
            aws_secret_access_key=self.secret,
        )


@dataclass(frozen=True)
class IamS3:
    """moto's S3 with IAM enforced: a bucket and the keys of three users."""

    endpoint: str
    bucket: str
    worker: Key  # only the documented policy
    no_abort: Key  # the documented policy without s3:AbortMultipartUpload
    admin: Key  # s3:*, for the test's own look at the bucket


@pytest.fixture(scope="module")
def iam_s3(log_dir: Path) -> Iterator[IamS3]:
    port = free_port()
    proc = start_moto(port, log_dir)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        default: dict[str, Any] = {
            "endpoint_url": endpoint,
            "region_name": "us-east-1",
            "aws_access_key_id": "testing",
            "aws_secret_access_key": "testing-secret",
        }
        bucket = f"vq-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", **default).create_bucket(Bucket=bucket)
        iam = boto3.client("iam", **default)
        policy = documented_policy(bucket)
        everything = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        made: dict[str, Key] = {}
        for user, document in {
            "worker": policy,
            "no-abort": without_action(policy, "s3:AbortMultipartUpload"),
            "admin": everything,
        }.items():
            iam.create_user(UserName=f"vq-{user}")
            iam.put_user_policy(
                UserName=f"vq-{user}", PolicyName="videoqueue", PolicyDocument=json.dumps(for_moto(document))
            )
            key = iam.create_access_key(UserName=f"vq-{user}")["AccessKey"]
            made[user] = Key(key["AccessKeyId"], key["SecretAccessKey"])
        # From now on every request is signed by one of these users and checked against its policy.
        httpx.post(f"{endpoint}/moto-api/reset-auth", content=b"0", timeout=5).raise_for_status()
        yield IamS3(endpoint, bucket, made["worker"], made["no-abort"], made["admin"])
    finally:
        proc.stop()


@pytest.fixture
def stack(simulator: Simulator, redis_client: redis.Redis, log_dir: Path, iam_s3: IamS3) -> Iterator[Stack]:
    redis_client.flushdb()
    simulator.reset()
    simulator.configure(**CLEAN_SIMULATOR)
    stack = Stack(
        simulator,
        redis_client,
        log_dir,
        storage_url=f"s3://{iam_s3.bucket}/{PREFIX}",
        extra_env=iam_s3.worker.env(iam_s3.endpoint),
    )
    yield stack
    stack.stop()


def doctor_settings(stack: Stack, key: Key, endpoint: str) -> Settings:
    values: dict[str, Any] = {
        "redis_url": REDIS_URL,
        "storage_url": stack.storage_url,
        "byteplus_base_url": stack.simulator.ark_base_url,
        "byteplus_api_key": SIM_KEY,
        "google_api_key": SIM_GOOGLE_KEY,
        "veo_base_url": f"{stack.simulator.url}/",
        **{k.lower(): v for k, v in key.env(endpoint).items()},
    }
    return Settings(_env_file=None, **values)


def test_iam_is_enforced_and_the_worker_key_may_not_list(iam_s3: IamS3) -> None:
    """What the other tests rely on: moto refuses what the policy does not allow, here the
    listing of open uploads every store used to start with."""
    client = iam_s3.worker.s3(iam_s3.endpoint)
    calls: tuple[Callable[[], object], ...] = (
        lambda: client.list_multipart_uploads(Bucket=iam_s3.bucket, Prefix=f"{PREFIX}/"),
        lambda: client.list_objects_v2(Bucket=iam_s3.bucket, Prefix=f"{PREFIX}/"),
        lambda: client.put_object(Bucket=iam_s3.bucket, Key="elsewhere/x.json", Body=b"{}"),
    )
    for call in calls:
        with pytest.raises(ClientError) as refused:
            call()
        assert refused.value.response["Error"]["Code"] == "AccessDenied"


def test_jobs_store_with_only_the_documented_policy(stack: Stack, iam_s3: IamS3) -> None:
    stack.start_worker()
    vq = stack.queue()
    small = vq.submit(VideoRequest(prompt="single-part clip with a least-privilege key"))
    assert vq.wait([small.id], timeout=90)[0].status is JobStatus.SUCCEEDED, vq.get(small.id).error
    stack.simulator.configure(video_pad_bytes=PAD)
    big = [vq.submit(VideoRequest(prompt=f"multipart clip {i} with a least-privilege key")) for i in range(3)]
    done = vq.wait([job.id for job in big], timeout=180)
    assert [job.status for job in done] == [JobStatus.SUCCEEDED] * 3, [job.error for job in done]
    assert all(job.store_attempts == 1 for job in [vq.get(small.id), *done])

    admin = iam_s3.admin.s3(iam_s3.endpoint)
    sizes = {small.id: served_size(small), **{job.id: served_size(job, PAD) for job in big}}
    for job_id, size in sizes.items():
        assert admin.head_object(Bucket=iam_s3.bucket, Key=f"{PREFIX}/{job_id}.mp4")["ContentLength"] == size
        manifest = json.loads(admin.get_object(Bucket=iam_s3.bucket, Key=f"{PREFIX}/{job_id}.json")["Body"].read())
        assert manifest["video"]["bytes"] == size
    assert admin.list_multipart_uploads(Bucket=iam_s3.bucket).get("Uploads", []) == []
    # Every recorded upload id was forgotten once its upload completed.
    assert stack.keys("*s3-open-uploads*") == []


def test_doctor_passes_with_the_documented_policy(stack: Stack, iam_s3: IamS3) -> None:
    check = run_doctor(doctor_settings(stack, iam_s3.worker, iam_s3.endpoint)).named("storage")
    assert check.status is Status.OK, check.detail
    admin = iam_s3.admin.s3(iam_s3.endpoint)
    assert admin.list_objects_v2(Bucket=iam_s3.bucket, Prefix=f"{PREFIX}/_doctor/").get("KeyCount") == 0
    assert admin.list_multipart_uploads(Bucket=iam_s3.bucket).get("Uploads", []) == []


def test_doctor_names_the_operation_and_the_action_a_key_lacks(stack: Stack, iam_s3: IamS3) -> None:
    report = run_doctor(doctor_settings(stack, iam_s3.no_abort, iam_s3.endpoint))
    check = report.named("storage")
    assert check.status is Status.FAIL, check.detail
    assert "AbortMultipartUpload of s3://" in check.detail, check.detail
    expected = f"the credentials need s3:AbortMultipartUpload on arn:aws:s3:::{iam_s3.bucket}/{PREFIX}/*"
    assert expected in check.detail, check.detail
    assert not report.ok and "storage" in report.verdict
    shown = report.to_text() + json.dumps(report.to_dict())
    assert iam_s3.no_abort.secret not in shown


def test_a_job_with_an_image_file_runs_and_its_inputs_go_with_only_the_documented_policy(
    stack: Stack, iam_s3: IamS3, tmp_path: Path
) -> None:
    """The producer (with the same key here) puts the image under PREFIX/inputs/, the worker
    reads it and, once the job succeeded, deletes it: the documented policy must allow all
    three, or every sweep retries the delete and the images stay until a lifecycle rule."""
    stack.start_worker()
    vq = stack.queue()
    image = tmp_path / "first.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 4096)
    job = vq.submit(VideoRequest(prompt="a first frame with a least-privilege key", image_file=str(image)))
    done = vq.wait([job.id], timeout=90)[0]
    assert done.status is JobStatus.SUCCEEDED, done.error
    admin = iam_s3.admin.s3(iam_s3.endpoint)

    def inputs_left() -> int:
        listed = admin.list_objects_v2(Bucket=iam_s3.bucket, Prefix=f"{PREFIX}/inputs/{job.id}/")
        return int(listed.get("KeyCount", 0))

    # After the final move (where `wait` returns): the objects, then the index entry.
    wait_for(
        lambda: inputs_left() == 0 and stack.redis.zscore(keys.INPUTS_RELEASE_INDEX, job.id) is None,
        10,
        "the job's input image deleted",
    )
