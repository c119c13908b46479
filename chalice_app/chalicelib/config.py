"""The control plane's configuration: every knob of tuning, training, hosting and batch in one place.

The defaults are the reference projects' choices (DESIGN.md, "Defaults taken from the reference
projects"). Everything is a frozen dataclass, so a configuration is a value: build one with
``PipelineConfig(bucket=..., role_arn=..., region=...)``, change a copy with ``dataclasses.replace``,
read the deployment's from its environment with ``PipelineConfig.from_env(os.environ)``, or take a
named profile's (``PROFILES``: ``default`` is the AWS configuration, ``quick`` one CPU machine's) with
``PipelineConfig.from_profile``.
Invalid combinations fail when the object is built, with a message that names the setting.

Standard library only: this module runs on Lambda.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping, Optional, Tuple, Union

from batch.keys import BATCHES_PREFIX

STRATEGIES = ("Bayesian", "Random", "Hyperband", "Grid")
SCALING_TYPES = ("Auto", "Linear", "Logarithmic", "ReverseLogarithmic")
OBJECTIVE_TYPES = ("Maximize", "Minimize")
# Serverless endpoints take memory in 1 GB steps from 1 to 6 GB, and at most 200 concurrent invocations.
SERVERLESS_MEMORY_SIZES_MB = (1024, 2048, 3072, 4096, 5120, 6144)
SERVERLESS_MAX_CONCURRENCY = 200
# Batch transform: MaxPayloadInMB <= 100, and MaxConcurrentTransforms * MaxPayloadInMB <= 100 as well.
TRANSFORM_PAYLOAD_LIMIT_MB = 100

_INSTANCE_TYPE = re.compile(r"ml\.[a-z0-9-]+\.[a-z0-9]+")
_ROLE_ARN = re.compile(r"arn:aws[a-z\-]*:iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-_/]+")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d+")

Value = Union[str, int, float, bool]


class ConfigError(ValueError):
    """A setting is missing or invalid. ``problems`` lists every problem found; so does the message."""

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__("invalid configuration:\n  - " + "\n  - ".join(self.problems))


def _check(problems: list) -> None:
    if problems:
        raise ConfigError(problems)


def _frozen(mapping: Mapping[str, Value]) -> Mapping[str, Value]:
    return MappingProxyType(dict(mapping))


def processor_of(instance_type: str) -> str:
    """``"gpu"`` for ml.p* and ml.g* instances, else ``"cpu"``: which image variant the instance runs.

    Arm64 (Graviton) and Neuron (Inferentia, Trainium) instances need other images than the x86
    PyTorch containers this pipeline uses, so they are refused with the reason.
    """
    if not _INSTANCE_TYPE.fullmatch(instance_type):
        raise ConfigError([f"instance type {instance_type!r} does not look like ml.<family>.<size>"])
    family = instance_type.split(".")[1]
    if re.fullmatch(r"[a-z]+\d+g[a-z]*", family):     # m6g, c7g, r8gd, g5g ...: Graviton
        raise ConfigError([f"{instance_type} is an arm64 (Graviton) instance; the PyTorch images used here are "
                           f"x86: choose e.g. ml.m5.large"])
    if family.startswith(("inf", "trn")):
        raise ConfigError([f"{instance_type} needs Neuron-compiled models and images; choose e.g. ml.m5.large "
                           f"or ml.g4dn.xlarge"])
    return "gpu" if family.startswith(("p", "g")) else "cpu"


def _instance_problems(setting: str, instance_type: str) -> list:
    try:
        processor_of(instance_type)
        return []
    except ConfigError as exc:
        return [f"{setting}: {p}" for p in exc.problems]


@dataclass(frozen=True)
class ContinuousRange:
    """A continuous hyperparameter searched between ``min_value`` and ``max_value``.

    ``grid_points`` is how many log-spaced values stand in for the range under the Grid strategy,
    which accepts categorical ranges only (1 = the geometric middle of the range).
    """
    name: str
    min_value: float
    max_value: float
    scaling: str = "Logarithmic"
    grid_points: int = 3

    def __post_init__(self):
        problems = []
        if not self.min_value < self.max_value:
            problems.append(f"range {self.name}: min {self.min_value} is not below max {self.max_value}")
        elif self.scaling == "Logarithmic" and self.min_value <= 0:
            problems.append(f"range {self.name}: a logarithmic range needs min > 0, got {self.min_value}")
        elif self.scaling == "ReverseLogarithmic" and not (0 <= self.min_value and self.max_value < 1):
            problems.append(f"range {self.name}: a reverse logarithmic range must lie within 0 <= x < 1")
        if self.scaling not in SCALING_TYPES:
            problems.append(f"range {self.name}: scaling {self.scaling!r} is not one of {', '.join(SCALING_TYPES)}")
        if self.grid_points < 1:
            problems.append(f"range {self.name}: grid_points must be at least 1")
        _check(problems)

    def grid_values(self) -> Tuple[float, ...]:
        """The values that stand in for this range under Grid: ``grid_points`` values spaced evenly on
        the range's scale (logarithmic for Logarithmic, else linear), rounded to 3 significant digits;
        a single point is the middle of the range on that scale."""
        low, high, points = self.min_value, self.max_value, self.grid_points
        logarithmic = self.scaling == "Logarithmic"
        if logarithmic:
            low, high = math.log10(low), math.log10(high)
        positions = [(low + high) / 2] if points == 1 else [low + (high - low) * i / (points - 1) for i in range(points)]
        values = [float(f"{(10 ** p if logarithmic else p):.3g}") for p in positions]
        return tuple(dict.fromkeys(values))   # rounding may merge neighbours in a narrow range


@dataclass(frozen=True)
class CategoricalRange:
    """A hyperparameter chosen among ``values`` (SageMaker allows at most 30 values per range)."""
    name: str
    values: Tuple[Value, ...]

    def __post_init__(self):
        if not 1 <= len(self.values) <= 30:
            _check([f"range {self.name}: needs 1 to 30 values, got {len(self.values)}"])
        if len(set(self.values)) != len(self.values):
            _check([f"range {self.name}: values repeat: {self.values}"])


@dataclass(frozen=True)
class Profile:
    """A sizing of the whole pipeline: the model every job trains (``model``), what each tuning trial
    and the instrumented run get on top (``trial``, ``final``), how many trials, and the search space.
    ``PROFILES`` names them; ``PipelineConfig.from_profile`` turns one into a configuration."""
    model: Mapping[str, Value]
    trial: Mapping[str, Value]
    final: Mapping[str, Value]
    max_training_jobs: int
    max_parallel_training_jobs: int
    continuous_ranges: Tuple[ContinuousRange, ...]
    categorical_ranges: Tuple[CategoricalRange, ...]

    def __post_init__(self):
        for name in ("model", "trial", "final"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))

    @property
    def trial_hyperparameters(self) -> Mapping[str, Value]:
        """The static hyperparameters of every tuning trial."""
        return _frozen({**self.model, **self.trial})

    @property
    def final_hyperparameters(self) -> Mapping[str, Value]:
        """The instrumented run's hyperparameters, on top of the best trial's tuned values."""
        return _frozen({**self.model, **self.final})

    def summary(self) -> str:
        """One line for people: ``weights imagenet, finetune head, 224 px; 6 trials (2 at a time) of 5
        epochs, then 15 epochs``."""
        model = self.model
        return (f"weights {model['weights']}, finetune {model['finetune']}, {model['image-size']} px; "
                f"{self.max_training_jobs} trials ({self.max_parallel_training_jobs} at a time) of "
                f"{self.trial['epochs']} epochs, then {self.final['epochs']} epochs")


# AdamW's weight decay and eps, searched alike by every profile.
_WEIGHT_DECAY = ContinuousRange("weight-decay", 1e-3, 1e-1, "Logarithmic", grid_points=2)  # grid: 1e-3, 1e-1
_EPS = ContinuousRange("eps", 1e-9, 1e-7, "Logarithmic", grid_points=1)       # grid: 1e-8 (eps barely matters)

# Every profile in one table (hyperparameter names and meanings: training/train.py, Contract 1).
PROFILES: Mapping[str, Profile] = MappingProxyType({
    # The reference projects' choices, the AWS configuration: ImageNet ResNets with a new head, AdamW's lr,
    # weight decay and eps, two batch sizes, two ResNets; 6 trials, 2 at a time.
    "default": Profile(
        model={"finetune": "head", "weights": "imagenet", "image-size": 224},
        # trials only need their metric lines (profile-steps 0); the instrumented run keeps a profiler trace
        trial={"epochs": 5, "early-stopping-patience": 2, "profile-steps": 0},
        final={"epochs": 15, "early-stopping-patience": 3, "profile-steps": 5},
        max_training_jobs=6, max_parallel_training_jobs=2,
        continuous_ranges=(ContinuousRange("lr", 1e-4, 1e-1, "Logarithmic", grid_points=4),  # grid: 1e-4 .. 1e-1
                           _WEIGHT_DECAY, _EPS),
        categorical_ranges=(CategoricalRange("batch-size", (32, 64)),
                            CategoricalRange("arch", ("resnet18", "resnet34"))),
    ),
    # This machine: a CPU and a generated dataset. From scratch, 64 px, every layer trains; 3 trials one
    # after the other, each with every core.
    "quick": Profile(
        model={"finetune": "full", "weights": "none", "image-size": 64, "augment": "flip"},
        trial={"epochs": 3, "early-stopping-patience": 2, "profile-steps": 0},
        final={"epochs": 10, "early-stopping-patience": 4, "profile-steps": 5},
        max_training_jobs=3, max_parallel_training_jobs=1,
        # From scratch, AdamW diverges above lr ~1e-2 and crawls below 1e-3: with 3 trials, search where it learns.
        continuous_ranges=(ContinuousRange("lr", 1e-3, 1e-2, "Logarithmic", grid_points=3), _WEIGHT_DECAY, _EPS),
        categorical_ranges=(CategoricalRange("batch-size", (16, 32)), CategoricalRange("arch", ("resnet18",))),
    ),
})
_DEFAULT = PROFILES["default"]     # the dataclasses' defaults below, and so from_env's


@dataclass(frozen=True)
class TuningConfig:
    """The hyperparameter tuning job: strategy, objective, budget and search space.

    - ``Bayesian`` and ``Random`` search the ranges; SageMaker stops hopeless trials early (``Auto``).
    - ``Hyperband`` brings its own early stopping: every trial gets ``epochs = hyperband_max_epochs``
      and Hyperband stops trials between ``hyperband_min_epochs`` and that.
    - ``Grid`` runs every combination of categorical values; continuous ranges become
      ``grid_points`` log-spaced values each. The number of jobs is the grid's size, not
      ``max_training_jobs``, and must stay within ``max_grid_training_jobs``.
    """
    strategy: str = "Bayesian"
    objective_metric: str = "validation:accuracy"
    objective_type: str = "Maximize"
    max_training_jobs: int = _DEFAULT.max_training_jobs
    max_parallel_training_jobs: int = _DEFAULT.max_parallel_training_jobs
    continuous_ranges: Tuple[ContinuousRange, ...] = _DEFAULT.continuous_ranges
    categorical_ranges: Tuple[CategoricalRange, ...] = _DEFAULT.categorical_ranges
    static_hyperparameters: Mapping[str, Value] = field(default_factory=lambda: _DEFAULT.trial_hyperparameters)
    hyperband_min_epochs: int = 1
    hyperband_max_epochs: int = 10
    max_grid_training_jobs: int = 32
    random_seed: Optional[int] = None   # set it to make a tuning job's choices repeatable
    # Head-only trials share one backbone feature extraction per feature key through features/<dataset>/
    # (sagemaker_requests.shares_features); False: every trial extracts its own (bench/default_profile.py).
    share_features: bool = True

    def __post_init__(self):
        object.__setattr__(self, "static_hyperparameters", _frozen(self.static_hyperparameters))
        problems = []
        if self.strategy not in STRATEGIES:
            problems.append(f"tuning strategy {self.strategy!r} is not one of {', '.join(STRATEGIES)}")
        if self.objective_type not in OBJECTIVE_TYPES:
            problems.append(f"objective type {self.objective_type!r} is not one of {', '.join(OBJECTIVE_TYPES)}")
        if self.max_training_jobs < 1:
            problems.append(f"max training jobs must be at least 1, got {self.max_training_jobs}")
        if self.max_parallel_training_jobs < 1:
            problems.append(f"parallel training jobs must be at least 1, got {self.max_parallel_training_jobs}")
        elif self.strategy != "Grid" and self.max_parallel_training_jobs > self.max_training_jobs:
            problems.append(f"parallel training jobs ({self.max_parallel_training_jobs}) exceed max training "
                            f"jobs ({self.max_training_jobs})")
        names = [r.name for r in self.continuous_ranges + self.categorical_ranges]
        if len(set(names)) != len(names):
            problems.append(f"a hyperparameter has two ranges: {names}")
        if not names:
            problems.append("tuning needs at least one hyperparameter range")
        if set(names) & set(self.static_hyperparameters):
            problems.append(f"hyperparameters both tuned and static: {sorted(set(names) & set(self.static_hyperparameters))}")
        if not 1 <= self.hyperband_min_epochs <= self.hyperband_max_epochs:
            problems.append(f"Hyperband needs 1 <= min epochs ({self.hyperband_min_epochs}) <= max epochs "
                            f"({self.hyperband_max_epochs})")
        if self.strategy == "Grid":
            if self.grid_size > self.max_grid_training_jobs:
                problems.append(f"the Grid has {self.grid_size} combinations, more than max_grid_training_jobs "
                                f"({self.max_grid_training_jobs}): lower grid_points or drop categorical values")
            if self.max_parallel_training_jobs > self.grid_size:
                problems.append(f"parallel training jobs ({self.max_parallel_training_jobs}) exceed the Grid's "
                                f"{self.grid_size} combinations")
        _check(problems)

    @property
    def tuned_names(self) -> Tuple[str, ...]:
        """Names of the hyperparameters the tuning job chooses."""
        return tuple(r.name for r in self.continuous_ranges + self.categorical_ranges)

    @property
    def grid_size(self) -> int:
        """How many training jobs the Grid strategy runs: the product of the value counts."""
        size = 1
        for r in self.continuous_ranges:
            size *= len(r.grid_values())
        for r in self.categorical_ranges:
            size *= len(r.values)
        return size


@dataclass(frozen=True)
class FinalTrainingConfig:
    """The instrumented training run that follows tuning: best hyperparameters plus these."""
    static_hyperparameters: Mapping[str, Value] = field(default_factory=lambda: _DEFAULT.final_hyperparameters)

    def __post_init__(self):
        object.__setattr__(self, "static_hyperparameters", _frozen(self.static_hyperparameters))


@dataclass(frozen=True)
class TrainingResources:
    """Compute for every training job (tuning trials and the final run).

    Managed spot training is off by default. With it on, a job may wait for capacity up to
    ``spot_max_wait_seconds`` in all (it must be >= ``max_runtime_seconds``); the final run
    checkpoints to S3 every epoch, so an interruption costs at most one epoch.
    """
    instance_type: str = "ml.g4dn.xlarge"
    instance_count: int = 1
    volume_size_gb: int = 30
    max_runtime_seconds: int = 3 * 3600
    use_spot: bool = False
    spot_max_wait_seconds: int = 6 * 3600

    def __post_init__(self):
        problems = []
        problems.extend(_instance_problems("training instance", self.instance_type))
        if self.instance_count != 1:
            problems.append("train.py trains on one instance: instance_count must be 1")
        if self.volume_size_gb < 1:
            problems.append("volume_size_gb must be at least 1")
        if self.max_runtime_seconds < 1:
            problems.append("max_runtime_seconds must be at least 1")
        if self.use_spot and self.spot_max_wait_seconds < self.max_runtime_seconds:
            problems.append(f"spot max wait ({self.spot_max_wait_seconds}s) must be at least the max runtime "
                            f"({self.max_runtime_seconds}s)")
        _check(problems)


@dataclass(frozen=True)
class FrameworkConfig:
    """The AWS Deep Learning Containers that run train.py and the inference handlers.

    2.6.0 / py312 is the newest PyTorch release that has both a ``pytorch-training`` and a
    ``pytorch-inference`` image in the SageMaker SDK's image registry; training and serving use the
    same torch so a state_dict never crosses versions.
    """
    pytorch_version: str = "2.6.0"
    py_version: str = "py312"
    container_log_level: int = 20   # logging.INFO, passed as sagemaker_container_log_level


@dataclass(frozen=True)
class HostingConfig:
    """The realtime endpoint: one instance variant, or a serverless variant (CPU only, 4 MB payloads)."""
    endpoint_name: str = "dogbreeds"
    instance_type: str = "ml.m5.large"
    instance_count: int = 1
    serverless: bool = False
    serverless_memory_mb: int = 3072
    serverless_max_concurrency: int = 5
    variant_name: str = "AllTraffic"

    def __post_init__(self):
        problems = []
        problems.extend(_instance_problems("inference instance", self.instance_type))
        if self.instance_count < 1:
            problems.append("inference instance_count must be at least 1")
        if self.serverless_memory_mb not in SERVERLESS_MEMORY_SIZES_MB:
            problems.append(f"serverless memory {self.serverless_memory_mb} MB is not one of "
                            f"{', '.join(map(str, SERVERLESS_MEMORY_SIZES_MB))}")
        if not 1 <= self.serverless_max_concurrency <= SERVERLESS_MAX_CONCURRENCY:
            problems.append(f"serverless max concurrency must be 1..{SERVERLESS_MAX_CONCURRENCY}, "
                            f"got {self.serverless_max_concurrency}")
        if not re.fullmatch(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}", self.endpoint_name):
            problems.append(f"endpoint name {self.endpoint_name!r} must be 1-63 letters, digits and inner dashes")
        _check(problems)


@dataclass(frozen=True)
class BatchConfig:
    """Batch transform of images: one S3 object per request, ``.out`` files beside the inputs' names."""
    instance_type: str = "ml.m5.large"
    instance_count: int = 1
    max_payload_mb: int = 6            # the largest image accepted, like the realtime endpoint
    # Requests in flight per instance: twice a batching server's batch (8 images on CPU), so one batch
    # forms while the other runs; 2 left the local server at 0.74 of its images/s (bench/README.md).
    max_concurrent_transforms: int = 16
    content_type: str = "application/x-image"
    accept: str = "application/json"
    invocation_timeout_seconds: int = 60
    invocation_max_retries: int = 1

    def __post_init__(self):
        problems = []
        problems.extend(_instance_problems("transform instance", self.instance_type))
        if self.instance_count < 1:
            problems.append("transform instance_count must be at least 1")
        if not 1 <= self.max_payload_mb <= TRANSFORM_PAYLOAD_LIMIT_MB:
            problems.append(f"max payload must be 1..{TRANSFORM_PAYLOAD_LIMIT_MB} MB, got {self.max_payload_mb}")
        if self.max_concurrent_transforms < 1:
            problems.append("max concurrent transforms must be at least 1")
        elif self.max_concurrent_transforms * self.max_payload_mb > TRANSFORM_PAYLOAD_LIMIT_MB:
            problems.append(f"max concurrent transforms x max payload ({self.max_concurrent_transforms} x "
                            f"{self.max_payload_mb} MB) exceeds {TRANSFORM_PAYLOAD_LIMIT_MB} MB")
        if not 1 <= self.invocation_timeout_seconds <= 3600:
            problems.append("invocation timeout must be 1..3600 seconds")
        if not 0 <= self.invocation_max_retries <= 3:
            problems.append("invocation retries must be 0..3")
        _check(problems)


