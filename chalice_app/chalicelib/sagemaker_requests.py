"""The exact boto3 ``sagemaker`` requests the pipeline makes, built by pure functions.

Each public ``create_*`` / ``update_*`` function takes the configuration and the facts of one run
(dataset name and publish marker, the source package's S3 URI, the best trial's hyperparameters ...)
and returns the keyword arguments of the boto3 call of the same name::

    sagemaker.create_hyper_parameter_tuning_job(**create_hyper_parameter_tuning_job(config, "dogs", etag, source))

These functions are the single source of truth for every job, on AWS and in the local runtime.
No I/O here, and nothing beyond the standard library and ``batch`` (the transform request's
own package): this module runs on Lambda.

The training source package (``sourcedir.tar.gz``) holds the ``training/`` and ``model_code/``
folders side by side, so the script-mode entry point inside it is ``training/train.py``; the
SageMaker training toolkit runs it as ``python training/train.py --name value ...`` from the
extracted folder, and train.py puts that folder on ``sys.path`` to import both packages.
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Dict, List, Mapping, Sequence, Tuple

from batch import keys as batch_keys
from batch.transform import transform_job_request

from . import names
from .config import PipelineConfig, TuningConfig, Value, processor_of

ENTRY_POINT = "training/train.py"
CHANNELS = ("train", "valid", "test")
IMAGE_CONTENT_TYPE = "application/x-image"
CHECKPOINT_LOCAL_PATH = "/opt/ml/checkpoints"
# Where a head-only tuning trial finds and leaves backbone feature sets (train.py's feature-store); the
# tuning job's CheckpointConfig syncs it with features/<dataset>/ (see shares_features).
FEATURE_STORE_LOCAL_PATH = "/opt/ml/features"

# One regex per number train.py prints (Contract 1):
#   epoch=3 train_loss=0.4123 train_acc=0.8812 val_loss=0.5231 val_acc=0.8431
#   test_loss=0.5012 test_acc=0.8500
# \b keeps a name from matching inside a longer one (best_val_acc=...); the value is digits with an
# optional fraction, so "nan" never becomes a metric and trailing punctuation is not captured.
_NUMBER = r"([0-9]+\.?[0-9]*)"
METRIC_DEFINITIONS = (
    {"Name": "train:loss", "Regex": r"\btrain_loss=" + _NUMBER},
    {"Name": "train:accuracy", "Regex": r"\btrain_acc=" + _NUMBER},
    {"Name": "validation:loss", "Regex": r"\bval_loss=" + _NUMBER},
    {"Name": "validation:accuracy", "Regex": r"\bval_acc=" + _NUMBER},
    {"Name": "test:loss", "Regex": r"\btest_loss=" + _NUMBER},
    {"Name": "test:accuracy", "Regex": r"\btest_acc=" + _NUMBER},
)
METRIC_NAMES = tuple(m["Name"] for m in METRIC_DEFINITIONS)

# AWS Deep Learning Containers registries. Most regions pull from 763104351884; these have their own
# account. Source: the SageMaker Python SDK 2.257's image_uri_config/pytorch.json, the same for
# pytorch-training and pytorch-inference 2.6.0 (and for training 2.7.1 and 2.8.0). ISO partitions are
# left out on purpose. The SDK cannot run here (Lambda), so tests/test_sdk_oracle.py checks every URI
# this table gives against the SDK's image_uris.retrieve, in every region, and that no region is missing.
#
# Which container version (config.FrameworkConfig): pytorch 2.6.0 / py312 for training AND inference.
# The SDK lists training images up to 2.8.0 but inference images only up to 2.6.0, so 2.6.0 is the newest
# torch that can both write and serve a model. Training on 2.8.0 would work (train.py writes a state_dict
# and model.json, which 2.6.0 loads), but one torch for the whole model means the archive never crosses
# versions and the containers' tests need one extra torch, not two.
_DLC_MAIN_ACCOUNT = "763104351884"
_DLC_MAIN_REGIONS = frozenset({
    "ap-northeast-1", "ap-northeast-2", "ap-south-1", "ap-southeast-1", "ap-southeast-2", "ca-central-1",
    "eu-central-1", "eu-north-1", "eu-west-1", "eu-west-2", "eu-west-3", "sa-east-1",
    "us-east-1", "us-east-2", "us-west-1", "us-west-2",
})
_DLC_OTHER_ACCOUNTS = {
    "af-south-1": "626614931356",
    "ap-east-1": "871362719292",
    "ap-east-2": "975050140332",
    "ap-northeast-3": "364406365360",
    "ap-south-2": "772153158452",
    "ap-southeast-3": "907027046896",
    "ap-southeast-4": "457447274322",
    "ap-southeast-5": "550225433462",
    "ap-southeast-6": "633930458069",
    "ap-southeast-7": "590183813437",
    "ca-west-1": "204538143572",
    "cn-north-1": "727897471807",
    "cn-northwest-1": "727897471807",
    "eu-central-2": "380420809688",
    "eu-south-1": "692866216735",
    "eu-south-2": "503227376785",
    "il-central-1": "780543022126",
    "me-central-1": "914824155844",
    "me-south-1": "217643126080",
    "mx-central-1": "637423239942",
    "us-gov-east-1": "446045086412",
    "us-gov-west-1": "442386744353",
}
DLC_REGIONS = frozenset(_DLC_MAIN_REGIONS | set(_DLC_OTHER_ACCOUNTS))   # every region with PyTorch images

# SageMaker Debugger's rule evaluator image (sagemaker-debugger-rules:latest), only needed when the
# managed Debugger opt-in is on. Source: the SageMaker Python SDK's image_uri_config/debugger.json.
_DEBUGGER_RULE_ACCOUNTS = {
    "af-south-1": "314341159256", "ap-east-1": "199566480951", "ap-northeast-1": "430734990657",
    "ap-northeast-2": "578805364391", "ap-northeast-3": "364406365360", "ap-south-1": "904829902805",
    "ap-southeast-1": "972752614525", "ap-southeast-2": "184798709955", "ca-central-1": "519511493484",
    "cn-north-1": "618459771430", "cn-northwest-1": "658757709296", "eu-central-1": "482524230118",
    "eu-north-1": "314864569078", "eu-south-1": "563282790590", "eu-west-1": "929884845733",
    "eu-west-2": "250201462417", "eu-west-3": "447278800020", "me-south-1": "986000313247",
    "sa-east-1": "818342061345", "us-east-1": "503895931360", "us-east-2": "915447279597",
    "us-gov-west-1": "515509971035", "us-west-1": "685455198987", "us-west-2": "895741380848",
}


# --- images -------------------------------------------------------------------------------------

def _ecr_domain(region: str) -> str:
    return "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"


def dlc_account(region: str) -> str:
    """The AWS account whose ECR holds the Deep Learning Containers for ``region``."""
    if region in _DLC_MAIN_REGIONS:
        return _DLC_MAIN_ACCOUNT
    if region in _DLC_OTHER_ACCOUNTS:
        return _DLC_OTHER_ACCOUNTS[region]
    raise ValueError(f"no AWS Deep Learning Containers registry is known for region {region!r}; "
                     f"known regions: {', '.join(sorted(DLC_REGIONS))}")


def _pytorch_image(scope: str, region: str, processor: str, config: PipelineConfig) -> str:
    framework = config.framework
    tag = f"{framework.pytorch_version}-{processor}-{framework.py_version}"
    return f"{dlc_account(region)}.dkr.ecr.{region}.{_ecr_domain(region)}/pytorch-{scope}:{tag}"


def training_image_uri(config: PipelineConfig) -> str:
    """The PyTorch training image for the configured region and training instance (GPU tag for ml.p*/ml.g*)."""
    return _pytorch_image("training", config.region, processor_of(config.training_resources.instance_type), config)


def inference_image_uri(config: PipelineConfig) -> str:
    """The PyTorch inference image for the model: CPU for a serverless endpoint, else per the hosting
    instance (the configuration guarantees batch transforms want the same variant)."""
    hosting = config.hosting
    processor = "cpu" if hosting.serverless else processor_of(hosting.instance_type)
    return _pytorch_image("inference", config.region, processor, config)


def debugger_rules_image_uri(region: str) -> str:
    """SageMaker Debugger's rule evaluator image for ``region`` (managed Debugger opt-in only)."""
    if region not in _DEBUGGER_RULE_ACCOUNTS:
        raise ValueError(f"SageMaker Debugger rule images are not known for region {region!r}; turn the "
                         f"managed Debugger opt-in off (our own diagnostics run in every region)")
    return f"{_DEBUGGER_RULE_ACCOUNTS[region]}.dkr.ecr.{region}.{_ecr_domain(region)}/sagemaker-debugger-rules:latest"


