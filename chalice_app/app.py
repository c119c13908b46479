"""The control plane on Lambda: thin Chalice routes and event handlers over ``chalicelib.control``.

Events (EventBridge, at least once, in any order):

- ``on_bucket_event``: S3 "Object Created" for keys ending in ``/_READY`` only (the rule filters, so
  thousands of image uploads never invoke the function): a published dataset or a batch.
- ``on_sagemaker_event``: tuning, training, transform and endpoint state changes.
- ``reconcile``: every ``RECONCILE_MINUTES``, a look at an endpoint change no event will announce (a
  deleted endpoint sends none when it is gone) or whose event was lost; it does nothing (one S3 read)
  unless a deployed model is not yet serving.

Routes (Contract 4), all behind IAM authorisation (SigV4-signed requests): ``POST /predict``,
``GET /status``, ``POST /batch``, ``GET /batch/{batch_id}``, and ``POST /models/{model}/serve`` (serve a
model the gate deployed before: a rollback, recorded with the caller's identity and reason). Errors are
JSON ``{"Code", "Message"}``.

Logging and metrics are Powertools', registered as middleware; Powertools' Tracer (X-Ray subsegments
for every AWS call) only with ``DOGBREEDS_TRACE_AWS_CALLS=true``, since its X-Ray SDK costs each cold
start about 0.3 s (Lambda's active tracing records every invocation either way). Only boto3 (in the Lambda
runtime), aws-lambda-powertools and the standard library are imported: a test checks it.
"""

from __future__ import annotations

import json
import os
import threading
import warnings
from typing import Optional

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit, single_metric
from chalice import Chalice, ConvertToMiddleware, IAMAuthorizer, Rate, Response

from chalicelib.config import ConfigError, PipelineConfig
from chalicelib.control import ControlPlane
from chalicelib.events import SAGEMAKER_DETAIL_TYPES, EventError
from chalicelib.predict import IMAGE_TYPES, ApiError

SERVICE = "dogbreeds"
NAMESPACE = "DogBreeds"
MAX_BATCH_REQUEST_BYTES = 4096
MAX_SERVE_REQUEST_BYTES = 4096
MAX_REASON_CHARACTERS = 500
LOCAL_USER = "local user"      # who chose, when no IAM identity came with the request (the local stack)
RECONCILE_MINUTES = 5

app = Chalice(app_name=SERVICE, configure_logs=False)   # Powertools' logger owns the log format
for media_type in IMAGE_TYPES:
    if media_type not in app.api.binary_types:
        app.api.binary_types.append(media_type)       # API Gateway passes these bodies through as bytes

# Invocations that only route events publish no metric; Powertools would warn on each of them.
warnings.filterwarnings("ignore", message="No application metrics to publish")
logger = Logger(service=SERVICE)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)
AUTHORIZER = IAMAuthorizer()

app.register_middleware(ConvertToMiddleware(
    logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST)), "http")
app.register_middleware(ConvertToMiddleware(
    logger.inject_lambda_context(correlation_id_path=correlation_paths.EVENT_BRIDGE)), "cloudwatch")
app.register_middleware(ConvertToMiddleware(
    logger.inject_lambda_context(correlation_id_path=correlation_paths.EVENT_BRIDGE)), "scheduled")
if os.environ.get("DOGBREEDS_TRACE_AWS_CALLS", "").strip().lower() in ("1", "true", "yes", "on"):
    # X-Ray subsegments for every boto3 call. Opt-in: the X-Ray SDK it loads is 0.3 s of every cold
    # start; without it, Lambda's active tracing still records each invocation.
    from aws_lambda_powertools import Tracer
    app.register_middleware(ConvertToMiddleware(Tracer(service=SERVICE).capture_lambda_handler), "all")
# Powertools' Metrics keeps one metric set per process: Lambda runs one invocation at a time in it,
# but the local stack's API serves many at once, so adding to it and flushing it take turns.
_metrics_lock = threading.Lock()


def _publish_metrics(event, get_response):
    """Powertools' ``log_metrics``: the invocation, then its metrics as one EMF line (even if it raised)."""
    try:
        return get_response(event)
    finally:
        with _metrics_lock:
            metrics.flush_metrics()
            metrics.clear_metrics()   # flush keeps them when POWERTOOLS_METRICS_DISABLED: they would pile up


