"""What arrives at the control plane, parsed into a few small values.

Two sources, three shapes (field names checked against AWS's documentation, November 2026):

- S3 event notifications: ``Records[].s3.bucket.name``, ``Records[].s3.object.key`` (URL-encoded,
  a space arrives as ``+``), ``.eTag`` and ``.sequencer``.
- S3 -> EventBridge, ``detail-type: "Object Created"``: ``detail.bucket.name``,
  ``detail.object.key``, ``.etag`` and ``.sequencer``. These keys are taken as they come (not
  URL-decoded): the S3 documentation states the encoding for notifications only.
- SageMaker -> EventBridge state changes, one ``detail-type`` per kind of resource; ``detail``
  mirrors the Describe* response: ``TrainingJobName``/``TrainingJobStatus``/``FailureReason``,
  ``SecondaryStatus`` (``MaxRuntimeExceeded`` for a job stopped by its time limit, whose
  ``FailureReason`` is empty) and, for a tuning trial, ``TuningJobArn``; ``HyperParameterTuningJobName``/``...Status``;
  ``TransformJobName``/``TransformJobStatus``/``FailureReason``; ``EndpointName``/``EndpointStatus``
  (which the documentation's example spells ``IN_SERVICE``).

An object-created event becomes ``DatasetPublished`` (``datasets/<name>/_READY``),
``BatchRequested`` (``batch/<id>/_READY``) or ``Ignored`` (every other key: image uploads start
nothing). A state change becomes ``JobStateChanged`` with the status in SageMaker's API spelling
(``InService``, ``Completed``, ``Failed``, ``Stopped``...). Anything malformed raises
``EventError`` naming what is missing; never a KeyError or TypeError.

Every parsed value has an ``identity``: the same upload or the same state change delivered twice
has the same identity (the envelope's ``id`` differs between deliveries, so it is not used).

Standard library only: this module runs on Lambda.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from dataclasses import dataclass
from typing import List, Optional, Union
from urllib.parse import unquote_plus

from batch.keys import BATCHES_PREFIX

READY = "_READY"
DATASETS_PREFIX = "datasets/"

# detail-type -> (kind, name field, status field)
SAGEMAKER_DETAIL_TYPES = {
    "SageMaker HyperParameter Tuning Job State Change":
        ("tuning", "HyperParameterTuningJobName", "HyperParameterTuningJobStatus"),
    "SageMaker Training Job State Change": ("training", "TrainingJobName", "TrainingJobStatus"),
    "SageMaker Transform Job State Change": ("transform", "TransformJobName", "TransformJobStatus"),
    "SageMaker Endpoint State Change": ("endpoint", "EndpointName", "EndpointStatus"),
}
S3_OBJECT_CREATED = "Object Created"
SCHEDULED = "Scheduled Event"       # EventBridge's rate rule (the reconciliation tick), source aws.events
_UPPER_SNAKE = re.compile(r"[A-Z0-9]+(_[A-Z0-9]+)*")


class EventError(ValueError):
    """The event is not one this control plane understands; the message says what is wrong."""


@dataclass(frozen=True)
class DatasetPublished:
    """``datasets/<name>/_READY`` was written: publish dataset ``name``, run identity ``marker``."""
    bucket: str
    name: str
    marker: str

    @property
    def identity(self) -> str:
        return f"dataset:{self.bucket}:{self.name}:{self.marker}"


@dataclass(frozen=True)
class BatchRequested:
    """``batch/<id>/_READY`` was written: classify ``batch/<id>/input/``."""
    bucket: str
    batch_id: str
    marker: str

    @property
    def identity(self) -> str:
        return f"batch:{self.bucket}:{self.batch_id}:{self.marker}"


@dataclass(frozen=True)
class Ignored:
    """An event that starts nothing (an image upload, a key outside our prefixes); ``reason`` says why."""
    reason: str

    @property
    def identity(self) -> str:
        return f"ignored:{self.reason}"


@dataclass(frozen=True)
class JobStateChanged:
    """A SageMaker resource changed state. ``kind``: tuning, training, transform or endpoint."""
    kind: str
    name: str
    status: str
    failure_reason: Optional[str] = None
    launched_by_tuning_job: bool = False
    changed_at: Optional[float] = None     # detail.LastModifiedTime in epoch milliseconds, if given
    secondary_status: Optional[str] = None  # a training job's detail.SecondaryStatus: why it stopped

    @property
    def identity(self) -> str:
        """Jobs end once, so a job's identity is its status. An endpoint comes back to a status
        (InService -> Updating -> InService), so its identity carries the change's time as well."""
        if self.kind == "endpoint":
            return f"{self.kind}:{self.name}:{self.status}:{self.changed_at}"
        return f"{self.kind}:{self.name}:{self.status}"