# --- locations ----------------------------------------------------------------------------------

def s3_uri(bucket: str, key: str) -> str:
    """``s3://<bucket>/<key>``."""
    return f"s3://{bucket}/{key}"


def split_s3_uri(uri: str) -> Tuple[str, str]:
    """``s3://bucket/some/key`` -> ``("bucket", "some/key")``; ``s3://bucket`` -> ``("bucket", "")``.
    Raises ValueError for anything that is not an s3:// URI with a bucket."""
    match = re.fullmatch(r"s3://([^/]+)/?(.*)", uri or "", flags=re.DOTALL)
    if not match:
        raise ValueError(f"not an s3:// URI: {uri!r}")
    return match.group(1), match.group(2)


def job_artifact_uri(output_path: str, job_name: str, artifact: str = "model.tar.gz") -> str:
    """Where SageMaker puts a training job's ``model.tar.gz`` (or ``output.tar.gz``):
    ``<S3OutputPath>/<job-name>/output/<artifact>``."""
    return f"{output_path.rstrip('/')}/{job_name}/output/{artifact}"


def _s3(config: PipelineConfig, key: str) -> str:
    return s3_uri(config.bucket, key)


def _path_segment(what: str, value: str) -> str:
    if not value or "/" in value or value in (".", ".."):
        raise ValueError(f"{what} {value!r} must be a single, non-empty S3 key segment (no '/')")
    return value


