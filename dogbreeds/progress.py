"""What the local stack is doing, in lines a person reads: the ``dogbreeds`` command's progress feed.

``Watcher(data_dir, bucket).changes()`` looks at what the stack keeps on disk (the SageMaker job
records under ``<data_dir>/sagemaker/``, each training job's ``log.txt``, and the control plane's
``pipeline/state.json`` in the bucket) and returns one line per thing that changed since the last
call: a job that started or ended, a training epoch, the gate's decision, the endpoint's status, a
batch's predictions. It only reads files, so any process can watch a stack another process runs
(``dogbreeds status --watch`` while ``dogbreeds up`` runs in another terminal).
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

EPOCH_LINE = re.compile(r"^epoch=(\d+) (.*)$")
TERMINAL = ("Completed", "Failed", "Stopped")


def read_records(data_dir: Path, kind: str) -> List[dict]:
    """The local SageMaker's records of one kind (its own ``Records`` store: each file is replaced
    atomically), oldest first."""
    from dogbreeds.localaws.sagemaker import Records
    records = Records(Path(data_dir) / "sagemaker").all(kind)
    return sorted(records, key=lambda r: (r.get("CreationTime") or "", json.dumps(r.get("TrainingJobName"))))


def read_state(data_dir: Path, bucket: str) -> Optional[dict]:
    """The control plane's ``pipeline/state.json`` as a dict, or None before the first event."""
    path = Path(data_dir) / "s3" / bucket / "pipeline" / "state.json"
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


def _first_line(text: Optional[str], limit: int = 300) -> str:
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


class Watcher:
    def __init__(self, data_dir: Path, bucket: str):
        self.data_dir = Path(data_dir)
        self.bucket = bucket
        self.seen: Dict[str, str] = {}

    def facts(self) -> Dict[str, str]:
        """Everything worth a line, keyed by what it is about; a changed value is news."""
        facts: Dict[str, str] = {}
        state = read_state(self.data_dir, self.bucket) or {}
        current = state.get("current_dataset")
        if current:
            facts["dataset"] = f"dataset   {current['name']} published (marker {current['marker'][:12]})"
        for run in state.get("runs", {}).values():
            key = f"run:{run['dataset']}/{run['marker']}"
            if run.get("layout_problems"):
                facts[key + ":layout"] = (f"dataset   {run['dataset']} refused: "
                                          + "; ".join(run["layout_problems"][:3]))
            if run.get("gate"):
                gate = run["gate"]
                facts[key + ":gate"] = f"gate      {gate.get('reason')}"
        for record in read_records(self.data_dir, "tuning"):
            facts[f"tuning:{record['HyperParameterTuningJobName']}"] = self._tuning(record)
        for record in read_records(self.data_dir, "training"):
            name = record["TrainingJobName"]
            facts[f"training:{name}"] = self._training(record)
            if record.get("TrainingJobStatus") == "InProgress":
                epoch = last_epoch(self.data_dir / "jobs" / name / "log.txt")
                if epoch:
                    total = record.get("HyperParameters", {}).get("epochs", "?")
                    facts[f"epoch:{name}"] = f"          {name} epoch {epoch[0]}/{total}: {epoch[1]}"
        for record in read_records(self.data_dir, "endpoint"):
            facts[f"endpoint:{record['EndpointName']}"] = self._endpoint(record)
        for record in read_records(self.data_dir, "transform"):
            facts[f"transform:{record['TransformJobName']}"] = self._transform(record)
        for batch in state.get("batches", {}).values():
            if batch.get("status") == "Completed":
                path = self.data_dir / "s3" / self.bucket / batch["output_key"]
                facts[f"batch:{batch['batch_id']}"] = f"batch     {batch['batch_id']} predictions: {path}"
            elif batch.get("status") in ("Failed", "Stopped"):
                facts[f"batch:{batch['batch_id']}"] = (f"batch     {batch['batch_id']} {batch['status']}: "
                                                      f"{_first_line(batch.get('failure_reason'))}")
        return facts

    @staticmethod
    def _tuning(record: dict) -> str:
        status = record["HyperParameterTuningJobStatus"]
        config = record.get("HyperParameterTuningJobConfig", {})
        limit = config.get("ResourceLimits", {}).get("MaxNumberOfTrainingJobs", "?")
        counters = record.get("TrainingJobStatusCounters", {})
        ended = sum(counters.get(k, 0) for k in ("Completed", "Stopped", "NonRetryableError", "RetryableError"))
        line = (f"tuning    {record['HyperParameterTuningJobName']} {status}: {ended}/{limit} trials ended "
                f"({config.get('Strategy', '?')})")
        best = record.get("BestTrainingJob")
        if status == "Completed" and best:
            metric = best["FinalHyperParameterTuningJobObjectiveMetric"]
            line += (f"; best {best['TrainingJobName']} {metric['MetricName']}={metric['Value']:.4f} "
                     f"with {format_hyperparameters(best.get('TunedHyperParameters', {}))}")
        elif status == "Failed":
            line += f"; {_first_line(record.get('FailureReason'))}"
        return line

    @staticmethod
    def _training(record: dict) -> str:
        name, status = record["TrainingJobName"], record["TrainingJobStatus"]
        role = "trial    " if record.get("TuningJobArn") else "training "
        line = f"{role} {name} {status}"
        if status == "InProgress" and record.get("_Tuned"):
            line += f" with {format_hyperparameters(record['_Tuned'])}"
        metrics = _metrics(record)
        if status in ("Completed", "Stopped") and metrics:
            shown = ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()) if "accuracy" in k)
            line += f": {shown}" if shown else ""
        if status == "Stopped" and record.get("TuningJobArn") and record.get("SecondaryStatus") == "Stopped":
            line += " (stopped early by the tuner)"
        if status == "Failed":
            line += f": {_first_line(record.get('FailureReason'))}"
        return line

    @staticmethod
    def _endpoint(record: dict) -> str:
        line = f"endpoint  {record['EndpointName']} {record['EndpointStatus']}"
        if record["EndpointStatus"] == "InService" and record.get("_Url"):
            line += f" at {record['_Url']} (config {record.get('EndpointConfigName')})"
        if record["EndpointStatus"] == "Failed":
            line += f": {_first_line(record.get('FailureReason'))}"
        return line

    @staticmethod
    def _transform(record: dict) -> str:
        line = f"transform {record['TransformJobName']} {record['TransformJobStatus']}"
        if record["TransformJobStatus"] in TERMINAL and "_Written" in record:
            line += f": {record['_Written']} images classified, {record.get('_Skipped', 0)} already done"
        if record["TransformJobStatus"] == "Failed":
            line += f"; {_first_line(record.get('FailureReason'))}"
        return line

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
