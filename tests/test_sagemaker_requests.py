"""The control plane's request builders: every request is valid for SageMaker and says what we mean.

Validity is checked against botocore's own SageMaker service model, twice: botocore's parameter
validator (required members, unknown members, types, minimums) and a stricter walk over the same
model for what that validator skips (maximum lengths and values, enums, name patterns).
"""

from __future__ import annotations

import ast
import itertools
import json
import random
import re
import sys
import unicodedata
from dataclasses import replace

import botocore.session
import pytest
from botocore.validate import ParamValidator
from paths import ROOT

from chalicelib import names
from chalicelib import sagemaker_requests as requests
from chalicelib.config import (PROFILES, STRATEGIES, BatchConfig, BucketLayout, CategoricalRange, ConfigError,
                               ContinuousRange,
                               FrameworkConfig, HostingConfig, ManagedDebuggerConfig, PipelineConfig, TrainingResources,
                               TuningConfig)
from deploy.lambda_package import VENDORED
from training import train
from request_support import ETAG, MODEL_DATA, ROLE, SOURCE

EPOCH_LINE = "epoch=3 train_loss=0.4123 train_acc=0.8812 val_loss=0.5231 val_acc=0.8431"
TEST_LINE = "test_loss=0.5012 test_acc=0.8500"
# What DescribeTrainingJob reports for the best trial: JSON-encoded values plus the tuner's and
# the script-mode extras.
BEST_TRIAL = {"lr": "0.0031", "weight-decay": "0.012", "eps": "3.2e-08", "batch-size": "64",
              "arch": '"resnet34"', "epochs": "5", "_tuning_objective_metric": '"validation:accuracy"',
              "sagemaker_program": '"training/train.py"'}


def make_config(**parts) -> PipelineConfig:
    return PipelineConfig(bucket="dogbreeds-bucket", role_arn=ROLE, region="us-east-1", **parts)


# --- validation against botocore's service model -------------------------------------------------

SERVICE = botocore.session.get_session().get_service_model("sagemaker")


def _pattern_problem(value: str, pattern: str):
    """None if ``value`` matches the service model's (Java-flavoured) pattern in full."""
    if "\\p{" in pattern:
        # Only the tag patterns use Unicode classes: ([\p{L}\p{Z}\p{N}_.:/=+\-@]*). Check them exactly.
        match = re.fullmatch(r"\(?\[((?:\\p\{[A-Z]\})+)(.*)\]\*\)?", pattern)
        assert match, f"a pattern this test cannot check: {pattern}"
        categories = set(re.findall(r"\\p\{([A-Z])\}", match.group(1)))
        extras = match.group(2).replace("\\-", "-")
        bad = [ch for ch in value if unicodedata.category(ch)[0] not in categories and ch not in extras]
        return f"characters {bad} not allowed by {pattern}" if bad else None
    return None if re.fullmatch(pattern, value, flags=re.DOTALL) else f"{value!r} does not match {pattern}"


def strict_problems(value, shape, path="") -> list:
    """What botocore's validator does not check: max lengths and values, enums and patterns."""
    problems = []
    meta = shape.metadata
    if shape.type_name == "structure":
        for name, member in value.items():
            problems += strict_problems(member, shape.members[name], f"{path}.{name}")
    elif shape.type_name == "list":
        if "max" in meta and len(value) > meta["max"]:
            problems.append(f"{path}: {len(value)} items, at most {meta['max']}")
        for i, item in enumerate(value):
            problems += strict_problems(item, shape.member, f"{path}[{i}]")
    elif shape.type_name == "map":
        if "max" in meta and len(value) > meta["max"]:
            problems.append(f"{path}: {len(value)} entries, at most {meta['max']}")
        for key, item in value.items():
            problems += strict_problems(key, shape.key, f"{path} key {key!r}")
            problems += strict_problems(item, shape.value, f"{path}[{key!r}]")
    elif shape.type_name == "string":
        if "max" in meta and len(value) > meta["max"]:
            problems.append(f"{path}: {len(value)} characters, at most {meta['max']}")
        if shape.enum and value not in shape.enum:
            problems.append(f"{path}: {value!r} is not one of {shape.enum}")
        if "pattern" in meta:
            problem = _pattern_problem(value, meta["pattern"])
            if problem:
                problems.append(f"{path}: {problem}")
    elif shape.type_name in ("integer", "long", "float", "double"):
        if "max" in meta and value > meta["max"]:
            problems.append(f"{path}: {value} is above {meta['max']}")
    return problems


def assert_valid(operation: str, request: dict) -> None:
    """The request is what botocore would send for ``operation``, and within every documented limit."""
    input_shape = SERVICE.operation_model(operation).input_shape
    report = ParamValidator().validate(request, input_shape)
    assert not report.has_errors(), f"{operation}: {report.generate_report()}"
    problems = strict_problems(request, input_shape, operation)
    assert not problems, "\n".join(problems)


def all_requests(config: PipelineConfig) -> dict:
    """Every request of one run, by operation name."""
    return {
        "CreateHyperParameterTuningJob": requests.create_hyper_parameter_tuning_job(config, "dogImages", ETAG, SOURCE),
        "CreateTrainingJob": requests.create_training_job(config, "dogImages", ETAG, SOURCE, BEST_TRIAL),
        "CreateModel": requests.create_model(config, "dogImages", ETAG, MODEL_DATA),
        "CreateEndpointConfig": requests.create_endpoint_config(config, "dogImages", ETAG),
        "CreateEndpoint": requests.create_endpoint(config, "dogImages", ETAG),
        "UpdateEndpoint": requests.update_endpoint(config, "dogImages", ETAG),
        "CreateTransformJob": requests.create_transform_job(config, "batch-2026-11-03", "etag-1",
                                                            names.model_name("dogImages", ETAG)),
    }


OPTION_COMBINATIONS = list(itertools.product(STRATEGIES, (False, True), (False, True), (False, True)))


@pytest.mark.parametrize("strategy,serverless,spot,debugger", OPTION_COMBINATIONS,
                         ids=[f"{s}-{'serverless' if sv else 'instance'}-{'spot' if sp else 'ondemand'}-"
                              f"{'debugger' if d else 'nodebugger'}" for s, sv, sp, d in OPTION_COMBINATIONS])