def dataset_channel_uri(config: PipelineConfig, dataset: str, split: str) -> str:
    """``s3://<bucket>/datasets/<dataset>/<split>/`` (Contract 3)."""
    return _s3(config, f"{config.layout.datasets}{_path_segment('dataset name', dataset)}/{split}/")


def job_output_path(config: PipelineConfig, job_name: str) -> str:
    """Where a job writes: ``s3://<bucket>/jobs/<job-name>/`` (a tuning job's trials nest below it)."""
    return _s3(config, f"{config.layout.jobs}{job_name}/")


def model_artifact_uri(config: PipelineConfig, training_job_name: str) -> str:
    """Where SageMaker puts the final training job's ``model.tar.gz`` (below its output path)."""
    return job_artifact_uri(job_output_path(config, training_job_name), training_job_name)


def checkpoint_uri(config: PipelineConfig, training_job_name: str) -> str:
    """``s3://<bucket>/checkpoints/<training-job-name>/``: synced with /opt/ml/checkpoints."""
    return _s3(config, f"{config.layout.checkpoints}{training_job_name}/")


def feature_store_uri(config: PipelineConfig, dataset: str) -> str:
    """``s3://<bucket>/features/<dataset>/``: the dataset's backbone feature sets, one ``<key>/`` each
    (content-addressed by training/features.py; a stale or broken set is recomputed, never trusted)."""
    return _s3(config, f"{config.layout.features}{_path_segment('dataset name', dataset)}/")


def source_package_uri(config: PipelineConfig, digest: str) -> str:
    """``s3://<bucket>/code/sourcedir-<digest>.tar.gz``: the content-addressed training source package."""
    return _s3(config, f"{config.layout.code}sourcedir-{_path_segment('digest', digest)}.tar.gz")


def batch_input_uri(config: PipelineConfig, batch_id: str) -> str:
    """``s3://<bucket>/batch/<id>/input/`` (Contract 3)."""
    return _s3(config, batch_keys.input_prefix(_path_segment("batch id", batch_id), config.layout.batches))


def batch_output_uri(config: PipelineConfig, batch_id: str) -> str:
    """``s3://<bucket>/batch/<id>/output/``: one ``<image>.out`` per input lands here."""
    return _s3(config, batch_keys.output_prefix(_path_segment("batch id", batch_id), config.layout.batches))


# --- hyperparameters ----------------------------------------------------------------------------

