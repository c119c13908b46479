"""Our request builders against the SageMaker Python SDK: the same job built both ways sends the same
fields, and every field where they differ is a named, explained ``Difference``.

The SDK cannot run on Lambda (chalicelib stays stdlib-only), so it is only a dev dependency: here it
builds each request through its public classes (``HyperparameterTuner`` over a ``PyTorch`` estimator,
``PyTorch.fit``, ``PyTorchModel.create``, ``Session.create_endpoint_config``, ``Transformer``) against
a stubbed session (tests/sdk_oracle_support.py), and the PyTorch image URIs of every region we support
come from its ``image_uris.retrieve``.
"""

from __future__ import annotations

import json

import pytest
from sdk_oracle_support import ABSENT, Difference, compare, stubbed_session  # first: it quiets the SDK's import

import sagemaker.utils
from sagemaker import image_uris
from sagemaker.inputs import TrainingInput
from sagemaker.pytorch import PyTorch, PyTorchModel
from sagemaker.serverless import ServerlessInferenceConfig
from sagemaker.transformer import Transformer
from sagemaker.tuner import (CategoricalParameter, ContinuousParameter, HyperbandStrategyConfig,
                             HyperparameterTuner, StrategyConfig)

from chalicelib import names
from chalicelib import sagemaker_requests as requests
from chalicelib.config import (BatchConfig, FrameworkConfig, HostingConfig, PipelineConfig, TrainingResources,
                               TuningConfig)
from request_support import ETAG, MODEL_DATA, ROLE, SOURCE

DATASET = "dogImages"
# What DescribeTrainingJob reports for the best trial: JSON-encoded tuned values plus the tuner's extras.
BEST_TRIAL = {"lr": "0.0031", "weight-decay": "0.012", "eps": "3.2e-08", "batch-size": "64",
              "arch": '"resnet34"', "_tuning_objective_metric": '"validation:accuracy"'}
BEST_VALUES = {"lr": 0.0031, "weight-decay": 0.012, "eps": 3.2e-08, "batch-size": 64, "arch": "resnet34"}
# What DESIGN.md says of early stopping, per strategy, written here independently of early_stopping_type().
FRAMEWORK = FrameworkConfig()
EARLY_STOPPING = {"Bayesian": "Auto", "Random": "Auto", "Hyperband": "Off", "Grid": "Off"}


def make_config(region: str = "us-east-1", **parts) -> PipelineConfig:
    return PipelineConfig(bucket="dogbreeds-bucket", role_arn=ROLE, region=region, **parts)


# --- the same requests, built by the SDK ----------------------------------------------------------

def _estimator(config: PipelineConfig, session, hyperparameters: dict, output_path: str, **extra) -> PyTorch:
    """A PyTorch estimator for our training code, as a SageMaker user would write it."""
    resources = config.training_resources
    spot = {"use_spot_instances": True, "max_wait": resources.spot_max_wait_seconds} if resources.use_spot else {}
    return PyTorch(entry_point=requests.ENTRY_POINT, source_dir=SOURCE, role=ROLE,
                   framework_version=config.framework.pytorch_version, py_version=config.framework.py_version,
                   instance_type=resources.instance_type, instance_count=resources.instance_count,
                   volume_size=resources.volume_size_gb, max_run=resources.max_runtime_seconds,
                   hyperparameters=hyperparameters, output_path=output_path,
                   metric_definitions=[dict(m) for m in requests.METRIC_DEFINITIONS],
                   container_log_level=config.framework.container_log_level,
                   debugger_hook_config=False, disable_profiler=True, sagemaker_session=session, **spot, **extra)


def _channels(config: PipelineConfig) -> dict:
    return {split: TrainingInput(f"s3://{config.bucket}/datasets/{DATASET}/{split}/", content_type="application/x-image")
            for split in ("train", "valid", "test")}


def _tags(stage: str, subject_key: str, subject: str) -> list:
    return [{"Key": "dogbreeds:stage", "Value": stage}, {"Key": f"dogbreeds:{subject_key}", "Value": subject},
            {"Key": "dogbreeds:marker", "Value": ETAG.strip('"')}]