def test_every_request_is_valid_for_the_sagemaker_service_model(strategy, serverless, spot, debugger):
    config = make_config(tuning=TuningConfig(strategy=strategy),
                         hosting=HostingConfig(serverless=serverless),
                         training_resources=TrainingResources(use_spot=spot),
                         debugger=ManagedDebuggerConfig(enabled=debugger))
    for operation, request in all_requests(config).items():
        assert_valid(operation, request)


@pytest.mark.parametrize("region", ["us-east-1", "ap-east-1", "me-south-1", "af-south-1", "eu-south-1",
                                    "cn-north-1", "us-gov-west-1"])
def test_requests_are_valid_in_regions_with_their_own_registries(region):
    config = replace(make_config(debugger=ManagedDebuggerConfig(enabled=True)), region=region)
    for operation, request in all_requests(config).items():
        assert_valid(operation, request)


def test_the_strict_check_catches_what_botocore_lets_through():
    """Guard for the guard: botocore alone accepts a 40-character tuning job name and a bad enum."""
    request = requests.create_hyper_parameter_tuning_job(make_config(), "dogImages", ETAG, SOURCE)
    request["HyperParameterTuningJobName"] = "x" * 40
    request["HyperParameterTuningJobConfig"]["Strategy"] = "Exhaustive"
    shape = SERVICE.operation_model("CreateHyperParameterTuningJob").input_shape
    assert not ParamValidator().validate(request, shape).has_errors()
    problems = strict_problems(request, shape)
    assert any("at most 32" in p for p in problems) and any("Exhaustive" in p for p in problems)
    assert _pattern_problem("dataset (v2)", r"([\p{L}\p{Z}\p{N}_.:/=+\-@]*)") is not None
    assert _pattern_problem("Hündé 狗 v2", r"([\p{L}\p{Z}\p{N}_.:/=+\-@]*)") is None


# --- metric definitions ----------------------------------------------------------------------------

def metric_values(line: str) -> dict:
    """What SageMaker would record from one log line: metric name -> every captured text."""
    found = {}
    for definition in requests.METRIC_DEFINITIONS:
        captured = re.findall(definition["Regex"], line)
        if captured:
            found[definition["Name"]] = captured
    return found


def test_metric_regexes_capture_each_number_of_the_epoch_line_and_nothing_else():
    assert metric_values(EPOCH_LINE) == {"train:loss": ["0.4123"], "train:accuracy": ["0.8812"],
                                         "validation:loss": ["0.5231"], "validation:accuracy": ["0.8431"]}


def test_metric_regexes_capture_the_test_line():
    assert metric_values(TEST_LINE) == {"test:loss": ["0.5012"], "test:accuracy": ["0.8500"]}


@pytest.mark.parametrize("line", [
    "train_loss=0.4123",                         # the validation regex must not fire inside train_loss
    "best_val_acc=0.9000 best_test_loss=0.1",    # nor inside longer names
    "epoch=1 train_loss=nan train_acc=nan val_loss=nan val_acc=nan",
    "val acc 0.8431 at epoch 3",                 # train.py's prose log lines carry no '='
])
def test_metric_regexes_ignore_other_names_and_non_numbers(line):
    found = metric_values(line)
    assert "validation:loss" not in found and "validation:accuracy" not in found
    assert "test:loss" not in found
    if line.startswith("train_loss"):
        assert found == {"train:loss": ["0.4123"]}


def test_captured_values_stop_at_the_number():
    assert metric_values("epoch=2 val_acc=0.8431.")["validation:accuracy"] == ["0.8431"]
    assert metric_values("val_acc=1 test_acc=0.5")["validation:accuracy"] == ["1"]