def encode_hyperparameters(values: Mapping[str, Value]) -> Dict[str, str]:
    """Every value JSON-encoded, as the SageMaker Python SDK sends script-mode hyperparameters
    (``"head"`` -> ``'"head"'``, ``0.001`` -> ``'0.001'``); train.py decodes them with a fallback."""
    return {str(name): json.dumps(value) for name, value in values.items()}


def decode_hyperparameter(text: str) -> Value:
    """A hyperparameter value as SageMaker reports it, decoded: JSON when it parses, else the raw text."""
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text


def script_mode_hyperparameters(config: PipelineConfig, source_uri: str) -> Dict[str, Value]:
    """The hyperparameters SageMaker's PyTorch training container reads to fetch and run our code."""
    if not (source_uri.startswith("s3://") and source_uri.endswith(".tar.gz")):
        raise ValueError(f"the source package must be an s3://....tar.gz URI, got {source_uri!r}")
    return {
        "sagemaker_program": ENTRY_POINT,
        "sagemaker_submit_directory": source_uri,
        "sagemaker_region": config.region,
        "sagemaker_container_log_level": config.framework.container_log_level,
    }


def _number(value: float) -> str:
    return repr(float(value))


def parameter_ranges(tuning: TuningConfig) -> Dict[str, list]:
    """``ParameterRanges`` for the strategy. Categorical values are JSON-encoded like static
    hyperparameters; under Grid, which takes categorical ranges only, every continuous range becomes
    a categorical one over its ``grid_values()``."""
    categorical = [{"Name": r.name, "Values": [json.dumps(v) for v in r.values]} for r in tuning.categorical_ranges]
    if tuning.strategy == "Grid":
        gridded = [{"Name": r.name, "Values": [json.dumps(v) for v in r.grid_values()]}
                   for r in tuning.continuous_ranges]
        return {"CategoricalParameterRanges": gridded + categorical}
    ranges = {}
    if tuning.continuous_ranges:
        ranges["ContinuousParameterRanges"] = [
            {"Name": r.name, "MinValue": _number(r.min_value), "MaxValue": _number(r.max_value), "ScalingType": r.scaling}
            for r in tuning.continuous_ranges]
    if categorical:
        ranges["CategoricalParameterRanges"] = categorical
    return ranges


def early_stopping_type(strategy: str) -> str:
    """``Auto`` for Bayesian and Random. ``Off`` for Hyperband, which stops trials itself (SageMaker
    requires Off), and for Grid, whose point is to measure every combination fully."""
    return "Auto" if strategy in ("Bayesian", "Random") else "Off"


def best_tuned_values(tuning: TuningConfig, best_hyperparameters: Mapping[str, str]) -> Dict[str, Value]:
    """The tuned hyperparameters of the best trial, decoded.

    ``best_hyperparameters`` is what SageMaker reports: ``BestTrainingJob.TunedHyperParameters`` or
    the best job's ``HyperParameters`` (string values, JSON-encoded or not). Only the tuned names are
    kept; ``_tuning_objective_metric``, ``sagemaker_*`` and trial-only statics are dropped.
    """
    missing = [name for name in tuning.tuned_names if name not in best_hyperparameters]
    if missing:
        raise ValueError(f"the best trial's hyperparameters lack the tuned {', '.join(missing)} "
                         f"(got {', '.join(sorted(best_hyperparameters)) or 'none'})")
    return {name: decode_hyperparameter(best_hyperparameters[name]) for name in tuning.tuned_names}


# --- pieces shared by tuning trials and the final run -------------------------------------------

def _tag_value(text: str) -> str:
    """``text`` with characters SageMaker tags refuse replaced by '_' (allowed: letters, digits,
    spaces and _ . : / = + - @), at most 256 characters."""
    def allowed(ch):
        return unicodedata.category(ch)[0] in "LZN" or ch in "_.:/=+-@"
    return "".join(ch if allowed(ch) else "_" for ch in str(text))[:256]


def resource_tags(stage: str, subject_key: str, subject: str, marker: str) -> List[Dict[str, str]]:
    """Tags naming the pipeline stage and the run (dataset or batch, and marker) a resource belongs to."""
    return [
        {"Key": "dogbreeds:stage", "Value": stage},
        {"Key": f"dogbreeds:{subject_key}", "Value": _tag_value(subject)},
        {"Key": "dogbreeds:marker", "Value": _tag_value(names.normalise_marker(marker))},
    ]