def sdk_tuning_request(config: PipelineConfig) -> dict:
    """CreateHyperParameterTuningJob as the SDK's HyperparameterTuner sends it for our configuration."""
    tuning = config.tuning
    name = names.tuning_job_name(DATASET, ETAG)
    static = dict(tuning.static_hyperparameters)
    extra = {}
    if tuning.strategy == "Hyperband":
        static["epochs"] = tuning.hyperband_max_epochs
        extra["strategy_config"] = StrategyConfig(HyperbandStrategyConfig(
            min_resource=tuning.hyperband_min_epochs, max_resource=tuning.hyperband_max_epochs))
    if tuning.strategy == "Grid":
        ranges = {r.name: CategoricalParameter(list(r.grid_values())) for r in tuning.continuous_ranges}
    else:
        ranges = {r.name: ContinuousParameter(r.min_value, r.max_value, scaling_type=r.scaling)
                  for r in tuning.continuous_ranges}
    ranges.update({r.name: CategoricalParameter(list(r.values)) for r in tuning.categorical_ranges})
    checkpoints = {}
    if requests.shares_features(tuning):   # head-only trials: the shared feature store, as a tuner's estimator says it
        static["feature-store"] = "/opt/ml/features"
        checkpoints = {"checkpoint_s3_uri": f"s3://{config.bucket}/features/{DATASET}/",
                       "checkpoint_local_path": "/opt/ml/features"}
    with stubbed_session(config.region, ["create_hyper_parameter_tuning_job"]) as (session, recorded):
        estimator = _estimator(config, session, static, f"s3://{config.bucket}/jobs/{name}/", **checkpoints)
        tuner = HyperparameterTuner(
            estimator, tuning.objective_metric, ranges, objective_type=tuning.objective_type,
            metric_definitions=[dict(m) for m in requests.METRIC_DEFINITIONS], strategy=tuning.strategy,
            max_jobs=tuning.grid_size if tuning.strategy == "Grid" else tuning.max_training_jobs,
            max_parallel_jobs=tuning.max_parallel_training_jobs, early_stopping_type=EARLY_STOPPING[tuning.strategy],
            random_seed=tuning.random_seed, tags=_tags("tuning", "dataset", DATASET), **extra)
        tuner.fit(_channels(config), job_name=name, wait=False)
    return recorded.only("CreateHyperParameterTuningJob")


def sdk_training_request(config: PipelineConfig) -> dict:
    """CreateTrainingJob as the SDK's PyTorch estimator sends it for the instrumented run."""
    name = names.training_job_name(DATASET, ETAG)
    hyperparameters = {**BEST_VALUES, **config.final_training.static_hyperparameters}
    with stubbed_session(config.region, ["create_training_job"]) as (session, recorded):
        estimator = _estimator(config, session, hyperparameters, f"s3://{config.bucket}/jobs/{name}/",
                               checkpoint_s3_uri=f"s3://{config.bucket}/checkpoints/{name}/",
                               checkpoint_local_path="/opt/ml/checkpoints", tags=_tags("training", "dataset", DATASET))
        estimator.fit(_channels(config), job_name=name, wait=False, logs=False)
    return recorded.only("CreateTrainingJob")


def sdk_model_request(config: PipelineConfig, monkeypatch) -> tuple:
    """CreateModel as the SDK's PyTorchModel sends it, and what it asked to repack (its only S3 I/O)."""
    repacks = []
    monkeypatch.setattr(sagemaker.utils, "repack_model", lambda **kwargs: repacks.append(kwargs))
    hosting = config.hosting
    where = ({"serverless_inference_config": ServerlessInferenceConfig(hosting.serverless_memory_mb,
                                                                      hosting.serverless_max_concurrency)}
             if hosting.serverless else {"instance_type": hosting.instance_type})
    with stubbed_session(config.region, ["create_model"]) as (session, recorded):
        model = PyTorchModel(MODEL_DATA, ROLE, entry_point="inference.py", name=names.model_name(DATASET, ETAG),
                             framework_version=config.framework.pytorch_version,
                             py_version=config.framework.py_version,
                             container_log_level=config.framework.container_log_level,
                             code_location=f"s3://{config.bucket}/code", sagemaker_session=session)
        model.create(tags=_tags("model", "dataset", DATASET), **where)
    return recorded.only("CreateModel"), repacks