def test_the_objective_metric_is_one_of_the_metric_definitions():
    request = requests.create_hyper_parameter_tuning_job(make_config(), "dogImages", ETAG, SOURCE)
    objective = request["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]
    assert objective == {"Type": "Maximize", "MetricName": "validation:accuracy"}
    definitions = request["TrainingJobDefinition"]["AlgorithmSpecification"]["MetricDefinitions"]
    assert objective["MetricName"] in [d["Name"] for d in definitions]
    config = make_config(tuning=TuningConfig(objective_metric="validation:f1"))
    with pytest.raises(ValueError, match="validation:f1"):
        requests.create_hyper_parameter_tuning_job(config, "dogImages", ETAG, SOURCE)


# --- the tuning job per strategy ---------------------------------------------------------------------

def tuning_request(strategy: str, **tuning) -> dict:
    config = make_config(tuning=TuningConfig(strategy=strategy, **tuning))
    return requests.create_hyper_parameter_tuning_job(config, "dogImages", ETAG, SOURCE)


@pytest.mark.parametrize("strategy", ["Bayesian", "Random"])
def test_bayesian_and_random_search_the_reference_ranges_with_early_stopping_auto(strategy):
    job = tuning_request(strategy)["HyperParameterTuningJobConfig"]
    assert job["Strategy"] == strategy
    assert "StrategyConfig" not in job
    assert job["TrainingJobEarlyStoppingType"] == "Auto"
    assert job["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 6, "MaxParallelTrainingJobs": 2}
    assert job["ParameterRanges"] == {
        "ContinuousParameterRanges": [
            {"Name": "lr", "MinValue": "0.0001", "MaxValue": "0.1", "ScalingType": "Logarithmic"},
            {"Name": "weight-decay", "MinValue": "0.001", "MaxValue": "0.1", "ScalingType": "Logarithmic"},
            {"Name": "eps", "MinValue": "1e-09", "MaxValue": "1e-07", "ScalingType": "Logarithmic"},
        ],
        "CategoricalParameterRanges": [
            {"Name": "batch-size", "Values": ["32", "64"]},
            {"Name": "arch", "Values": ['"resnet18"', '"resnet34"']},
        ],
    }


def test_hyperband_counts_epochs_and_leaves_early_stopping_to_itself():
    request = tuning_request("Hyperband", hyperband_min_epochs=2, hyperband_max_epochs=12)
    job = request["HyperParameterTuningJobConfig"]
    assert job["StrategyConfig"] == {"HyperbandStrategyConfig": {"MinResource": 2, "MaxResource": 12}}
    assert job["TrainingJobEarlyStoppingType"] == "Off"
    assert request["TrainingJobDefinition"]["StaticHyperParameters"]["epochs"] == "12"
    assert "ContinuousParameterRanges" in job["ParameterRanges"]


def test_grid_turns_continuous_ranges_into_log_spaced_categories_and_runs_every_combination():
    job = tuning_request("Grid")["HyperParameterTuningJobConfig"]
    assert job["TrainingJobEarlyStoppingType"] == "Off"
    assert "StrategyConfig" not in job
    assert list(job["ParameterRanges"]) == ["CategoricalParameterRanges"]   # Grid accepts categorical only
    values = {r["Name"]: [json.loads(v) for v in r["Values"]] for r in job["ParameterRanges"]["CategoricalParameterRanges"]}
    assert values == {"lr": [1e-4, 1e-3, 1e-2, 1e-1], "weight-decay": [1e-3, 1e-1], "eps": [1e-8],
                      "batch-size": [32, 64], "arch": ["resnet18", "resnet34"]}
    # SageMaker: for Grid, MaxNumberOfTrainingJobs may be left out, or must equal the number of combinations.
    assert job["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 4 * 2 * 1 * 2 * 2, "MaxParallelTrainingJobs": 2}


def test_grid_points_are_evenly_spaced_on_the_ranges_scale():
    assert ContinuousRange("lr", 1e-4, 1e-1, grid_points=3).grid_values() == (1e-4, 0.00316, 0.1)
    assert ContinuousRange("m", 0.0, 1.0, "Linear", grid_points=5).grid_values() == (0, 0.25, 0.5, 0.75, 1)
    assert ContinuousRange("eps", 1e-9, 1e-7, grid_points=1).grid_values() == (1e-8,)


def test_the_grid_size_counts_values_that_rounding_merged_once():
    narrow = ContinuousRange("lr", 1.0e-3, 1.0001e-3, grid_points=3)   # all three round to 0.001
    assert narrow.grid_values() == (0.001,)
    tuning = TuningConfig(strategy="Grid", continuous_ranges=(narrow,))
    assert tuning.grid_size == 1 * 2 * 2


def test_a_grid_larger_than_its_budget_is_refused_with_the_way_out():
    wide = (ContinuousRange("lr", 1e-4, 1e-1, grid_points=10),)
    with pytest.raises(ConfigError, match="Grid has 40 combinations.*grid_points"):
        TuningConfig(strategy="Grid", continuous_ranges=wide)


def test_tuning_trials_get_the_trial_statics_and_script_mode_hyperparameters_json_encoded():
    static = tuning_request("Bayesian")["TrainingJobDefinition"]["StaticHyperParameters"]
    assert static == {
        "finetune": '"head"', "weights": '"imagenet"', "image-size": "224", "epochs": "5",
        "early-stopping-patience": "2", "profile-steps": "0", "feature-store": '"/opt/ml/features"',
        "sagemaker_program": '"training/train.py"', "sagemaker_submit_directory": json.dumps(SOURCE),
        "sagemaker_region": '"us-east-1"', "sagemaker_container_log_level": "20",
    }


def test_tuning_trials_read_the_dataset_channels_and_write_below_the_tuning_jobs_prefix():
    request = tuning_request("Bayesian")
    definition = request["TrainingJobDefinition"]
    channels = {c["ChannelName"]: c for c in definition["InputDataConfig"]}
    assert channels["train"]["DataSource"]["S3DataSource"] == {
        "S3DataType": "S3Prefix", "S3Uri": "s3://dogbreeds-bucket/datasets/dogImages/train/",
        "S3DataDistributionType": "FullyReplicated"}
    assert [channels[s]["DataSource"]["S3DataSource"]["S3Uri"] for s in ("valid", "test")] == [
        "s3://dogbreeds-bucket/datasets/dogImages/valid/", "s3://dogbreeds-bucket/datasets/dogImages/test/"]
    assert {c["InputMode"] for c in channels.values()} == {"File"}
    name = request["HyperParameterTuningJobName"]
    assert definition["OutputDataConfig"] == {"S3OutputPath": f"s3://dogbreeds-bucket/jobs/{name}/"}
    # head-only trials share backbone features: SageMaker syncs the dataset's feature sets with /opt/ml/features
    assert definition["CheckpointConfig"] == {"S3Uri": "s3://dogbreeds-bucket/features/dogImages/",
                                              "LocalPath": "/opt/ml/features"}
    assert {t["Key"]: t["Value"] for t in request["Tags"]} == {
        "dogbreeds:stage": "tuning", "dogbreeds:dataset": "dogImages",
        "dogbreeds:marker": "9b2cf535f27731c974343645a3985328"}


def test_a_dataset_without_valid_and_test_gets_only_the_train_channel():
    request = requests.create_hyper_parameter_tuning_job(make_config(), "dogImages", ETAG, SOURCE, channels=("train",))
    assert [c["ChannelName"] for c in request["TrainingJobDefinition"]["InputDataConfig"]] == ["train"]
    with pytest.raises(ValueError, match="must include train"):
        requests.input_channels(make_config(), "dogImages", ("valid", "test"))


def test_the_parallel_limit_never_exceeds_the_job_count():
    with pytest.raises(ConfigError, match=r"parallel training jobs \(4\) exceed max training jobs \(2\)"):
        TuningConfig(max_training_jobs=2, max_parallel_training_jobs=4)


# --- hyperparameters train.py receives --------------------------------------------------------------

def toolkit_argv(hyperparameters: dict) -> list:
    """How SageMaker's training toolkit passes hyperparameters: JSON-decoded, then ``--name value``."""
    argv = []
    for name, text in hyperparameters.items():
        value = requests.decode_hyperparameter(text)
        argv += [f"--{name}", value if isinstance(value, str) else json.dumps(value)]
    return argv


def test_every_hyperparameter_we_send_is_one_train_py_knows():
    config = make_config()
    sent = set(requests.create_hyper_parameter_tuning_job(config, "d", ETAG, SOURCE)
               ["TrainingJobDefinition"]["StaticHyperParameters"])
    sent |= set(config.tuning.tuned_names)
    sent |= set(requests.create_training_job(config, "d", ETAG, SOURCE, BEST_TRIAL)["HyperParameters"])
    ours = {n for n in sent if not n.startswith("sagemaker_")}
    assert ours <= set(train.DEFAULTS), ours - set(train.DEFAULTS)


@pytest.mark.parametrize("decoded_by_toolkit", [True, False])
def test_train_py_parses_the_final_runs_hyperparameters(decoded_by_toolkit):
    hps = requests.create_training_job(make_config(), "dogImages", ETAG, SOURCE, BEST_TRIAL)["HyperParameters"]
    argv = toolkit_argv(hps) if decoded_by_toolkit else [x for n, v in hps.items() for x in (f"--{n}", v)]
    args = train.parse_args(argv, env={})
    assert (args.lr, args.weight_decay, args.eps, args.batch_size, args.arch) == (0.0031, 0.012, 3.2e-08, 64, "resnet34")
    assert (args.epochs, args.early_stopping_patience, args.profile_steps) == (15, 3, 5)
    assert (args.finetune, args.weights, args.image_size) == ("head", "imagenet", 224)


def test_train_py_parses_every_grid_point():
    ranges = tuning_request("Grid")["HyperParameterTuningJobConfig"]["ParameterRanges"]["CategoricalParameterRanges"]
    for point in itertools.product(*[[(r["Name"], v) for v in r["Values"]] for r in ranges]):
        args = train.parse_args(toolkit_argv(dict(point)), env={})
        assert isinstance(args.lr, float) and isinstance(args.batch_size, int) and args.arch in ("resnet18", "resnet34")


def test_the_final_run_keeps_only_the_tuned_values_of_the_best_trial():
    hps = requests.create_training_job(make_config(), "dogImages", ETAG, SOURCE, BEST_TRIAL)["HyperParameters"]
    assert "_tuning_objective_metric" not in hps
    assert hps["epochs"] == "15"                  # the final static, not the trial's 5
    assert hps["arch"] == '"resnet34"' and hps["lr"] == "0.0031"


def test_best_values_are_normalised_whether_or_not_sagemaker_reported_them_json_encoded():
    raw = dict(BEST_TRIAL, arch="resnet34")
    encoded = requests.create_training_job(make_config(), "d", ETAG, SOURCE, BEST_TRIAL)["HyperParameters"]
    plain = requests.create_training_job(make_config(), "d", ETAG, SOURCE, raw)["HyperParameters"]
    assert encoded == plain


def test_a_best_trial_without_a_tuned_value_is_an_error_that_names_it():
    partial = {k: v for k, v in BEST_TRIAL.items() if k != "lr"}
    with pytest.raises(ValueError, match="lack the tuned lr"):
        requests.create_training_job(make_config(), "dogImages", ETAG, SOURCE, partial)


# --- the instrumented training job -------------------------------------------------------------------

def test_the_final_run_checkpoints_to_its_own_prefix_and_runs_on_demand_by_default():
    request = requests.create_training_job(make_config(), "dogImages", ETAG, SOURCE, BEST_TRIAL)
    name = request["TrainingJobName"]
    assert name == names.training_job_name("dogImages", ETAG)
    assert request["CheckpointConfig"] == {"S3Uri": f"s3://dogbreeds-bucket/checkpoints/{name}/",
                                           "LocalPath": "/opt/ml/checkpoints"}
    assert request["EnableManagedSpotTraining"] is False
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 3 * 3600}
    assert request["ResourceConfig"] == {"InstanceType": "ml.g4dn.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30}
    assert requests.model_artifact_uri(make_config(), name) == \
        f"s3://dogbreeds-bucket/jobs/{name}/{name}/output/model.tar.gz"


def test_s3_uris_split_into_bucket_and_key_and_job_artifacts_sit_where_sagemaker_puts_them():
    assert requests.split_s3_uri("s3://b/jobs/j/x.tar.gz") == ("b", "jobs/j/x.tar.gz")
    assert requests.split_s3_uri("s3://b") == ("b", "")
    assert requests.split_s3_uri("s3://b/") == ("b", "")
    assert requests.split_s3_uri(requests.s3_uri("b", "a/b c/ü")) == ("b", "a/b c/ü")
    for bad in ("", "b/key", "s3:///key", "https://b/key", None):
        with pytest.raises(ValueError, match="not an s3:// URI"):
            requests.split_s3_uri(bad)
    assert requests.job_artifact_uri("s3://b/jobs/t/", "t") == "s3://b/jobs/t/t/output/model.tar.gz"
    assert requests.job_artifact_uri("s3://b/jobs/t", "t", "output.tar.gz") == "s3://b/jobs/t/t/output/output.tar.gz"


def test_spot_training_waits_at_most_the_configured_time():
    config = make_config(training_resources=TrainingResources(use_spot=True, max_runtime_seconds=3600,
                                                              spot_max_wait_seconds=7200))
    request = requests.create_training_job(config, "dogImages", ETAG, SOURCE, BEST_TRIAL)
    assert request["EnableManagedSpotTraining"] is True
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    tuning = requests.create_hyper_parameter_tuning_job(config, "dogImages", ETAG, SOURCE)["TrainingJobDefinition"]
    assert tuning["EnableManagedSpotTraining"] is True and tuning["StoppingCondition"]["MaxWaitTimeInSeconds"] == 7200
    with pytest.raises(ConfigError, match="spot max wait"):
        TrainingResources(use_spot=True, max_runtime_seconds=7200, spot_max_wait_seconds=3600)


MANAGED_FIELDS = ("DebugHookConfig", "DebugRuleConfigurations", "ProfilerConfig", "ProfilerRuleConfigurations")


def test_managed_debugger_fields_are_absent_unless_opted_in():
    request = requests.create_training_job(make_config(), "dogImages", ETAG, SOURCE, BEST_TRIAL)
    assert not set(MANAGED_FIELDS) & set(request)


def test_the_debugger_opt_in_adds_hook_profiler_and_the_reference_rules():
    request = requests.create_training_job(make_config(debugger=ManagedDebuggerConfig(enabled=True)),
                                           "dogImages", ETAG, SOURCE, BEST_TRIAL)
    base = f"s3://dogbreeds-bucket/jobs/{request['TrainingJobName']}/"
    assert request["DebugHookConfig"]["S3OutputPath"] == base + "debug-output"
    assert request["ProfilerConfig"] == {"S3OutputPath": base + "profiler-output", "ProfilingIntervalInMilliseconds": 500}
    assert [r["RuleConfigurationName"] for r in request["DebugRuleConfigurations"]] == [
        "Overfit", "Overtraining", "PoorWeightInitialization", "LossNotDecreasing", "VanishingGradient"]
    assert [r["RuleParameters"]["rule_to_invoke"] for r in request["ProfilerRuleConfigurations"]] == [
        "LowGPUUtilization", "ProfilerReport"]
    assert {r["RuleEvaluatorImage"] for r in request["DebugRuleConfigurations"]} == {
        "503895931360.dkr.ecr.us-east-1.amazonaws.com/sagemaker-debugger-rules:latest"}


def test_the_debugger_opt_in_says_so_in_a_region_without_rule_images():
    config = replace(make_config(debugger=ManagedDebuggerConfig(enabled=True)), region="ap-southeast-4")
    with pytest.raises(ValueError, match="ap-southeast-4.*opt-in off"):
        requests.create_training_job(config, "dogImages", ETAG, SOURCE, BEST_TRIAL)


# --- images -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("region,account,domain", [
    ("us-east-1", "763104351884", "amazonaws.com"),
    ("eu-west-1", "763104351884", "amazonaws.com"),
    ("ap-east-1", "871362719292", "amazonaws.com"),
    ("me-south-1", "217643126080", "amazonaws.com"),
    ("af-south-1", "626614931356", "amazonaws.com"),
    ("eu-south-1", "692866216735", "amazonaws.com"),
    ("cn-north-1", "727897471807", "amazonaws.com.cn"),
    ("cn-northwest-1", "727897471807", "amazonaws.com.cn"),
])
def test_images_come_from_the_regions_deep_learning_containers_registry(region, account, domain):
    config = replace(make_config(), region=region)
    assert requests.training_image_uri(config) == f"{account}.dkr.ecr.{region}.{domain}/pytorch-training:2.6.0-gpu-py312"
    assert requests.inference_image_uri(config) == f"{account}.dkr.ecr.{region}.{domain}/pytorch-inference:2.6.0-cpu-py312"


@pytest.mark.parametrize("instance,processor", [("ml.g4dn.xlarge", "gpu"), ("ml.p3.2xlarge", "gpu"), ("ml.g5.2xlarge", "gpu"),
                                                ("ml.m5.xlarge", "cpu"), ("ml.c5.2xlarge", "cpu")])
def test_the_image_tag_follows_the_instance(instance, processor):
    config = make_config(training_resources=TrainingResources(instance_type=instance),
                         hosting=HostingConfig(instance_type=instance), batch=BatchConfig(instance_type=instance))
    assert requests.training_image_uri(config).endswith(f":2.6.0-{processor}-py312")
    assert requests.inference_image_uri(config).endswith(f":2.6.0-{processor}-py312")


def test_a_serverless_endpoint_gets_the_cpu_image():
    config = make_config(hosting=HostingConfig(serverless=True, instance_type="ml.g4dn.xlarge"))
    assert requests.inference_image_uri(config).endswith("pytorch-inference:2.6.0-cpu-py312")


def test_an_unknown_region_is_named_in_the_error():
    config = replace(make_config(), region="xx-nowhere-1")
    with pytest.raises(ValueError, match="xx-nowhere-1"):
        requests.training_image_uri(config)


@pytest.mark.parametrize("instance", ["ml.c7g.large", "ml.inf2.xlarge"])
def test_instances_that_need_other_images_are_refused(instance):
    with pytest.raises(ConfigError, match=instance):
        HostingConfig(instance_type=instance)


def test_one_model_cannot_serve_a_cpu_endpoint_and_a_gpu_transform():
    with pytest.raises(ConfigError, match="one model serves both"):
        make_config(batch=BatchConfig(instance_type="ml.g4dn.xlarge"))


# --- model, endpoint, transform ----------------------------------------------------------------------

def test_the_model_runs_inference_py_from_the_archives_code_folder():
    request = requests.create_model(make_config(), "dogImages", ETAG, MODEL_DATA)
    assert request["ModelName"] == names.model_name("dogImages", ETAG)
    assert request["ExecutionRoleArn"] == ROLE
    container = request["PrimaryContainer"]
    assert container["ModelDataUrl"] == MODEL_DATA
    assert container["Environment"] == {"SAGEMAKER_PROGRAM": "inference.py",
                                        "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code",
                                        "SAGEMAKER_REGION": "us-east-1", "SAGEMAKER_CONTAINER_LOG_LEVEL": "20"}
    with pytest.raises(ValueError, match="tar.gz"):
        requests.create_model(make_config(), "dogImages", ETAG, "s3://bucket/model.pth")


def test_an_instance_endpoint_config_has_one_instance_variant():
    request = requests.create_endpoint_config(make_config(), "dogImages", ETAG)
    assert request["ProductionVariants"] == [{
        "VariantName": "AllTraffic", "ModelName": names.model_name("dogImages", ETAG),
        "InstanceType": "ml.m5.large", "InitialInstanceCount": 1, "InitialVariantWeight": 1.0}]


def test_a_serverless_endpoint_config_has_memory_and_concurrency_and_no_instance():
    config = make_config(hosting=HostingConfig(serverless=True, serverless_memory_mb=4096, serverless_max_concurrency=8))
    (variant,) = requests.create_endpoint_config(config, "dogImages", ETAG)["ProductionVariants"]
    assert variant == {"VariantName": "AllTraffic", "ModelName": names.model_name("dogImages", ETAG),
                       "ServerlessConfig": {"MemorySizeInMB": 4096, "MaxConcurrency": 8}}
    with pytest.raises(ConfigError, match="serverless memory 3000"):
        HostingConfig(serverless=True, serverless_memory_mb=3000)


def test_create_and_update_endpoint_point_the_stable_endpoint_at_the_runs_config():
    create = requests.create_endpoint(make_config(), "dogImages", ETAG)
    update = requests.update_endpoint(make_config(), "dogImages", ETAG)
    config_name = names.endpoint_config_name("dogImages", ETAG)
    assert (create["EndpointName"], create["EndpointConfigName"]) == ("dogbreeds", config_name)
    assert update == {"EndpointName": "dogbreeds", "EndpointConfigName": config_name}


def test_a_transform_sends_each_image_whole_and_writes_out_files_beside_the_batch():
    request = requests.create_transform_job(make_config(), "b17", "etag-1", "model-dogimages-0123456789")
    assert request["TransformJobName"] == names.transform_job_name("b17", "etag-1")
    assert request["ModelName"] == "model-dogimages-0123456789"
    assert request["TransformInput"] == {
        "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://dogbreeds-bucket/batch/b17/input/"}},
        "ContentType": "application/x-image", "CompressionType": "None", "SplitType": "None"}
    assert request["TransformOutput"] == {"S3OutputPath": "s3://dogbreeds-bucket/batch/b17/output/",
                                          "Accept": "application/json", "AssembleWith": "None"}
    assert (request["BatchStrategy"], request["MaxPayloadInMB"], request["MaxConcurrentTransforms"]) == ("SingleRecord", 6, 16)
    assert request["TransformResources"] == {"InstanceType": "ml.m5.large", "InstanceCount": 1}