def input_channels(config: PipelineConfig, dataset: str, channels: Sequence[str] = CHANNELS) -> List[dict]:
    """File-mode S3Prefix channels over ``datasets/<name>/<split>/``. ``train`` is required; pass only
    the splits the dataset has (train.py splits valid/test from train when they are absent)."""
    unknown = [c for c in channels if c not in CHANNELS]
    if unknown or "train" not in channels or len(set(channels)) != len(channels):
        raise ValueError(f"channels must include train and may add valid and test, got {list(channels)}")
    return [{
        "ChannelName": split,
        "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": dataset_channel_uri(config, dataset, split),
                                        "S3DataDistributionType": "FullyReplicated"}},
        "ContentType": IMAGE_CONTENT_TYPE,
        "InputMode": "File",
    } for split in channels]


def _algorithm_specification(config: PipelineConfig) -> dict:
    return {"TrainingImage": training_image_uri(config), "TrainingInputMode": "File",
            "MetricDefinitions": [dict(m) for m in METRIC_DEFINITIONS]}


def _training_definition(config: PipelineConfig, dataset: str, channels, output_name: str) -> dict:
    """The fields a tuning job's TrainingJobDefinition and a CreateTrainingJob request share."""
    return {
        "AlgorithmSpecification": _algorithm_specification(config),
        "RoleArn": config.role_arn,
        "InputDataConfig": input_channels(config, dataset, channels),
        "OutputDataConfig": {"S3OutputPath": job_output_path(config, output_name)},
        "ResourceConfig": _resource_config(config),
        "StoppingCondition": _stopping_condition(config),
        "EnableManagedSpotTraining": config.training_resources.use_spot,
    }


def _resource_config(config: PipelineConfig) -> dict:
    resources = config.training_resources
    return {"InstanceType": resources.instance_type, "InstanceCount": resources.instance_count,
            "VolumeSizeInGB": resources.volume_size_gb}


def _stopping_condition(config: PipelineConfig) -> dict:
    resources = config.training_resources
    condition = {"MaxRuntimeInSeconds": resources.max_runtime_seconds}
    if resources.use_spot:
        condition["MaxWaitTimeInSeconds"] = resources.spot_max_wait_seconds
    return condition


def shares_features(tuning: TuningConfig) -> bool:
    """Do the trials train a head on cached backbone features (train.py's ``cached`` mode: finetune=head,
    augment none, feature cache on, none of them tuned), and does the configuration let them share? Then they can share one extraction per feature key.
    Unset hyperparameters take train.py's defaults (head, auto = none for head, auto)."""
    static = tuning.static_hyperparameters
    if not tuning.share_features or set(tuning.tuned_names) & {"finetune", "augment", "feature-cache"}:
        return False
    return (static.get("finetune", "head") == "head" and static.get("augment", "auto") in ("auto", "none")
            and static.get("feature-cache", "auto") == "auto")


# --- the requests -------------------------------------------------------------------------------