def sdk_endpoint_config_request(config: PipelineConfig) -> dict:
    """CreateEndpointConfig as the SDK's Session sends it for one instance or serverless variant."""
    hosting = config.hosting
    with stubbed_session(config.region, ["create_endpoint_config"]) as (session, recorded):
        if hosting.serverless:
            serverless = ServerlessInferenceConfig(hosting.serverless_memory_mb, hosting.serverless_max_concurrency)
            where = {"serverless_inference_config_dict": serverless._to_request_dict()}
        else:
            where = {"initial_instance_count": hosting.instance_count, "instance_type": hosting.instance_type}
        session.create_endpoint_config(names.endpoint_config_name(DATASET, ETAG), names.model_name(DATASET, ETAG),
                                       tags=_tags("endpoint-config", "dataset", DATASET), **where)
    return recorded.only("CreateEndpointConfig")


def sdk_transform_request(config: PipelineConfig, batch_id: str, marker: str, model_name: str) -> dict:
    """CreateTransformJob as the SDK's Transformer sends it: one image a request, one .out per image."""
    batch = config.batch
    with stubbed_session(config.region, ["create_transform_job"]) as (session, recorded):
        transformer = Transformer(model_name, batch.instance_count, batch.instance_type, strategy="SingleRecord",
                                  output_path=f"s3://{config.bucket}/batch/{batch_id}/output/", accept=batch.accept,
                                  max_concurrent_transforms=batch.max_concurrent_transforms,
                                  max_payload=batch.max_payload_mb, sagemaker_session=session,
                                  tags=[{"Key": "dogbreeds:stage", "Value": "transform"},
                                        {"Key": "dogbreeds:batch", "Value": batch_id},
                                        {"Key": "dogbreeds:marker", "Value": marker}])
        transformer.transform(f"s3://{config.bucket}/batch/{batch_id}/input/", content_type=batch.content_type,
                              job_name=names.transform_job_name(batch_id, marker),
                              model_client_config={"InvocationsTimeoutInSeconds": batch.invocation_timeout_seconds,
                                                   "InvocationsMaxRetries": batch.invocation_max_retries},
                              wait=False, logs=False)
    return recorded.only("CreateTransformJob")


# --- the intentional differences, each named with its reason ---------------------------------------

_BOOKKEEPING = ("the SDK's own bookkeeping (Estimator.attach() reads it back); the training toolkit runs "
                "train.py from sagemaker_program and sagemaker_submit_directory alone")
_CHANNEL_MODE = ("we state each channel's InputMode; absent, a channel takes the job's TrainingInputMode, "
                 "File on both sides")
_SPOT_OFF = "we state on-demand training (False); absent means the same"


def tuning_differences(config: PipelineConfig) -> list:
    """Where our CreateHyperParameterTuningJob differs from the SDK's on purpose."""
    hp = "TrainingJobDefinition.StaticHyperParameters"
    name = names.tuning_job_name(DATASET, ETAG)
    resources = config.training_resources
    differences = [
        Difference(f"{hp}.sagemaker_estimator_class_name", '"PyTorch"', ABSENT, _BOOKKEEPING),
        Difference(f"{hp}.sagemaker_estimator_module", '"sagemaker.pytorch.estimator"', ABSENT, _BOOKKEEPING),
        Difference(f"{hp}.sagemaker_job_name", f'"{name}"', ABSENT,
                   "names the tuning job, not the trial, in every trial: " + _BOOKKEEPING),
        Difference("TrainingJobDefinition.InputDataConfig[*].InputMode", ABSENT, "File", _CHANNEL_MODE),
    ]
    # One instance type: the SDK's newer HyperParameterTuningResourceConfig and our ResourceConfig say the same.
    for field_name, value in (("InstanceType", resources.instance_type), ("InstanceCount", resources.instance_count),
                              ("VolumeSizeInGB", resources.volume_size_gb)):
        why = "the same single-instance-type resources, under the name CreateTrainingJob also uses"
        differences += [Difference(f"TrainingJobDefinition.HyperParameterTuningResourceConfig.{field_name}",
                                   value, ABSENT, why),
                        Difference(f"TrainingJobDefinition.ResourceConfig.{field_name}", ABSENT, value, why)]
    if not resources.use_spot:
        differences.append(Difference("TrainingJobDefinition.EnableManagedSpotTraining", ABSENT, False, _SPOT_OFF))
    # The SDK turns every categorical value into text before JSON-encoding it; we encode the value itself,
    # so the best trial's numbers decode back to numbers (best_tuned_values). The training toolkit decodes
    # both and passes train.py the same argument text (--batch-size 32).
    tuning = config.tuning
    gridded = [r.grid_values() for r in tuning.continuous_ranges] if tuning.strategy == "Grid" else []
    for i, values in enumerate(gridded + [r.values for r in tuning.categorical_ranges]):
        differences += [Difference(f"HyperParameterTuningJobConfig.ParameterRanges.CategoricalParameterRanges[{i}]"
                                   f".Values[{j}]", f'"{value}"', json.dumps(value), "typed categorical values")
                        for j, value in enumerate(values) if not isinstance(value, str)]
    return differences


