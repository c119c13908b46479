"""Tuning jobs: an Optuna study (``tuning.Strategy``) asking for trials, each run as a training job.

``MaxParallelTrainingJobs`` trials run at once, within the cores available, and each gets its share of
the cores as threads. A trial's objective metric reaches the study after every epoch it logs, so a
pruner (Hyperband, or the median rule of ``TrainingJobEarlyStoppingType: Auto``) can stop it early.
The status counters, ``ListTrainingJobsForHyperParameterTuningJob`` and ``BestTrainingJob`` are
reported as SageMaker reports them.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

from .job_threads import JobThreads
from .records import now, with_datetimes
from .resources import Resources
from .training_jobs import TrainingJobs

log = logging.getLogger(__name__)

_SUMMARY_FIELDS = ("TrainingJobName", "TrainingJobArn", "TrainingJobStatus", "CreationTime", "TrainingEndTime",
                   "FailureReason")


class TuningJobs:
    def __init__(self, resources: Resources, threads: JobThreads, training: TrainingJobs, cores: int,
                 jobs_dir: Path):
        self.resources = resources
        self.records = resources.records
        self.threads = threads
        self.training = training
        self.cores = cores
        self.jobs_dir = jobs_dir

    def create(self, request: dict) -> dict:
        """CreateHyperParameterTuningJob: record the job and run it in a thread."""
        name = request["HyperParameterTuningJobName"]
        self.resources.require_new("tuning", name, "CreateHyperParameterTuningJob")
        record = {**request, "HyperParameterTuningJobArn": self.resources.arn("tuning", name),
                  "HyperParameterTuningJobStatus": "InProgress", "CreationTime": now().isoformat(),
                  "LastModifiedTime": now().isoformat(),
                  "TrainingJobStatusCounters": {"Completed": 0, "InProgress": 0, "RetryableError": 0,
                                                "NonRetryableError": 0, "Stopped": 0},
                  "ObjectiveStatusCounters": {"Succeeded": 0, "Pending": 0, "Failed": 0}}
        self.records.put("tuning", name, record)
        self.resources.emit("tuning", record)     # SageMaker reports the new job InProgress, as for the others
        self.threads.start(self._run, name, name=f"tune-{name}")
        return {"HyperParameterTuningJobArn": record["HyperParameterTuningJobArn"]}

    def list_training_jobs(self, name: str) -> dict:
        """ListTrainingJobsForHyperParameterTuningJob: a summary of each trial."""
        self.resources.describe("tuning", name, "ListTrainingJobsForHyperParameterTuningJob")
        arn = self.resources.arn("tuning", name)
        summaries = []
        for job in self.records.all("training"):
            if job.get("TuningJobArn") == arn:
                summaries.append(with_datetimes({key: job.get(key) for key in _SUMMARY_FIELDS
                                                 if job.get(key) is not None} | {
                    "TunedHyperParameters": job.get("_Tuned", {}),
                    **({"FinalHyperParameterTuningJobObjectiveMetric": job["_Objective"]} if job.get("_Objective") else {})}))
        return {"TrainingJobSummaries": summaries}

    def _run(self, name: str) -> None:
        try:
            self._tune(name)
        except Exception as exc:
            log.exception("tuning job %s failed", name)
            self.resources.set_status("tuning", name, "Failed", FailureReason=f"{type(exc).__name__}: {exc}",
                                      HyperParameterTuningEndTime=now().isoformat())

    def _tune(self, name: str) -> None:
        import optuna

        from . import tuning as plan

        record = self.records.get("tuning", name)
        config = record["HyperParameterTuningJobConfig"]
        definition = record["TrainingJobDefinition"]
        strategy = plan.Strategy.from_config(config)
        stopping = self.threads.stopping
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
                if launched[0] >= strategy.max_jobs or stopping.is_set():
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
                trial_record = self.training.new_record(request, tuning_job=name)
                trial_record["_Tuned"] = tuned
                self.records.put("training", job, trial_record)
                self._count(name, "InProgress", +1)

                def on_metric(metric, value, step):      # called only while this trial's job runs
                    if metric != strategy.objective_metric:
                        return False
                    trial.report(value, step)  # noqa: B023
                    return trial.should_prune()  # noqa: B023

                final = self.training.run(job, on_metric, threads)
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
        ended = now().isoformat()
        if stopping.is_set():
            self.resources.set_status("tuning", name, "Stopped", HyperParameterTuningEndTime=ended)
            return
        if not results:
            self.resources.set_status("tuning", name, "Failed", HyperParameterTuningEndTime=ended,
                                      FailureReason=f"all {launched[0]} training jobs failed or were stopped; "
                                                    f"their logs are under {self.jobs_dir}")
            return
        best = (max if strategy.direction == "maximize" else min)(results, key=lambda r: r[0])
        objective, job, tuned, metric, final = best
        best_job = {"TrainingJobName": job, "TrainingJobArn": self.resources.arn("training", job),
                    "TuningJobName": name, "CreationTime": final.get("CreationTime"),
                    "TrainingStartTime": final.get("TrainingStartTime"), "TrainingEndTime": final.get("TrainingEndTime"),
                    "TrainingJobStatus": "Completed", "TunedHyperParameters": tuned,
                    "FinalHyperParameterTuningJobObjectiveMetric": metric, "ObjectiveStatus": "Succeeded"}
        self.resources.set_status("tuning", name, "Completed", HyperParameterTuningEndTime=ended,
                                  BestTrainingJob=best_job, OverallBestTrainingJob=best_job)

    def _count(self, name: str, counter: str, delta: int, objective: Optional[str] = None) -> None:
        """Move the tuning job's TrainingJobStatusCounters (and ObjectiveStatusCounters)."""
        with self.records.lock:
            record = self.records.get("tuning", name)
            record["TrainingJobStatusCounters"][counter] = record["TrainingJobStatusCounters"].get(counter, 0) + delta
            if objective:
                record["ObjectiveStatusCounters"][objective] += 1
            self.records.put("tuning", name, record)
