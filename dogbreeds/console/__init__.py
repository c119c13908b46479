"""The web console: one page (``static/``: HTML, CSS and plain JavaScript, no build step, nothing from a
CDN) to try a photo, watch the pipeline and serve an earlier model again.

The page calls the API it is served beside (``POST /predict``, ``POST /models/{model}/serve``) and polls
``GET /console/pipeline``: GET /status's document plus what only the jobs' records and logs hold (the
tuning trials with their hyperparameters, objective and per-epoch validation curves, the instrumented
run's curves and rule table, the endpoint's record, every batch). ``pipeline_view`` builds it from
those parts; ``Console`` answers the page's requests for a ``Source`` of them:

- ``LocalSource``: a local stack's data directory (records, logs, the filesystem bucket), served by the
  stack's own API server (``dogbreeds.stack``) on 127.0.0.1;
- the AWS source (``dogbreeds console --aws``, ``dogbreeds.console_aws``): SageMaker's Describe*
  records through the deployed API's status; its curves are in CloudWatch, not here.

Files the page links to (a batch's ``predictions.csv``, the training report) are served from
``/console/files/<key>`` for keys under ``batch/<id>/output/`` and the report only: the rest of the
bucket is not the page's to show.
"""

from __future__ import annotations

import json
import mimetypes
import re
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from dogbreeds import progress

STATIC = Path(__file__).resolve().parent / "static"
PAGES = {"/": "index.html", "/console": "index.html", "/console/": "index.html"}
STATIC_PREFIX = "/console/static/"
PIPELINE = "/console/pipeline"
FILES_PREFIX = "/console/files/"
REPORT = "/console/report"
METRIC = re.compile(r"([A-Za-z_]+)=(-?[0-9.]+(?:[eE][-+]?[0-9]+)?|nan|inf)")

Reply = Tuple[int, str, bytes]          # (status, content type, body)


def epoch_curve(log_text: str) -> List[dict]:
    """Every ``epoch=N key=value ...`` line of a training log, as ``{"epoch": N, key: value}`` (floats)."""
    curve = []
    for line in log_text.splitlines():
        match = progress.EPOCH_LINE.match(line.strip())
        if not match:
            continue
        point = {"epoch": int(match.group(1))}
        point.update({key: float(value) for key, value in METRIC.findall(match.group(2))})
        curve.append(point)
    return curve


def _json_value(text):
    """A hyperparameter as SageMaker passes it (JSON text), decoded when it is JSON."""
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text


def trial_row(record: dict, curve: List[dict]) -> dict:
    """One tuning trial as the page's table shows it."""
    tuned = record.get("_Tuned") or {}
    objective = record.get("_Objective") or {}
    status, secondary = record.get("TrainingJobStatus"), record.get("SecondaryStatus")
    return {"name": record["TrainingJobName"], "status": status,
            "hyperparameters": {k: _json_value(v) for k, v in sorted(tuned.items())},
            "objective": objective.get("Value"), "objective_metric": objective.get("MetricName"),
            "stopped_early": status == "Stopped" and secondary == "Stopped",
            "failure": progress.first_line(record.get("FailureReason")) or None,
            "started": record.get("CreationTime"), "curve": curve}


def pipeline_view(status: dict, records: Dict[str, List[dict]], curve_of: Callable[[str], List[dict]],
                  rules_of: Callable[[str], Optional[List[dict]]], batches: List[dict],
                  report_url: Optional[str]) -> dict:
    """What the page shows of the pipeline: ``status`` (GET /status's document), the current run's tuning
    job and trials and its instrumented training job (from SageMaker's records of each kind, oldest first),
    their per-epoch curves (``curve_of(job)``) and the rules (``rules_of(job)``, None until it ends), the
    endpoint's record, ``batches`` (with a ``predictions_url`` once ended) and the report's URL."""
    run = status.get("run") or status.get("latest_run") or {}
    tuning_name, training_name = run.get("tuning_job"), run.get("training_job")
    tuning = next((r for r in records.get("tuning", []) if r.get("HyperParameterTuningJobName") == tuning_name), None)
    trials = [trial_row(r, curve_of(r["TrainingJobName"])) for r in records.get("training", [])
              if tuning_name and (r.get("TuningJobArn") or "").endswith(f"/{tuning_name}")]
    final = next((r for r in records.get("training", []) if r.get("TrainingJobName") == training_name), None)
    training = None
    if final is not None:
        training = {"name": training_name, "status": final.get("TrainingJobStatus"),
                    "hyperparameters": {k: _json_value(v) for k, v in sorted(final.get("HyperParameters", {}).items())
                                        if not k.startswith("sagemaker_")},
                    "metrics": {m["MetricName"]: m["Value"] for m in final.get("FinalMetricDataList") or []},
                    "curve": curve_of(training_name), "rules": rules_of(training_name),
                    "failure": progress.first_line(final.get("FailureReason")) or None}
    tuning_view = None
    if tuning is not None:
        config = tuning.get("HyperParameterTuningJobConfig", {})
        tuning_view = {"name": tuning_name, "status": tuning.get("HyperParameterTuningJobStatus"),
                       "strategy": config.get("Strategy"),
                       "objective": config.get("HyperParameterTuningJobObjective", {}),
                       "max_trials": config.get("ResourceLimits", {}).get("MaxNumberOfTrainingJobs"),
                       "best": (tuning.get("BestTrainingJob") or {}).get("TrainingJobName")}
    endpoint_name = (status.get("endpoint") or {}).get("name")
    endpoint = next((r for r in reversed(records.get("endpoint", [])) if r.get("EndpointName") == endpoint_name), None)
    return {"status": status, "tuning": tuning_view, "trials": trials, "training": training,
            "endpoint_record": None if endpoint is None else {
                "status": endpoint.get("EndpointStatus"), "config": endpoint.get("EndpointConfigName"),
                "failure": progress.first_line(endpoint.get("FailureReason")) or None},
            "batches": batches, "report_url": report_url if training and training["status"] == "Completed" else None}