app.register_middleware(_publish_metrics, "all")

# EventBridge patterns. S3 sends "Object Created" to EventBridge once the bucket's EventBridge
# notifications are on (deploy/README: `aws s3api put-bucket-notification-configuration`).
S3_READY_PATTERN = {
    "source": ["aws.s3"],
    "detail-type": ["Object Created"],
    "detail": {"object": {"key": [{"suffix": "/_READY"}]}},
}
SAGEMAKER_PATTERN = {"source": ["aws.sagemaker"], "detail-type": sorted(SAGEMAKER_DETAIL_TYPES)}

_plane: Optional[ControlPlane] = None


def use_control_plane(plane: Optional[ControlPlane]) -> None:
    """Serve with ``plane`` (the tests' and the local runtime's clients); None: build it from the
    environment on next use."""
    global _plane
    _plane = plane


def _count(name: str, value: float, dimensions: dict) -> None:
    if not dimensions:
        with _metrics_lock:
            metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
        return
    with single_metric(name=name, unit=MetricUnit.Count, value=value, namespace=NAMESPACE) as metric:
        metric.add_dimension(name="service", value=SERVICE)
        for key, dimension in dimensions.items():
            metric.add_dimension(name=key, value=str(dimension))


def control_plane() -> ControlPlane:
    """The control plane of this Lambda container, configured from ``DOGBREEDS_*`` (built once)."""
    global _plane
    if _plane is None:
        import boto3
        from botocore.config import Config
        config = PipelineConfig.from_env(os.environ)
        session = boto3.session.Session(region_name=config.region)
        # API Gateway gives up on a request after 29 s: one attempt that ends before that, so a slow
        # endpoint is our 504 with a message, not the gateway's bare timeout.
        runtime = session.client("sagemaker-runtime",
                                 config=Config(read_timeout=25, connect_timeout=3, retries={"max_attempts": 1}))
        _plane = ControlPlane(config, session.client("s3"), session.client("sagemaker"), runtime, metric=_count)
    return _plane


# --- routes ---------------------------------------------------------------------------------------

def _json(body, status: int = 200) -> Response:
    return Response(body=json.dumps(body), status_code=status, headers={"Content-Type": "application/json"})


def _refusal(error: ApiError) -> Response:
    logger.info("request refused", extra={"status": error.status, "code": error.code, "reason": error.message})
    return _json(error.body(), error.status)


def _answer(work) -> Response:
    """Run ``work(plane)``; ApiError and a missing configuration become JSON errors."""
    try:
        plane = control_plane()
    except ConfigError as exc:
        logger.error("not configured", extra={"problems": exc.problems})
        return _json({"Code": "NotConfigured", "Message": f"the control plane is not configured: {exc}"}, 503)
    try:
        return _json(*work(plane))
    except ApiError as error:
        return _refusal(error)


@app.route("/predict", methods=["POST"], content_types=["*/*"], authorizer=AUTHORIZER)
def predict():
    """Classify image bytes, or JSON ``{"image": b64}`` / ``{"images": [b64, ...]}`` with an optional
    ``"top_k"`` and ``"explain"``; ``?top_k=N`` and ``?explain=true`` (a Grad-CAM heatmap per image) too.
    Lambda checks the media type, the size and the query's top_k and explain (``chalicelib.predict``); the
    endpoint's handlers judge the image and the JSON."""
    request = app.current_request
    query = request.query_params or {}

    def work(plane):
        try:
            result = plane.predict(request.raw_body, request.headers.get("content-type"), query.get("top_k"),
                                   query.get("explain"))
        except ApiError as error:
            _count("PredictionErrors", 1, {"status": error.status})
            raise
        _count("Predictions", 1, {})
        return (result,)

    return _answer(work)


@app.route("/status", methods=["GET"], authorizer=AUTHORIZER)
def status():
    """The current dataset's run (tuning, training, gate), the deployed model, the endpoint, the last batch."""
    return _answer(lambda plane: (plane.status(),))