@dataclass(frozen=True)
class ManagedDebuggerConfig:
    """Opt-in: SageMaker Debugger hook, profiler and rules on the final training job.

    Off by default: Debugger is closed to new customers and our diagnostics run inside the job
    (DESIGN.md). Turn it on only for an account that still has the service; the job then also needs
    smdebug in its container. The rules are the ones the reference projects used.
    """
    enabled: bool = False
    debug_rules: Tuple[str, ...] = ("Overfit", "Overtraining", "PoorWeightInitialization",
                                    "LossNotDecreasing", "VanishingGradient")
    profiler_rules: Tuple[str, ...] = ("LowGPUUtilization", "ProfilerReport")
    collections: Tuple[str, ...] = ("losses", "weights", "gradients", "biases")
    save_interval_steps: int = 100
    profiling_interval_ms: int = 500

    def __post_init__(self):
        if self.profiling_interval_ms not in (100, 200, 500, 1000, 5000, 60000):
            _check([f"profiling interval {self.profiling_interval_ms} ms is not one of 100, 200, 500, 1000, "
                    f"5000, 60000"])


@dataclass(frozen=True)
class QualityGate:
    """Never deploy a model whose ``metric`` is below ``accuracy_floor`` (the next step applies it)."""
    accuracy_floor: float = 0.6
    metric: str = "test:accuracy"

    def __post_init__(self):
        if not 0.0 <= self.accuracy_floor <= 1.0:
            _check([f"accuracy floor must be between 0 and 1, got {self.accuracy_floor}"])