class Source:
    """Where the page's pipeline view and linked files come from."""

    def pipeline(self) -> dict:
        raise NotImplementedError

    def file(self, key: str) -> Optional[Tuple[bytes, str]]:
        """(bytes, content type) of a bucket file the page links to; None when there is none."""
        return None

    def report(self) -> Optional[bytes]:
        return None


class LocalSource(Source):
    """A local stack's data directory: its SageMaker records, job logs and filesystem bucket; ``status``
    gives GET /status's document (the control plane's own ``status()``)."""

    def __init__(self, data_dir: Path, bucket: str, status: Callable[[], dict]):
        self.data_dir, self.bucket, self.status = Path(data_dir), bucket, status

    def _job_dir(self, name: str) -> Path:
        return self.data_dir / "jobs" / name

    def curve(self, name: str) -> List[dict]:
        try:
            return epoch_curve((self._job_dir(name) / "log.txt").read_text(errors="replace"))
        except OSError:
            return []

    def rules(self, name: str) -> Optional[List[dict]]:
        try:
            diagnostics = json.loads((self._job_dir(name) / "output" / "data" / "diagnostics.json").read_text())
        except (OSError, ValueError):
            return None
        return [{k: rule.get(k) for k in ("name", "kind", "status", "message", "advice")}
                for rule in diagnostics.get("rules", [])]

    def pipeline(self) -> dict:
        status = self.status()
        records = {kind: progress.read_records(self.data_dir, kind) for kind in ("tuning", "training", "endpoint")}
        state = progress.read_state(self.data_dir, self.bucket) or {}
        batches = []
        for batch in reversed(list(state.get("batches", {}).values())):      # newest first
            ended = batch.get("status") in ("Completed", "Failed", "Stopped")
            batches.append({"batch_id": batch["batch_id"], "status": batch["status"],
                            "failure_reason": batch.get("failure_reason"),
                            "predictions_url": FILES_PREFIX + batch["output_key"] if ended else None})
        return pipeline_view(status, records, self.curve, self.rules, batches, REPORT)

    def file(self, key: str) -> Optional[Tuple[bytes, str]]:
        if not linkable(key):
            return None
        path = self.data_dir / "s3" / self.bucket / key
        try:
            return path.read_bytes(), "text/csv; charset=utf-8"
        except OSError:
            return None

    def report(self) -> Optional[bytes]:
        run = (self.status() or {}).get("run") or {}
        name = run.get("training_job")
        if not name:
            return None
        try:
            return (self._job_dir(name) / "output" / "data" / "report.html").read_bytes()
        except OSError:
            return None


BATCH_OUTPUT = re.compile(r"^batch/[A-Za-z0-9._-]+/output/predictions\.csv$")


def linkable(key: str) -> bool:
    """A bucket key the page may serve: a batch's ``predictions.csv``, nothing else."""
    return bool(BATCH_OUTPUT.match(key)) and ".." not in key.split("/")


def _json(document, status: int = 200) -> Reply:
    return status, "application/json", json.dumps(document, default=str).encode("utf-8")


def _not_found(what: str) -> Reply:
    return _json({"Code": "NotFound", "Message": what}, 404)


class Console:
    """The page's own GET requests (everything else is the API's): ``answer(path)`` is a Reply, or None for
    a path that is not the console's."""

    def __init__(self, source: Source):
        self.source = source

    @staticmethod
    def owns(path: str) -> bool:
        path = path.split("?", 1)[0]
        return path in PAGES or path.startswith("/console")

    def answer(self, path: str) -> Optional[Reply]:
        path = path.split("?", 1)[0]
        if path in PAGES:
            return 200, "text/html; charset=utf-8", (STATIC / PAGES[path]).read_bytes()
        if path.startswith(STATIC_PREFIX):
            name = path[len(STATIC_PREFIX):]
            target = (STATIC / name).resolve()
            if "/" in name or not target.is_file() or target.parent != STATIC:
                return _not_found(f"no console file {name!r}")
            kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
            return 200, kind + ("; charset=utf-8" if kind.startswith("text/") or kind.endswith("javascript") else ""), \
                target.read_bytes()
        if path == PIPELINE:
            return _json(self.source.pipeline())
        if path == REPORT:
            report = self.source.report()
            if report is None:
                return _not_found("no training report yet: the instrumented run writes it when it ends")
            return 200, "text/html; charset=utf-8", report
        if path.startswith(FILES_PREFIX):
            found = self.source.file(path[len(FILES_PREFIX):])
            if found is None:
                return _not_found(f"no such file for the console: {path[len(FILES_PREFIX):]!r}")
            return 200, found[1], found[0]
        if path.startswith("/console"):
            return _not_found(f"nothing at {path}")
        return None
