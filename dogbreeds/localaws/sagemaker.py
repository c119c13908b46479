"""A Docker-free SageMaker that really runs the jobs the control plane asks for, on this machine.

``LocalSageMaker`` takes the same request dicts as boto3's SageMaker client and answers with the
same response shapes and errors (``ResourceInUse``, ``ValidationException``), for the operations
the control plane uses:

- **Training jobs** run ``train.py`` as a subprocess under the script-mode contract: the source is
  unpacked from the ``sagemaker_submit_directory`` package, channels are the bucket's prefixes
  mounted by path (no copy), hyperparameters reach the script as SageMaker's training toolkit
  passes them (``--name value``, JSON-decoded, ``SM_HPS``), ``SM_*`` directories per job. The log is
  kept per job and parsed with the job's own ``MetricDefinitions``; ``FinalMetricDataList`` holds
  each metric's last value; ``model.tar.gz`` and ``output.tar.gz`` land in the output path. A failing
  script gives ``Failed`` with the script's failure file (or the log's tail) as ``FailureReason``.
- **Tuning jobs** map SageMaker strategies onto Optuna: Bayesian -> TPE, Random -> random,
  Grid -> grid, Hyperband -> TPE with Optuna's Hyperband pruner fed the per-epoch objective parsed
  from the running trial's log; ``TrainingJobEarlyStoppingType: Auto`` -> a median pruner (what
  SageMaker's Auto does). ``MaxParallelTrainingJobs`` is honoured within the cores available and
  each trial gets its share of them as threads. ``BestTrainingJob`` is reported as SageMaker does.
- **Models, endpoint configs, endpoints**: an endpoint is a local inference server
  (``dogbreeds.serving.ModelServer``) on 127.0.0.1 loading ``code/inference.py`` from the model
  archive; ``UpdateEndpoint`` swaps the model without dropping requests.
- **Transform jobs** send every object under the input prefix through the model's handlers and
  write ``<key>.out``; a rerun after an interruption skips objects whose output exists.

Every resource is a JSON record under ``<data_dir>/sagemaker/``; ``recover()`` after a restart marks
jobs whose process died ``Failed`` with a reason and restarts the endpoints that were serving.
State changes are reported through ``emit(event)`` as EventBridge-shaped events.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, List, Optional

from botocore.exceptions import ClientError

log = logging.getLogger("dogbreeds.localaws.sagemaker")

ACCOUNT = "000000000000"
TERMINAL = ("Completed", "Failed", "Stopped")
JOB_KINDS = ("training", "tuning", "transform")
_KINDS = {
    "tuning": ("hyper-parameter-tuning-job", "HyperParameterTuningJobName", "HyperParameterTuningJobStatus",
               "SageMaker HyperParameter Tuning Job State Change"),
    "training": ("training-job", "TrainingJobName", "TrainingJobStatus", "SageMaker Training Job State Change"),
    "transform": ("transform-job", "TransformJobName", "TransformJobStatus", "SageMaker Transform Job State Change"),
    "endpoint": ("endpoint", "EndpointName", "EndpointStatus", "SageMaker Endpoint State Change"),
    "model": ("model", "ModelName", None, None),
    "endpoint-config": ("endpoint-config", "EndpointConfigName", None, None),
}


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _error(code: str, message: str, operation: str, status: int = 400) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, operation)


def split_s3_uri(uri: str):
    match = re.fullmatch(r"s3://([^/]+)/?(.*)", uri or "")
    if not match:
        raise ValueError(f"not an s3:// URI: {uri!r}")
    return match.group(1), match.group(2)


def decode_value(text: str):
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text


def cmd_value(value) -> str:
    """A decoded hyperparameter as the training toolkit writes it on the command line."""
    return value if isinstance(value, str) else json.dumps(value)


class MetricParser:
    """The job's MetricDefinitions over its log lines: every value in order, per metric name."""

    def __init__(self, definitions: List[dict]):
        self.regexes = [(d["Name"], re.compile(d["Regex"])) for d in definitions or []]
        self.series: Dict[str, List[float]] = {}

    def feed(self, line: str) -> List[tuple]:
        found = []
        for name, regex in self.regexes:
            for match in regex.finditer(line):
                try:
                    value = float(match.group(1))
                except (IndexError, ValueError):
                    continue
                self.series.setdefault(name, []).append(value)
                found.append((name, value, len(self.series[name])))
        return found

    def final(self, when: datetime) -> List[dict]:
        return [{"MetricName": name, "Value": values[-1], "Timestamp": when}
                for name, values in self.series.items() if values]