def test_transform_limits_are_checked():
    with pytest.raises(ConfigError, match="1..100 MB"):
        BatchConfig(max_payload_mb=101, max_concurrent_transforms=1)
    with pytest.raises(ConfigError, match=r"4 x 30 MB\) exceeds 100 MB"):
        BatchConfig(max_payload_mb=30, max_concurrent_transforms=4)


@pytest.mark.parametrize("bad", ["", "a/b", "..", "."])
def test_dataset_and_batch_names_must_be_one_key_segment(bad):
    with pytest.raises(ValueError):
        requests.create_hyper_parameter_tuning_job(make_config(), bad, ETAG, SOURCE)
    with pytest.raises(ValueError):
        requests.create_transform_job(make_config(), bad, "etag", "model-x")


def test_tags_keep_only_characters_sagemaker_accepts():
    tags = requests.resource_tags("tuning", "dataset", "Hündé (v2)*", ETAG)
    assert tags[1] == {"Key": "dogbreeds:dataset", "Value": "Hündé _v2__"}


# --- names --------------------------------------------------------------------------------------------

def dataset_names() -> list:
    """Awkward dataset names: long, unicode, punctuation only, case and spacing variants."""
    rng = random.Random(7)
    alphabet = "abcXYZ019 -_.!@#$%^&*()[]{}~`'\"üßéñ狗🐕\t"
    made = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 120))) for _ in range(300)]
    return made + [
        "dogImages", "DogImages", "dog images", "dog-images", "dog_images", "dogimages",
        "a" * 200, "a" * 200 + "b", "a" * 200 + "c", "!!!", "---", "...", "狗", "🐕🐕", "Hündé", "Hunde",
        "-leading", "trailing-", "x", "0", " spaced out ", "\udc80broken-surrogate",
    ]


