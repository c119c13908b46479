"""Training jobs run as SageMaker's training toolkit runs them: the script of the source package in a
subprocess, under the script-mode contract.

The source is unpacked from the ``sagemaker_submit_directory`` package; channels are the bucket's
prefixes mounted by path (no copy); hyperparameters reach the script as the toolkit passes them
(``--name value``, JSON-decoded, ``SM_HPS``), with ``SM_*`` directories per job under
``<jobs_dir>/<job>/``. The script's log is kept there and parsed line by line with the job's own
``MetricDefinitions``; ``FinalMetricDataList`` holds each metric's last value. On success
``model.tar.gz`` and ``output.tar.gz`` land where SageMaker puts them; a failing script gives ``Failed``
with the script's failure file (or the log's tail) as ``FailureReason``; ``MaxRuntimeInSeconds`` stops
the job (``Stopped``, ``MaxRuntimeExceeded``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
from datetime import datetime
from pathlib import Path
from typing import Callable, Dict, List, Optional

from chalicelib.sagemaker_requests import CHECKPOINT_LOCAL_PATH, decode_hyperparameter, job_artifact_uri, split_s3_uri

from .archives import safe_extract, tar_directory
from .job_threads import JobThreads
from .records import now
from .resources import Resources

log = logging.getLogger(__name__)

# on_metric(metric name, value, step) -> True to stop the job (a pruned trial)
MetricListener = Callable[[str, float, int], bool]


def command_line_value(value) -> str:
    """A decoded hyperparameter as the training toolkit writes it on the command line."""
    return value if isinstance(value, str) else json.dumps(value)


class MetricParser:
    """The job's MetricDefinitions over its log lines: every value in order, per metric name."""

    def __init__(self, definitions: List[dict]):
        self.regexes = [(d["Name"], re.compile(d["Regex"])) for d in definitions or []]
        self.series: Dict[str, List[float]] = {}

    def feed(self, line: str) -> List[tuple]:
        """Parse one log line; returns the ``(name, value, step)`` found in it (step counts from 1)."""
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
        """``FinalMetricDataList``: each metric's last value."""
        return [{"MetricName": name, "Value": values[-1], "Timestamp": when}
                for name, values in self.series.items() if values]


