"""Our container code run by the SageMaker containers' own toolkits (issue 10).

Inside SageMaker, ``training/train.py`` is started by the sagemaker-training toolkit, which reads
``/opt/ml/input/config/*.json``, unpacks ``sagemaker_submit_directory``, derives the ``SM_*`` environment
and runs ``sagemaker_program``; ``code/inference.py`` is called by sagemaker-pytorch-inference's
HandlerService through sagemaker-inference's Transformer, which picks the Content-Type and Accept headers,
decodes some bodies itself and maps exceptions to HTTP statuses. Here the same toolkits (pinned in
requirements/toolkits.txt) do both: a job laid out from our CreateTrainingJob request trains through the
toolkit's ``train`` entry, and the model it writes is served through the handler service in this process
(TorchServe, the Java front, is left out: it only forwards the body and headers) and by our local server,
request for request.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image
from sagemaker_pytorch_serving_container.handler_service import HandlerService
from toolkits_support import ToolkitContext, handle, lay_out_opt_ml

from chalicelib import sagemaker_requests as requests
from chalicelib.config import PipelineConfig
from deploy import package_source
from dogbreeds.serving import ModelServer
from model_code import inference as inf

CONFIG = PipelineConfig(bucket="dogbreeds-bucket", role_arn="arn:aws:iam::123456789012:role/dogbreeds-sagemaker",
                        region="eu-west-1")
# The best trial as DescribeTrainingJob reports it: JSON-encoded values.
BEST_TRIAL = {"lr": "0.003", "weight-decay": "0.01", "eps": "1e-08", "batch-size": "32", "arch": '"resnet18"'}
EPOCHS = 2
# Small and quick on a CPU; everything else comes from the request as the control plane builds it.
FAST = {"epochs": EPOCHS, "weights": "none", "image-size": 64, "num-workers": 0, "profile-steps": 2,
        "early-stopping-patience": 0}
# Probabilities are rounded to 6 decimals: a forward with another thread count may move the last one.
PROBABILITY_TOLERANCE = 1.0000001e-6


@dataclass(frozen=True)
class ToolkitJob:
    """A training job run by the toolkit: its /opt/ml, the request it was laid out from, its log."""

    base: Path
    request: dict
    log: str

    @property
    def model_dir(self) -> Path:
        return self.base / "model"

    @property
    def output_data_dir(self) -> Path:
        return self.base / "output" / "data"


@pytest.fixture(scope="module")
def toolkit_job(dataset5, tmp_path_factory) -> ToolkitJob:
    """CreateTrainingJob as the control plane sends it, run by the sagemaker-training toolkit's entry."""
    tmp = tmp_path_factory.mktemp("toolkit-job")
    source = tmp / "sourcedir.tar.gz"
    source.write_bytes(package_source.build().data)
    request = requests.create_training_job(CONFIG, "dogImages", "m1", "s3://dogbreeds-bucket/code/sourcedir.tar.gz",
                                           BEST_TRIAL)
    base = tmp / "opt_ml"
    lay_out_opt_ml(base, request, dataset5, source, FAST)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "SAGEMAKER_"))}
    env.update(SAGEMAKER_BASE_DIR=str(base),    # the toolkit's own switch for where /opt/ml is
               SM_STUDIO_LOCAL_MODE="true",     # skip its wait for algo-1 to resolve in DNS
               TRAINING_JOB_NAME=request["TrainingJobName"], PYTHONUNBUFFERED="1", KINETO_LOG_LEVEL="5")
    # The training container's entry: `train`, the console script for sagemaker_training.cli.train.
    proc = subprocess.run([sys.executable, "-m", "sagemaker_training.cli.train"], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    return ToolkitJob(base, request, log)


@pytest.fixture(scope="module")
def served_dir(toolkit_job, tmp_path_factory) -> Path:
    """The job's model directory as SageMaker packs it (model.tar.gz) and the inference container unpacks it."""
    tmp = tmp_path_factory.mktemp("served")
    archive = tmp / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(toolkit_job.model_dir, arcname=".")
    with tarfile.open(archive) as tar:
        tar.extractall(tmp / "model", filter="data")
    return tmp / "model"


@pytest.fixture(scope="module")
def handler_service(served_dir):
    """sagemaker-pytorch-inference's HandlerService, initialised as TorchServe does for our CreateModel's
    container environment; code/ is on sys.path as the container's PYTHONPATH puts it there."""
    container_env = requests.create_model(CONFIG, "dogImages", "m1", "s3://b/model.tar.gz")["PrimaryContainer"]["Environment"]
    with pytest.MonkeyPatch.context() as patch:
        for name, value in container_env.items():
            patch.setenv(name, value)
        patch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))  # initialize() prepends code/ to it
        patch.syspath_prepend(str(served_dir / "code"))
        assert "inference" not in sys.modules
        service = HandlerService()
        try:
            service.initialize(ToolkitContext(str(served_dir)))
            yield service
        finally:
            sys.modules.pop("inference", None)