NAMERS = {names.tuning_job_name: 32, names.training_job_name: 63, names.model_name: 63,
          names.endpoint_config_name: 63, names.transform_job_name: 63}
SAGEMAKER_NAME = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9])*")


@pytest.mark.parametrize("namer", NAMERS, ids=lambda f: f.__name__)
def test_names_fit_sagemakers_length_and_character_rules(namer):
    for dataset in dataset_names():
        for marker in (ETAG, "3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY+MTRCxf3vjVBH40Nr8X8gdRQBpUMLUo", "1"):
            name = namer(dataset, marker)
            assert len(name) <= NAMERS[namer] and SAGEMAKER_NAME.fullmatch(name), (dataset, name)


@pytest.mark.parametrize("namer", NAMERS, ids=lambda f: f.__name__)
def test_different_identities_never_share_a_name(namer):
    identities = [(d, m) for d in dataset_names() for m in ("etag-1", "etag-2")]
    made = {namer(d, m) for d, m in identities}
    assert len(made) == len(set(identities))


def test_names_are_deterministic_readable_and_share_the_runs_hash():
    assert names.tuning_job_name("Dog Images", ETAG) == names.tuning_job_name("Dog Images", ETAG)
    tuning = names.tuning_job_name("Dog Images", ETAG)
    training = names.training_job_name("Dog Images", ETAG)
    assert tuning.startswith("tune-dog-images-") and training.startswith("train-dog-images-")
    assert tuning.rsplit("-", 1)[1] == training.rsplit("-", 1)[1] == names.identity_hash("Dog Images", ETAG)
    assert names.tuning_job_name("!!!", ETAG) == "tune-" + names.identity_hash("!!!", ETAG)