class TrainingJobs:
    def __init__(self, resources: Resources, threads: JobThreads, s3, jobs_dir: Path, python: str):
        self.resources = resources
        self.records = resources.records
        self.threads = threads
        self.s3 = s3
        self.jobs_dir = jobs_dir
        self.python = python
        self._processes: Dict[str, subprocess.Popen] = {}

    def create(self, request: dict, cores: int) -> dict:
        """CreateTrainingJob: record the job and run it in a thread with ``cores`` threads."""
        name = request["TrainingJobName"]
        self.resources.require_new("training", name, "CreateTrainingJob")
        record = self.new_record(request)
        self.records.put("training", name, record)
        self.threads.start(self.run, name, None, cores, name=f"train-{name}")
        return {"TrainingJobArn": record["TrainingJobArn"]}

    def new_record(self, request: dict, tuning_job: Optional[str] = None) -> dict:
        """The record of a job about to start (a tuning job's trial names its tuning job)."""
        name = request["TrainingJobName"]
        record = {**request, "TrainingJobArn": self.resources.arn("training", name), "TrainingJobStatus": "InProgress",
                  "SecondaryStatus": "Starting", "CreationTime": now().isoformat(),
                  "LastModifiedTime": now().isoformat()}
        if tuning_job:
            record["TuningJobArn"] = self.resources.arn("tuning", tuning_job)
        return record

    def stop(self, name: str) -> None:
        """End the job's script, if it runs; the job then ends Stopped."""
        process = self._processes.get(name)
        if process is not None and process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def stop_all(self) -> None:
        for name in list(self._processes):
            self.stop(name)

    def job_dir(self, name: str) -> Path:
        """The job's working folder: ``code/``, ``model/``, ``output/`` and the script's ``log.txt``."""
        return self.jobs_dir / name

    def run(self, name: str, on_metric: Optional[MetricListener], threads: int) -> dict:
        """Run one recorded training job to its end with ``threads`` CPU threads; returns its final record."""
        record = self.records.get("training", name)
        stopped_by_pruner = False
        try:
            work = self.job_dir(name)
            if work.exists():
                shutil.rmtree(work)
            (work / "output" / "data").mkdir(parents=True)
            (work / "model").mkdir()
            hyperparameters = {k: decode_hyperparameter(v) for k, v in record.get("HyperParameters", {}).items()}
            program = str(hyperparameters.get("sagemaker_program", "train.py"))
            source = hyperparameters.get("sagemaker_submit_directory")
            code = work / "code"
            if not source:
                raise RuntimeError("no sagemaker_submit_directory hyperparameter: nothing to run")
            archive = work / "sourcedir.tar.gz"
            shutil.copyfile(self.s3.path_of_uri(source), archive)
            safe_extract(archive, code)
            if not (code / program).is_file():
                raise RuntimeError(f"the source package has no {program}")
            checkpoint, checkpoint_argv = record.get("CheckpointConfig"), []
            if checkpoint:
                # SageMaker syncs LocalPath (default /opt/ml/checkpoints) with S3Uri; here the bucket folder is
                # used directly. A hyperparameter naming LocalPath (a tuning job's shared feature store) is
                # given that folder; otherwise the script's --checkpoint-dir is.
                directory = self.s3.path_of_uri(checkpoint["S3Uri"])
                directory.mkdir(parents=True, exist_ok=True)
                local_path = checkpoint.get("LocalPath") or CHECKPOINT_LOCAL_PATH
                naming = [k for k, v in hyperparameters.items() if v == local_path and not k.startswith("sagemaker_")]
                for k in naming:
                    hyperparameters[k] = str(directory)
                if not naming:
                    checkpoint_argv = ["--checkpoint-dir", str(directory)]
            env = self._environment(record, hyperparameters, work, threads)
            user = {k: v for k, v in hyperparameters.items() if not k.startswith("sagemaker_")}
            argv = [self.python, str(code / program)]
            for key, value in user.items():
                argv += [f"--{key}", command_line_value(value)]
            argv += checkpoint_argv
            self.resources.set_status("training", name, "InProgress", SecondaryStatus="Training",
                                      TrainingStartTime=now().isoformat())
            parser = MetricParser(record.get("AlgorithmSpecification", {}).get("MetricDefinitions", []))
            max_runtime = record.get("StoppingCondition", {}).get("MaxRuntimeInSeconds")
            exit_code, timed_out, stopped_by_pruner = self._supervise(name, argv, env, code, work / "log.txt",
                                                                      parser, on_metric, max_runtime)
            ended = now()
            changes = {"TrainingEndTime": ended.isoformat(), "FinalMetricDataList": parser.final(ended)}
            if exit_code == 0 and not stopped_by_pruner:
                output_path = record["OutputDataConfig"]["S3OutputPath"]
                model_uri = job_artifact_uri(output_path, name)
                for uri, folder in ((model_uri, work / "model"),
                                    (job_artifact_uri(output_path, name, "output.tar.gz"), work / "output" / "data")):
                    bucket, key = split_s3_uri(uri)
                    self.s3.put_object(Bucket=bucket, Key=key, Body=tar_directory(folder))
                changes["ModelArtifacts"] = {"S3ModelArtifacts": model_uri}
                return self.resources.set_status("training", name, "Completed", SecondaryStatus="Completed",
                                                 **changes)
            if stopped_by_pruner or self.threads.stopping.is_set() or timed_out:
                why = ("MaxRuntimeExceeded" if timed_out else "Stopped")
                return self.resources.set_status("training", name, "Stopped", SecondaryStatus=why, **changes)
            return self.resources.set_status("training", name, "Failed", SecondaryStatus="Failed",
                                             FailureReason=failure_reason(work, exit_code), **changes)
        except Exception as exc:
            log.exception("training job %s could not run", name)
            return self.resources.set_status("training", name, "Failed", SecondaryStatus="Failed",
                                             FailureReason=f"ClientError: {exc}", TrainingEndTime=now().isoformat())

    def _environment(self, record: dict, hyperparameters: dict, work: Path, threads: int) -> dict:
        """The script's environment: this process's, less its SM_/OMP_/MKL_ settings, plus the toolkit's."""
        channels = {}
        for channel in record.get("InputDataConfig", []):
            uri = channel["DataSource"]["S3DataSource"]["S3Uri"]
            channels[channel["ChannelName"]] = str(self.s3.path_of_uri(uri))
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

    def _supervise(self, name, argv, env, cwd, log_path: Path, parser: MetricParser,
                   on_metric: Optional[MetricListener], max_runtime):
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
                    self.stop(name)
                timer = threading.Timer(max_runtime, expire)
                timer.daemon = True
                timer.start()
            try:
                for line in process.stdout:
                    log_file.write(line)
                    for metric, value, step in parser.feed(line):
                        if on_metric is not None and on_metric(metric, value, step) and not pruned:
                            pruned = True
                            self.stop(name)
                process.wait()
            finally:
                if timer is not None:
                    timer.cancel()
                self._processes.pop(name, None)
        return process.returncode, timed_out, pruned


def failure_reason(work: Path, exit_code: int) -> str:
    """``FailureReason`` of a failed script: its ``output/failure`` file, else the last lines of its log."""
    failure = work / "output" / "failure"
    if failure.exists() and failure.read_text().strip():
        return f"AlgorithmError: {failure.read_text().strip()[:1000]}"
    tail = (work / "log.txt").read_text(errors="replace").strip().splitlines()[-5:]
    return f"AlgorithmError: ExitCode {exit_code}: " + " | ".join(tail)[-1000:]
