"""What the local stack is doing, in lines a person reads: the ``dogbreeds`` command's progress feed.

``Watcher(data_dir, bucket).changes()`` looks at what the stack keeps on disk (the SageMaker job
records under ``<data_dir>/sagemaker/``, each training job's ``log.txt``, and the control plane's
state record in the bucket) and returns one line per thing that changed since the last
call: a job that started or ended, a training epoch, the gate's decision, the endpoint's status, a
batch's predictions. It only reads files, so any process can watch a stack another process runs
(``dogbreeds status --watch`` while ``dogbreeds up`` runs in another terminal).

A job record is described once, by ``describe``: its ``Job`` gives both the feed's line and the row
of ``dogbreeds status``'s table (``job_table``).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from chalicelib.config import BucketLayout
from chalicelib.state import TERMINAL

EPOCH_LINE = re.compile(r"^epoch=(\d+) (.*)$")
JOB_KINDS = ("tuning", "training", "endpoint", "transform")


def read_records(data_dir: Path, kind: str) -> List[dict]:
    """The local SageMaker's records of one kind (its own ``Records`` store: each file is replaced
    atomically), oldest first."""
    from dogbreeds.localaws.records import Records
    records = Records(Path(data_dir) / "sagemaker").all(kind)
    return sorted(records, key=lambda r: (r.get("CreationTime") or "", json.dumps(r.get("TrainingJobName"))))


def read_state(data_dir: Path, bucket: str) -> Optional[dict]:
    """The control plane's state record (``BucketLayout.state_key``) as a dict, or None before the first event."""
    path = Path(data_dir) / "s3" / bucket / BucketLayout().state_key
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def last_epoch(log: Path) -> Optional[tuple]:
    """(epoch, the rest of its metric line) of the last epoch line in a training job's log."""
    try:
        with open(log, "rb") as handle:
            handle.seek(0, 2)
            handle.seek(max(0, handle.tell() - 65536))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return None
    for line in reversed(text.splitlines()):
        match = EPOCH_LINE.match(line.strip())
        if match:
            return int(match.group(1)), match.group(2)
    return None


def _metrics(record: dict) -> Dict[str, float]:
    return {m["MetricName"]: m["Value"] for m in record.get("FinalMetricDataList") or []}


def first_line(text: Optional[str], limit: int = 300) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def format_hyperparameters(tuned: dict) -> str:
    """Tuned values as SageMaker passes them (JSON text), numbers to 3 significant digits."""
    def short(value) -> str:
        text = str(value).strip('"')
        try:
            number = float(text)
        except ValueError:
            return text
        return text if number.is_integer() else f"{number:.3g}"
    return " ".join(f"{k}={short(v)}" for k, v in sorted(tuned.items()))


# --- one job record, as people see it -------------------------------------------------------------

@dataclass(frozen=True)
class Job:
    """What people are shown of one job record: a line in the progress feed (``feed_line``, and
    ``epoch_line`` while a training job runs) and a row of ``dogbreeds status``'s table (``table_row``)."""
    role: str            # tuning, trial (a tuning job's training job), training, endpoint or transform
    name: str
    status: str
    detail: str = ""     # the feed's words after "<role> <name> <status>"
    result: str = ""     # the table's result column
    started: str = ""    # ISO time the record was created
    ended: str = ""      # ISO time the job ended; "" while it runs
    epoch: Optional[Tuple[int, str, str]] = None   # a running training job: (epoch, of how many, its metrics)

    def feed_line(self) -> str:
        return f"{self.role:<9} {self.name} {self.status}{self.detail}"

    def epoch_line(self) -> Optional[str]:
        if self.epoch is None:
            return None
        epoch, total, metrics = self.epoch
        return f"{'':<9} {self.name} epoch {epoch}/{total}: {metrics}"

    def took(self) -> str:
        """How long it ran (so far, while it runs): ``"42s"``; "" without a start time."""
        try:
            began = datetime.fromisoformat(self.started)
        except (TypeError, ValueError):
            return ""
        try:
            ended = datetime.fromisoformat(self.ended)
        except (TypeError, ValueError):
            ended = datetime.now(timezone.utc)
        return f"{(ended - began).total_seconds():.0f}s"

    def table_row(self) -> str:
        started = self.started[11:19]          # the time of day of an ISO timestamp
        return f"{started:<9} {self.role:<9} {self.name:<44} {self.status:<11} {self.took():>6}  {self.result}"


TABLE_HEADER = f"{'started':<9} {'kind':<9} {'job':<44} {'status':<11} {'took':>6}  result"


