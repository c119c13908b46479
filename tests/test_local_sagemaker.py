"""The Docker-free SageMaker: real subprocess jobs under the script-mode contract, Optuna tuning
(Hyperband stopping a bad trial from its logged metrics), restart recovery, resumable transforms, and
endpoints that take time to change and refuse what SageMaker refuses.

The training script here is a small stand-in packed exactly as the real source package is
(``training/train.py`` inside ``sourcedir.tar.gz``): it prints Contract 1 metric lines whose values
follow its ``--quality`` hyperparameter, so each test knows which trial is good and which is bad.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import threading
import time
import urllib.request
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from local_support import wait_for

from chalicelib import sagemaker_requests as requests
from chalicelib.config import CategoricalRange, PipelineConfig, TuningConfig
from dogbreeds.localaws.s3 import LocalS3
from dogbreeds.localaws.sagemaker import LocalSageMaker
from dogbreeds.localaws.training_jobs import MetricParser

BUCKET = "local-test"
FAKE_TRAIN = r'''
import argparse, json, os, sys, time
parser = argparse.ArgumentParser()
parser.add_argument("--quality", type=float, default=0.5)
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--sleep", type=float, default=0.05)
parser.add_argument("--fail", default="no")
args, unknown = parser.parse_known_args()
print("argv", json.dumps(sys.argv[1:]), flush=True)
print("env", json.dumps({k: v for k, v in os.environ.items() if k.startswith(("SM_", "OMP_"))}), flush=True)
if args.fail == "yes":
    with open(os.path.join(os.environ["SM_OUTPUT_DIR"], "failure"), "w") as f:
        f.write("DatasetError: train/ has no images")
    sys.exit(2)
for epoch in range(1, args.epochs + 1):
    acc = args.quality * epoch / args.epochs
    print(f"epoch={epoch} train_loss={1 - acc:.4f} train_acc={acc:.4f} val_loss={1 - acc:.4f} val_acc={acc:.4f}", flush=True)
    time.sleep(args.sleep)
print(f"test_loss={1 - acc:.4f} test_acc={acc:.4f}", flush=True)
with open(os.path.join(os.environ["SM_MODEL_DIR"], "model.json"), "w") as f:
    json.dump({"quality": args.quality}, f)
with open(os.path.join(os.environ["SM_OUTPUT_DATA_DIR"], "report.html"), "w") as f:
    f.write("<html>report</html>")
'''


def source_package(script: str = FAKE_TRAIN) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        data = script.encode()
        info = tarfile.TarInfo("training/train.py")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


class Local:
    """A LocalS3 bucket with a dataset and the fake source package, and a LocalSageMaker over it."""

    def __init__(self, root, cores=2, server_factory=None, endpoint_change_seconds=0.3):
        self.root = root
        self.s3 = LocalS3(root / "s3")
        self.s3.create_bucket(Bucket=BUCKET)
        for split in ("train", "valid"):
            self.s3.put_object(Bucket=BUCKET, Key=f"datasets/d/{split}/a/1.jpg", Body=b"\xff\xd8\xff")
        self.s3.put_object(Bucket=BUCKET, Key="code/src.tar.gz", Body=source_package())
        self.events = []
        self.sagemaker = LocalSageMaker(self.s3, root / "data", self.events.append, cores=cores,
                                        server_factory=server_factory,
                                        endpoint_change_seconds=endpoint_change_seconds)
        self.config = PipelineConfig(bucket=BUCKET, role_arn="arn:aws:iam::000000000000:role/r", region="us-east-1")

    def training_request(self, name="train-1", **hyperparameters) -> dict:
        request = requests.create_training_job(self.config, "d", "m1", f"s3://{BUCKET}/code/src.tar.gz",
                                               {"lr": "0.01", "weight-decay": "0.01", "eps": "1e-08",
                                                "batch-size": "32", "arch": '"resnet18"'}, ["train", "valid"])
        request["TrainingJobName"] = name
        request["CheckpointConfig"]["S3Uri"] = f"s3://{BUCKET}/checkpoints/{name}/"
        request["OutputDataConfig"]["S3OutputPath"] = f"s3://{BUCKET}/jobs/{name}/"
        request["HyperParameters"].update(requests.encode_hyperparameters(hyperparameters))
        return request

    def statuses(self, kind="training"):
        return [(e["detail"].get("TrainingJobName") or e["detail"].get("HyperParameterTuningJobName")
                 or e["detail"].get("TransformJobName"), e["detail"].get(f"{'TrainingJob' if kind == 'training' else 'HyperParameterTuningJob'}Status"))
                for e in self.events if kind in e["detail-type"].lower().replace("hyperparameter ", "")]


@pytest.fixture
def local(tmp_path):
    fixture = Local(tmp_path)
    yield fixture
    fixture.sagemaker.close()


def test_a_training_job_runs_the_packaged_script_under_the_script_mode_contract(local):
    local.sagemaker.create_training_job(**local.training_request(quality=0.8, epochs=3))
    assert local.sagemaker.wait_idle(60)
    job = local.sagemaker.describe_training_job(TrainingJobName="train-1")
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    metrics = {m["MetricName"]: m["Value"] for m in job["FinalMetricDataList"]}
    assert metrics == {"train:loss": 0.2, "train:accuracy": 0.8, "validation:loss": 0.2,
                       "validation:accuracy": 0.8, "test:loss": 0.2, "test:accuracy": 0.8}
    log = (local.sagemaker.job_dir("train-1") / "log.txt").read_text()
    argv = json.loads(log.split("argv ", 1)[1].splitlines()[0])
    pairs = dict(zip(argv[::2], argv[1::2]))
    # as SageMaker's training toolkit passes them: decoded values, sagemaker_* kept out of argv
    assert pairs["--arch"] == "resnet18" and pairs["--quality"] == "0.8" and pairs["--epochs"] == "3"
    assert not any(a.startswith("--sagemaker_") for a in argv)
    assert pairs["--checkpoint-dir"] == str(local.s3.prefix_path(BUCKET, "checkpoints/train-1/"))
    env = json.loads(log.split("env ", 1)[1].splitlines()[0])
    assert env["SM_CHANNEL_TRAIN"] == str(local.s3.prefix_path(BUCKET, "datasets/d/train/"))
    assert json.loads(env["SM_CHANNELS"]) == ["train", "valid"]
    assert json.loads(env["SM_HPS"])["arch"] == "resnet18" and env["OMP_NUM_THREADS"] == "2"
    artifact = job["ModelArtifacts"]["S3ModelArtifacts"]
    assert artifact == f"s3://{BUCKET}/jobs/train-1/train-1/output/model.tar.gz"
    with tarfile.open(local.s3.path_of(BUCKET, "jobs/train-1/train-1/output/model.tar.gz")) as tar:
        assert json.load(tar.extractfile("model.json")) == {"quality": 0.8}
    with tarfile.open(local.s3.path_of(BUCKET, "jobs/train-1/train-1/output/output.tar.gz")) as tar:
        assert tar.getnames() == ["report.html"]
    assert [e["detail"]["TrainingJobStatus"] for e in local.events] == ["InProgress", "Completed"]
    assert local.events[-1]["detail-type"] == "SageMaker Training Job State Change"


def test_a_failing_script_fails_the_job_with_its_failure_file_and_duplicates_are_refused(local):
    local.sagemaker.create_training_job(**local.training_request(fail="yes"))
    with pytest.raises(Exception) as again:
        local.sagemaker.create_training_job(**local.training_request(fail="yes"))
    assert again.value.response["Error"]["Code"] == "ResourceInUse"
    assert local.sagemaker.wait_idle(60)
    job = local.sagemaker.describe_training_job(TrainingJobName="train-1")
    assert job["TrainingJobStatus"] == "Failed"
    assert job["FailureReason"] == "AlgorithmError: DatasetError: train/ has no images"
    assert local.events[-1]["detail"]["FailureReason"] == job["FailureReason"]


def tuning_request(local, strategy, values, epochs, max_jobs, parallel=1, seed=7, **extra):
    tuning = TuningConfig(strategy=strategy, max_training_jobs=max_jobs, max_parallel_training_jobs=parallel,
                          continuous_ranges=(), categorical_ranges=(CategoricalRange("quality", values),),
                          static_hyperparameters={"epochs": epochs, "sleep": 0.05}, random_seed=seed, **extra)
    config = replace(local.config, tuning=tuning)
    return requests.create_hyper_parameter_tuning_job(config, "d", "m1", f"s3://{BUCKET}/code/src.tar.gz",
                                                      ["train", "valid"])


def trials(local, tuning_name):
    jobs = local.sagemaker.list_training_jobs_for_hyper_parameter_tuning_job(
        HyperParameterTuningJobName=tuning_name)["TrainingJobSummaries"]
    result = []
    for job in jobs:
        log = (local.sagemaker.job_dir(job["TrainingJobName"]) / "log.txt").read_text()
        parser = MetricParser([{"Name": "v", "Regex": r"\bval_acc=([0-9.]+)"}])
        for line in log.splitlines():
            parser.feed(line)
        result.append((job["TrainingJobName"], job["TrainingJobStatus"], job["TunedHyperParameters"]["quality"],
                       parser.series.get("v", [])))
    return result


def test_hyperband_stops_a_bad_trial_early_from_its_logged_metrics(local):
    # Hyperband can only stop a trial once a better one has passed the same rung (epochs 1, 3, 9 here):
    # with seed 2 the sampler tries the good value first, so the later bad trials have something to lose to.
    request = tuning_request(local, "Hyperband", (0.9, 0.1), epochs=9, max_jobs=6, seed=2, hyperband_min_epochs=1,
                             hyperband_max_epochs=9)
    name = request["HyperParameterTuningJobName"]
    assert request["HyperParameterTuningJobConfig"]["TrainingJobEarlyStoppingType"] == "Off"
    local.sagemaker.create_hyper_parameter_tuning_job(**request)
    assert local.sagemaker.wait_idle(120)
    tuning = local.sagemaker.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
    assert tuning["HyperParameterTuningJobStatus"] == "Completed", tuning.get("FailureReason")
    ran = trials(local, name)
    assert len(ran) == 6
    stopped = [t for t in ran if t[1] == "Stopped"]
    # a bad trial was stopped after fewer epochs than the 9 it was given, by what its log said...
    assert any(quality == "0.1" and len(values) < 9 for _, _, quality, values in stopped), ran
    # ...while every good trial that ran to the end logged all 9 epochs
    completed = [t for t in ran if t[1] == "Completed"]
    assert completed and all(len(values) == 9 for *_, values in completed)
    best = tuning["BestTrainingJob"]
    assert best["TunedHyperParameters"] == {"quality": "0.9"}
    assert best["FinalHyperParameterTuningJobObjectiveMetric"] == {
        "Type": "Maximize", "MetricName": "validation:accuracy", "Value": 0.9}
    counters = tuning["TrainingJobStatusCounters"]
    assert counters["Completed"] + counters["Stopped"] == 6 and counters["Stopped"] == len(stopped)
    tuning_events = [e for e in local.events if e["detail-type"].endswith("Tuning Job State Change")]
    assert [e["detail"]["HyperParameterTuningJobStatus"] for e in tuning_events] == ["InProgress", "Completed"]
    # trials report as training jobs launched by the tuning job: the control plane ignores them
    trial_events = [e for e in local.events if e["detail-type"] == "SageMaker Training Job State Change"]
    assert trial_events and all(e["detail"]["TuningJobArn"] == tuning["HyperParameterTuningJobArn"]
                                for e in trial_events)


def test_grid_runs_every_combination_once_and_random_honours_the_budget(local):
    grid = tuning_request(local, "Grid", (0.3, 0.6, 0.9), epochs=2, max_jobs=3, parallel=2)
    local.sagemaker.create_hyper_parameter_tuning_job(**grid)
    assert local.sagemaker.wait_idle(120)
    name = grid["HyperParameterTuningJobName"]
    assert sorted(t[2] for t in trials(local, name)) == ["0.3", "0.6", "0.9"]
    best = local.sagemaker.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)["BestTrainingJob"]
    assert best["TunedHyperParameters"] == {"quality": "0.9"}


def test_a_restart_marks_the_jobs_of_the_dead_runtime_failed_and_kills_their_scripts(tmp_path):
    first = Local(tmp_path)
    first.sagemaker.create_training_job(**first.training_request(epochs=200, sleep=0.2))
    deadline = time.time() + 30
    while "_pid" not in (first.sagemaker.records.get("training", "train-1") or {}) and time.time() < deadline:
        time.sleep(0.05)
    pid = first.sagemaker.records.get("training", "train-1")["_pid"]
    # the runtime dies without closing anything: a second one starts over the same data directory
    second = LocalSageMaker(first.s3, tmp_path / "data", first.events.append, cores=2)
    notes = second.recover()
    job = second.describe_training_job(TrainingJobName="train-1")
    assert job["TrainingJobStatus"] == "Failed"
    assert "the local runtime stopped while this job ran" in job["FailureReason"]
    assert notes == [f"training job train-1 marked Failed: {job['FailureReason']}"]
    deadline = time.time() + 10
    while os.path.exists(f"/proc/{pid}") and time.time() < deadline:
        time.sleep(0.05)
        try:
            os.waitpid(pid, os.WNOHANG)     # reap it: it is this test process's child
        except ChildProcessError:
            pass
    assert not os.path.exists(f"/proc/{pid}")
    first.sagemaker.wait_idle(10)
    # the old runtime's thread ends the job as it sees it, but a terminal status is never replaced
    assert second.describe_training_job(TrainingJobName="train-1")["TrainingJobStatus"] == "Failed"


class FakeModelServer:
    """A stand-in for the model server on 127.0.0.1: ``answer(body)`` gives each POST's (status, JSON
    payload or None); ``start``/``stop`` as ModelServer's (stop may be called twice)."""

    def __init__(self):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, payload = outer.answer(body)
                reply = b"" if payload is None else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.stopped = False

    def answer(self, body: bytes):
        raise NotImplementedError

    def start(self):
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self):
        if not self.stopped:
            self.stopped = True
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(5)


