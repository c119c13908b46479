"""A Docker-free SageMaker that really runs the jobs the control plane asks for, on this machine.

``LocalSageMaker`` takes the same request dicts as boto3's SageMaker client and answers with the
same response shapes and errors (``ResourceInUse``, ``ValidationException``), for the operations
the control plane uses. It is a thin front; each kind of resource has its own module:

- ``training_jobs``: ``train.py`` as a subprocess under the script-mode contract, metrics parsed from
  its log with the job's own ``MetricDefinitions``, ``model.tar.gz`` and ``output.tar.gz`` written back;
- ``tuning_jobs`` (with ``tuning``, the mapping of SageMaker strategies onto Optuna samplers and
  pruners): trials run as training jobs, pruned from their per-epoch objective;
- ``endpoints``: models, endpoint configs, and endpoints served by a local inference server, which
  take time to change and refuse what SageMaker refuses (``UpdateEndpoint`` unless InService, all but
  ``DeleteEndpoint`` on a Failed endpoint); ``fail_next_endpoint_change`` makes one fail on purpose;
- ``transform``: every object under the input prefix through the model, one ``.out`` per object;
- ``resources`` and ``records``: ARNs, errors, status changes and their EventBridge-shaped events
  (through ``emit(event)``), and the JSON record of every resource under ``<data_dir>/sagemaker/``.

``recover()`` after a restart marks jobs whose process died ``Failed`` with a reason and restarts the
endpoints that were serving; ``close()`` stops everything.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Callable, List, Optional

from chalicelib.state import TERMINAL

from .endpoints import DEFAULT_FAULT_REASON, MIN_CHANGE_SECONDS, Endpoints
from .job_threads import JobThreads
from .records import Records, now
from .resources import JOB_KINDS, KINDS, Resources
from .training_jobs import TrainingJobs
from .transform import TransformJobs
from .tuning_jobs import TuningJobs

RECOVERY_REASON = "the local runtime stopped while this job ran; publish again or rerun the batch"


class LocalSageMaker:
    """``endpoint_change_seconds``: the least time an endpoint stays Creating or Updating (SageMaker
    takes minutes; the model's loading and warm-up come on top)."""

    def __init__(self, s3, data_dir: Path, emit: Callable[[dict], None], cores: Optional[int] = None,
                 python: str = sys.executable, region: str = "local", server_factory=None,
                 endpoint_change_seconds: float = MIN_CHANGE_SECONDS):
        self.s3 = s3
        self.data_dir = Path(data_dir)
        self.cores = cores or len(os.sched_getaffinity(0))
        self.records = Records(self.data_dir / "sagemaker")
        self.resources = Resources(self.records, emit, region)
        self.threads = JobThreads()
        jobs_dir = self.data_dir / "jobs"
        self.training = TrainingJobs(self.resources, self.threads, s3, jobs_dir, python)
        self.tuning = TuningJobs(self.resources, self.threads, self.training, self.cores, jobs_dir)
        self.endpoints = Endpoints(self.resources, self.threads, s3, self.data_dir / "models", server_factory,
                                   endpoint_change_seconds)
        self.transforms = TransformJobs(self.resources, self.threads, s3, self.endpoints.model_dir, server_factory)

    # --- training -----------------------------------------------------------------------------------

    def create_training_job(self, **request) -> dict:
        return self.training.create(request, self.cores)

    def describe_training_job(self, TrainingJobName: str) -> dict:
        return self.resources.describe("training", TrainingJobName, "DescribeTrainingJob")

    def stop_training_job(self, TrainingJobName: str) -> dict:
        self.resources.describe("training", TrainingJobName, "StopTrainingJob")
        self.training.stop(TrainingJobName)
        return {}

    def job_dir(self, name: str) -> Path:
        """A training job's working folder (its ``log.txt``, ``model/``, ``output/``)."""
        return self.training.job_dir(name)

    # --- tuning -------------------------------------------------------------------------------------

    def create_hyper_parameter_tuning_job(self, **request) -> dict:
        return self.tuning.create(request)

    def describe_hyper_parameter_tuning_job(self, HyperParameterTuningJobName: str) -> dict:
        return self.resources.describe("tuning", HyperParameterTuningJobName, "DescribeHyperParameterTuningJob")

    def list_training_jobs_for_hyper_parameter_tuning_job(self, HyperParameterTuningJobName: str, **_) -> dict:
        return self.tuning.list_training_jobs(HyperParameterTuningJobName)

    # --- models, endpoint configs, endpoints -------------------------------------------------------

    def create_model(self, **request) -> dict:
        return self.endpoints.create_model(request)

    def describe_model(self, ModelName: str) -> dict:
        return self.resources.describe("model", ModelName, "DescribeModel")

    def create_endpoint_config(self, **request) -> dict:
        return self.endpoints.create_endpoint_config(request)

    def describe_endpoint_config(self, EndpointConfigName: str) -> dict:
        return self.resources.describe("endpoint-config", EndpointConfigName, "DescribeEndpointConfig")

    def create_endpoint(self, EndpointName: str, EndpointConfigName: str, **extra) -> dict:
        return self.endpoints.create_endpoint(EndpointName, EndpointConfigName, extra)

    def update_endpoint(self, EndpointName: str, EndpointConfigName: str, **_) -> dict:
        return self.endpoints.update_endpoint(EndpointName, EndpointConfigName)

    def describe_endpoint(self, EndpointName: str) -> dict:
        return self.resources.describe("endpoint", EndpointName, "DescribeEndpoint")

    def delete_endpoint(self, EndpointName: str) -> dict:
        return self.endpoints.delete_endpoint(EndpointName)

    def fail_next_endpoint_change(self, endpoint: str, reason: str = DEFAULT_FAULT_REASON,
                                  rollback: bool = True) -> None:
        """Make the next CreateEndpoint or UpdateEndpoint of ``endpoint`` fail with ``FailureReason``
        ``reason``, as SageMaker's does when it finds no capacity or the image does not start: a create
        ends ``Failed``; an update is rolled back to the old config (``rollback=False``: ends ``Failed``).
        For tests, and for trying the control plane's recovery by hand."""
        self.endpoints.fail_next_change(endpoint, reason, rollback)

    def endpoint_url(self, endpoint: str) -> Optional[str]:
        """The URL of the endpoint's local server while it serves, else None."""
        return self.endpoints.url(endpoint)

    # --- transform ----------------------------------------------------------------------------------

    def create_transform_job(self, **request) -> dict:
        return self.transforms.create(request)

    def describe_transform_job(self, TransformJobName: str) -> dict:
        return self.resources.describe("transform", TransformJobName, "DescribeTransformJob")

    # --- lifecycle ----------------------------------------------------------------------------------

    def recover(self) -> List[str]:
        """After a restart: jobs whose runtime died are Failed (never left InProgress); endpoints that
        were serving serve again. Returns what was done, for the log."""
        notes = []
        for kind in JOB_KINDS:
            for record in self.records.all(kind):
                name = record[KINDS[kind].name_field]
                if record[KINDS[kind].status_field] in TERMINAL:
                    continue
                # Failed first, then the kill: whoever watched the script sees a final status when it ends.
                self.resources.set_status(kind, name, "Failed", FailureReason=RECOVERY_REASON, **{
                    "tuning": {"HyperParameterTuningEndTime": now().isoformat()},
                    "training": {"TrainingEndTime": now().isoformat(), "SecondaryStatus": "Failed"},
                    "transform": {"TransformEndTime": now().isoformat()}}[kind])
                pid = record.get("_pid")
                if pid:
                    try:
                        os.killpg(pid, signal.SIGKILL)    # an orphaned script of the dead runtime
                    except (ProcessLookupError, PermissionError):
                        pass
                notes.append(f"{kind} job {name} marked Failed: {RECOVERY_REASON}")
        return notes + self.endpoints.recover()

    def close(self, timeout: float = 30) -> None:
        """Stop running jobs (they end Stopped) and endpoint servers; wait for the job threads."""
        self.threads.stopping.set()
        self.training.stop_all()
        self.threads.join(timeout)
        self.endpoints.stop_servers()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no job thread runs (tests, the demo); True when idle."""
        return self.threads.wait_idle(timeout)