def describe(kind: str, record: dict, jobs_dir: Optional[Path]) -> Job:
    """The ``Job`` of one SageMaker record of ``kind`` (one of JOB_KINDS: the local SageMaker's, or a
    Describe* response); a running training job's progress is read from its log under ``jobs_dir``
    (None: the logs are not on this machine)."""
    return {"tuning": _tuning, "training": _training, "endpoint": _endpoint, "transform": _transform}[kind](
        record, None if jobs_dir is None else Path(jobs_dir))


def _tuning(record: dict, _jobs_dir: Optional[Path]) -> Job:
    status = record["HyperParameterTuningJobStatus"]
    config = record.get("HyperParameterTuningJobConfig", {})
    limit = config.get("ResourceLimits", {}).get("MaxNumberOfTrainingJobs", "?")
    counters = record.get("TrainingJobStatusCounters", {})
    ended = sum(counters.get(k, 0) for k in ("Completed", "Stopped", "NonRetryableError", "RetryableError"))
    detail = f": {ended}/{limit} trials ended ({config.get('Strategy', '?')})"
    best = record.get("BestTrainingJob")
    if status == "Completed" and best:
        metric = best["FinalHyperParameterTuningJobObjectiveMetric"]
        detail += (f"; best {best['TrainingJobName']} {metric['MetricName']}={metric['Value']:.4f} "
                   f"with {format_hyperparameters(best.get('TunedHyperParameters', {}))}")
    elif status == "Failed":
        detail += f"; {first_line(record.get('FailureReason'))}"
    return Job("tuning", record["HyperParameterTuningJobName"], status, detail,
               started=record.get("CreationTime") or "", ended=record.get("HyperParameterTuningEndTime") or "")


def _training(record: dict, jobs_dir: Optional[Path]) -> Job:
    name, status = record["TrainingJobName"], record["TrainingJobStatus"]
    metrics = _metrics(record)
    detail = ""
    if status == "InProgress" and record.get("_Tuned"):
        detail += f" with {format_hyperparameters(record['_Tuned'])}"
    if status in ("Completed", "Stopped") and metrics:
        shown = ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()) if "accuracy" in k)
        detail += f": {shown}" if shown else ""
    if status == "Stopped" and record.get("TuningJobArn") and record.get("SecondaryStatus") == "Stopped":
        detail += " (stopped early by the tuner)"
    if status == "Failed":
        detail += f": {first_line(record.get('FailureReason'))}"
    # the table shows the one accuracy that judges the job: the test set's, else the validation set's
    key = "test:accuracy" if "test:accuracy" in metrics else "validation:accuracy"
    result = f"{key}={metrics[key]:.4f}" if key in metrics else ""
    epoch = None
    if status == "InProgress":
        last = last_epoch(jobs_dir / name / "log.txt") if jobs_dir else None
        if last:
            epoch = (last[0], record.get("HyperParameters", {}).get("epochs", "?"), last[1])
            result = f"epoch {epoch[0]}/{epoch[1]}"
        else:
            result = ""
    return Job("trial" if record.get("TuningJobArn") else "training", name, status, detail, result,
               started=record.get("CreationTime") or "", ended=record.get("TrainingEndTime") or "", epoch=epoch)


def _endpoint(record: dict, _jobs_dir: Optional[Path]) -> Job:
    status, detail = record["EndpointStatus"], ""
    if status == "InService" and record.get("_Url"):
        detail += f" at {record['_Url']} (config {record.get('EndpointConfigName')})"
    if status == "Failed":
        detail += f": {first_line(record.get('FailureReason'))}"
    return Job("endpoint", record["EndpointName"], status, detail, started=record.get("CreationTime") or "")


def _transform(record: dict, _jobs_dir: Optional[Path]) -> Job:
    status, detail, result = record["TransformJobStatus"], "", ""
    if "_Written" in record:
        written, skipped = record["_Written"], record.get("_Skipped", 0)
        result = f"{written} classified, {skipped} already done"
        if status in TERMINAL:
            detail += f": {written} images classified, {skipped} already done"
    if status == "Failed":
        detail += f"; {first_line(record.get('FailureReason'))}"
    return Job("transform", record["TransformJobName"], status, detail, result,
               started=record.get("CreationTime") or "", ended=record.get("TransformEndTime") or "")


def jobs(data_dir: Path, kind: str) -> List[Job]:
    """Every job of ``kind`` (one of JOB_KINDS) in a stack's data directory, oldest first."""
    return [describe(kind, record, Path(data_dir) / "jobs") for record in read_records(data_dir, kind)]


def job_table(found: List[Job]) -> List[str]:
    """``dogbreeds status``'s table: a header and a row per job, by start time; nothing without jobs."""
    if not found:
        return []
    rows = sorted(found, key=lambda j: (j.started, j.role, j.name, j.status, j.took(), j.result))
    return [TABLE_HEADER] + [job.table_row() for job in rows]