class CountingServer(FakeModelServer):
    """Answers every image with a fixed prediction and counts requests; fails (500) after ``fail_after``."""

    def __init__(self, model_dir, seen, fail_after=None):
        super().__init__()
        self.seen, self.fail_after = seen, fail_after

    def answer(self, body: bytes):
        self.seen.append(body)
        if self.fail_after is not None and len(self.seen) > self.fail_after:
            return 500, None
        return 200, {"predictions": [{"label": "a", "probability": 1.0}]}


def test_an_interrupted_transform_resumes_without_redoing_finished_images(tmp_path):
    seen = []
    failing = {"after": 4}
    local = Local(tmp_path, server_factory=lambda d: CountingServer(d, seen, failing["after"]))
    images = {f"img{i:02d}.jpg": f"image-{i}".encode() for i in range(10)}
    for name, body in images.items():
        local.s3.put_object(Bucket=BUCKET, Key=f"batch/b/input/{name}", Body=body)
    model = tarfile.open(fileobj=io.BytesIO(), mode="w:gz")
    model.close()
    local.s3.put_object(Bucket=BUCKET, Key="jobs/m/model.tar.gz", Body=source_package("x = 1"))
    local.sagemaker.create_model(ModelName="m", PrimaryContainer={"ModelDataUrl": f"s3://{BUCKET}/jobs/m/model.tar.gz"})
    request = requests.create_transform_job(replace(local.config, batch=replace(local.config.batch,
                                                                               max_concurrent_transforms=1)),
                                            "b", "marker-1", "m")
    local.sagemaker.create_transform_job(**request)
    assert local.sagemaker.wait_idle(30)
    first = local.sagemaker.describe_transform_job(TransformJobName=request["TransformJobName"])
    # the server broke down after 4 images: the job failed, naming what did not get through
    assert first["TransformJobStatus"] == "Failed" and "6 of 10 objects failed" in first["FailureReason"]
    done = sorted(o["Key"] for o in local.s3.list_objects_v2(Bucket=BUCKET, Prefix="batch/b/output/")["Contents"])
    assert len(done) == 4 and len(seen) == 10
    # a second run (a new transform job over the same prefixes) only sends the 6 missing images
    seen.clear()
    failing["after"] = None
    again = requests.create_transform_job(local.config, "b", "marker-2", "m")
    local.sagemaker.create_transform_job(**again)
    assert local.sagemaker.wait_idle(30)
    second = local.sagemaker.describe_transform_job(TransformJobName=again["TransformJobName"])
    assert second["TransformJobStatus"] == "Completed"
    assert len(seen) == 6 and not set(seen) & {images[k.split("/")[-1][:-4]] for k in done}
    outputs = local.s3.list_objects_v2(Bucket=BUCKET, Prefix="batch/b/output/")["Contents"]
    assert sorted(o["Key"] for o in outputs) == [f"batch/b/output/{name}.out" for name in sorted(images)]