def training_differences(config: PipelineConfig) -> list:
    """Where our CreateTrainingJob differs from the SDK's on purpose."""
    name = names.training_job_name(DATASET, ETAG)
    differences = [
        Difference("HyperParameters.sagemaker_job_name", f'"{name}"', ABSENT, _BOOKKEEPING),
        Difference("InputDataConfig[*].InputMode", ABSENT, "File", _CHANNEL_MODE),
        Difference("AlgorithmSpecification.EnableSageMakerMetricsTimeSeries", True, ABSENT,
                   "the pipeline reads FinalMetricDataList, which the metric definitions fill either way; the "
                   "time series are for SageMaker Experiments, which nothing here uses"),
        Difference("ProfilerConfig.DisableProfiler", True, ABSENT,
                   "the SDK says 'no profiler' in a field; we leave ProfilerConfig out unless the managed "
                   "Debugger opt-in is on (our diagnostics run inside the job)"),
    ]
    if not config.training_resources.use_spot:
        differences.append(Difference("EnableManagedSpotTraining", ABSENT, False, _SPOT_OFF))
    return differences


_TRANSFORM_DIFFERENCES = [
    Difference("TransformInput.CompressionType", ABSENT, "None", "we state SageMaker's default: no compression"),
    Difference("TransformInput.SplitType", ABSENT, "None", "we state SageMaker's default: one object is one record"),
    Difference("TransformOutput.AssembleWith", ABSENT, "None", "we state SageMaker's default: one .out per input"),
]


def _assert_agrees(ours: dict, sdk: dict, differences: list) -> None:
    problems = compare(ours, sdk, differences)
    assert not problems, "our request and the SDK's differ:\n  " + "\n  ".join(problems)


# --- the requests ---------------------------------------------------------------------------------

TUNING_CASES = {
    "bayesian": TuningConfig(),
    "full-finetune": TuningConfig(static_hyperparameters={**TuningConfig().static_hyperparameters,
                                                          "finetune": "full"}),
    "random-seeded": TuningConfig(strategy="Random", random_seed=7),
    "hyperband": TuningConfig(strategy="Hyperband"),
    "grid": TuningConfig(strategy="Grid"),
}


@pytest.mark.parametrize("case", TUNING_CASES)
def test_the_tuning_job_is_the_one_the_sdk_tuner_sends(case):
    config = make_config(tuning=TUNING_CASES[case])
    ours = requests.create_hyper_parameter_tuning_job(config, DATASET, ETAG, SOURCE)
    _assert_agrees(ours, sdk_tuning_request(config), tuning_differences(config))


def test_the_spot_tuning_job_is_the_one_the_sdk_tuner_sends():
    config = make_config(training_resources=TrainingResources(use_spot=True))
    ours = requests.create_hyper_parameter_tuning_job(config, DATASET, ETAG, SOURCE)
    _assert_agrees(ours, sdk_tuning_request(config), tuning_differences(config))


@pytest.mark.parametrize("spot", [False, True], ids=["on-demand", "spot"])
def test_the_training_job_is_the_one_the_sdk_estimator_sends(spot):
    config = make_config(training_resources=TrainingResources(use_spot=spot))
    ours = requests.create_training_job(config, DATASET, ETAG, SOURCE, BEST_TRIAL)
    _assert_agrees(ours, sdk_training_request(config), training_differences(config))


@pytest.mark.parametrize("serverless", [False, True], ids=["instance", "serverless"])
def test_the_model_is_the_one_the_sdk_pytorch_model_creates(serverless, monkeypatch):
    config = make_config(hosting=HostingConfig(serverless=serverless))
    sdk, repacks = sdk_model_request(config, monkeypatch)
    # The SDK copies model.tar.gz to a new object with code/inference.py added; ours already holds
    # code/inference.py (train.py packs it, Contract 1), so we point at the training artifact itself.
    assert [(r["model_uri"], r["inference_script"], r["source_directory"]) for r in repacks] == \
        [(MODEL_DATA, "inference.py", None)]
    repacked = repacks[0]["repacked_model_uri"]
    differences = [Difference("PrimaryContainer.ModelDataUrl", repacked, MODEL_DATA, "the archive already holds code/")]
    _assert_agrees(requests.create_model(config, DATASET, ETAG, MODEL_DATA), sdk, differences)