@dataclass(frozen=True)
class ReconcileTick:
    """The scheduled tick: look again at what waits on SageMaker without an event to come (an endpoint
    being deleted sends none when it is gone). Ticks are not remembered: each one looks afresh."""
    time: str

    @property
    def identity(self) -> str:
        return f"tick:{self.time}"


ObjectEvent = Union[DatasetPublished, BatchRequested, Ignored]
Event = Union[DatasetPublished, BatchRequested, Ignored, JobStateChanged, ReconcileTick]


def normalise_status(status) -> str:
    """SageMaker's API spelling of a status: ``IN_SERVICE`` -> ``InService``, ``COMPLETED`` ->
    ``Completed``; a status already in CamelCase (``InService``) is returned as it is."""
    if not isinstance(status, str) or not status.strip():
        raise EventError(f"a job status must be a non-empty string, got {status!r}")
    status = status.strip()
    if _UPPER_SNAKE.fullmatch(status):
        return "".join(part.capitalize() for part in status.split("_"))
    return status


def _epoch_ms(value) -> Optional[float]:
    """``LastModifiedTime`` as epoch milliseconds: SageMaker's examples give it as a number or a string
    of digits (milliseconds); an ISO 8601 text is accepted as well. None when absent or unreadable."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value.strip():
        text = value.strip()
        try:
            return float(text)
        except ValueError:
            pass
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        return moment.timestamp() * 1000.0
    return None


def _get(mapping, path: str, where: str):
    """``mapping[a][b]...`` for ``path`` ``"a.b"``; an EventError naming the missing part otherwise."""
    value = mapping
    walked = []
    for part in path.split("."):
        if not isinstance(value, dict):
            shown = ".".join(walked) or "the event"
            raise EventError(f"{where}: {shown} should be an object, got {type(value).__name__}")
        walked.append(part)
        if part not in value or value[part] is None:
            raise EventError(f"{where}: missing {'.'.join(walked)}")
        value = value[part]
    return value


def _text(mapping, path: str, where: str) -> str:
    value = _get(mapping, path, where)
    if not isinstance(value, str) or not value:
        raise EventError(f"{where}: {path} should be a non-empty string, got {value!r}")
    return value


def _marker(obj: dict, etag_field: str, where: str) -> Optional[str]:
    for field_name in (etag_field, "sequencer"):
        value = obj.get(field_name)
        if isinstance(value, str) and value.strip().strip('"').strip():
            return value.strip().strip('"').strip()
    return None


def classify_key(bucket: str, key: str, marker: Optional[str],
                 datasets_prefix: str = DATASETS_PREFIX, batches_prefix: str = BATCHES_PREFIX) -> ObjectEvent:
    """What a new object at ``key`` means. Only ``<prefix><name>/_READY`` starts something; ``name``
    is one path segment. A ``_READY`` without a marker raises EventError (its run could not be named)."""
    for prefix, make in ((datasets_prefix, DatasetPublished), (batches_prefix, BatchRequested)):
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix):]
        parts = rest.split("/")
        if len(parts) == 2 and parts[1] == READY and parts[0].strip():
            if marker is None:
                raise EventError(f"{key}: the event carries neither an ETag nor a sequencer to identify "
                                 f"this publication")
            return make(bucket, parts[0], marker)
        if parts[-1] == READY:
            return Ignored(f"{key}: a {READY} marker must sit directly under {prefix}<name>/")
        return Ignored(f"{key}: not a {READY} marker")
    return Ignored(f"{key}: outside {datasets_prefix} and {batches_prefix}")


def parse_s3_event(event) -> List[ObjectEvent]:
    """Every record of an S3 notification, or the one object of an EventBridge "Object Created"."""
    if not isinstance(event, dict):
        raise EventError(f"an S3 event must be an object, got {type(event).__name__}")
    if "Records" in event:
        records = event["Records"]
        if not isinstance(records, list) or not records:
            raise EventError("S3 notification: Records should be a non-empty list")
        results = []
        for i, record in enumerate(records):
            where = f"S3 notification record {i}"
            if not isinstance(record, dict):
                raise EventError(f"{where}: should be an object, got {type(record).__name__}")
            name = record.get("eventName")
            if isinstance(name, str) and not name.startswith("ObjectCreated"):
                results.append(Ignored(f"{name}: not an object creation"))
                continue
            bucket = _text(record, "s3.bucket.name", where)
            key = unquote_plus(_text(record, "s3.object.key", where))
            results.append(classify_key(bucket, key, _marker(record["s3"]["object"], "eTag", where)))
        return results
    detail_type = event.get("detail-type")
    if detail_type == S3_OBJECT_CREATED:
        where = "EventBridge Object Created"
        bucket = _text(event, "detail.bucket.name", where)
        key = _text(event, "detail.object.key", where)
        return [classify_key(bucket, key, _marker(event["detail"]["object"], "etag", where))]
    if detail_type is None:
        raise EventError("not an S3 event: missing Records (S3 notification) and detail-type (EventBridge)")
    raise EventError(f"not an S3 object-created event: detail-type {detail_type!r}")


def parse_sagemaker_event(event) -> JobStateChanged:
    """An EventBridge SageMaker state change as a JobStateChanged."""
    if not isinstance(event, dict):
        raise EventError(f"a SageMaker event must be an object, got {type(event).__name__}")
    detail_type = event.get("detail-type")
    if detail_type is None:
        raise EventError("SageMaker event: missing detail-type")
    if not isinstance(detail_type, str) or detail_type not in SAGEMAKER_DETAIL_TYPES:
        raise EventError(f"unknown detail-type {detail_type!r}: expected one of "
                         f"{', '.join(sorted(SAGEMAKER_DETAIL_TYPES))}")
    kind, name_field, status_field = SAGEMAKER_DETAIL_TYPES[detail_type]
    where = detail_type
    name = _text(event, f"detail.{name_field}", where)
    status = normalise_status(_text(event, f"detail.{status_field}", where))
    detail = event["detail"]
    reason = detail.get("FailureReason")
    tuning_arn = detail.get("TuningJobArn") if kind == "training" else None
    secondary = detail.get("SecondaryStatus") if kind == "training" else None
    return JobStateChanged(kind=kind, name=name, status=status,
                           failure_reason=reason if isinstance(reason, str) and reason else None,
                           launched_by_tuning_job=isinstance(tuning_arn, str) and bool(tuning_arn),
                           changed_at=_epoch_ms(detail.get("LastModifiedTime")),
                           secondary_status=secondary.strip() if isinstance(secondary, str) and secondary.strip()
                           else None)


def parse_event(event) -> List[Event]:
    """Any source: S3 (both shapes), a SageMaker state change or the scheduled tick; always a list."""
    if isinstance(event, dict) and "detail-type" in event:
        detail_type = event["detail-type"]
        if isinstance(detail_type, str) and detail_type in SAGEMAKER_DETAIL_TYPES:
            return [parse_sagemaker_event(event)]
        if detail_type == SCHEDULED:
            if event.get("source") != "aws.events":
                raise EventError(f"a {SCHEDULED!r} must come from source 'aws.events', not {event.get('source')!r}")
            return [ReconcileTick(str(event.get("time") or ""))]
        if detail_type != S3_OBJECT_CREATED:
            raise EventError(f"unknown detail-type {detail_type!r}: expected {S3_OBJECT_CREATED!r}, "
                             f"{SCHEDULED!r} or one of {', '.join(sorted(SAGEMAKER_DETAIL_TYPES))}")
    return list(parse_s3_event(event))
