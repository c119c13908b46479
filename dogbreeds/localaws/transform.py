"""Batch transform on this machine: every object under the input prefix through the model's own
inference server, one ``<key>.out`` per object, resumable.

As on SageMaker with ``SplitType: None``, each object is one record and one request (``ContentType``
from the job, ``Accept`` from its output config), whatever the ``BatchStrategy`` (``MultiRecord``
packs the records split out of one object, and there is no split), and its answer is written to
``<output prefix>/<key relative to the input prefix>.out``. Objects whose ``.out`` already exists
are skipped, so a transform interrupted halfway and run again finishes without redoing them.
Up to ``MaxConcurrentTransforms`` requests are in flight (unset or 0: 1, SageMaker's default for a
container without execution parameters), over kept-alive connections, each given
``ModelClientConfig.InvocationsTimeoutInSeconds``; a server with dynamic batching needs about its
batch size in flight to be as fast as under load (bench/route_vs_endpoint.py). An object over
``MaxPayloadInMB`` or one the handlers refuse is a failure of that object (named in the job's
FailureReason), and the rest still run.

Refused as CreateTransformJob refuses them: an unknown ``BatchStrategy``, ``MaxPayloadInMB`` over 100
and ``MaxConcurrentTransforms`` x ``MaxPayloadInMB`` over 100. Refused because it is not emulated: a
``SplitType`` other than ``None``.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from chalicelib.sagemaker_requests import split_s3_uri

from .invocations import InvocationClient
from .job_threads import JobThreads
from .records import now
from .resources import Resources, client_error

log = logging.getLogger(__name__)

INVOCATION_TIMEOUT_SECONDS = 600      # SageMaker's default InvocationsTimeoutInSeconds
PAYLOAD_LIMIT_MB = 100
BATCH_STRATEGIES = ("SingleRecord", "MultiRecord")


def _objects(s3, bucket: str, prefix: str):
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            yield item["Key"], item["Size"]


def _exists(s3, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
        return True
    except Exception as exc:
        if getattr(exc, "response", {}).get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise


def transform_objects(s3, server_factory: Callable, record: dict, model_dir: Path, stopping: threading.Event):
    """Send the objects of one transform job through a server of ``model_dir``; returns (objects
    written, objects skipped as done, failures)."""
    source = record["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"]
    in_bucket, in_prefix = split_s3_uri(source)
    out_bucket, out_prefix = split_s3_uri(record["TransformOutput"]["S3OutputPath"])
    if out_prefix and not out_prefix.endswith("/"):
        out_prefix += "/"
    content_type = record["TransformInput"].get("ContentType", "application/x-image")
    accept = record["TransformOutput"].get("Accept", "application/json")
    limit = int(record.get("MaxPayloadInMB", 6)) * 1024 * 1024
    timeout = float(record.get("ModelClientConfig", {}).get("InvocationsTimeoutInSeconds",
                                                             INVOCATION_TIMEOUT_SECONDS))
    todo, skipped = [], 0
    for key, size in _objects(s3, in_bucket, in_prefix):
        out_key = out_prefix + key[len(in_prefix):].lstrip("/") + ".out"
        if _exists(s3, out_bucket, out_key):
            skipped += 1
        else:
            todo.append((key, size, out_key))
    if not todo:
        return 0, skipped, []
    failures, written = [], [0]
    lock = threading.Lock()
    server = server_factory(model_dir)
    server.start()
    client = InvocationClient()
    try:
        def one(item):
            key, size, out_key = item
            if stopping.is_set():
                return
            if size > limit:
                problem = f"{key}: {size:,} bytes is over MaxPayloadInMB ({limit // 2**20} MB)"
            else:
                body = s3.get_object(Bucket=in_bucket, Key=key)["Body"].read()
                status, answer = client.post(server.url, body, content_type, accept, timeout)
                if status == 200:
                    s3.put_object(Bucket=out_bucket, Key=out_key, Body=answer, ContentType=accept)
                    with lock:
                        written[0] += 1
                    return
                problem = f"{key}: {status} {answer.decode('utf-8', 'replace')[:200]}"
            with lock:
                failures.append(problem)

        workers = int(record.get("MaxConcurrentTransforms") or 1)
        with ThreadPoolExecutor(workers, thread_name_prefix="transform") as pool:
            list(pool.map(one, todo))
    finally:
        client.close()
        server.stop()
    return written[0], skipped, sorted(failures)


def transform_request_problem(request: dict):
    """What CreateTransformJob refuses in ``request`` (or the local runtime does not emulate), or None."""
    strategy = request.get("BatchStrategy")
    if strategy is not None and strategy not in BATCH_STRATEGIES:
        return f"BatchStrategy {strategy!r} is not one of {', '.join(BATCH_STRATEGIES)}"
    split = request.get("TransformInput", {}).get("SplitType", "None")
    if split != "None":
        return f"SplitType {split!r} is not emulated by the local runtime: each object is one record (None)"
    payload = request.get("MaxPayloadInMB", 6)
    concurrency = request.get("MaxConcurrentTransforms", 0)
    if not 0 <= payload <= PAYLOAD_LIMIT_MB:
        return f"MaxPayloadInMB must be 0..{PAYLOAD_LIMIT_MB}, got {payload}"
    if concurrency < 0:
        return f"MaxConcurrentTransforms must not be negative, got {concurrency}"
    if concurrency * payload > PAYLOAD_LIMIT_MB:
        return (f"MaxConcurrentTransforms x MaxPayloadInMB ({concurrency} x {payload}) must not exceed "
                f"{PAYLOAD_LIMIT_MB} MB")
    return None


class TransformJobs:
    def __init__(self, resources: Resources, threads: JobThreads, s3, model_dir: Callable[[str], Path],
                 server_factory: Callable):
        self.resources = resources
        self.records = resources.records
        self.threads = threads
        self.s3 = s3
        self.model_dir = model_dir          # model name -> its unpacked model.tar.gz
        self.server_factory = server_factory

    def create(self, request: dict) -> dict:
        """CreateTransformJob: the model must exist; the job runs in a thread."""
        name = request["TransformJobName"]
        problem = transform_request_problem(request)
        if problem:
            raise client_error("ValidationException", problem, "CreateTransformJob")
        self.resources.require_new("transform", name, "CreateTransformJob")
        self.resources.describe("model", request["ModelName"], "CreateTransformJob")
        record = {**request, "TransformJobArn": self.resources.arn("transform", name),
                  "TransformJobStatus": "InProgress", "CreationTime": now().isoformat(),
                  "LastModifiedTime": now().isoformat()}
        self.records.put("transform", name, record)
        self.resources.emit("transform", record)
        self.threads.start(self._run, name, name=f"transform-{name}")
        return {"TransformJobArn": record["TransformJobArn"]}

    def _run(self, name: str) -> None:
        record = self.records.get("transform", name)
        self.resources.set_status("transform", name, "InProgress", emit=False, TransformStartTime=now().isoformat())
        stopping = self.threads.stopping
        try:
            model_dir = self.model_dir(record["ModelName"])
            done, skipped, failures = transform_objects(self.s3, self.server_factory, record, model_dir, stopping)
        except Exception as exc:
            log.exception("transform job %s failed", name)
            self.resources.set_status("transform", name, "Failed", FailureReason=f"{type(exc).__name__}: {exc}",
                                      TransformEndTime=now().isoformat())
            return
        ended = now().isoformat()
        counts = {"_Written": done, "_Skipped": skipped, "TransformEndTime": ended}
        if stopping.is_set():
            self.resources.set_status("transform", name, "Stopped", **counts)
        elif failures:
            shown = "; ".join(failures[:3]) + (f"; and {len(failures) - 3} more" if len(failures) > 3 else "")
            self.resources.set_status("transform", name, "Failed", FailureReason=f"ClientError: {len(failures)} of "
                                      f"{done + skipped + len(failures)} objects failed: {shown}", **counts)
        else:
            self.resources.set_status("transform", name, "Completed", **counts)