@app.route("/batch", methods=["POST"], content_types=["application/json"], authorizer=AUTHORIZER)
def start_batch():
    """``{"batch_id": "<id>"}``: classify everything under ``batch/<id>/input/``."""
    raw = app.current_request.raw_body or b""

    def work(plane):
        if len(raw) > MAX_BATCH_REQUEST_BYTES:
            raise ApiError(413, "PayloadTooLarge", f"the body is {len(raw)} bytes; a batch request is a small "
                                                   f"JSON object of at most {MAX_BATCH_REQUEST_BYTES} bytes")
        try:
            document = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise ApiError(400, "BadRequest", 'the body must be JSON: {"batch_id": "<id>"}') from None
        if not isinstance(document, dict) or "batch_id" not in document:
            raise ApiError(400, "BadRequest", 'the body must be a JSON object with "batch_id"')
        return plane.request_batch(document["batch_id"]), 202

    return _answer(work)


@app.route("/batch/{batch_id}", methods=["GET"], authorizer=AUTHORIZER)
def batch_status(batch_id):
    return _answer(lambda plane: (plane.batch_status(batch_id),))


def caller_identity(context: Optional[dict]) -> str:
    """Who sent the request: on AWS, the IAM identity API Gateway's IAM authorisation verified
    (``requestContext.identity.userArn``, else its ``caller``); locally, where nothing is signed,
    LOCAL_USER."""
    identity = (context or {}).get("identity") or {}
    return identity.get("userArn") or identity.get("caller") or LOCAL_USER


def _json_object(raw: bytes, limit: int, shape: str) -> dict:
    """The body as a JSON object (an empty body is ``{}``); ApiError 413 or 400 saying ``shape``."""
    if len(raw) > limit:
        raise ApiError(413, "PayloadTooLarge", f"the body is {len(raw)} bytes; this request is a small JSON "
                                               f"object of at most {limit} bytes: {shape}")
    if not raw.strip():
        return {}
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ApiError(400, "BadRequest", f"the body must be JSON: {shape}") from None
    if not isinstance(document, dict):
        raise ApiError(400, "BadRequest", f"the body must be a JSON object: {shape}")
    return document


@app.route("/models/{model}/serve", methods=["POST"], content_types=["application/json"], authorizer=AUTHORIZER)
def serve_model(model):
    """Serve again a model the quality gate deployed before (GET /status's ``history`` lists them), with an
    optional ``{"reason": "..."}``: 202 with the status, 404 for a model never deployed, 409 while the
    endpoint is changing. The gate's record says who chose it (the caller's IAM identity) and why."""
    request = app.current_request
    raw = request.raw_body or b""

    def work(plane):
        shape = '{"reason": "<why this model>"} (optional)'
        reason = _json_object(raw, MAX_SERVE_REQUEST_BYTES, shape).get("reason")
        if reason is not None and not isinstance(reason, str):
            raise ApiError(400, "BadRequest", f"reason must be a string: {shape}")
        if reason is not None and len(reason) > MAX_REASON_CHARACTERS:
            raise ApiError(400, "BadRequest", f"reason is {len(reason)} characters; at most "
                                              f"{MAX_REASON_CHARACTERS}")
        return plane.serve_model(model, caller_identity(request.context), (reason or "").strip() or None), 202

    return _answer(work)


# --- events ---------------------------------------------------------------------------------------

def _handle(raw_event) -> dict:
    """Handle one event. A malformed one is logged and dropped (a retry cannot fix it); AWS errors
    propagate, so Lambda redelivers the event (handling is idempotent)."""
    try:
        performed = control_plane().handle_event(raw_event)
    except EventError as exc:
        logger.error("malformed event dropped", extra={"reason": str(exc)})
        _count("MalformedEvents", 1, {})
        return {"handled": False, "error": str(exc)}
    actions = [type(action).__name__ for action in performed]
    logger.info("event handled", extra={"actions": actions})
    return {"handled": True, "actions": actions}


@app.on_cw_event(S3_READY_PATTERN, name="on_bucket_event")
def on_bucket_event(event):
    return _handle(event.to_dict())


@app.on_cw_event(SAGEMAKER_PATTERN, name="on_sagemaker_event")
def on_sagemaker_event(event):
    return _handle(event.to_dict())


@app.schedule(Rate(RECONCILE_MINUTES, unit=Rate.MINUTES), name="reconcile")
def reconcile(event):
    return _handle(event.to_dict())