def test_quoted_and_bare_etags_name_the_same_run_and_a_new_marker_a_new_one():
    bare = ETAG.strip('"')
    assert names.tuning_job_name("dogImages", ETAG) == names.tuning_job_name("dogImages", bare)
    assert names.tuning_job_name("dogImages", ETAG) != names.tuning_job_name("dogImages", "other-etag")
    with pytest.raises(ValueError, match="marker"):
        names.tuning_job_name("dogImages", ' "" ')


def test_long_names_are_cut_to_a_readable_slug():
    name = names.training_job_name("The Udacity dog breed images, all 133 breeds, 2026 edition", ETAG)
    assert name.startswith("train-the-udacity-dog-breed-images-all-133-") and len(name) <= 63


def test_the_endpoint_name_is_stable_and_checked():
    assert names.endpoint_name() == "dogbreeds"
    with pytest.raises(ValueError):
        names.endpoint_name("dog_breeds")


# --- the profiles: the AWS defaults and this machine's quick run ------------------------------------

def profile_values(config: PipelineConfig) -> dict:
    """The values of a configuration that a profile decides, as plain data a test can spell out."""
    tuning, final = config.tuning, config.final_training
    return {
        "strategy": tuning.strategy, "objective": (tuning.objective_metric, tuning.objective_type),
        "jobs": (tuning.max_training_jobs, tuning.max_parallel_training_jobs, tuning.max_grid_training_jobs),
        "hyperband epochs": (tuning.hyperband_min_epochs, tuning.hyperband_max_epochs), "seed": tuning.random_seed,
        "continuous": [(r.name, r.min_value, r.max_value, r.scaling, r.grid_points) for r in tuning.continuous_ranges],
        "categorical": [(r.name, r.values) for r in tuning.categorical_ranges],
        "trial statics": dict(tuning.static_hyperparameters), "final statics": dict(final.static_hyperparameters),
        "gate": (config.gate.accuracy_floor, config.gate.metric),
    }