# --- the pipeline's own lines (its state's), shared by the feed and ``dogbreeds status`` -----------------

def dataset_line(current: dict) -> str:
    """The dataset published last (the state's ``current_dataset``)."""
    return f"dataset   {current['name']} published (marker {current['marker'][:12]})"


def refusal_line(run: dict) -> str:
    """A run whose dataset the control plane refused, and why."""
    return f"dataset   {run['dataset']} refused: " + "; ".join(run["layout_problems"][:3])


def gate_line(run: dict) -> str:
    return f"gate      {run['gate'].get('reason')}"


def batch_line(batch: dict, predictions) -> Optional[str]:
    """A batch that ended: where its ``predictions`` are, or why it failed; None while it runs."""
    if batch.get("status") == "Completed":
        return f"batch     {batch['batch_id']} predictions: {predictions}"
    if batch.get("status") in ("Failed", "Stopped"):
        return f"batch     {batch['batch_id']} {batch['status']}: {first_line(batch.get('failure_reason'))}"
    return None


# --- the feed ----------------------------------------------------------------------------------------

class Watcher:
    def __init__(self, data_dir: Path, bucket: str):
        self.data_dir = Path(data_dir)
        self.bucket = bucket
        self.seen: Dict[str, str] = {}

    def facts(self) -> Dict[str, str]:
        """Everything worth a line, keyed by what it is about; a changed value is news."""
        facts: Dict[str, str] = {}
        state = read_state(self.data_dir, self.bucket) or {}
        if state.get("current_dataset"):
            facts["dataset"] = dataset_line(state["current_dataset"])
        for run in state.get("runs", {}).values():
            key = f"run:{run['dataset']}/{run['marker']}"
            if run.get("layout_problems"):
                facts[key + ":layout"] = refusal_line(run)
            if run.get("gate"):
                facts[key + ":gate"] = gate_line(run)
        for kind in JOB_KINDS:
            for job in jobs(self.data_dir, kind):
                facts[f"{kind}:{job.name}"] = job.feed_line()
                if job.epoch_line():
                    facts[f"epoch:{job.name}"] = job.epoch_line()
        for batch in state.get("batches", {}).values():
            line = batch_line(batch, self.data_dir / "s3" / self.bucket / batch["output_key"])
            if line:
                facts[f"batch:{batch['batch_id']}"] = line
        return facts

    def changes(self) -> List[str]:
        """Lines for what is new since the last call (everything, the first time)."""
        facts = self.facts()
        news = [line for key, line in facts.items() if self.seen.get(key) != line]
        self.seen = facts
        return news


def stamp(line: str) -> str:
    return f"[{time.strftime('%H:%M:%S')}] {line}"


class Counter:
    """A count towards a total, shown on one redrawn line on a terminal, or a line per quarter elsewhere."""

    def __init__(self, label: str, total: int, say=None, stream=None):
        self.label, self.total, self.done = label, total, 0
        self.say = say or print
        self.stream = stream or sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last = 0.0
        self._quarter = 0

    def add(self, n: int = 1) -> None:
        self.done += n
        if self.tty:
            now = time.monotonic()
            if now - self._last >= 0.1 or self.done >= self.total:
                self._last = now
                self.stream.write(f"\r{self.label} {self.done}/{self.total}")
                self.stream.flush()
        elif self.total and self.done * 4 // self.total > self._quarter:
            self._quarter = self.done * 4 // self.total
            self.say(f"{self.label} {self.done}/{self.total}")

    def close(self) -> None:
        if self.tty:
            self.stream.write(f"\r{self.label} {self.done}/{self.total}\n")
            self.stream.flush()


def plain_logging(level=logging.WARNING) -> None:
    """The local runtime's own warnings as plain lines on stderr, for a terminal. Its loggers
    (``dogbreeds.*``) are children of the Powertools logger the Chalice app names ``dogbreeds``, whose
    JSON lines are for CloudWatch; they stop propagating there."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    for name in ("dogbreeds.stack", "dogbreeds.localaws", "dogbreeds.serving"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False


class LineWatcher:
    """A feed made of lines that are produced anew each time (``produce()``): ``changes()`` returns the
    lines not given by the call before (all of them, the first time). The cloud's feed: its records
    are not files to watch."""

    def __init__(self, produce):
        self.produce = produce
        self.seen: set = set()

    def changes(self) -> List[str]:
        lines = self.produce()
        news = [line for line in lines if line not in self.seen]
        self.seen = set(lines)
        return news