@dataclass(frozen=True)
class BucketLayout:
    """Key prefixes in the bucket (Contract 3). Datasets and batches are the users'; the rest is ours."""
    datasets: str = "datasets/"
    batches: str = BATCHES_PREFIX
    jobs: str = "jobs/"                # job outputs: s3://<bucket>/jobs/<job-name>/
    checkpoints: str = "checkpoints/"  # s3://<bucket>/checkpoints/<training-job-name>/
    code: str = "code/"                # content-addressed sourcedir.tar.gz packages
    features: str = "features/"        # backbone feature sets shared by head-only trials: features/<dataset>/<key>/
    state: str = "pipeline/"           # pipeline state records

    @property
    def state_key(self) -> str:
        """``pipeline/state.json``: the pipeline's one state record (``chalicelib.state``)."""
        return f"{self.state}state.json"

    def __post_init__(self):
        bad = [p for p in (self.datasets, self.batches, self.jobs, self.checkpoints, self.code, self.features,
                                 self.state)
               if not p.endswith("/") or p.startswith("/")]
        if bad:
            _check([f"bucket prefixes must end with '/' and not start with one: {bad}"])


# The environment variables from_env reads, and what each means.
ENV_VARIABLES = {
    "DOGBREEDS_BUCKET": "the S3 bucket (required)",
    "DOGBREEDS_ROLE_ARN": "the IAM role SageMaker jobs, models and transforms run as (required)",
    "DOGBREEDS_REGION": "the AWS region (default: AWS_REGION, which Lambda sets, then AWS_DEFAULT_REGION)",
    "DOGBREEDS_STRATEGY": "tuning strategy: Bayesian (default), Random, Hyperband or Grid",
    "DOGBREEDS_MAX_JOBS": "most training jobs a tuning job launches (default 6; Grid runs its whole grid)",
    "DOGBREEDS_PARALLEL_JOBS": "training jobs a tuning job runs at once (default 2)",
    "DOGBREEDS_TRAINING_INSTANCE": "instance type of training jobs (default ml.g4dn.xlarge)",
    "DOGBREEDS_INFERENCE_INSTANCE": "instance type of the endpoint (default ml.m5.large)",
    "DOGBREEDS_TRANSFORM_INSTANCE": "instance type of batch transforms (default ml.m5.large)",
    "DOGBREEDS_ACCURACY_FLOOR": "the quality gate's minimum test accuracy, 0..1 (default 0.6)",
    "DOGBREEDS_SERVERLESS": "true: serverless endpoint instead of an instance (default false)",
    "DOGBREEDS_SPOT": "true: managed spot training (default false)",
    "DOGBREEDS_MANAGED_DEBUGGER": "true: SageMaker Debugger/Profiler fields on the final run (default false)",
    "DOGBREEDS_ENDPOINT_NAME": "the endpoint's name (default dogbreeds)",
    "DOGBREEDS_TRACE_AWS_CALLS": "true: X-Ray subsegments for the control plane's AWS calls (Powertools' Tracer; "
                                 "adds about 0.3 s to each cold start; default false)",
}

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True)
class PipelineConfig:
    """Everything the control plane needs to build its requests. ``bucket``, ``role_arn`` and
    ``region`` have no default; every other part defaults to the reference projects' choices."""
    bucket: str
    role_arn: str
    region: str
    tuning: TuningConfig = field(default_factory=TuningConfig)
    final_training: FinalTrainingConfig = field(default_factory=FinalTrainingConfig)
    training_resources: TrainingResources = field(default_factory=TrainingResources)
    framework: FrameworkConfig = field(default_factory=FrameworkConfig)
    hosting: HostingConfig = field(default_factory=HostingConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    debugger: ManagedDebuggerConfig = field(default_factory=ManagedDebuggerConfig)
    gate: QualityGate = field(default_factory=QualityGate)
    layout: BucketLayout = field(default_factory=BucketLayout)

    def __post_init__(self):
        problems = _account_problems(self.bucket, self.role_arn, self.region)
        # One model (one image) serves the endpoint and batch transforms: both must want the same variant.
        hosting = "cpu" if self.hosting.serverless else processor_of(self.hosting.instance_type)
        if processor_of(self.batch.instance_type) != hosting:
            where = "a serverless endpoint (CPU)" if self.hosting.serverless else self.hosting.instance_type
            problems.append(f"the transform instance {self.batch.instance_type} and {where} need different "
                            f"images, but one model serves both: choose both CPU or both GPU instances")
        _check(problems)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "PipelineConfig":
        """Read the ``DOGBREEDS_*`` variables (see ``ENV_VARIABLES``) over the defaults.

        Unset or empty variables keep their defaults. Every invalid value is reported at once in a
        ``ConfigError``.
        """
        problems = []

        def text(name):
            value = env.get(name, "").strip()
            return value or None

        def parsed(name, cast, noun):
            value = text(name)
            if value is None:
                return None
            try:
                return cast(value)
            except ValueError:
                problems.append(f"{name}={value!r} is not {noun}")

        def integer(name):
            return parsed(name, int, "a whole number")

        def number(name):
            return parsed(name, float, "a number")

        def flag(name):
            value = text(name)
            if value is None:
                return None
            if value.lower() in _TRUE:
                return True
            if value.lower() in _FALSE:
                return False
            problems.append(f"{name}={value!r} is not true or false")

        def given(**values):
            return {k: v for k, v in values.items() if v is not None}

        bucket = text("DOGBREEDS_BUCKET")
        role_arn = text("DOGBREEDS_ROLE_ARN")
        region = text("DOGBREEDS_REGION") or text("AWS_REGION") or text("AWS_DEFAULT_REGION")
        for name, value in (("DOGBREEDS_BUCKET", bucket), ("DOGBREEDS_ROLE_ARN", role_arn),
                            ("DOGBREEDS_REGION (or AWS_REGION)", region)):
            if value is None:
                problems.append(f"{name} is required")
        problems.extend(_account_problems(bucket, role_arn, region))

        strategy = text("DOGBREEDS_STRATEGY")
        if strategy is not None:
            by_lower = {s.lower(): s for s in STRATEGIES}
            if strategy.lower() in by_lower:
                strategy = by_lower[strategy.lower()]
            else:
                problems.append(f"DOGBREEDS_STRATEGY={strategy!r} is not one of {', '.join(STRATEGIES)}")
                strategy = None

        tuning = given(strategy=strategy, max_training_jobs=integer("DOGBREEDS_MAX_JOBS"),
                       max_parallel_training_jobs=integer("DOGBREEDS_PARALLEL_JOBS"))
        resources = given(instance_type=text("DOGBREEDS_TRAINING_INSTANCE"), use_spot=flag("DOGBREEDS_SPOT"))
        hosting = given(instance_type=text("DOGBREEDS_INFERENCE_INSTANCE"), serverless=flag("DOGBREEDS_SERVERLESS"),
                        endpoint_name=text("DOGBREEDS_ENDPOINT_NAME"))
        batch = given(instance_type=text("DOGBREEDS_TRANSFORM_INSTANCE"))
        gate = given(accuracy_floor=number("DOGBREEDS_ACCURACY_FLOOR"))
        debugger = given(enabled=flag("DOGBREEDS_MANAGED_DEBUGGER"))

        parts = {}
        for key, part, kwargs in (("tuning", TuningConfig, tuning), ("training_resources", TrainingResources, resources),
                                  ("hosting", HostingConfig, hosting), ("batch", BatchConfig, batch),
                                  ("gate", QualityGate, gate), ("debugger", ManagedDebuggerConfig, debugger)):
            try:
                parts[key] = part(**kwargs)
            except ConfigError as exc:
                problems.extend(exc.problems)
        _check(problems)
        return cls(bucket=bucket, role_arn=role_arn, region=region, **parts)  # may still raise: cross-part checks

    @classmethod
    def from_profile(cls, profile: str, bucket: str, role_arn: str, region: str, *, strategy: Optional[str] = None,
                     trials: Optional[int] = None, parallel: Optional[int] = None,
                     trial_epochs: Optional[int] = None, epochs: Optional[int] = None,
                     accuracy_floor: Optional[float] = None, seed: Optional[int] = None) -> "PipelineConfig":
        """``PROFILES[profile]`` for this account, with the settings given changed (None keeps the
        profile's): the tuning ``strategy``, the most ``trials`` and how many run in ``parallel``, the
        ``trial_epochs`` (under Hyperband, its epoch budget too), the instrumented run's ``epochs``, the
        gate's ``accuracy_floor`` and the tuner's ``seed``. Raises ConfigError, naming the setting, for an
        unknown profile or an invalid value."""
        if profile not in PROFILES:
            raise ConfigError([f"unknown profile {profile!r}: one of {', '.join(PROFILES)}"])
        chosen = PROFILES[profile]
        tuning = {"max_training_jobs": chosen.max_training_jobs,
                  "max_parallel_training_jobs": chosen.max_parallel_training_jobs,
                  "continuous_ranges": chosen.continuous_ranges, "categorical_ranges": chosen.categorical_ranges,
                  "static_hyperparameters": chosen.trial_hyperparameters}
        changes = {"strategy": strategy, "max_training_jobs": trials, "max_parallel_training_jobs": parallel,
                   "random_seed": seed}
        tuning.update({name: value for name, value in changes.items() if value is not None})
        final = dict(chosen.final_hyperparameters)
        if trial_epochs is not None:
            tuning["static_hyperparameters"] = {**tuning["static_hyperparameters"], "epochs": trial_epochs}
            tuning["hyperband_max_epochs"] = trial_epochs          # Hyperband gives every trial its maximum
            tuning["hyperband_min_epochs"] = min(TuningConfig.hyperband_min_epochs, trial_epochs)
        if epochs is not None:
            final["epochs"] = epochs
        gate = QualityGate() if accuracy_floor is None else QualityGate(accuracy_floor=accuracy_floor)
        return cls(bucket=bucket, role_arn=role_arn, region=region, tuning=TuningConfig(**tuning),
                   final_training=FinalTrainingConfig(static_hyperparameters=final), gate=gate)


def _account_problems(bucket: Optional[str], role_arn: Optional[str], region: Optional[str]) -> list:
    """What is wrong with the bucket name, role ARN and region (a None value is not checked here)."""
    problems = []
    if bucket is not None and (not _BUCKET.fullmatch(bucket) or ".." in bucket):
        problems.append(f"bucket {bucket!r} is not a valid S3 bucket name")
    if role_arn is not None and not _ROLE_ARN.fullmatch(role_arn):
        problems.append(f"role ARN {role_arn!r} is not an IAM role ARN (arn:aws:iam::<account>:role/<name>)")
    if region is not None and not _REGION.fullmatch(region):
        problems.append(f"region {region!r} does not look like an AWS region (e.g. us-east-1)")
    return problems