# Pinned when the profiles moved into one table: each profile's configuration is what it was before.
PROFILE_VALUES = {
    "default": {
        "strategy": "Bayesian", "objective": ("validation:accuracy", "Maximize"), "jobs": (6, 2, 32),
        "hyperband epochs": (1, 10), "seed": None,
        "continuous": [("lr", 1e-4, 1e-1, "Logarithmic", 4), ("weight-decay", 1e-3, 1e-1, "Logarithmic", 2),
                       ("eps", 1e-9, 1e-7, "Logarithmic", 1)],
        "categorical": [("batch-size", (32, 64)), ("arch", ("resnet18", "resnet34"))],
        "trial statics": {"finetune": "head", "weights": "imagenet", "image-size": 224, "epochs": 5,
                          "early-stopping-patience": 2, "profile-steps": 0},
        "final statics": {"finetune": "head", "weights": "imagenet", "image-size": 224, "epochs": 15,
                          "early-stopping-patience": 3, "profile-steps": 5},
        "gate": (0.6, "test:accuracy"),
    },
    "quick": {
        "strategy": "Bayesian", "objective": ("validation:accuracy", "Maximize"), "jobs": (3, 1, 32),
        "hyperband epochs": (1, 10), "seed": None,
        "continuous": [("lr", 1e-3, 1e-2, "Logarithmic", 3), ("weight-decay", 1e-3, 1e-1, "Logarithmic", 2),
                       ("eps", 1e-9, 1e-7, "Logarithmic", 1)],
        "categorical": [("batch-size", (16, 32)), ("arch", ("resnet18",))],
        "trial statics": {"finetune": "full", "weights": "none", "image-size": 64, "augment": "flip", "epochs": 3,
                          "early-stopping-patience": 2, "profile-steps": 0},
        "final statics": {"finetune": "full", "weights": "none", "image-size": 64, "augment": "flip", "epochs": 10,
                          "early-stopping-patience": 4, "profile-steps": 5},
        "gate": (0.6, "test:accuracy"),
    },
}


def profile_config(profile: str, **overrides) -> PipelineConfig:
    return PipelineConfig.from_profile(profile, bucket="dogbreeds-bucket", role_arn=ROLE, region="us-east-1",
                                       **overrides)


def test_the_table_holds_the_pinned_profiles():
    assert sorted(PROFILES) == sorted(PROFILE_VALUES)


@pytest.mark.parametrize("profile", sorted(PROFILE_VALUES))
def test_each_profile_configures_its_ranges_statics_and_job_counts(profile):
    config = profile_config(profile)
    assert profile_values(config) == PROFILE_VALUES[profile]
    # the parts no profile changes keep the reference defaults
    assert (config.training_resources, config.framework, config.hosting, config.batch, config.debugger,
            config.layout) == (TrainingResources(), FrameworkConfig(), HostingConfig(), BatchConfig(),
                               ManagedDebuggerConfig(), BucketLayout())


def test_the_default_profile_is_the_aws_configuration_the_environment_gives():
    assert profile_config("default") == make_config()
    assert PipelineConfig.from_env(BASE_ENV) == PipelineConfig.from_profile(
        "default", bucket="dogbreeds-bucket", role_arn=ROLE, region="eu-west-1")


def trainer_choices(option: str) -> tuple:
    """The values train.py's ``--<option>`` accepts."""
    [action] = [a for a in train.get_args_parser(env={})._actions if a.dest == option.replace("-", "_")]
    return tuple(action.choices)


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_profile_tunes_only_architectures_the_trainer_builds(profile):
    [arch] = [r for r in PROFILES[profile].categorical_ranges if r.name == "arch"]
    assert set(arch.values) <= set(trainer_choices("arch")), set(arch.values) - set(trainer_choices("arch"))


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_profiles_hyperparameters_parse_in_train_py(profile):
    chosen = PROFILES[profile]
    for statics in (chosen.trial_hyperparameters, chosen.final_hyperparameters):
        assert set(statics) <= set(train.DEFAULTS), set(statics) - set(train.DEFAULTS)
        args = train.parse_args(toolkit_argv(requests.encode_hyperparameters(statics)), env={})
        for name, value in statics.items():
            assert getattr(args, name.replace("-", "_")) == value, name


def test_overrides_change_only_what_they_name():
    config = profile_config("quick", strategy="Hyperband", trials=5, parallel=2, trial_epochs=4, epochs=7,
                            accuracy_floor=0.25, seed=11)
    values = profile_values(config)
    expected = PROFILE_VALUES["quick"]
    assert values == {**expected, "strategy": "Hyperband", "jobs": (5, 2, 32), "hyperband epochs": (1, 4), "seed": 11,
                      "trial statics": {**expected["trial statics"], "epochs": 4},
                      "final statics": {**expected["final statics"], "epochs": 7}, "gate": (0.25, "test:accuracy")}


def test_an_unknown_profile_or_a_bad_override_is_refused_with_the_reason():
    with pytest.raises(ConfigError, match="unknown profile 'fast': one of default, quick"):
        profile_config("fast")
    with pytest.raises(ConfigError, match="max training jobs must be at least 1, got 0"):
        profile_config("quick", trials=0)
    with pytest.raises(ConfigError, match=r"Hyperband needs 1 <= min epochs \(0\)"):
        profile_config("quick", trial_epochs=0)


# --- configuration from the environment --------------------------------------------------------------

BASE_ENV = {"DOGBREEDS_BUCKET": "dogbreeds-bucket", "DOGBREEDS_ROLE_ARN": ROLE, "AWS_REGION": "eu-west-1"}


def test_the_environment_needs_only_bucket_role_and_region():
    config = PipelineConfig.from_env(BASE_ENV)
    assert config == PipelineConfig(bucket="dogbreeds-bucket", role_arn=ROLE, region="eu-west-1")
    assert config.tuning.strategy == "Bayesian" and config.gate.accuracy_floor == 0.6
    assert PipelineConfig.from_env(dict(BASE_ENV, DOGBREEDS_REGION="ap-east-1")).region == "ap-east-1"


