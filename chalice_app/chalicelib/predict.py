"""``POST /predict`` before and after the endpoint: what is checked in Lambda, what is forwarded.

Lambda has no image library, so it checks what it can without one, and cheaply, before paying for
an endpoint invocation: the media type, the size against the endpoint's payload limit, that the
body is not empty, that image bytes start like an image, that a JSON body is well formed with
decodable base64 images and a sane ``top_k``. The endpoint's own handlers (``model_code/inference.py``)
then check the pixels; their 4xx answers are passed through with their message.

Every refusal is an ``ApiError`` with the HTTP status of Contract 4 and a message a person
understands. Standard library only: this module runs on Lambda.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Optional

IMAGE_TYPES = ("image/jpeg", "image/png", "application/x-image", "application/octet-stream")
JSON_TYPE = "application/json"
SUPPORTED_TYPES = IMAGE_TYPES + (JSON_TYPE,)
# The payload limits of what the endpoint accepts (DESIGN.md): realtime 6 MB, serverless 4 MB.
REALTIME_LIMIT_BYTES = 6 * 1024 * 1024
SERVERLESS_LIMIT_BYTES = 4 * 1024 * 1024
MAX_TOP_K = 1000
MAX_IMAGES = 64          # the handlers' MAX_IMAGES_PER_REQUEST default

# Leading bytes of the formats the handlers decode (PIL): JPEG, PNG, GIF, BMP, WebP, TIFF (both byte orders).
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")


class ApiError(Exception):
    """A refusal: ``status`` (4xx/5xx) and a ``code`` and ``message`` for the JSON error body."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def body(self) -> dict:
        return {"Code": self.code, "Message": self.message}


@dataclass(frozen=True)
class EndpointRequest:
    """What ``invoke_endpoint`` is sent."""
    body: bytes
    content_type: str
    accept: str


def media_type(header: Optional[str]) -> str:
    """``'Image/JPEG; charset=x'`` -> ``'image/jpeg'``; missing -> ``''``."""
    return (header or "").split(";", 1)[0].strip().lower()


def looks_like_image(data: bytes) -> bool:
    return data.startswith(_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def parse_top_k(value) -> Optional[int]:
    """The ``top_k`` query parameter (text) or JSON field (a whole number); None when not given."""
    if value is None:
        return None
    if isinstance(value, bool) or isinstance(value, float) or not isinstance(value, (int, str)):
        raise ApiError(400, "BadRequest", f"top_k must be a whole number from 1 to {MAX_TOP_K}, got {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise ApiError(400, "BadRequest", f"top_k must be a whole number from 1 to {MAX_TOP_K}, got {value!r}") from None
    if not 1 <= number <= MAX_TOP_K:
        raise ApiError(400, "BadRequest", f"top_k must be a whole number from 1 to {MAX_TOP_K}, got {number}")
    return number


def _check_image(data: bytes, where: str) -> None:
    if not data:
        raise ApiError(400, "BadRequest", f"{where} is empty: send the bytes of a JPEG or PNG image")
    if not looks_like_image(data):
        raise ApiError(400, "BadRequest", f"{where} is not an image: its first bytes are {data[:8]!r}, which "
                                          f"match no JPEG, PNG, GIF, BMP, WebP or TIFF signature")


def _decode_base64(item, where: str) -> bytes:
    if not isinstance(item, str) or not item:
        raise ApiError(400, "BadRequest", f"{where} must be a non-empty base64 string")
    text = item.split(",", 1)[1] if item.startswith("data:") and "," in item else item
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "BadRequest", f"{where} is not valid base64") from None


def _check_json(body: bytes) -> Optional[int]:
    """Validate a JSON request (``{"image": b64}`` or ``{"images": [b64, ...]}``, optional
    ``"top_k"``); return its top_k."""
    try:
        document = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise ApiError(400, "BadRequest", "the JSON body is not UTF-8 text") from None
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "BadRequest", f"the body is not valid JSON: {str(exc)[:120]}") from None
    if not isinstance(document, dict):
        raise ApiError(400, "BadRequest", 'the JSON body must be an object: {"image": "<base64>"} '
                                          'or {"images": ["<base64>", ...]}')
    if ("image" in document) == ("images" in document):
        raise ApiError(400, "BadRequest", 'the JSON body needs exactly one of "image" (one base64 image) '
                                          'or "images" (a list of them)')
    if "image" in document:
        _check_image(_decode_base64(document["image"], '"image"'), 'the decoded "image"')
    else:
        items = document["images"]
        if not isinstance(items, list) or not items:
            raise ApiError(400, "BadRequest", '"images" must be a non-empty list of base64 strings')
        if len(items) > MAX_IMAGES:
            raise ApiError(413, "PayloadTooLarge", f'"images" has {len(items)} images; the limit is {MAX_IMAGES} '
                                                   f'per request: split them over several requests')
        for i, item in enumerate(items):
            _check_image(_decode_base64(item, f'"images[{i}]"'), f'the decoded "images[{i}]"')
    return parse_top_k(document.get("top_k"))