@pytest.fixture(scope="module")
def local_server(served_dir):
    with ModelServer(served_dir) as server:
        yield server


# ------------------------------------------------------------------------------------------ training

def test_a_job_started_by_the_training_toolkit_writes_the_contract_1_outputs(toolkit_job, dataset5):
    base = toolkit_job.base
    assert (base / "output" / "success").is_file() and not (base / "output" / "failure").exists()
    # The toolkit unpacked sagemaker_submit_directory into /opt/ml/code and ran sagemaker_program from it.
    assert (base / "code" / "training" / "train.py").is_file() and (base / "code" / "model_code").is_dir()
    assert "training/train.py --" in toolkit_job.log.replace("-- training/train.py", "training/train.py --")

    assert sorted(os.listdir(toolkit_job.model_dir)) == ["code", "model.json", "model.pth"]
    assert (toolkit_job.model_dir / "code" / "inference.py").is_file()
    assert set(os.listdir(toolkit_job.output_data_dir)) == {"diagnostics.json", "metrics.jsonl", "report.html",
                                                            "profiler-trace.json"}
    meta = json.loads((toolkit_job.model_dir / "model.json").read_text())
    assert meta["classes"] == sorted(p.name for p in (dataset5 / "train").iterdir())
    # The toolkit decoded the JSON-encoded hyperparameters: '"none"' arrived as none, '0.003' as a number.
    assert meta["hyperparameters"]["weights"] == "none" and meta["hyperparameters"]["lr"] == 0.003
    assert meta["hyperparameters"]["arch"] == "resnet18" and meta["image_size"] == 64


def test_the_jobs_log_gives_every_metric_of_the_requests_metric_definitions(toolkit_job):
    definitions = toolkit_job.request["AlgorithmSpecification"]["MetricDefinitions"]
    values = {d["Name"]: [float(m.group(1)) for m in re.finditer(d["Regex"], toolkit_job.log)] for d in definitions}
    assert {name: len(found) for name, found in values.items()} == {
        "train:loss": EPOCHS, "train:accuracy": EPOCHS, "validation:loss": EPOCHS, "validation:accuracy": EPOCHS,
        "test:loss": 1, "test:accuracy": 1}
    meta = json.loads((toolkit_job.model_dir / "model.json").read_text())
    assert meta["metrics"]["test_acc"] == pytest.approx(values["test:accuracy"][0], abs=1e-4)
    # metrics.jsonl holds the same numbers, unrounded: one "epoch" record per epoch.
    records = [json.loads(line) for line in (toolkit_job.output_data_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["type"] == "epoch"]
    assert [r["epoch"] for r in epochs] == list(range(1, EPOCHS + 1))
    assert [r["train_loss"] for r in epochs] == pytest.approx(values["train:loss"], abs=5.1e-5)
    assert [r["val_acc"] for r in epochs] == pytest.approx(values["validation:accuracy"], abs=5.1e-5)


# ------------------------------------------------------------------------------------------- serving

def _jpeg(dataset5, index: int) -> bytes:
    return sorted((dataset5 / "test").rglob("*.jpg"))[index].read_bytes()


def _png(jpeg: bytes) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).save(buf, "PNG")
    return buf.getvalue()


