"""``dogbreeds console --aws``: the console's page on 127.0.0.1, its API calls forwarded to the deployed API
signed with the user's AWS credentials (``dogbreeds.cloud.Cloud.api``, SigV4), so nothing unauthenticated is
exposed on the internet: the page's own server listens on the loopback interface only.

The pipeline view comes from the deployment: GET /status's document, SageMaker's Describe* records of the jobs
it names, and the tuning job's trials (ListTrainingJobsForHyperParameterTuningJob). Per-epoch curves are in
CloudWatch on AWS, not read here: the charts stay empty and the tables are filled.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional

from dogbreeds.client import AccessRefused, UserError
from dogbreeds.console import Console, Source, pipeline_view

FORWARDED = ("/predict", "/status", "/batch", "/models/")    # the API's routes the page may call
MAX_BODY = 8 * 1024 * 1024


class CloudSource(Source):
    """The pipeline view of a deployment on AWS (a ``dogbreeds.cloud.Cloud``)."""

    def __init__(self, cloud):
        self.cloud = cloud

    def _trials(self, tuning_job: Optional[str]) -> List[dict]:
        if not tuning_job:
            return []
        try:
            summaries = self.cloud._client("sagemaker").list_training_jobs_for_hyper_parameter_tuning_job(
                HyperParameterTuningJobName=tuning_job, MaxResults=100)["TrainingJobSummaries"]
        except Exception:                       # no permission, or not started: the table stays empty
            return []
        arn = f"arn:aws:sagemaker:::hyper-parameter-tuning-job/{tuning_job}"
        return [{"TrainingJobName": s["TrainingJobName"], "TrainingJobStatus": s.get("TrainingJobStatus"),
                 "TuningJobArn": arn, "_Tuned": s.get("TunedHyperParameters") or {},
                 "_Objective": s.get("FinalHyperParameterTuningJobObjectiveMetric"),
                 "FailureReason": s.get("FailureReason"), "CreationTime": str(s.get("CreationTime") or "")}
                for s in reversed(summaries)]

    def pipeline(self) -> dict:
        status = self.cloud.status_view()
        run = status.get("run") or status.get("latest_run") or {}
        records: Dict[str, List[dict]] = {kind: self.cloud.records(kind) for kind in ("tuning", "training", "endpoint")}
        records["training"] = self._trials(run.get("tuning_job")) + records["training"]
        batch = status.get("last_batch")
        batches = [] if not batch else [{"batch_id": batch["batch_id"], "status": batch["status"],
                                         "failure_reason": batch.get("failure_reason"),
                                         "predictions_url": None}]
        return pipeline_view(status, records, lambda _name: [], lambda _name: None, batches, None)


def make_server(cloud, port: int = 0) -> ThreadingHTTPServer:
    """The console's server for ``cloud`` on 127.0.0.1:``port`` (0: any free port); not started."""
    console = Console(CloudSource(cloud))
    lock = threading.Lock()          # one boto3 session, one request to the deployment at a time

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _reply(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, document) -> None:
            self._reply(status, "application/json", json.dumps(document, default=str).encode("utf-8"))

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self.rfile.read(length)
                return self._json(413, {"Code": "PayloadTooLarge", "Message": f"the body is {length} bytes; "
                                                                              f"at most {MAX_BODY}"})
            body = self.rfile.read(length) if length else None
            try:
                with lock:
                    status, answer = cloud.api(self.command, self.path, body, self.headers.get("Content-Type"))
            except AccessRefused as exc:
                return self._json(403, {"Code": "AccessRefused", "Message": str(exc)})
            except UserError as exc:
                return self._json(502, {"Code": "Unreachable", "Message": str(exc)})
            self._json(status, answer)

        def do_GET(self):
            if Console.owns(self.path):
                try:
                    with lock:
                        status, content_type, body = console.answer(self.path)
                except (AccessRefused, UserError) as exc:
                    return self._json(502, {"Code": "Unreachable", "Message": str(exc)})
                return self._reply(status, content_type, body)
            if self.path.startswith(FORWARDED):
                return self._forward()
            self._json(404, {"Code": "NotFound", "Message": f"nothing at {self.path}"})

        def do_POST(self):
            if self.path.startswith(FORWARDED):
                return self._forward()
            self._json(404, {"Code": "NotFound", "Message": f"nothing at {self.path}"})

    return ThreadingHTTPServer(("127.0.0.1", port), Handler)