def create_hyper_parameter_tuning_job(config: PipelineConfig, dataset: str, marker: str, source_uri: str,
                                      channels: Sequence[str] = CHANNELS) -> dict:
    """Request for ``create_hyper_parameter_tuning_job``: tune the configured ranges on one published dataset.

    In: the configuration, the dataset's name and publish marker (they fix the job's name), the S3
    URI of the training source package, the dataset's splits. Out: the request's keyword arguments.
    Trials run train.py with the trial statics and write below ``jobs/<tuning-job-name>/``; they do
    not checkpoint to S3 (parallel trials would share one checkpoint prefix).

    Head-only trials (``shares_features``) share backbone features instead: the definition's
    ``CheckpointConfig`` syncs ``features/<dataset>/`` with ``/opt/ml/features`` and the static
    ``feature-store`` points train.py there. SageMaker gives every trial the definition's S3Uri as is, so
    each trial starts with the feature sets already uploaded, reads a whole one with its key, and
    otherwise extracts and leaves a new one that SageMaker uploads for the trials after it
    (training/features.py). An input channel would not do: channels are read-only, and one over an
    empty prefix fails the job.
    """
    tuning = config.tuning
    if tuning.objective_metric not in METRIC_NAMES:
        raise ValueError(f"objective metric {tuning.objective_metric!r} is none of the metrics train.py "
                         f"reports: {', '.join(METRIC_NAMES)}")
    name = names.tuning_job_name(dataset, marker)
    static = dict(tuning.static_hyperparameters)
    job_count = tuning.max_training_jobs
    job_config = {"Strategy": tuning.strategy}
    if tuning.strategy == "Hyperband":
        static["epochs"] = tuning.hyperband_max_epochs   # Hyperband's resource is the epoch
        job_config["StrategyConfig"] = {"HyperbandStrategyConfig": {
            "MinResource": tuning.hyperband_min_epochs, "MaxResource": tuning.hyperband_max_epochs}}
    elif tuning.strategy == "Grid":
        job_count = tuning.grid_size   # SageMaker: if given for Grid, it must equal the number of combinations
    static.update(script_mode_hyperparameters(config, source_uri))
    job_config.update({
        "HyperParameterTuningJobObjective": {"Type": tuning.objective_type, "MetricName": tuning.objective_metric},
        "ResourceLimits": {"MaxNumberOfTrainingJobs": job_count,
                           "MaxParallelTrainingJobs": min(tuning.max_parallel_training_jobs, job_count)},
        "ParameterRanges": parameter_ranges(tuning),
        "TrainingJobEarlyStoppingType": early_stopping_type(tuning.strategy),
    })
    if tuning.random_seed is not None:
        job_config["RandomSeed"] = tuning.random_seed
    shared = shares_features(tuning)
    if shared:
        static["feature-store"] = FEATURE_STORE_LOCAL_PATH
    definition = {"StaticHyperParameters": encode_hyperparameters(static),
                  **_training_definition(config, dataset, channels, name)}
    if shared:
        definition["CheckpointConfig"] = {"S3Uri": feature_store_uri(config, dataset),
                                          "LocalPath": FEATURE_STORE_LOCAL_PATH}
    return {
        "HyperParameterTuningJobName": name,
        "HyperParameterTuningJobConfig": job_config,
        "TrainingJobDefinition": definition,
        "Tags": resource_tags("tuning", "dataset", dataset, marker),
    }


def managed_debugger_fields(config: PipelineConfig, training_job_name: str) -> dict:
    """``DebugHookConfig``, ``DebugRuleConfigurations``, ``ProfilerConfig`` and
    ``ProfilerRuleConfigurations`` for the final run, writing below its output path (opt-in only)."""
    debugger = config.debugger
    base = job_output_path(config, training_job_name)
    rules_image = debugger_rules_image_uri(config.region)

    def rules(names_):
        return [{"RuleConfigurationName": rule, "RuleEvaluatorImage": rules_image,
                 "S3OutputPath": f"{base}rule-output", "RuleParameters": {"rule_to_invoke": rule}}
                for rule in names_]

    return {
        "DebugHookConfig": {
            "S3OutputPath": f"{base}debug-output",
            "CollectionConfigurations": [
                {"CollectionName": c, "CollectionParameters": {"save_interval": str(debugger.save_interval_steps)}}
                for c in debugger.collections],
        },
        "DebugRuleConfigurations": rules(debugger.debug_rules),
        "ProfilerConfig": {"S3OutputPath": f"{base}profiler-output",
                           "ProfilingIntervalInMilliseconds": debugger.profiling_interval_ms},
        "ProfilerRuleConfigurations": rules(debugger.profiler_rules),
    }


def create_training_job(config: PipelineConfig, dataset: str, marker: str, source_uri: str,
                        best_hyperparameters: Mapping[str, str], channels: Sequence[str] = CHANNELS) -> dict:
    """Request for ``create_training_job``: the instrumented run with the best trial's hyperparameters.

    In: the configuration, the run's dataset and marker, the source package URI, the best trial's
    hyperparameters as SageMaker reports them (see ``best_tuned_values``), the dataset's splits.
    Out: the request. Hyperparameters are the best tuned values overlaid by the final run's statics
    (more epochs, profiler trace on) and the script-mode ones. The job checkpoints every epoch to
    ``checkpoints/<job-name>/``; spot training and the managed Debugger fields follow the configuration.
    """
    name = names.training_job_name(dataset, marker)
    hyperparameters = best_tuned_values(config.tuning, best_hyperparameters)
    hyperparameters.update(config.final_training.static_hyperparameters)
    hyperparameters.update(script_mode_hyperparameters(config, source_uri))
    request = {
        "TrainingJobName": name,
        "HyperParameters": encode_hyperparameters(hyperparameters),
        **_training_definition(config, dataset, channels, name),
        "CheckpointConfig": {"S3Uri": checkpoint_uri(config, name), "LocalPath": CHECKPOINT_LOCAL_PATH},
        "Tags": resource_tags("training", "dataset", dataset, marker),
    }
    if config.debugger.enabled:
        request.update(managed_debugger_fields(config, name))
    return request