def _json(**doc) -> bytes:
    return json.dumps(doc).encode("utf-8")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def good_requests(dataset5) -> dict:
    """name -> (body, Content-Type, Accept); None = header not sent."""
    a, b = _jpeg(dataset5, 0), _jpeg(dataset5, 17)
    return {
        "jpeg": (a, "image/jpeg", "application/json"),
        "x-image, no accept": (b, "application/x-image", None),
        "png, accept */*": (_png(a), "image/png", "*/*"),
        "no content type": (a, None, None),
        "json image": (_json(image=_b64(b)), "application/json", "application/json"),
        "json images with top_k": (_json(images=[_b64(a), _b64(b)], top_k=3), "application/json", None),
        "content-type top_k": (a, "image/jpeg; top_k=2", None),
        "accept top_k": (b, "image/jpeg", "application/json; top_k=1"),
    }


def assert_same_predictions(got: dict, expected: dict) -> None:
    """Same documents: labels, classes and order equal, probabilities within PROBABILITY_TOLERANCE."""
    def rows(doc):
        return [doc["predictions"]] if "predictions" in doc else [r["predictions"] for r in doc["results"]]

    assert set(got) == set(expected)
    for got_row, expected_row in zip(rows(got), rows(expected), strict=True):
        assert [(p["label"], p["class"], p["index"]) for p in got_row] == \
               [(p["label"], p["class"], p["index"]) for p in expected_row]
        assert [p["probability"] for p in got_row] == pytest.approx([p["probability"] for p in expected_row],
                                                                    abs=PROBABILITY_TOLERANCE)


def test_the_inference_toolkit_answers_the_same_predictions_as_our_local_server(
        handler_service, local_server, served_dir, dataset5):
    for name, (body, content_type, accept) in good_requests(dataset5).items():
        toolkit = handle(handler_service, served_dir, body, content_type, accept)
        local = local_server.invoke(body, content_type, accept)
        assert (toolkit.status, local.status) == (200, 200), (name, toolkit.body[:300], local.body[:300])
        assert toolkit.content_type == local.content_type == "application/json", name
        doc = json.loads(toolkit.body)
        assert_same_predictions(doc, json.loads(local.body))
        top = doc["predictions"] if "predictions" in doc else doc["results"][0]["predictions"]
        assert len(top) == {"json images with top_k": 3, "content-type top_k": 2, "accept top_k": 1}.get(name, 5)
        assert len(doc.get("results", [None])) == (2 if name == "json images with top_k" else 1)


def _truncated(jpeg: bytes) -> bytes:
    return jpeg[: len(jpeg) // 2]


def _huge_png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (8000, 6000), 128).save(buf, "PNG")  # 48 MP of grey in a small file: over MAX_PIXELS
    return buf.getvalue()