@pytest.mark.parametrize("serverless", [False, True], ids=["instance", "serverless"])
def test_the_endpoint_config_is_the_one_the_sdk_session_sends(serverless):
    config = make_config(hosting=HostingConfig(serverless=serverless))
    differences = [Difference("ProductionVariants[0].InitialVariantWeight", 1, ABSENT,
                              "a serverless endpoint's one variant takes all traffic; we send no weight")
                   ] if serverless else []
    _assert_agrees(requests.create_endpoint_config(config, DATASET, ETAG), sdk_endpoint_config_request(config),
                   differences)


def test_the_transform_job_is_the_one_the_sdk_transformer_sends():
    config = make_config()
    model_name = names.model_name(DATASET, ETAG)
    ours = requests.create_transform_job(config, "batch-2026-11-03", "etag-1", model_name)
    sdk = sdk_transform_request(config, "batch-2026-11-03", "etag-1", model_name)
    _assert_agrees(ours, sdk, _TRANSFORM_DIFFERENCES)


# --- image URIs -----------------------------------------------------------------------------------

CPU, GPU = "ml.m5.large", "ml.g4dn.xlarge"


def sdk_image(config: PipelineConfig, scope: str, instance_type: str) -> str:
    return image_uris.retrieve(framework="pytorch", region=config.region, version=config.framework.pytorch_version,
                               py_version=config.framework.py_version, instance_type=instance_type, image_scope=scope)


@pytest.mark.parametrize("region", sorted(requests.DLC_REGIONS))
def test_every_regions_pytorch_images_are_the_sdks(region):
    for instance_type in (CPU, GPU):
        config = make_config(region, training_resources=TrainingResources(instance_type=instance_type),
                             hosting=HostingConfig(instance_type=instance_type),
                             batch=BatchConfig(instance_type=instance_type))
        assert requests.training_image_uri(config) == sdk_image(config, "training", instance_type)
        assert requests.inference_image_uri(config) == sdk_image(config, "inference", instance_type)
    serverless = make_config(region, hosting=HostingConfig(serverless=True))
    assert requests.inference_image_uri(serverless) == image_uris.retrieve(
        framework="pytorch", region=region, version=serverless.framework.pytorch_version,
        py_version=serverless.framework.py_version, image_scope="inference",
        serverless_inference_config=ServerlessInferenceConfig())


def test_we_support_every_region_the_sdk_has_images_for():
    versions = {scope: image_uris.config_for_framework("pytorch")[scope]["versions"][FRAMEWORK.pytorch_version]
                for scope in ("training", "inference")}
    for scope, version in versions.items():
        assert set(version["registries"]) == set(requests.DLC_REGIONS), scope
        assert FRAMEWORK.py_version in version["py_versions"], scope


def test_the_container_version_is_the_newest_that_both_trains_and_serves():
    """Why 2.6.0 (sagemaker_requests' table comment): the SDK has inference images up to 2.6.0 and
    training images up to 2.8.0; the model is trained and served by one torch. When the SDK learns a
    newer inference image, this fails: choose again, on purpose."""
    pytorch = image_uris.config_for_framework("pytorch")
    both = set(pytorch["training"]["versions"]) & set(pytorch["inference"]["versions"])
    newest = max(both, key=lambda v: tuple(int(part) for part in v.split(".")))
    assert FRAMEWORK.pytorch_version == newest == "2.6.0"
    assert pytorch["inference"]["versions"][newest]["py_versions"] == [FRAMEWORK.py_version] == ["py312"]


def test_an_unexplained_difference_is_reported_and_a_stale_one_too():
    """Guard for the guard: compare() names a changed field, and a Difference that no longer holds."""
    sdk = {"A": {"B": "1"}, "C": ["x"]}
    assert compare({"A": {"B": "2"}, "C": ["x"]}, sdk, []) == ["A.B: the SDK sends '1', we send '2'"]
    stale = compare(sdk, sdk, [Difference("D", ABSENT, "y", "gone")])
    assert stale == ["stale difference D: neither request has it"]
    changed = compare({"A": {"B": "3"}, "C": ["x"]}, sdk, [Difference("A.B", "1", "2", "why")])
    assert len(changed) == 1 and "'1' and we send '3'" in changed[0]
