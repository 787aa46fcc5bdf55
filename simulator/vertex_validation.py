"""Veo models and validation of ``predictLongRunning`` request bodies."""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, field
from typing import Any, TypeVar

from simulator.markers import MarkerError, Markers, parse_markers
from simulator.vertex_errors import GRPC_CODES, GoogleError, invalid_argument

_RES_31 = ("720p", "1080p", "4k")
_RES_30 = ("720p", "1080p")
# Model -> accepted resolutions; every model renders 4, 6 or 8 seconds.
VEO_MODELS: dict[str, tuple[str, ...]] = {
    "veo-3.1-generate-001": _RES_31,
    "veo-3.1-fast-generate-001": _RES_31,
    "veo-3.1-generate-preview": _RES_31,
    "veo-3.1-fast-generate-preview": _RES_31,
    "veo-3.0-generate-001": _RES_30,
    "veo-3.0-fast-generate-001": _RES_30,
}
DURATIONS = (4, 6, 8)
ASPECT_RATIOS = ("16:9", "9:16")
PERSON_GENERATION = ("allow_adult", "dont_allow", "allow_all")
IMAGE_MIME_TYPES = ("image/png", "image/jpeg", "image/webp")
MAX_SAMPLES = 4
MAX_SEED = 2**32 - 1
INVALID_IMAGE = "The provided image is not valid."

_D = TypeVar("_D", str, None)


@dataclass(frozen=True)
class VeoSpec:
    """A validated ``predictLongRunning`` request with defaults applied."""

    model: str
    prompt: str
    duration: int
    aspect_ratio: str
    resolution: str
    sample_count: int
    generate_audio: bool
    seed: int | None = None
    person_generation: str | None = None
    negative_prompt: str | None = None
    storage_uri: str | None = None
    images: tuple[str, ...] = ()
    # What `/_sim/tasks` shows of each image, by Seedance's role names (`_check_image`).
    received: tuple[tuple[str, str], ...] = ()
    markers: Markers = field(default_factory=Markers)


