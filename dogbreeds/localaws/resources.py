"""What every local SageMaker resource shares: its kind, its ARN, its record, the errors boto3 raises
about it, and the EventBridge event each status change emits.

A job's terminal status is final here as on SageMaker: once ``Completed``, ``Failed`` or ``Stopped``,
``set_status`` leaves it alone, so the thread of a runtime that was given up on (``recover``) cannot
replace it when its script finally ends.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Optional

from botocore.exceptions import ClientError
from chalicelib.state import TERMINAL

from .records import Records, now, with_datetimes

log = logging.getLogger(__name__)

ACCOUNT = "000000000000"


@dataclass(frozen=True)
class Kind:
    """How SageMaker names one kind of resource: in its ARN, its request and its State Change event."""

    arn_noun: str
    name_field: str
    status_field: Optional[str] = None     # None: the resource has no status (models, endpoint configs)
    detail_type: Optional[str] = None      # None: no state change events
    error_noun: Optional[str] = None       # set: a missing or duplicate one is a ValidationException naming it


KINDS = {
    "tuning": Kind("hyper-parameter-tuning-job", "HyperParameterTuningJobName", "HyperParameterTuningJobStatus",
                   "SageMaker HyperParameter Tuning Job State Change"),
    "training": Kind("training-job", "TrainingJobName", "TrainingJobStatus", "SageMaker Training Job State Change"),
    "transform": Kind("transform-job", "TransformJobName", "TransformJobStatus",
                      "SageMaker Transform Job State Change"),
    "endpoint": Kind("endpoint", "EndpointName", "EndpointStatus", "SageMaker Endpoint State Change", "endpoint"),
    "model": Kind("model", "ModelName", error_noun="model"),
    "endpoint-config": Kind("endpoint-config", "EndpointConfigName", error_noun="endpoint configuration"),
}
JOB_KINDS = ("training", "tuning", "transform")


def client_error(code: str, message: str, operation: str, status: int = 400) -> ClientError:
    """The ClientError boto3 raises for an error response."""
    return ClientError({"Error": {"Code": code, "Message": message},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, operation)


class Resources:
    """The records of every resource, their ARNs, and the events their status changes emit."""

    def __init__(self, records: Records, emit: Callable[[dict], None], region: str):
        self.records = records
        self.emit_event = emit
        self.region = region

    def arn(self, kind: str, name: str) -> str:
        return f"arn:aws:sagemaker:{self.region}:{ACCOUNT}:{KINDS[kind].arn_noun}/{name.lower()}"

    def emit(self, kind: str, record: dict) -> None:
        """Send ``record`` as the detail of the kind's State Change event (private ``_`` fields left out)."""
        name_field, detail_type = KINDS[kind].name_field, KINDS[kind].detail_type
        detail = {k: v for k, v in record.items() if not k.startswith("_")}
        detail["LastModifiedTime"] = int(time.time() * 1000)
        event = {"version": "0", "id": str(uuid.uuid4()), "detail-type": detail_type, "source": "aws.sagemaker",
                 "account": ACCOUNT, "time": now().strftime("%Y-%m-%dT%H:%M:%SZ"), "region": self.region,
                 "resources": [self.arn(kind, record[name_field])], "detail": json.loads(json.dumps(detail, default=str))}
        try:
            self.emit_event(event)
        except Exception:   # delivery is the dispatcher's business; a job never fails because of it
            log.exception("could not emit %s event for %s", kind, record[name_field])

    def set_status(self, kind: str, name: str, status: str, emit: bool = True, **changes) -> dict:
        """Record (and report) a new status with ``changes``; returns the record. A job that is already
        in a terminal status keeps it and its record is returned unchanged."""
        status_field = KINDS[kind].status_field
        with self.records.lock:
            current = self.records.get(kind, name)
            if kind in JOB_KINDS and current and current.get(status_field) in TERMINAL:
                log.info("%s job %s is already %s; not changing it to %s", kind, name, current[status_field], status)
                return current
            record = self.records.update(kind, name, **{status_field: status}, **changes)
            if emit:    # under the lock: events leave in the order the statuses were recorded
                self.emit(kind, record)
        return record

    def require_new(self, kind: str, name: str, operation: str) -> None:
        """Raise SageMaker's error for a Create* whose name is taken: ValidationException for models,
        endpoint configs and endpoints (whatever the endpoint's status), ResourceInUse for jobs."""
        if self.records.get(kind, name) is not None:
            if KINDS[kind].error_noun:
                raise client_error("ValidationException", f"Cannot create already existing {KINDS[kind].error_noun} "
                                                          f"\"{self.arn(kind, name)}\".", operation)
            raise client_error("ResourceInUse", f"{KINDS[kind].arn_noun} {name} already exists", operation)

    def describe(self, kind: str, name: str, operation: str) -> dict:
        """The Describe* response for a resource (its record without private fields, with datetimes);
        raises SageMaker's error when there is no such resource."""
        record = self.records.get(kind, name)
        if record is None:
            noun = KINDS[kind].error_noun
            if noun:
                raise client_error("ValidationException", f"Could not find {noun} \"{self.arn(kind, name)}\".",
                                   operation)
            raise client_error("ResourceNotFound", f"Requested resource not found: {KINDS[kind].arn_noun} {name}",
                               operation)
        return with_datetimes({k: v for k, v in record.items() if not k.startswith("_")})