def create_model(config: PipelineConfig, dataset: str, marker: str, model_data_url: str) -> dict:
    """Request for ``create_model``: the PyTorch inference container over the run's ``model.tar.gz``.

    In: the configuration, the run's dataset and marker, the S3 URI of the model artifact (the final
    training job's ``ModelArtifacts.S3ModelArtifacts``). Out: the request. The container loads
    ``code/inference.py`` from inside the archive (DESIGN.md), hence the SAGEMAKER_* environment.
    """
    if not (model_data_url.startswith("s3://") and model_data_url.endswith(".tar.gz")):
        raise ValueError(f"the model artifact must be an s3://....tar.gz URI, got {model_data_url!r}")
    return {
        "ModelName": names.model_name(dataset, marker),
        "PrimaryContainer": {
            "Image": inference_image_uri(config),
            "ModelDataUrl": model_data_url,
            "Environment": {
                "SAGEMAKER_PROGRAM": "inference.py",
                "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code",
                "SAGEMAKER_REGION": config.region,
                "SAGEMAKER_CONTAINER_LOG_LEVEL": str(config.framework.container_log_level),
            },
        },
        "ExecutionRoleArn": config.role_arn,
        "Tags": resource_tags("model", "dataset", dataset, marker),
    }


def create_endpoint_config(config: PipelineConfig, dataset: str, marker: str) -> dict:
    """Request for ``create_endpoint_config``: one variant serving the run's model, on an instance or
    serverless (``ServerlessConfig``) as configured."""
    hosting = config.hosting
    variant = {"VariantName": hosting.variant_name, "ModelName": names.model_name(dataset, marker)}
    if hosting.serverless:
        variant["ServerlessConfig"] = {"MemorySizeInMB": hosting.serverless_memory_mb,
                                       "MaxConcurrency": hosting.serverless_max_concurrency}
    else:
        variant.update({"InstanceType": hosting.instance_type, "InitialInstanceCount": hosting.instance_count,
                        "InitialVariantWeight": 1.0})
    return {
        "EndpointConfigName": names.endpoint_config_name(dataset, marker),
        "ProductionVariants": [variant],
        "Tags": resource_tags("endpoint-config", "dataset", dataset, marker),
    }


def create_endpoint(config: PipelineConfig, dataset: str, marker: str) -> dict:
    """Request for ``create_endpoint``: the deployment's stable endpoint, first served by this run."""
    return {
        "EndpointName": names.endpoint_name(config.hosting.endpoint_name),
        "EndpointConfigName": names.endpoint_config_name(dataset, marker),
        "Tags": [{"Key": "dogbreeds:stage", "Value": "endpoint"}],
    }


def update_endpoint(config: PipelineConfig, dataset: str, marker: str) -> dict:
    """Request for ``update_endpoint``: switch the stable endpoint to this run's endpoint config."""
    return {
        "EndpointName": names.endpoint_name(config.hosting.endpoint_name),
        "EndpointConfigName": names.endpoint_config_name(dataset, marker),
    }


def create_transform_job(config: PipelineConfig, batch_id: str, marker: str, model_name: str) -> dict:
    """Request for ``create_transform_job``: classify every image under ``batch/<id>/input/``.

    In: the configuration, the batch id and its marker (they fix the job's name), the deployed
    model's name. Out: the request, built by ``batch.transform.transform_job_request`` with the
    configured ``BatchConfig``: one request per image of at most ``max_payload_mb``, one
    ``<image>.out`` per input under ``batch/<id>/output/``.
    """
    return transform_job_request(
        names.transform_job_name(batch_id, marker), model_name,
        batch_input_uri(config, batch_id), batch_output_uri(config, batch_id), config.batch,
        resource_tags("transform", "batch", batch_id, marker))