def endpoint_request(body: Optional[bytes], content_type_header: Optional[str], top_k_param: Optional[str],
                     limit_bytes: int) -> EndpointRequest:
    """Check a ``/predict`` request and build what the endpoint is sent; raise ApiError otherwise.

    ``top_k`` (query parameter, or the JSON body's field, which wins) travels in the Accept header
    as ``application/json; top_k=N``, which the handlers read.
    """
    kind = media_type(content_type_header)
    if kind not in SUPPORTED_TYPES:
        shown = f"{kind!r}" if kind else "no Content-Type"
        raise ApiError(415, "UnsupportedMediaType",
                       f"{shown} is not supported: send image/jpeg, image/png, application/x-image or "
                       f"application/octet-stream bytes, or application/json with base64 images")
    body = body or b""
    if len(body) > limit_bytes:
        raise ApiError(413, "PayloadTooLarge", f"the body is {len(body):,} bytes; the endpoint accepts at most "
                                               f"{limit_bytes:,} bytes ({limit_bytes / 2**20:g} MiB)")
    top_k = parse_top_k(top_k_param)
    if kind == JSON_TYPE:
        top_k = _check_json(body) or top_k
    else:
        _check_image(body, "the body")
    accept = JSON_TYPE if top_k is None else f"{JSON_TYPE}; top_k={top_k}"
    return EndpointRequest(body=body, content_type=kind, accept=accept)


def endpoint_failure(error_code: str, message: str, original_status: Optional[int] = None,
                     original_message: Optional[str] = None) -> ApiError:
    """Map an ``invoke_endpoint`` failure onto Contract 4: the model's 4xx verbatim, a missing
    endpoint -> 503, throttling -> 503, the model's 5xx and everything else -> 502. Never 500."""
    if error_code == "ModelError" and original_status is not None and 400 <= original_status < 500:
        return ApiError(original_status, "ModelRejectedInput", _model_message(original_message) or message)
    if error_code == "ValidationException" and "not found" in message.lower():
        return ApiError(503, "NoEndpoint", f"no endpoint is serving yet: {message}")
    if error_code in ("ThrottlingException", "ServiceUnavailable", "InternalDependencyException"):
        return ApiError(503, "EndpointBusy", f"the endpoint is busy ({error_code}): retry in a few seconds")
    if error_code == "ModelNotReadyException":
        return ApiError(503, "EndpointNotReady", f"the endpoint's model is not ready yet: {message}")
    if error_code == "ModelError":
        return ApiError(502, "ModelFailed", f"the model failed on this input: "
                                            f"{_model_message(original_message) or message}")
    return ApiError(502, "EndpointError", f"the endpoint call failed ({error_code}): {message}")


def _model_message(original: Optional[str]) -> Optional[str]:
    """The handler's message from the container's error body (JSON ``{"message"|"error": ...}`` or text)."""
    if not original:
        return None
    try:
        document = json.loads(original)
    except ValueError:
        return original.strip()[:500]
    if isinstance(document, dict):
        for key in ("message", "Message", "error", "detail"):
            if isinstance(document.get(key), str):
                return document[key][:500]
    return original.strip()[:500]


def payload_limit(serverless: bool) -> int:
    return SERVERLESS_LIMIT_BYTES if serverless else REALTIME_LIMIT_BYTES