# --- endpoints ----------------------------------------------------------------------------------------


class NamingServer(FakeModelServer):
    """Answers every request with the name of the model folder it serves; ``swap`` takes
    ``load_seconds`` before the new model serves, as loading does."""

    def __init__(self, model_dir, load_seconds=0.0):
        super().__init__()
        self.model_dir, self.load_seconds = Path(model_dir), load_seconds

    def answer(self, body: bytes):
        return 200, {"model": self.model_dir.name}

    def swap(self, model_dir):
        time.sleep(self.load_seconds)
        self.model_dir = Path(model_dir)


def served_model(local, endpoint="ep"):
    """The model folder the endpoint's server answers from, or None when the endpoint does not serve."""
    url = local.sagemaker.endpoint_url(endpoint)
    if url is None:
        return None
    with urllib.request.urlopen(urllib.request.Request(url + "/invocations", data=b"x", method="POST"),
                                timeout=10) as response:
        return json.loads(response.read())["model"]


def endpoint_statuses(local, endpoint="ep"):
    return [e["detail"]["EndpointStatus"] for e in local.events
            if e["detail-type"] == "SageMaker Endpoint State Change" and e["detail"]["EndpointName"] == endpoint]


def add_models(local, *names, archive=None):
    """A model and an endpoint config (``<name>-config``) for each name, over a small model.tar.gz."""
    for name in names:
        local.s3.put_object(Bucket=BUCKET, Key=f"models/{name}/model.tar.gz", Body=archive or source_package("x = 1"))
        local.sagemaker.create_model(ModelName=name, PrimaryContainer={
            "ModelDataUrl": f"s3://{BUCKET}/models/{name}/model.tar.gz"})
        local.sagemaker.create_endpoint_config(EndpointConfigName=f"{name}-config", ProductionVariants=[
            {"VariantName": "AllTraffic", "ModelName": name, "InstanceType": "ml.m5.large",
             "InitialInstanceCount": 1}])


