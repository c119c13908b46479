"""Batch transform's own package: where a batch lives in the bucket, the transform request, and the
per-image ``.out`` files summarised as ``predictions.csv``. It ships inside the Lambda package and
imports nothing of ours."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from dataclasses import dataclass

import pytest
from aws_support import BUCKET, FakeAws
from paths import ROOT

from batch import keys, transform
from batch.predictions import CSV_HEADER, predictions_csv
from chalicelib import names
from chalicelib import sagemaker_requests as requests
from chalicelib.config import BatchConfig, BucketLayout, PipelineConfig
from chalicelib.predict import ApiError


# --- predictions.csv ---------------------------------------------------------------------------------

def _out(*pairs):
    return json.dumps({"predictions": [
        {"label": label, "class": f"{i + 1:03d}.{label}", "index": i, "probability": p}
        for i, (label, p) in enumerate(pairs)]})


def test_predictions_csv_exact_output():
    rows = [("batch/b1/input/z.jpg", _out(("Beagle", 0.7), ("Boxer", 0.2), ("Akita", 0.1))),
            ("batch/b1/input/a,b.jpg", _out(("Boxer", 0.93), ("Akita", 0.05))),
            ("batch/b1/input/m.jpg", "<html>502 Bad Gateway</html>")]
    text = predictions_csv(rows)
    lines = text.splitlines()
    assert lines[0] == "image_key,top_label,probability,top_k,error"
    assert lines[1] == '"batch/b1/input/a,b.jpg",Boxer,0.9300,Boxer:0.9300;Akita:0.0500,'
    assert lines[2].startswith("batch/b1/input/m.jpg,,,,not JSON: ")
    assert lines[3] == "batch/b1/input/z.jpg,Beagle,0.7000,Beagle:0.7000;Boxer:0.2000;Akita:0.1000,"
    assert len(lines) == 4
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert parsed[0]["image_key"] == "batch/b1/input/a,b.jpg"


def test_image_key_for_output():
    assert keys.image_key_for_output("batch/b1/output/sub/x,1.jpg.out", "b1") == "batch/b1/input/sub/x,1.jpg"
    with pytest.raises(ValueError, match="not a transform output"):
        keys.image_key_for_output("batch/b1/output/predictions.csv", "b1")


def test_predictions_csv_never_raises_on_odd_bodies():
    rows = [("a", json.dumps({"predictions": []})), ("b", json.dumps([1, 2])),
            ("c", json.dumps({"predictions": [{"label": "X"}]})), ("d", None), ("e", b'{"predictions": 1}')]
    parsed = list(csv.DictReader(io.StringIO(predictions_csv(rows))))
    assert [r["image_key"] for r in parsed] == ["a", "b", "c", "d", "e"]
    assert all(r["top_label"] == "" and r["error"] for r in parsed)


def test_the_csv_header_is_contract_3s_columns_and_an_error_column():
    assert CSV_HEADER == ("image_key", "top_label", "probability", "top_k", "error")
    assert predictions_csv([]) == "image_key,top_label,probability,top_k,error\n"


def test_unclassified_images_get_a_row_with_the_reason_sorted_among_the_others():
    rows = [("batch/b1/input/b.jpg", _out(("Akita", 0.6), ("Boxer", 0.4)))]
    unclassified = [("batch/b1/input/c.jpg", "not classified: stopped"),
                    ("batch/b1/input/a.jpg", "not classified: stopped")]
    assert predictions_csv(rows, unclassified).splitlines()[1:] == [
        "batch/b1/input/a.jpg,,,,not classified: stopped",
        "batch/b1/input/b.jpg,Akita,0.6000,Akita:0.6000;Boxer:0.4000,",
        "batch/b1/input/c.jpg,,,,not classified: stopped",
    ]


def test_equal_probabilities_keep_the_handlers_order_and_bytes_bodies_are_read_as_utf8():
    body = _out(("Boxer", 0.5), ("Akita", 0.5)).replace("Boxer", "Bôxer").encode("utf-8")
    assert predictions_csv([("k", body)]).splitlines()[1] == "k,Bôxer,0.5000,Bôxer:0.5000;Akita:0.5000,"


# --- keys -----------------------------------------------------------------------------------------------

def test_a_batch_lives_under_its_prefix_with_input_output_and_the_summary():
    assert keys.input_prefix("b1") == "batch/b1/input/"
    assert keys.output_prefix("b1") == "batch/b1/output/"
    assert keys.predictions_key("b1") == "batch/b1/output/predictions.csv"
    assert keys.predictions_key("b1", "jobs-in/") == "jobs-in/b1/output/predictions.csv"
    assert BucketLayout().batches == keys.BATCHES_PREFIX == "batch/"          # Contract 3


def test_an_output_key_maps_back_to_its_image_under_another_prefix_and_only_for_its_batch():
    assert keys.image_key_for_output("in/b1/output/a/b.png.out", "b1", "in/") == "in/b1/input/a/b.png"
    with pytest.raises(ValueError, match="not a transform output under batch/b1/output/"):
        keys.image_key_for_output("batch/b2/output/x.jpg.out", "b1")


@pytest.mark.parametrize("value,accepted", [
    ("b1", True), ("2026-11-03.run_2", True), ("a" * 100, True), ("a" * 101, False), ("", False),
    ("-b1", False), (".b1", False), ("a/b", False), ("b 1", False), ("bü", False), (17, False), (None, False)])
def test_batch_ids_are_1_to_100_safe_characters_starting_with_a_letter_or_digit(value, accepted):
    assert keys.is_batch_id(value) is accepted


@pytest.mark.parametrize("bad", ["a/b", 17, ""])
def test_post_batch_refuses_an_id_outside_the_rule_and_says_the_rule(bad):
    with FakeAws() as aws:
        with pytest.raises(ApiError) as refused:
            aws.plane.request_batch(bad)
    assert refused.value.status == 400
    assert refused.value.message == (f"batch_id must be 1-100 letters, digits, '.', '_' or '-' starting "
                                          f"with a letter or digit, got {bad!r}")


# --- the transform request ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    """Not the control plane's BatchConfig: any object with the transform's settings will do."""
    instance_type: str = "ml.c5.xlarge"
    instance_count: int = 3
    max_payload_mb: int = 10
    max_concurrent_transforms: int = 4
    content_type: str = "image/jpeg"
    accept: str = "application/json"
    invocation_timeout_seconds: int = 120
    invocation_max_retries: int = 2


def test_the_transform_request_is_built_from_its_arguments_only():
    tags = [{"Key": "dogbreeds:stage", "Value": "transform"}]
    request = transform.transform_job_request("batch-b1-0123456789", "model-x", "s3://bkt/batch/b1/input/",
                                              "s3://bkt/batch/b1/output/", Settings(), tags)
    assert request == {
        "TransformJobName": "batch-b1-0123456789",
        "ModelName": "model-x",
        "MaxConcurrentTransforms": 4,
        "MaxPayloadInMB": 10,
        "BatchStrategy": "SingleRecord",
        "ModelClientConfig": {"InvocationsTimeoutInSeconds": 120, "InvocationsMaxRetries": 2},
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://bkt/batch/b1/input/"}},
            "ContentType": "image/jpeg", "CompressionType": "None", "SplitType": "None"},
        "TransformOutput": {"S3OutputPath": "s3://bkt/batch/b1/output/", "Accept": "application/json",
                            "AssembleWith": "None"},
        "TransformResources": {"InstanceType": "ml.c5.xlarge", "InstanceCount": 3},
        "Tags": tags,
    }


def test_the_control_plane_sends_batchs_request_with_its_configuration_names_and_tags():
    config = PipelineConfig(bucket=BUCKET, role_arn="arn:aws:iam::123456789012:role/r", region="us-east-1",
                            batch=BatchConfig(max_payload_mb=20, max_concurrent_transforms=5),
                            layout=BucketLayout(batches="to-classify/"))
    sent = requests.create_transform_job(config, "b1", "etag-1", "model-x")
    assert sent == transform.transform_job_request(
        names.transform_job_name("b1", "etag-1"), "model-x", f"s3://{BUCKET}/to-classify/b1/input/",
        f"s3://{BUCKET}/to-classify/b1/output/", config.batch,
        requests.resource_tags("transform", "batch", "b1", "etag-1"))
    assert (sent["MaxPayloadInMB"], sent["MaxConcurrentTransforms"]) == (20, 5)


# --- what the package may import ---------------------------------------------------------------------------

IMPORT_PROBE = """
import json, sys
before = set(sys.modules)
import batch.keys, batch.predictions, batch.transform
loaded = {name.split(".")[0] for name in set(sys.modules) - before}
print(json.dumps(sorted(loaded - set(sys.stdlib_module_names))))
"""


def test_importing_batch_loads_the_standard_library_only():
    probe = subprocess.run([sys.executable, "-c", IMPORT_PROBE], cwd=ROOT, capture_output=True, text=True,
                           timeout=60, check=True)
    assert json.loads(probe.stdout.strip().splitlines()[-1]) == ["batch"]
