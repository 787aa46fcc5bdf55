"""Vertex AI Veo: ``:predictLongRunning`` queues an operation in the shared scheduler and
``:fetchPredictOperation`` polls it.

Both ways the google-genai SDK talks to Vertex AI are served: express mode (an API key,
``publishers/google/models/...`` paths) and project mode (an OAuth bearer token,
``projects/{p}/locations/{l}/publishers/google/models/...`` paths).
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import lru_cache
from json import JSONDecodeError
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from simulator.clips import Shape, clip, clips, variant_of
from simulator.mp4 import padded_video, video_response
from simulator.scheduler import ACTIVE, Job, Scheduler
from simulator.vertex_errors import (
    GRPC_CODES,
    INTERNAL_MESSAGE,
    UNAVAILABLE_MESSAGE,
    GoogleError,
    invalid_argument,
    quota_exceeded,
)
from simulator.vertex_validation import VEO_MODELS, VeoSpec, parse_predict

RESPONSE_TYPE = "type.googleapis.com/cloud.ai.large_models.vision.GenerateVideoResponse"
RAI_REASON = (
    "Unable to show generated videos because they may violate Google's Responsible AI practices. "
    "Support codes: 90789179"
)
TIMED_OUT = "Operation timed out."
API_KEY_INVALID = "API key not valid. Please pass a valid API key."
CREDENTIALS_INVALID = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie "
    "or other valid authentication credential. "
    "See https://developers.google.com/identity/sign-in/web/devconsole-project."
)
API_VERSIONS = ("v1", "v1beta1")
_EXPRESS = "/publishers/google/models/{model}"
_PROJECT = "/projects/{project}/locations/{location}" + _EXPRESS


@lru_cache(maxsize=64)
def video_base64(shape: Shape, variant: int, pad_bytes: int) -> str:
    """Return a padded clip (simulator/clips.py), base64-encoded as operations carry it."""
    return base64.b64encode(padded_video(clip(shape, variant), pad_bytes)).decode("ascii")


@dataclass(kw_only=True)
class Operation(Job[VeoSpec]):
    """One Veo long-running operation; ``name`` is its full resource name."""

    name: str

    @property
    def public_id(self) -> str:
        """Clients know an operation by its full resource name."""
        return self.name

    @property
    def shape(self) -> Shape:
        """What its videos are made for (simulator/clips.py)."""
        return Shape(self.spec.duration, self.spec.aspect_ratio)

    def video(self, sample: int) -> bytes:
        """The clip of its video number `sample` (each sample a different variant)."""
        return clip(self.shape, variant_of(self.id) + sample)

    def error(self) -> dict[str, Any] | None:
        """The google.rpc.Status of a finished operation that failed, else None.

        A bare ``[sim:fail]`` fails through the safety filter: done, no videos, no error.
        """
        markers = self.spec.markers
        if self.status == "failed" and not markers.fail:
            return {"code": GRPC_CODES["INTERNAL"], "message": INTERNAL_MESSAGE}
        if self.status == "failed" and markers.fail_code is not None:
            code = markers.fail_code
            return {"code": GRPC_CODES[code], "message": f"Simulated failure: {code}"}
        if self.status == "expired":
            return {"code": GRPC_CODES["DEADLINE_EXCEEDED"], "message": TIMED_OUT}
        if self.status == "cancelled":
            return {"code": GRPC_CODES["CANCELLED"], "message": "Operation was cancelled."}
        return None

    def to_json(self, pad_bytes: int) -> dict[str, Any]:
        """Render the operation like ``:fetchPredictOperation`` does ("done" omitted while false)."""
        if self.status in ACTIVE:
            return {"name": self.name}
        data: dict[str, Any] = {"name": self.name, "done": True}
        error = self.error()
        if error is not None:
            data["error"] = error
        elif self.status == "failed":
            data["response"] = {
                "@type": RESPONSE_TYPE,
                "raiMediaFilteredCount": self.spec.sample_count,
                "raiMediaFilteredReasons": [RAI_REASON],
            }
            if self.spec.markers.reasonsonly:
                # `[sim:fail] [sim:reasonsonly]`: the reasons without a count, as Vertex AI
                # has answered (issue 12).
                del data["response"]["raiMediaFilteredCount"]
        else:
            data["response"] = {"@type": RESPONSE_TYPE, "raiMediaFilteredCount": 0, "videos": self._videos(pad_bytes)}
        return data

    def _videos(self, pad_bytes: int) -> list[dict[str, str]]:
        count, uri = self.spec.sample_count, self.spec.storage_uri
        if uri is not None:
            prefix = f"{uri.rstrip('/')}/{self.id}"
            return [{"gcsUri": f"{prefix}/sample_{n}.mp4", "mimeType": "video/mp4"} for n in range(count)]
        first = variant_of(self.id)
        return [
            {"bytesBase64Encoded": video_base64(self.shape, first + n, pad_bytes), "mimeType": "video/mp4"}
            for n in range(count)
        ]


def create_operation(sim: Scheduler, resource: str, spec: VeoSpec) -> Operation:
    """Queue a new operation of the model at ``resource`` (a publisher model path)."""
    now = sim.advance()
    while True:
        op_id = str(uuid.UUID(int=sim.rng.getrandbits(128), version=4))
        if op_id not in sim.tasks:
            break
    op = Operation(id=op_id, spec=spec, created=now, updated=now, name=f"{resource}/operations/{op_id}")
    sim.admit(op, None)
    return op


def find_operation(sim: Scheduler, resource: str, name: str) -> Operation:
    """Return the operation called ``name`` under ``resource``, or raise 404 NOT_FOUND."""
    sim.advance()
    parent, found, op_id = name.rpartition("/operations/")
    op = sim.tasks.get(op_id) if found and parent == resource else None
    if not isinstance(op, Operation) or op.name != name:
        raise GoogleError("NOT_FOUND", f"Operation {name} is not found.")
    return op


# -- HTTP ------------------------------------------------------------------------------------

Handler = Callable[[Request], Awaitable[Response]]


def _check_auth(sim: Scheduler, request: Request) -> None:
    if "project" in request.path_params:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise GoogleError("UNAUTHENTICATED", CREDENTIALS_INVALID)
        return
    key = request.headers.get("x-goog-api-key") or request.query_params.get("key") or ""
    expected = sim.config.google_api_key
    if not key or (expected is not None and key != expected):
        raise GoogleError("UNAUTHENTICATED", API_KEY_INVALID)


def _model_resource(request: Request) -> tuple[str, str]:
    """Return (model, its resource path) of the request, or raise 404 for unknown models."""
    params = request.path_params
    model = params["model"]
    resource = f"publishers/google/models/{model}"
    if "project" in params:
        resource = f"projects/{params['project']}/locations/{params['location']}/{resource}"
    if model not in VEO_MODELS:
        message = f"Publisher Model `{resource}` was not found or your project does not have access to it."
        raise GoogleError("NOT_FOUND", message)
    return model, resource


async def _json_body(request: Request) -> Any:
    try:
        return await request.json()
    except (JSONDecodeError, UnicodeDecodeError):
        raise GoogleError("INVALID_ARGUMENT", "Invalid JSON payload received.") from None


def _endpoint(sim: Scheduler, handler: Handler) -> Handler:
    async def endpoint(request: Request) -> Response:
        try:
            _check_auth(sim, request)
            return await handler(request)
        except GoogleError as err:
            return err.response()

    return endpoint


def vertex_routes(sim: Scheduler) -> list[Route]:
    """Return the Veo routes of both API versions and both addressing modes."""

    async def predict(request: Request) -> Response:
        sim.counters["create_attempts_total"] += 1
        model, resource = _model_resource(request)
        spec = parse_predict(model, await _json_body(request))
        fault = sim.create_fault(spec.prompt, spec.markers)
        if fault == 429:
            raise quota_exceeded(model)
        if fault is not None:
            raise GoogleError("INTERNAL", INTERNAL_MESSAGE)
        op = create_operation(sim, resource, spec)
        if spec.markers.slowcreate:
            await asyncio.sleep(spec.markers.slowcreate)
        return JSONResponse({"name": op.name})

    async def fetch(request: Request) -> Response:
        sim.counters["vertex_fetches_total"] += 1
        _, resource = _model_resource(request)
        body = await _json_body(request)
        name = body.get("operationName") if isinstance(body, dict) else None
        if not isinstance(name, str) or not name:
            raise invalid_argument("operationName", "an operation name is required")
        op = find_operation(sim, resource, name)
        if sim.poll_fault(op):
            raise GoogleError("UNAVAILABLE", UNAVAILABLE_MESSAGE)
        if op.status == "succeeded":
            # The first answer of a shape makes its clips (about 0.1 s a clip): off the loop.
            await asyncio.to_thread(clips, op.shape)
        return JSONResponse(op.to_json(sim.config.video_pad_bytes))

    async def gcs_object(request: Request) -> Response:
        # The Cloud Storage JSON API's media download of what a `storageUri` operation
        # answered (gs://<bucket>/<prefix>/<operation id>/sample_<n>.mp4): the same clip
        # an inline answer carries. No auth: a stand-in for the bucket, not for IAM.
        uri = f"gs://{request.path_params['bucket']}/{request.path_params['name']}"
        parent, _, file_name = uri.rpartition("/")
        prefix, _, op_id = parent.rpartition("/")
        op = sim.tasks.get(op_id)
        sample = file_name.removeprefix("sample_").removesuffix(".mp4")
        if (
            not isinstance(op, Operation)
            or op.status != "succeeded"
            or op.spec.storage_uri is None
            or op.spec.storage_uri.rstrip("/") != prefix
            or not sample.isdigit()
            or int(sample) >= op.spec.sample_count
        ):
            return JSONResponse({"error": {"code": 404, "message": f"No such object: {uri}"}}, status_code=404)
        data = await asyncio.to_thread(op.video, int(sample))
        return video_response(data, sim.config.video_pad_bytes, sim.config.video_trickle_s)

    routes: list[Route] = [Route("/storage/v1/b/{bucket}/o/{name:path}", gcs_object, methods=["GET"])]
    for version in API_VERSIONS:
        for path in (_EXPRESS, _PROJECT):
            routes.append(Route(f"/{version}{path}:predictLongRunning", _endpoint(sim, predict), methods=["POST"]))
            routes.append(Route(f"/{version}{path}:fetchPredictOperation", _endpoint(sim, fetch), methods=["POST"]))
    return routes
