"""``POST /predict`` before and after the endpoint: what Lambda checks, what it forwards.

One rule, one place. Lambda owns what it must know to build the endpoint request without an image
library: the media type (415), the body against the endpoint's payload limit (413), that there is a
body at all (400), the ``top_k`` query parameter, which travels to the handlers in the Accept
header (400 when it is not a number, by the handlers' rule), and the ``explain`` query parameter, which
travels as the Content-Type parameter ``explain=true`` (400 when it is not true or false). Everything about the image bytes and the
JSON document (base64, the images, their count, the JSON ``top_k``, the default top_k) is the endpoint
handlers' (``model_code/inference.py``): Lambda forwards the body as it came, and their 4xx answers
are passed through with their message. ``tests/test_predict_contract.py`` feeds one request corpus to
both sides and holds them to this.

Every refusal is an ``ApiError`` with the HTTP status of Contract 4 and a message a person
understands. Standard library only: this module runs on Lambda.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

# The media types the handlers read (model_code/inference.py IMAGE_CONTENT_TYPES and
# SUPPORTED_CONTENT_TYPES; the contract test holds them equal).
IMAGE_TYPES = ("image/jpeg", "image/png", "application/x-image", "application/octet-stream")
JSON_TYPE = "application/json"
SUPPORTED_TYPES = IMAGE_TYPES + (JSON_TYPE,)
# The payload limits of what the endpoint accepts (DESIGN.md): realtime 6 MB, serverless 4 MB.
REALTIME_LIMIT_BYTES = 6 * 1024 * 1024
SERVERLESS_LIMIT_BYTES = 4 * 1024 * 1024


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


def top_k_parameter(text: Optional[str]) -> Optional[int]:
    """The ``top_k`` query parameter by the handlers' rule for it: ASCII digits, blanks around them
    allowed; 0 and numbers over the class count are the handlers' to clamp. None when not given;
    ApiError(400) otherwise, before a value that is not a number could reach the Accept header."""
    if text is None:
        return None
    digits = text.strip()
    if digits.isascii() and digits.isdigit():
        try:
            return int(digits)
        except ValueError:      # over Python's limit on the digits of an int
            pass
    raise ApiError(400, "BadRequest", f"top_k must be a non-negative integer, got {text[:60]!r}")


def explain_parameter(text: Optional[str]) -> bool:
    """The ``explain`` query parameter by the handlers' rule for it: ``true`` or ``false`` in any case,
    blanks around allowed; absent = False. ApiError(400) otherwise."""
    if text is None:
        return False
    if text.strip().lower() in ("true", "false"):
        return text.strip().lower() == "true"
    raise ApiError(400, "BadRequest", f"explain must be true or false, got {text[:60]!r}")


def endpoint_request(body: Optional[bytes], content_type_header: Optional[str], top_k_param: Optional[str],
                     limit_bytes: int, explain_param: Optional[str] = None) -> EndpointRequest:
    """Check a ``/predict`` request's media type, size and ``top_k`` and ``explain`` query parameters, and
    build what the endpoint is sent: the body as it came, its media type (with ``; explain=true`` when the
    query asked for a heatmap: the handlers read it for image bytes and JSON alike), and ``Accept:
    application/json`` carrying ``; top_k=N`` when the query asked for N. Raises ApiError 415, 413 or 400."""
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
    if not body:        # InvokeEndpoint needs a body; the handlers would refuse it anyway
        raise ApiError(400, "BadRequest", "the body is empty: send the bytes of an image, or JSON like "
                                          '{"image": "<base64>"}')
    top_k = top_k_parameter(top_k_param)
    explain = explain_parameter(explain_param)
    accept = JSON_TYPE if top_k is None else f"{JSON_TYPE}; top_k={top_k}"
    return EndpointRequest(body=body, content_type=f"{kind}; explain=true" if explain else kind, accept=accept)


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