def gone(local, endpoint="ep") -> bool:
    try:
        local.sagemaker.describe_endpoint(EndpointName=endpoint)
    except ClientError:
        return True
    return False


def status_of(local, endpoint="ep"):
    return local.sagemaker.describe_endpoint(EndpointName=endpoint)["EndpointStatus"]


def wait_for_status(local, status, endpoint="ep", timeout=30):
    """Wait until the endpoint is ``status`` and its event has been sent."""
    return wait_for(lambda: status_of(local, endpoint) == status and endpoint_statuses(local, endpoint)[-1] == status,
                    timeout, f"endpoint {endpoint} {status}")


def refusal(call, **request):
    """(code, HTTP status, message) of the ClientError ``call(**request)`` raises."""
    with pytest.raises(ClientError) as refused:
        call(**request)
    error = refused.value.response
    return error["Error"]["Code"], error["ResponseMetadata"]["HTTPStatusCode"], error["Error"]["Message"]


@pytest.fixture
def hosting(tmp_path):
    fixture = Local(tmp_path, server_factory=lambda d: NamingServer(d, load_seconds=0.5),
                    endpoint_change_seconds=0.5)
    add_models(fixture, "m1", "m2")
    yield fixture
    fixture.sagemaker.close()


def test_an_endpoint_is_creating_until_its_server_serves_then_in_service(hosting):
    started = time.monotonic()
    hosting.sagemaker.create_endpoint(EndpointName="ep", EndpointConfigName="m1-config")
    assert status_of(hosting) == "Creating" and served_model(hosting) is None
    wait_for_status(hosting, "InService")
    assert time.monotonic() - started >= 0.5        # at least endpoint_change_seconds
    assert served_model(hosting) == "m1"
    assert endpoint_statuses(hosting) == ["Creating", "InService"]
    assert hosting.events[-1]["detail"]["EndpointConfigName"] == "m1-config"