# name -> (body from a test JPEG, Content-Type, Accept, the status both give)
BAD_INPUTS = {
    "empty": (lambda jpeg: b"", "image/jpeg", None, 400),
    "not an image": (lambda jpeg: b"\x00\x01garbage" * 50, "image/jpeg", None, 400),
    "truncated jpeg": (_truncated, "image/jpeg", None, 400),
    "bad json": (lambda jpeg: b'{"image": ', "application/json", None, 400),
    "json without an image": (lambda jpeg: b'{"images": []}', "application/json", None, 400),
    "bad base64": (lambda jpeg: b'{"image": "***"}', "application/json", None, 400),
    "unsupported content type": (lambda jpeg: b"hello", "text/plain", None, 415),
    "unsupported accept": (lambda jpeg: jpeg, "image/jpeg", "text/csv", 406),
    "too large in bytes": (lambda jpeg: b"\xff" * (inf.MAX_BODY_BYTES + 1), "image/jpeg", None, 413),
    "too large in pixels": (lambda jpeg: _huge_png(), "image/png", None, 413),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_gets_the_same_4xx_from_the_inference_toolkit_as_from_our_local_server(
        handler_service, local_server, served_dir, dataset5, name):
    make, content_type, accept, status = BAD_INPUTS[name]
    jpeg = _jpeg(dataset5, 0)
    body = make(jpeg)
    toolkit = handle(handler_service, served_dir, body, content_type, accept)
    local = local_server.invoke(body, content_type, accept)
    assert (toolkit.status, local.status) == (status, status), (toolkit.body[:300], local.body[:300])
    # The toolkit's body is our message, then the traceback; ours is {"message": ...}.
    assert toolkit.body.decode("utf-8").startswith(json.loads(local.body)["message"])
    assert handle(handler_service, served_dir, jpeg, "image/jpeg", None).status == 200  # still serving


# The toolkit's Transformer decodes application/json and text/csv bodies as UTF-8 before input_fn runs;
# a body that is not UTF-8 fails there, outside our handlers, and every exception but the toolkit's own
# error class is its 500. Our local server hands the bytes to input_fn, which says 400 or 415.
UTF8_BEFORE_HANDLERS = {
    "json that is not utf-8": (b'\xff\xfe{"image": ""}', "application/json", 500, 400),
    "image bytes sent as text/csv": (None, "text/csv", 500, 415),
}


@pytest.mark.parametrize("name", list(UTF8_BEFORE_HANDLERS))
def test_a_body_the_toolkit_cannot_decode_as_utf8_is_its_500_where_our_server_says_4xx(
        handler_service, local_server, served_dir, dataset5, name):
    body, content_type, toolkit_status, local_status = UTF8_BEFORE_HANDLERS[name]
    body = body if body is not None else _jpeg(dataset5, 0)
    toolkit = handle(handler_service, served_dir, body, content_type, None)
    local = local_server.invoke(body, content_type, None)
    assert (toolkit.status, local.status) == (toolkit_status, local_status)
    assert b"codec can't decode" in toolkit.body


def _heatmap_alpha(explanation: dict):
    import numpy as np
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(explanation["heatmap"]))))[..., 3].astype(int)


def test_the_inference_toolkit_explains_as_our_local_server_does(handler_service, local_server, served_dir, dataset5):
    """explain=true through the toolkit: the Content-Type parameter reaches input_fn, explain.py is found next to
    inference.py in code/, and the heatmap covers the photo."""
    jpeg = _jpeg(dataset5, 3)
    width, height = Image.open(io.BytesIO(jpeg)).size
    for body, content_type in ((jpeg, "image/jpeg; explain=true"),
                               (_json(image=_b64(jpeg), explain=True), "application/json")):
        toolkit = handle(handler_service, served_dir, body, content_type, None)
        local = local_server.invoke(body, content_type, None)
        assert (toolkit.status, local.status) == (200, 200), (toolkit.body[:300], local.body[:300])
        got, expected = json.loads(toolkit.body), json.loads(local.body)
        assert_same_predictions({"predictions": got["predictions"]}, {"predictions": expected["predictions"]})
        explanation = got["explanation"]
        assert explanation["class"] == got["predictions"][0]["class"] == expected["explanation"]["class"]
        assert (explanation["width"], explanation["height"]) == (width, height)
        assert _heatmap_alpha(explanation).shape == (height, width)
        assert abs(_heatmap_alpha(explanation) - _heatmap_alpha(expected["explanation"])).max() <= 1
    refused = handle(handler_service, served_dir, jpeg, "image/jpeg; explain=please", None)
    assert refused.status == 400
    assert refused.body.decode("utf-8").startswith("the Content-Type parameter explain must be true or false")