def _opt(data: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = data.get(key)
    if value is None:
        return None
    # JSON numbers reach protobuf as doubles: 6.0 is a fine duration, true is not.
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise invalid_argument(f"{where}{key}", f"expected {kind.__name__}, got {value!r}")
    return value


def _param(params: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    value = _opt(params, key, kind, "parameters.")
    return default if value is None else value


def _choice(params: dict[str, Any], key: str, allowed: tuple[str, ...], default: _D) -> str | _D:
    value = _opt(params, key, str, "parameters.")
    if value is None:
        return default
    if key == "resolution":
        value = value.lower()
    if value not in allowed:
        raise invalid_argument(f"parameters.{key}", f"{value!r} is not one of {', '.join(allowed)}")
    return str(value)


def is_image(data: bytes) -> bool:
    """True if ``data`` starts like a PNG, JPEG or WebP file."""
    return data.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def _check_image(instance: dict[str, Any], key: str) -> str | None:
    """Validate ``instances[0].<key>``; return None if it was not given, else what
    `/_sim/tasks` shows of it: `sha256:<hex>` of inline bytes, or the gcsUri."""
    image = instance.get(key)
    if image is None:
        return None
    where = f"instances[0].{key}"
    if not isinstance(image, dict):
        raise invalid_argument(where, "expected an object")
    data, uri, mime = image.get("bytesBase64Encoded"), image.get("gcsUri"), image.get("mimeType")
    if (data is None) == (uri is None):
        raise invalid_argument(where, "exactly one of bytesBase64Encoded and gcsUri is required")
    # Inline bytes must say what they are; a gcsUri object may leave it to its metadata.
    if (mime is not None or data is not None) and mime not in IMAGE_MIME_TYPES:
        raise invalid_argument(f"{where}.mimeType", f"{mime!r} is not one of {', '.join(IMAGE_MIME_TYPES)}")
    if uri is not None:
        if not isinstance(uri, str) or not uri.startswith("gs://") or len(uri) <= len("gs://"):
            raise invalid_argument(f"{where}.gcsUri", "expected a gs://bucket/object URI")
        return uri
    if not isinstance(data, str):
        raise invalid_argument(f"{where}.bytesBase64Encoded", "expected a base64 string")
    # Protobuf's JSON mapping accepts both base64 alphabets, padded or not.
    text = data.replace("-", "+").replace("_", "/")
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise invalid_argument(f"{where}.bytesBase64Encoded", "not valid base64") from None
    if not is_image(raw):
        raise GoogleError("INVALID_ARGUMENT", INVALID_IMAGE)
    return f"sha256:{hashlib.sha256(raw).hexdigest()}"


def _markers(prompt: str) -> Markers:
    try:
        markers = parse_markers(prompt)
    except MarkerError as err:
        raise invalid_argument("instances[0].prompt", str(err)) from None
    if markers.fail_code is not None and markers.fail_code not in GRPC_CODES:
        detail = f"[sim:fail={markers.fail_code}] names no gRPC status (e.g. INTERNAL, RESOURCE_EXHAUSTED)"
        raise invalid_argument("instances[0].prompt", detail)
    return markers


def _instance(body: dict[str, Any]) -> dict[str, Any]:
    instances = body.get("instances")
    if not isinstance(instances, list) or len(instances) != 1 or not isinstance(instances[0], dict):
        raise invalid_argument("instances", "expected a list of exactly one instance object")
    instance: dict[str, Any] = instances[0]
    return instance


def parse_predict(model: str, body: Any) -> VeoSpec:
    """Validate a ``predictLongRunning`` body for ``model`` (a key of VEO_MODELS)."""
    if not isinstance(body, dict):
        raise invalid_argument("body", "expected a JSON object")
    instance = _instance(body)
    prompt: str = _opt(instance, "prompt", str, "instances[0].") or ""
    image = _check_image(instance, "image")
    last = _check_image(instance, "lastFrame")
    has_image, has_last = image is not None, last is not None
    if not prompt.strip() and not has_image:
        raise invalid_argument("instances[0].prompt", "a prompt or an image is required")
    if has_last and not has_image:
        raise invalid_argument("instances[0].lastFrame", "a last frame requires instances[0].image")
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise invalid_argument("parameters", "expected an object")
    duration: int = _param(params, "durationSeconds", int, 8)
    if duration not in DURATIONS:
        raise invalid_argument("parameters.durationSeconds", f"{duration} is not one of 4, 6, 8")
    samples: int = _param(params, "sampleCount", int, 1)
    if not 1 <= samples <= MAX_SAMPLES:
        raise invalid_argument("parameters.sampleCount", f"{samples} is outside 1..{MAX_SAMPLES}")
    seed: int | None = _param(params, "seed", int, None)
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise invalid_argument("parameters.seed", f"{seed} is outside 0..{MAX_SEED}")
    storage_uri: str | None = _param(params, "storageUri", str, None)
    if storage_uri is not None and (not storage_uri.startswith("gs://") or len(storage_uri) <= len("gs://")):
        raise invalid_argument("parameters.storageUri", f"{storage_uri!r} is not a gs:// URI")
    return VeoSpec(
        model=model,
        prompt=prompt,
        duration=duration,
        aspect_ratio=_choice(params, "aspectRatio", ASPECT_RATIOS, "16:9"),
        resolution=_choice(params, "resolution", VEO_MODELS[model], "720p"),
        sample_count=samples,
        # Veo 3 models require generateAudio; a missing one is taken as false.
        generate_audio=_param(params, "generateAudio", bool, False),
        seed=seed,
        person_generation=_choice(params, "personGeneration", PERSON_GENERATION, None),
        negative_prompt=_param(params, "negativePrompt", str, None),
        storage_uri=storage_uri,
        images=tuple(key for key, given in (("image", has_image), ("lastFrame", has_last)) if given),
        received=tuple((role, seen) for role, seen in (("first_frame", image), ("last_frame", last)) if seen),
        markers=_markers(prompt),
    )