def _safe_extract(archive: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            target = (dest / member.name).resolve()
            if not (target == root or root in target.parents) or member.issym() or member.islnk():
                raise ValueError(f"{archive.name}: entry {member.name!r} would escape {dest}")
        tar.extractall(dest, filter="data")


def _tar_directory(source: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(source.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=str(path.relative_to(source)))
    return buffer.getvalue()


class Records:
    """One JSON file per resource under ``<data_dir>/sagemaker/<kind>/``; writes are atomic."""

    def __init__(self, root: Path):
        self.root = root
        self.lock = threading.RLock()

    def path(self, kind: str, name: str) -> Path:
        return self.root / kind / f"{name}.json"

    def get(self, kind: str, name: str) -> Optional[dict]:
        path = self.path(kind, name)
        if not path.exists():
            return None
        return json.loads(path.read_text())

    def put(self, kind: str, name: str, record: dict) -> None:
        path = self.path(kind, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=".tmp-", delete=False) as handle:
            json.dump(record, handle, default=str, indent=1)
        os.replace(handle.name, path)

    def update(self, kind: str, name: str, **changes) -> dict:
        with self.lock:
            record = self.get(kind, name)
            record.update(changes)
            record["LastModifiedTime"] = _now().isoformat()
            self.put(kind, name, record)
            return record

    def all(self, kind: str) -> List[dict]:
        folder = self.root / kind
        return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.exists() else []


def _dates(record: dict) -> dict:
    """Records keep times as ISO text; responses carry datetimes, as boto3's do."""
    out = dict(record)
    for key, value in record.items():
        if key.endswith("Time") and isinstance(value, str):
            try:
                out[key] = datetime.fromisoformat(value)
            except ValueError:
                pass
    return out


class LocalSageMaker:
    def __init__(self, s3, data_dir: Path, emit: Callable[[dict], None], cores: Optional[int] = None,
                 python: str = sys.executable, region: str = "local", server_factory=None):
        self.s3 = s3
        self.data_dir = Path(data_dir)
        self.records = Records(self.data_dir / "sagemaker")
        self.emit_event = emit
        self.cores = cores or len(os.sched_getaffinity(0))
        self.python = python
        self.region = region
        self.server_factory = server_factory
        self._processes: Dict[str, subprocess.Popen] = {}
        self._servers: Dict[str, object] = {}
        self._threads: List[threading.Thread] = []
        self._stopping = threading.Event()
        self._lock = threading.RLock()

    # --- plumbing ---------------------------------------------------------------------------------

    def arn(self, kind: str, name: str) -> str:
        return f"arn:aws:sagemaker:{self.region}:{ACCOUNT}:{_KINDS[kind][0]}/{name.lower()}"

    def _emit(self, kind: str, record: dict) -> None:
        _, name_field, status_field, detail_type = _KINDS[kind]
        detail = {k: v for k, v in record.items() if not k.startswith("_")}
        detail["LastModifiedTime"] = int(time.time() * 1000)
        event = {"version": "0", "id": str(uuid.uuid4()), "detail-type": detail_type, "source": "aws.sagemaker",
                 "account": ACCOUNT, "time": _now().strftime("%Y-%m-%dT%H:%M:%SZ"), "region": self.region,
                 "resources": [self.arn(kind, record[name_field])], "detail": json.loads(json.dumps(detail, default=str))}
        try:
            self.emit_event(event)
        except Exception:   # delivery is the dispatcher's business; a job never fails because of it
            log.exception("could not emit %s event for %s", kind, record[name_field])

    def _set_status(self, kind: str, name: str, status: str, emit: bool = True, **changes) -> dict:
        """Record (and report) a new status. A job's terminal status is final, as on SageMaker: the
        thread of a runtime that was given up on (``recover``) cannot replace it when its script ends."""
        status_field = _KINDS[kind][2]
        with self.records.lock:
            current = self.records.get(kind, name)
            if kind in JOB_KINDS and current and current.get(status_field) in TERMINAL:
                log.info("%s job %s is already %s; not changing it to %s", kind, name, current[status_field], status)
                return current
            record = self.records.update(kind, name, **{status_field: status}, **changes)
        if emit:
            self._emit(kind, record)
        return record

    def _start_thread(self, target, *args, name: str) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def _require_new(self, kind: str, name: str, operation: str) -> None:
        if self.records.get(kind, name) is not None:
            if kind in ("model", "endpoint-config"):
                noun = "model" if kind == "model" else "endpoint configuration"
                raise _error("ValidationException", f"Cannot create already existing {noun} "
                                                    f"\"{self.arn(kind, name)}\".", operation)
            raise _error("ResourceInUse", f"{_KINDS[kind][0]} {name} already exists", operation)

    def _describe(self, kind: str, name: str, operation: str) -> dict:
        record = self.records.get(kind, name)
        if record is None:
            noun = {"endpoint": "endpoint", "model": "model", "endpoint-config": "endpoint configuration"}.get(kind)
            if noun:
                raise _error("ValidationException", f"Could not find {noun} \"{self.arn(kind, name)}\".", operation)
            raise _error("ResourceNotFound", f"Requested resource not found: {_KINDS[kind][0]} {name}", operation)
        return _dates({k: v for k, v in record.items() if not k.startswith("_")})

    def path_of_uri(self, uri: str) -> Path:
        bucket, key = split_s3_uri(uri)
        return self.s3.prefix_path(bucket, key)

    # --- training -----------------------------------------------------------------------------------

    def create_training_job(self, **request) -> dict:
        name = request["TrainingJobName"]
        self._require_new("training", name, "CreateTrainingJob")
        record = self._new_training_record(request)
        self.records.put("training", name, record)
        self._start_thread(self._run_training_job, name, None, self.cores, name=f"train-{name}")
        return {"TrainingJobArn": record["TrainingJobArn"]}

    def _new_training_record(self, request: dict, tuning_job: Optional[str] = None) -> dict:
        name = request["TrainingJobName"]
        record = {**request, "TrainingJobArn": self.arn("training", name), "TrainingJobStatus": "InProgress",
                  "SecondaryStatus": "Starting", "CreationTime": _now().isoformat(),
                  "LastModifiedTime": _now().isoformat()}
        if tuning_job:
            record["TuningJobArn"] = self.arn("tuning", tuning_job)
        return record

    def describe_training_job(self, TrainingJobName: str) -> dict:
        return self._describe("training", TrainingJobName, "DescribeTrainingJob")

    def stop_training_job(self, TrainingJobName: str) -> dict:
        self._describe("training", TrainingJobName, "StopTrainingJob")
        self._kill(TrainingJobName)
        return {}

    def _kill(self, name: str) -> None:
        process = self._processes.get(name)
        if process is not None and process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def job_dir(self, name: str) -> Path:
        return self.data_dir / "jobs" / name

    def _run_training_job(self, name: str, on_metric, threads: int) -> dict:
        """Run one training job to its end; returns its final record. ``on_metric(name, value, step)``
        may return True to stop the job (a pruned trial)."""
        record = self.records.get("training", name)
        stopped_by_pruner = False
        try:
            work = self.job_dir(name)
            if work.exists():
                shutil.rmtree(work)
            (work / "output" / "data").mkdir(parents=True)
            (work / "model").mkdir()
            hyperparameters = {k: decode_value(v) for k, v in record.get("HyperParameters", {}).items()}
            program = str(hyperparameters.get("sagemaker_program", "train.py"))
            source = hyperparameters.get("sagemaker_submit_directory")
            code = work / "code"
            if not source:
                raise RuntimeError("no sagemaker_submit_directory hyperparameter: nothing to run")
            archive = work / "sourcedir.tar.gz"
            shutil.copyfile(self.path_of_uri(source), archive)
            _safe_extract(archive, code)
            if not (code / program).is_file():
                raise RuntimeError(f"the source package has no {program}")
            env = self._training_env(record, hyperparameters, work, threads)
            user = {k: v for k, v in hyperparameters.items() if not k.startswith("sagemaker_")}
            argv = [self.python, str(code / program)]
            for key, value in user.items():
                argv += [f"--{key}", cmd_value(value)]
            checkpoint = record.get("CheckpointConfig")
            if checkpoint:     # SageMaker syncs /opt/ml/checkpoints with S3Uri; here the bucket path is used directly
                directory = self.path_of_uri(checkpoint["S3Uri"])
                directory.mkdir(parents=True, exist_ok=True)
                argv += ["--checkpoint-dir", str(directory)]
            self._set_status("training", name, "InProgress", SecondaryStatus="Training",
                             TrainingStartTime=_now().isoformat())
            parser = MetricParser(record.get("AlgorithmSpecification", {}).get("MetricDefinitions", []))
            max_runtime = record.get("StoppingCondition", {}).get("MaxRuntimeInSeconds")
            exit_code, timed_out, stopped_by_pruner = self._supervise(name, argv, env, code, work / "log.txt",
                                                                      parser, on_metric, max_runtime)
            ended = _now()
            changes = {"TrainingEndTime": ended.isoformat(), "FinalMetricDataList": parser.final(ended)}
            if exit_code == 0 and not stopped_by_pruner:
                output_path = record["OutputDataConfig"]["S3OutputPath"].rstrip("/")
                bucket, prefix = split_s3_uri(f"{output_path}/{name}/output/")
                self.s3.put_object(Bucket=bucket, Key=prefix + "model.tar.gz", Body=_tar_directory(work / "model"))
                self.s3.put_object(Bucket=bucket, Key=prefix + "output.tar.gz",
                                   Body=_tar_directory(work / "output" / "data"))
                changes["ModelArtifacts"] = {"S3ModelArtifacts": f"s3://{bucket}/{prefix}model.tar.gz"}
                return self._set_status("training", name, "Completed", SecondaryStatus="Completed", **changes)
            if stopped_by_pruner or self._stopping.is_set() or timed_out:
                why = ("MaxRuntimeExceeded" if timed_out else "Stopped")
                return self._set_status("training", name, "Stopped", SecondaryStatus=why, **changes)
            return self._set_status("training", name, "Failed", SecondaryStatus="Failed",
                                    FailureReason=self._failure_reason(work, exit_code), **changes)
        except Exception as exc:
            log.exception("training job %s could not run", name)
            return self._set_status("training", name, "Failed", SecondaryStatus="Failed",
                                    FailureReason=f"ClientError: {exc}", TrainingEndTime=_now().isoformat())

    def _training_env(self, record: dict, hyperparameters: dict, work: Path, threads: int) -> dict:
        channels = {}
        for channel in record.get("InputDataConfig", []):
            uri = channel["DataSource"]["S3DataSource"]["S3Uri"]
            channels[channel["ChannelName"]] = str(self.path_of_uri(uri))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "OMP_", "MKL_"))}
        env.update({
            "TRAINING_JOB_NAME": record["TrainingJobName"],
            "SM_MODEL_DIR": str(work / "model"),
            "SM_OUTPUT_DATA_DIR": str(work / "output" / "data"),
            "SM_OUTPUT_DIR": str(work / "output"),
            "SM_CHANNELS": json.dumps(sorted(channels)),
            "SM_HPS": json.dumps({k: v for k, v in hyperparameters.items() if not k.startswith("sagemaker_")}),
            "SM_NUM_GPUS": "0",
            "SM_NUM_CPUS": str(threads),
            "SM_CURRENT_HOST": "algo-1",
            "SM_HOSTS": json.dumps(["algo-1"]),
            "OMP_NUM_THREADS": str(threads),      # one trial's share of the cores: no oversubscription
            "MKL_NUM_THREADS": str(threads),
            "PYTHONUNBUFFERED": "1",
            "KINETO_LOG_LEVEL": "5",
        })
        for channel, path in channels.items():
            env[f"SM_CHANNEL_{channel.upper()}"] = path
        env["PYTHONPATH"] = os.pathsep.join([str(work / "code")] + [p for p in [env.get("PYTHONPATH")] if p])
        return env

    def _supervise(self, name, argv, env, cwd, log_path: Path, parser: MetricParser, on_metric, max_runtime):
        """Run the script, tee its output to ``log_path`` and the metric parser; (exit code, timed out,
        stopped by the pruner)."""
        pruned = timed_out = False
        with open(log_path, "w", buffering=1) as log_file:
            process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True, bufsize=1, start_new_session=True)
            self._processes[name] = process
            self.records.update("training", name, _pid=process.pid)
            timer = None
            if max_runtime:
                def expire():
                    nonlocal timed_out
                    timed_out = True
                    self._kill(name)
                timer = threading.Timer(max_runtime, expire)
                timer.daemon = True
                timer.start()
            try:
                for line in process.stdout:
                    log_file.write(line)
                    for metric, value, step in parser.feed(line):
                        if on_metric is not None and on_metric(metric, value, step) and not pruned:
                            pruned = True
                            self._kill(name)
                process.wait()
            finally:
                if timer is not None:
                    timer.cancel()
                self._processes.pop(name, None)
        return process.returncode, timed_out, pruned

    @staticmethod
    def _failure_reason(work: Path, exit_code: int) -> str:
        failure = work / "output" / "failure"
        if failure.exists() and failure.read_text().strip():
            return f"AlgorithmError: {failure.read_text().strip()[:1000]}"
        tail = (work / "log.txt").read_text(errors="replace").strip().splitlines()[-5:]
        return f"AlgorithmError: ExitCode {exit_code}: " + " | ".join(tail)[-1000:]

    # --- tuning -------------------------------------------------------------------------------------

    def create_hyper_parameter_tuning_job(self, **request) -> dict:
        name = request["HyperParameterTuningJobName"]
        self._require_new("tuning", name, "CreateHyperParameterTuningJob")
        record = {**request, "HyperParameterTuningJobArn": self.arn("tuning", name),
                  "HyperParameterTuningJobStatus": "InProgress", "CreationTime": _now().isoformat(),
                  "LastModifiedTime": _now().isoformat(),
                  "TrainingJobStatusCounters": {"Completed": 0, "InProgress": 0, "RetryableError": 0,
                                                "NonRetryableError": 0, "Stopped": 0},
                  "ObjectiveStatusCounters": {"Succeeded": 0, "Pending": 0, "Failed": 0}}
        self.records.put("tuning", name, record)
        self._emit("tuning", record)            # SageMaker reports the new job InProgress, as for the others
        self._start_thread(self._run_tuning_job, name, name=f"tune-{name}")
        return {"HyperParameterTuningJobArn": record["HyperParameterTuningJobArn"]}

    def describe_hyper_parameter_tuning_job(self, HyperParameterTuningJobName: str) -> dict:
        return self._describe("tuning", HyperParameterTuningJobName, "DescribeHyperParameterTuningJob")

    def list_training_jobs_for_hyper_parameter_tuning_job(self, HyperParameterTuningJobName: str, **_) -> dict:
        self._describe("tuning", HyperParameterTuningJobName, "ListTrainingJobsForHyperParameterTuningJob")
        arn = self.arn("tuning", HyperParameterTuningJobName)
        summaries = []
        for job in self.records.all("training"):
            if job.get("TuningJobArn") == arn:
                summaries.append(_dates({key: job.get(key) for key in (
                    "TrainingJobName", "TrainingJobArn", "TrainingJobStatus", "CreationTime", "TrainingEndTime",
                    "FailureReason") if job.get(key) is not None} | {
                    "TunedHyperParameters": job.get("_Tuned", {}),
                    **({"FinalHyperParameterTuningJobObjectiveMetric": job["_Objective"]} if job.get("_Objective") else {})}))
        return {"TrainingJobSummaries": summaries}

    def _run_tuning_job(self, name: str) -> None:
        try:
            self._tune(name)
        except Exception as exc:
            log.exception("tuning job %s failed", name)
            self._set_status("tuning", name, "Failed", FailureReason=f"{type(exc).__name__}: {exc}",
                             HyperParameterTuningEndTime=_now().isoformat())

    def _tune(self, name: str) -> None:
        import optuna

        from . import tuning as plan

        record = self.records.get("tuning", name)
        config = record["HyperParameterTuningJobConfig"]
        definition = record["TrainingJobDefinition"]
        strategy = plan.Strategy.from_config(config)
        # The study is named after the job: Optuna's Hyperband assigns trials to brackets by hashing the
        # study name and trial number, so a seeded tuning job makes the same choices every time.
        study = optuna.create_study(study_name=name, direction=strategy.direction, sampler=strategy.sampler(),
                                    pruner=strategy.pruner())
        for point in strategy.grid_points():
            study.enqueue_trial(point)
        parallel = max(1, min(strategy.parallel, self.cores))
        threads = max(1, self.cores // parallel)
        counter_lock = threading.Lock()
        launched = [0]
        results = []

        def next_index():
            with counter_lock:
                if launched[0] >= strategy.max_jobs or self._stopping.is_set():
                    return None
                launched[0] += 1
                return launched[0]

        def worker():
            while True:
                index = next_index()
                if index is None:
                    return
                trial = study.ask(strategy.distributions)
                tuned = {key: strategy.encode(key, value) for key, value in trial.params.items()}
                job = plan.trial_job_name(name, index)
                request = plan.trial_request(definition, job, tuned, strategy.objective_metric)
                trial_record = self._new_training_record(request, tuning_job=name)
                trial_record["_Tuned"] = tuned
                self.records.put("training", job, trial_record)
                self._count(name, "InProgress", +1)

                def on_metric(metric, value, step):      # called only while this trial's job runs
                    if metric != strategy.objective_metric:
                        return False
                    trial.report(value, step)  # noqa: B023
                    return trial.should_prune()  # noqa: B023

                final = self._run_training_job(job, on_metric, threads)
                self._count(name, "InProgress", -1)
                objective = next((m["Value"] for m in final.get("FinalMetricDataList", [])
                                  if m["MetricName"] == strategy.objective_metric), None)
                status = final["TrainingJobStatus"]
                if status == "Completed" and objective is not None:
                    study.tell(trial, objective)
                    self._count(name, "Completed", +1, objective="Succeeded")
                elif status == "Stopped" and objective is not None:
                    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                    self._count(name, "Stopped", +1, objective="Succeeded")
                else:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    self._count(name, "NonRetryableError", +1, objective="Failed")
                if objective is not None:
                    metric = {"Type": strategy.objective_type, "MetricName": strategy.objective_metric,
                              "Value": objective}
                    self.records.update("training", job, _Objective=metric)
                    if status == "Completed":
                        results.append((objective, job, tuned, metric, final))

        with ThreadPoolExecutor(parallel, thread_name_prefix=f"{name}-trial") as pool:
            for future in [pool.submit(worker) for _ in range(parallel)]:
                future.result()
        ended = _now().isoformat()
        if self._stopping.is_set():
            self._set_status("tuning", name, "Stopped", HyperParameterTuningEndTime=ended)
            return
        if not results:
            self._set_status("tuning", name, "Failed", HyperParameterTuningEndTime=ended,
                             FailureReason=f"all {launched[0]} training jobs failed or were stopped; "
                                           f"their logs are under {self.data_dir / 'jobs'}")
            return
        best = (max if strategy.direction == "maximize" else min)(results, key=lambda r: r[0])
        objective, job, tuned, metric, final = best
        best_job = {"TrainingJobName": job, "TrainingJobArn": self.arn("training", job),
                    "TuningJobName": name, "CreationTime": final.get("CreationTime"),
                    "TrainingStartTime": final.get("TrainingStartTime"), "TrainingEndTime": final.get("TrainingEndTime"),
                    "TrainingJobStatus": "Completed", "TunedHyperParameters": tuned,
                    "FinalHyperParameterTuningJobObjectiveMetric": metric, "ObjectiveStatus": "Succeeded"}
        self._set_status("tuning", name, "Completed", HyperParameterTuningEndTime=ended, BestTrainingJob=best_job,
                         OverallBestTrainingJob=best_job)

    def _count(self, name: str, counter: str, delta: int, objective: Optional[str] = None) -> None:
        with self.records.lock:
            record = self.records.get("tuning", name)
            record["TrainingJobStatusCounters"][counter] = record["TrainingJobStatusCounters"].get(counter, 0) + delta
            if objective:
                record["ObjectiveStatusCounters"][objective] += 1
            self.records.put("tuning", name, record)

    # --- models, endpoint configs, endpoints -------------------------------------------------------

    def create_model(self, **request) -> dict:
        name = request["ModelName"]
        self._require_new("model", name, "CreateModel")
        self.records.put("model", name, {**request, "ModelArn": self.arn("model", name),
                                         "CreationTime": _now().isoformat()})
        return {"ModelArn": self.arn("model", name)}

    def describe_model(self, ModelName: str) -> dict:
        return self._describe("model", ModelName, "DescribeModel")

    def create_endpoint_config(self, **request) -> dict:
        name = request["EndpointConfigName"]
        self._require_new("endpoint-config", name, "CreateEndpointConfig")
        for variant in request.get("ProductionVariants", []):
            self._describe("model", variant["ModelName"], "CreateEndpointConfig")
        self.records.put("endpoint-config", name, {**request, "EndpointConfigArn": self.arn("endpoint-config", name),
                                                   "CreationTime": _now().isoformat()})
        return {"EndpointConfigArn": self.arn("endpoint-config", name)}

    def describe_endpoint_config(self, EndpointConfigName: str) -> dict:
        return self._describe("endpoint-config", EndpointConfigName, "DescribeEndpointConfig")

    def create_endpoint(self, EndpointName: str, EndpointConfigName: str, **extra) -> dict:
        self._require_new("endpoint", EndpointName, "CreateEndpoint")
        self._describe("endpoint-config", EndpointConfigName, "CreateEndpoint")
        record = {"EndpointName": EndpointName, "EndpointArn": self.arn("endpoint", EndpointName),
                  "EndpointConfigName": EndpointConfigName, "EndpointStatus": "Creating",
                  "CreationTime": _now().isoformat(), "LastModifiedTime": _now().isoformat(), **extra}
        self.records.put("endpoint", EndpointName, record)
        self._emit("endpoint", record)
        self._start_thread(self._serve, EndpointName, EndpointConfigName, name=f"endpoint-{EndpointName}")
        return {"EndpointArn": record["EndpointArn"]}

    def update_endpoint(self, EndpointName: str, EndpointConfigName: str, **_) -> dict:
        current = self._describe("endpoint", EndpointName, "UpdateEndpoint")
        if current["EndpointStatus"] not in ("InService", "Failed"):
            raise _error("ValidationException", f"Cannot update in-progress endpoint \"{current['EndpointArn']}\".",
                         "UpdateEndpoint")
        self._describe("endpoint-config", EndpointConfigName, "UpdateEndpoint")
        self._set_status("endpoint", EndpointName, "Updating")
        self._start_thread(self._serve, EndpointName, EndpointConfigName, name=f"endpoint-{EndpointName}")
        return {"EndpointArn": current["EndpointArn"]}

    def describe_endpoint(self, EndpointName: str) -> dict:
        return self._describe("endpoint", EndpointName, "DescribeEndpoint")

    def delete_endpoint(self, EndpointName: str) -> dict:
        self._describe("endpoint", EndpointName, "DeleteEndpoint")
        server = self._servers.pop(EndpointName, None)
        if server is not None:
            server.stop()
        self.records.path("endpoint", EndpointName).unlink()
        return {}

    def _model_dir(self, model_name: str, where: Path) -> Path:
        """Fetch and unpack a model's ``model.tar.gz`` under ``where`` (once)."""
        model = self.records.get("model", model_name)
        target = where / model_name
        if not (target / ".complete").exists():
            if target.exists():
                shutil.rmtree(target)
            _safe_extract(self.path_of_uri(model["PrimaryContainer"]["ModelDataUrl"]), target)
            (target / ".complete").touch()
        return target

    def _serve(self, endpoint: str, config_name: str) -> None:
        try:
            config = self.records.get("endpoint-config", config_name)
            model_dir = self._model_dir(config["ProductionVariants"][0]["ModelName"], self.data_dir / "models")
            server = self._servers.get(endpoint)
            if server is None:
                server = self.server_factory(model_dir)
                server.start()
                self._servers[endpoint] = server
            else:
                server.swap(model_dir)
            self._set_status("endpoint", endpoint, "InService", EndpointConfigName=config_name,
                             _Url=server.url, FailureReason=None)
        except Exception as exc:
            log.exception("endpoint %s could not serve %s", endpoint, config_name)
            self._set_status("endpoint", endpoint, "Failed", FailureReason=f"{type(exc).__name__}: {exc}")

    def endpoint_url(self, endpoint: str) -> Optional[str]:
        record = self.records.get("endpoint", endpoint)
        if record is None or record["EndpointStatus"] not in ("InService", "Updating"):
            return None
        return record.get("_Url")

    # --- transform ----------------------------------------------------------------------------------

    def create_transform_job(self, **request) -> dict:
        name = request["TransformJobName"]
        self._require_new("transform", name, "CreateTransformJob")
        self._describe("model", request["ModelName"], "CreateTransformJob")
        record = {**request, "TransformJobArn": self.arn("transform", name), "TransformJobStatus": "InProgress",
                  "CreationTime": _now().isoformat(), "LastModifiedTime": _now().isoformat()}
        self.records.put("transform", name, record)
        self._emit("transform", record)
        self._start_thread(self._run_transform, name, name=f"transform-{name}")
        return {"TransformJobArn": record["TransformJobArn"]}

    def describe_transform_job(self, TransformJobName: str) -> dict:
        return self._describe("transform", TransformJobName, "DescribeTransformJob")

    def _run_transform(self, name: str) -> None:
        from . import transform
        record = self.records.get("transform", name)
        self._set_status("transform", name, "InProgress", emit=False, TransformStartTime=_now().isoformat())
        try:
            model_dir = self._model_dir(record["ModelName"], self.data_dir / "models")
            done, skipped, failures = transform.run(self, record, model_dir, self._stopping)
        except Exception as exc:
            log.exception("transform job %s failed", name)
            self._set_status("transform", name, "Failed", FailureReason=f"{type(exc).__name__}: {exc}",
                             TransformEndTime=_now().isoformat())
            return
        ended = _now().isoformat()
        counts = {"_Written": done, "_Skipped": skipped, "TransformEndTime": ended}
        if self._stopping.is_set():
            self._set_status("transform", name, "Stopped", **counts)
        elif failures:
            shown = "; ".join(failures[:3]) + (f"; and {len(failures) - 3} more" if len(failures) > 3 else "")
            self._set_status("transform", name, "Failed", FailureReason=f"ClientError: {len(failures)} of "
                             f"{done + skipped + len(failures)} objects failed: {shown}", **counts)
        else:
            self._set_status("transform", name, "Completed", **counts)

    # --- lifecycle ----------------------------------------------------------------------------------

    def recover(self) -> List[str]:
        """After a restart: jobs whose runtime died are Failed (never left InProgress); endpoints that
        were serving serve again. Returns what was done, for the log."""
        notes = []
        reason = "the local runtime stopped while this job ran; publish again or rerun the batch"
        for kind in ("training", "tuning", "transform"):
            status_field = _KINDS[kind][2]
            for record in self.records.all(kind):
                name = record[_KINDS[kind][1]]
                if record[status_field] in TERMINAL:
                    continue
                # Failed first, then the kill: whoever watched the script sees a final status when it ends.
                self._set_status(kind, name, "Failed", FailureReason=reason, **{
                    "tuning": {"HyperParameterTuningEndTime": _now().isoformat()},
                    "training": {"TrainingEndTime": _now().isoformat(), "SecondaryStatus": "Failed"},
                    "transform": {"TransformEndTime": _now().isoformat()}}[kind])
                pid = record.get("_pid")
                if pid:
                    try:
                        os.killpg(pid, signal.SIGKILL)    # an orphaned script of the dead runtime
                    except (ProcessLookupError, PermissionError):
                        pass
                notes.append(f"{kind} job {name} marked Failed: {reason}")
        for record in self.records.all("endpoint"):
            if record["EndpointStatus"] in ("InService", "Updating", "Creating"):
                self._set_status("endpoint", record["EndpointName"], "Creating", emit=False)
                self._start_thread(self._serve, record["EndpointName"], record["EndpointConfigName"],
                                   name=f"endpoint-{record['EndpointName']}")
                notes.append(f"endpoint {record['EndpointName']} restarting")
        return notes

    def close(self, timeout: float = 30) -> None:
        """Stop running jobs (they end Stopped) and endpoint servers; wait for the job threads."""
        self._stopping.set()
        for name in list(self._processes):
            self._kill(name)
        deadline = time.time() + timeout
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.time()))
        for server in list(self._servers.values()):
            server.stop()
        self._servers.clear()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no job thread runs (tests, the demo); True when idle."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self._lock:
                busy = [t for t in self._threads if t.is_alive()]
            if not busy:
                return True
            busy[0].join(min(1.0, max(0.0, deadline - time.time())))
        return False