def test_every_documented_variable_is_read():
    env = dict(BASE_ENV, DOGBREEDS_STRATEGY="hyperband", DOGBREEDS_MAX_JOBS="20", DOGBREEDS_PARALLEL_JOBS="4",
               DOGBREEDS_TRAINING_INSTANCE="ml.p3.2xlarge", DOGBREEDS_INFERENCE_INSTANCE="ml.c5.xlarge",
               DOGBREEDS_TRANSFORM_INSTANCE="ml.m5.xlarge", DOGBREEDS_ACCURACY_FLOOR="0.75",
               DOGBREEDS_SERVERLESS="yes", DOGBREEDS_SPOT="TRUE", DOGBREEDS_MANAGED_DEBUGGER="1",
               DOGBREEDS_ENDPOINT_NAME="dogs-prod")
    config = PipelineConfig.from_env(env)
    assert (config.tuning.strategy, config.tuning.max_training_jobs, config.tuning.max_parallel_training_jobs) == \
        ("Hyperband", 20, 4)
    assert config.training_resources.instance_type == "ml.p3.2xlarge" and config.training_resources.use_spot
    assert (config.hosting.instance_type, config.hosting.serverless, config.hosting.endpoint_name) == \
        ("ml.c5.xlarge", True, "dogs-prod")
    assert config.batch.instance_type == "ml.m5.xlarge"
    assert config.gate.accuracy_floor == 0.75 and config.debugger.enabled


@pytest.mark.parametrize("variable,value,message", [
    ("DOGBREEDS_STRATEGY", "Exhaustive", "DOGBREEDS_STRATEGY='Exhaustive' is not one of Bayesian, Random, Hyperband, Grid"),
    ("DOGBREEDS_PARALLEL_JOBS", "7", r"parallel training jobs \(7\) exceed max training jobs \(6\)"),
    ("DOGBREEDS_MAX_JOBS", "six", "DOGBREEDS_MAX_JOBS='six' is not a whole number"),
    ("DOGBREEDS_SPOT", "maybe", "DOGBREEDS_SPOT='maybe' is not true or false"),
    ("DOGBREEDS_ACCURACY_FLOOR", "60", "accuracy floor must be between 0 and 1"),
    ("DOGBREEDS_ACCURACY_FLOOR", "high", "is not a number"),
    ("DOGBREEDS_TRAINING_INSTANCE", "g4dn.xlarge", "does not look like ml."),
    ("DOGBREEDS_ROLE_ARN", "SageMakerRole", "is not an IAM role ARN"),
    ("DOGBREEDS_BUCKET", "My_Bucket", "is not a valid S3 bucket name"),
    ("DOGBREEDS_REGION", "europe", "does not look like an AWS region"),
    ("DOGBREEDS_ENDPOINT_NAME", "dog_breeds", "endpoint name"),
])
def test_bad_values_are_refused_with_a_message_naming_them(variable, value, message):
    with pytest.raises(ConfigError, match=message):
        PipelineConfig.from_env(dict(BASE_ENV, **{variable: value}))


def test_all_problems_are_reported_together():
    with pytest.raises(ConfigError) as raised:
        PipelineConfig.from_env({"DOGBREEDS_STRATEGY": "Exhaustive", "DOGBREEDS_SPOT": "maybe"})
    assert len(raised.value.problems) == 5
    for fragment in ("DOGBREEDS_BUCKET is required", "DOGBREEDS_ROLE_ARN is required",
                     "DOGBREEDS_REGION (or AWS_REGION) is required", "DOGBREEDS_STRATEGY", "DOGBREEDS_SPOT"):
        assert fragment in str(raised.value)


def test_grid_from_the_environment_runs_the_whole_grid():
    config = PipelineConfig.from_env(dict(BASE_ENV, DOGBREEDS_STRATEGY="Grid"))
    job = requests.create_hyper_parameter_tuning_job(config, "d", ETAG, SOURCE)["HyperParameterTuningJobConfig"]
    assert job["ResourceLimits"]["MaxNumberOfTrainingJobs"] == config.tuning.grid_size == 32


# --- what runs on Lambda --------------------------------------------------------------------------------

# What the Lambda Python runtime provides besides the standard library (control.py maps botocore's
# connection errors; every AWS call goes through clients it is given).
LAMBDA_RUNTIME_PACKAGES = {"boto3", "botocore"}


def test_chalicelib_imports_only_the_standard_library_the_lambda_runtimes_boto3_and_what_ships_beside_it():
    for module in (ROOT / "chalice_app" / "chalicelib").glob("*.py"):
        tree = ast.parse(module.read_text())
        imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module}
        allowed = set(sys.stdlib_module_names) | LAMBDA_RUNTIME_PACKAGES | set(VENDORED)   # batch/
        assert imported <= allowed, (module.name, imported - allowed)


@pytest.mark.parametrize("change, shares", [
    ({}, True),
    ({"static": {"augment": "none"}}, True),
    ({"static": {"finetune": "full"}}, False),
    ({"static": {"augment": "flip"}}, False),
    ({"static": {"feature-cache": "off"}}, False),
    ({"share_features": False}, False),
    ({"tuned": CategoricalRange("finetune", ("head", "full"))}, False),
])
def test_only_trials_that_train_a_head_on_cached_features_share_a_feature_store(change, shares):
    base = TuningConfig()
    static = {**base.static_hyperparameters, **change.get("static", {})}
    categorical = base.categorical_ranges + ((change["tuned"],) if "tuned" in change else ())
    if "tuned" in change:
        static.pop("finetune")
    tuning = replace(base, static_hyperparameters=static, categorical_ranges=categorical,
                     share_features=change.get("share_features", True))
    assert requests.shares_features(tuning) is shares
    definition = requests.create_hyper_parameter_tuning_job(make_config(tuning=tuning), "dogImages", ETAG,
                                                            SOURCE)["TrainingJobDefinition"]
    if shares:
        assert definition["CheckpointConfig"] == {"S3Uri": "s3://dogbreeds-bucket/features/dogImages/",
                                                  "LocalPath": requests.FEATURE_STORE_LOCAL_PATH}
        assert definition["StaticHyperParameters"]["feature-store"] == json.dumps(requests.FEATURE_STORE_LOCAL_PATH)
    else:
        assert "CheckpointConfig" not in definition
        assert "feature-store" not in definition["StaticHyperParameters"]
    # the instrumented run keeps its own checkpoints either way
    training = requests.create_training_job(make_config(tuning=tuning), "dogImages", ETAG, SOURCE, {
        "lr": "0.01", "weight-decay": "0.01", "eps": "1e-08", "batch-size": "32", "arch": '"resnet18"',
        **({"finetune": '"head"'} if "tuned" in change else {})})
    assert training["CheckpointConfig"]["LocalPath"] == "/opt/ml/checkpoints"