def test_update_is_refused_unless_in_service_and_the_old_model_serves_while_updating(hosting):
    hosting.sagemaker.create_endpoint(EndpointName="ep", EndpointConfigName="m1-config")
    arn = hosting.sagemaker.describe_endpoint(EndpointName="ep")["EndpointArn"]
    assert refusal(hosting.sagemaker.update_endpoint, EndpointName="ep", EndpointConfigName="m2-config") == (
        "ValidationException", 400, f'Cannot update in-progress endpoint "{arn}".')
    wait_for_status(hosting, "InService")
    hosting.sagemaker.update_endpoint(EndpointName="ep", EndpointConfigName="m2-config")
    assert status_of(hosting) == "Updating"
    assert refusal(hosting.sagemaker.update_endpoint, EndpointName="ep", EndpointConfigName="m1-config")[:2] == (
        "ValidationException", 400)
    assert served_model(hosting) == "m1"            # the old config serves until the new one is loaded
    wait_for_status(hosting, "InService")
    assert served_model(hosting) == "m2"
    assert hosting.sagemaker.describe_endpoint(EndpointName="ep")["EndpointConfigName"] == "m2-config"
    assert endpoint_statuses(hosting) == ["Creating", "InService", "Updating", "InService"]


def test_two_updates_at_once_one_is_accepted_the_other_refused(hosting):
    hosting.sagemaker.create_endpoint(EndpointName="ep", EndpointConfigName="m1-config")
    wait_for_status(hosting, "InService")
    outcomes, barrier = [], threading.Barrier(2)

    def update():
        barrier.wait()
        try:
            hosting.sagemaker.update_endpoint(EndpointName="ep", EndpointConfigName="m2-config")
            outcomes.append("accepted")
        except ClientError as exc:
            outcomes.append(exc.response["Error"]["Code"])

    racers = [threading.Thread(target=update) for _ in range(2)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(10)
    assert sorted(outcomes) == ["ValidationException", "accepted"]


def test_an_existing_endpoint_cannot_be_created_again(hosting):
    hosting.sagemaker.create_endpoint(EndpointName="ep", EndpointConfigName="m1-config")
    arn = hosting.sagemaker.describe_endpoint(EndpointName="ep")["EndpointArn"]
    assert refusal(hosting.sagemaker.create_endpoint, EndpointName="ep", EndpointConfigName="m2-config") == (
        "ValidationException", 400, f'Cannot create already existing endpoint "{arn}".')


def test_a_create_made_to_fail_leaves_only_delete_then_a_new_create_serves(hosting):
    hosting.sagemaker.fail_next_endpoint_change("ep", "CapacityError: no ml.m5.large capacity")
    hosting.sagemaker.create_endpoint(EndpointName="ep", EndpointConfigName="m1-config")
    wait_for_status(hosting, "Failed")
    failed = hosting.sagemaker.describe_endpoint(EndpointName="ep")
    assert failed["FailureReason"] == "CapacityError: no ml.m5.large capacity" and served_model(hosting) is None
    assert endpoint_statuses(hosting) == ["Creating", "Failed"]
    assert hosting.events[-1]["detail"]["FailureReason"] == "CapacityError: no ml.m5.large capacity"
    arn = failed["EndpointArn"]
    assert refusal(hosting.sagemaker.update_endpoint, EndpointName="ep", EndpointConfigName="m2-config") == (
        "ValidationException", 400,
        f'Cannot update failed endpoint "{arn}". Only DeleteEndpoint is possible on a failed endpoint.')
    assert refusal(hosting.sagemaker.create_endpoint, EndpointName="ep", EndpointConfigName="m2-config") == (
        "ValidationException", 400, f'Cannot create already existing endpoint "{arn}".')
    assert status_of(hosting) == "Failed"           # the refusals changed nothing
    hosting.sagemaker.delete_endpoint(EndpointName="ep")
    assert status_of(hosting) == "Deleting"         # for a while, during which the name is still taken
    assert refusal(hosting.sagemaker.create_endpoint, EndpointName="ep", EndpointConfigName="m2-config") == (
        "ValidationException", 400, f'Cannot create already existing endpoint "{arn}".')
    wait_for(lambda: gone(hosting), 10, "the deletion to end")
    assert refusal(hosting.sagemaker.describe_endpoint, EndpointName="ep") == (
        "ValidationException", 400, f'Could not find endpoint "{arn}".')
    assert endpoint_statuses(hosting) == ["Creating", "Failed", "Deleting"]     # no event when it is gone
    hosting.sagemaker.create_endpoint(EndpointName="ep", EndpointConfigName="m2-config")     # the failure was once
    wait_for_status(hosting, "InService")
    assert served_model(hosting) == "m2"
    assert endpoint_statuses(hosting) == ["Creating", "Failed", "Deleting", "Creating", "InService"]


def test_an_update_made_to_fail_is_rolled_back_and_the_old_model_keeps_serving(hosting):
    hosting.sagemaker.create_endpoint(EndpointName="ep", EndpointConfigName="m1-config")
    wait_for_status(hosting, "InService")
    hosting.sagemaker.fail_next_endpoint_change("ep", "the image did not start")
    hosting.sagemaker.update_endpoint(EndpointName="ep", EndpointConfigName="m2-config")
    wait_for(lambda: endpoint_statuses(hosting)[-2:] == ["Updating", "InService"], 10, "the roll-back")
    described = hosting.sagemaker.describe_endpoint(EndpointName="ep")
    assert (described["EndpointStatus"], described["EndpointConfigName"], described["FailureReason"]) == (
        "InService", "m1-config", "the image did not start")
    assert hosting.events[-1]["detail"]["FailureReason"] == "the image did not start"
    assert served_model(hosting) == "m1"
    hosting.sagemaker.update_endpoint(EndpointName="ep", EndpointConfigName="m2-config")     # accepted: InService
    wait_for(lambda: served_model(hosting) == "m2", 10, "the second update")
    assert hosting.sagemaker.describe_endpoint(EndpointName="ep").get("FailureReason") is None


def test_an_update_made_to_fail_without_roll_back_ends_failed_with_the_reason(hosting):
    hosting.sagemaker.create_endpoint(EndpointName="ep", EndpointConfigName="m1-config")
    wait_for_status(hosting, "InService")
    hosting.sagemaker.fail_next_endpoint_change("ep", "the image did not start", rollback=False)
    hosting.sagemaker.update_endpoint(EndpointName="ep", EndpointConfigName="m2-config")
    wait_for_status(hosting, "Failed")
    assert hosting.sagemaker.describe_endpoint(EndpointName="ep")["FailureReason"] == "the image did not start"
    assert endpoint_statuses(hosting) == ["Creating", "InService", "Updating", "Failed"]
    assert refusal(hosting.sagemaker.update_endpoint, EndpointName="ep", EndpointConfigName="m2-config")[0] == (
        "ValidationException")
    hosting.sagemaker.delete_endpoint(EndpointName="ep")
    wait_for(lambda: gone(hosting), 10, "the deletion to end")
    hosting.sagemaker.create_endpoint(EndpointName="ep", EndpointConfigName="m2-config")
    wait_for_status(hosting, "InService")
    assert served_model(hosting) == "m2"


def test_an_endpoint_deleted_while_creating_is_not_brought_back_by_its_change(hosting):
    hosting.sagemaker.create_endpoint(EndpointName="ep", EndpointConfigName="m1-config")
    hosting.sagemaker.delete_endpoint(EndpointName="ep")
    assert hosting.sagemaker.wait_idle(10)
    assert refusal(hosting.sagemaker.describe_endpoint, EndpointName="ep")[0] == "ValidationException"
    assert endpoint_statuses(hosting) == ["Creating", "Deleting"]


def model_archive(inference_py=None) -> bytes:
    """A model.tar.gz with ``code/inference.py`` holding ``inference_py`` (none at all when None)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        files = {"model.json": b"{}"}
        if inference_py is not None:
            files["code/inference.py"] = inference_py.encode()
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.mark.parametrize("inference_py, reason", [
    (None, "ModelCodeError: "),
    ("def model_fn(model_dir):\n    raise RuntimeError('weights do not match the architecture')\n"
     "def input_fn(body, content_type):\n    return body\ndef output_fn(prediction, accept):\n    return prediction\n",
     "RuntimeError: weights do not match the architecture"),
])
def test_a_model_server_that_cannot_load_fails_the_endpoint_with_the_reason(tmp_path, inference_py, reason):
    from dogbreeds.serving import ModelServer
    local = Local(tmp_path, server_factory=ModelServer, endpoint_change_seconds=0)
    try:
        add_models(local, "bad", archive=model_archive(inference_py))
        local.sagemaker.create_endpoint(EndpointName="ep", EndpointConfigName="bad-config")
        wait_for_status(local, "Failed")
        failure = local.sagemaker.describe_endpoint(EndpointName="ep")["FailureReason"]
        assert failure.startswith(reason), failure
        if inference_py is None:
            assert "code/inference.py not found" in failure
        assert endpoint_statuses(local) == ["Creating", "Failed"] and served_model(local) is None
    finally:
        local.sagemaker.close()


class EchoingServer(FakeModelServer):
    """Answers each image with its own bytes as the label; the first ``together`` requests are held
    until that many are in flight at once (a broken barrier fails them), and the most seen is kept."""

    def __init__(self, model_dir, together):
        super().__init__()
        self.barrier = threading.Barrier(together, timeout=10)
        self.lock = threading.Lock()
        self.in_flight = self.most = self.held = 0

    def answer(self, body: bytes):
        with self.lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            held = self.held < self.barrier.parties
            self.held += held
        try:
            if held:
                self.barrier.wait()
            return 200, {"predictions": [{"label": body.decode(), "probability": 1.0}]}
        except threading.BrokenBarrierError:
            return 500, None
        finally:
            with self.lock:
                self.in_flight -= 1


def test_a_transform_sends_max_concurrent_transforms_requests_at_once_and_writes_every_answer(tmp_path):
    servers = []

    def factory(model_dir):
        servers.append(EchoingServer(model_dir, together=4))
        return servers[-1]

    local = Local(tmp_path, server_factory=factory)
    try:
        images = {f"dir{i % 3}/img{i:02d}.jpg": f"image-{i}" for i in range(12)}
        for name, body in images.items():
            local.s3.put_object(Bucket=BUCKET, Key=f"batch/c/input/{name}", Body=body.encode())
        local.s3.put_object(Bucket=BUCKET, Key="jobs/m/model.tar.gz", Body=source_package("x = 1"))
        local.sagemaker.create_model(ModelName="m", PrimaryContainer={"ModelDataUrl": f"s3://{BUCKET}/jobs/m/model.tar.gz"})
        request = requests.create_transform_job(replace(local.config, batch=replace(local.config.batch,
                                                                                   max_concurrent_transforms=4)),
                                                "c", "marker-1", "m")
        assert request["MaxConcurrentTransforms"] == 4
        local.sagemaker.create_transform_job(**request)
        assert local.sagemaker.wait_idle(30)
        job = local.sagemaker.describe_transform_job(TransformJobName=request["TransformJobName"])
        assert job["TransformJobStatus"] == "Completed", job.get("FailureReason")
        assert servers[0].most == 4                    # four at once (the first four met), never more
        for name, body in images.items():
            out = local.s3.get_object(Bucket=BUCKET, Key=f"batch/c/output/{name}.out")["Body"].read()
            assert json.loads(out)["predictions"][0]["label"] == body
    finally:
        local.sagemaker.close()


@pytest.mark.parametrize("change, fragment", [
    ({"BatchStrategy": "AllAtOnce"}, "BatchStrategy 'AllAtOnce' is not one of SingleRecord, MultiRecord"),
    ({"MaxPayloadInMB": 101, "MaxConcurrentTransforms": 1}, "MaxPayloadInMB must be 0..100"),
    ({"MaxPayloadInMB": 20, "MaxConcurrentTransforms": 6}, "(6 x 20) must not exceed 100 MB"),
    ({"TransformInput": {"SplitType": "Line"}}, "SplitType 'Line' is not emulated"),
])
def test_create_transform_job_refuses_what_sagemaker_refuses(local, change, fragment):
    local.sagemaker.create_model(ModelName="m", PrimaryContainer={"ModelDataUrl": f"s3://{BUCKET}/jobs/m/model.tar.gz"})
    request = requests.create_transform_job(local.config, "c", "marker-1", "m")
    for field, value in change.items():
        request[field] = {**request[field], **value} if isinstance(value, dict) else value
    with pytest.raises(ClientError) as info:
        local.sagemaker.create_transform_job(**request)
    assert info.value.response["Error"]["Code"] == "ValidationException"
    assert fragment in info.value.response["Error"]["Message"]
    with pytest.raises(ClientError):
        local.sagemaker.describe_transform_job(TransformJobName=request["TransformJobName"])
