"""The ``dogbreeds`` command: publishing into the bucket and the event spool, refusing what is not a
dataset, and ``dogbreeds up`` killed mid-training and started again.

The commands against a running stack (status, logs, predict, batch, report) are exercised at the end
of ``test_local_stack.py``'s end-to-end run, on its trained model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from local_support import wait_for

from dogbreeds import cli, client
from dogbreeds.localaws.endpoints import DEFAULT_FAULT_REASON
from dogbreeds.localaws.s3 import LocalS3
from dogbreeds.stack import BUCKET, ROOT, LocalStack


def pending_events(data_dir: Path) -> list:
    return [json.loads(p.read_text()) for p in sorted((data_dir / "events" / "pending").glob("*.json"))]


def bucket_files(data_dir: Path, prefix: str) -> dict:
    root = data_dir / "s3" / BUCKET / prefix
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_publish_mirrors_the_folder_then_queues_the_marker_event(tmp_path, dataset_copy, capsys):
    home = tmp_path / "home"
    assert cli.main(["publish", str(dataset_copy), "--name", "dogs", "--data-dir", str(home)]) == 0
    out = capsys.readouterr().out
    images = {p.relative_to(dataset_copy).as_posix(): p.read_bytes() for p in dataset_copy.rglob("*.jpg")}
    assert f"{len(images)} copied, 0 unchanged, 0 removed" in out
    assert "no stack runs for" in out
    stored = bucket_files(home, "datasets/dogs")
    marker = json.loads(stored.pop("_READY"))
    assert stored == images
    assert marker["files"] == len(images) and marker["from"] == str(dataset_copy.resolve())
    s3 = LocalS3(home / "s3")
    some = sorted(images)[0]
    assert s3.head_object(Bucket=BUCKET, Key=f"datasets/dogs/{some}")["ETag"].strip('"') == hashlib.md5(
        images[some]).hexdigest()
    first_etag = s3.head_object(Bucket=BUCKET, Key="datasets/dogs/_READY")["ETag"].strip('"')
    [event] = pending_events(home)
    assert (event["source"], event["detail-type"]) == ("aws.s3", "Object Created")
    assert event["detail"]["bucket"]["name"] == BUCKET
    assert event["detail"]["object"] == {**event["detail"]["object"], "key": "datasets/dogs/_READY",
                                         "etag": first_etag}

    # publish the folder again after removing one image and changing another: a mirror, and a new marker
    removed, changed = sorted(dataset_copy.rglob("*.jpg"))[:2]
    removed.unlink()
    changed.write_bytes(changed.read_bytes() + b"\0")
    assert cli.main(["publish", str(dataset_copy), "--name", "dogs", "--data-dir", str(home)]) == 0
    out = capsys.readouterr().out
    assert f"1 copied, {len(images) - 2} unchanged, 1 removed" in out
    stored = bucket_files(home, "datasets/dogs")
    stored.pop("_READY")
    assert stored == {p.relative_to(dataset_copy).as_posix(): p.read_bytes() for p in dataset_copy.rglob("*.jpg")}
    second = pending_events(home)[1]["detail"]["object"]["etag"]
    assert second == s3.head_object(Bucket=BUCKET, Key="datasets/dogs/_READY")["ETag"].strip('"') != first_etag


@pytest.mark.parametrize("damage, message", [
    (lambda root: shutil.rmtree(root / "train"), "has no train/ split with images"),
    (lambda root: [shutil.rmtree(p) for p in sorted((root / "train").iterdir())[1:]],
     "classification needs at least 2"),
    (lambda root: shutil.rmtree(root), "is not a folder"),
], ids=["no-train-split", "one-class", "no-folder"])
def test_publish_refuses_what_the_pipeline_cannot_train_on_and_writes_nothing(tmp_path, dataset_copy, capsys,
                                                                              damage, message):
    home = tmp_path / "home"
    damage(dataset_copy)
    assert cli.main(["publish", str(dataset_copy), "--name", "dogs", "--data-dir", str(home)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dogbreeds publish: ") and message in err
    assert bucket_files(home, "datasets") == {}
    assert pending_events(home) == []


def test_commands_that_need_the_api_say_how_to_start_the_stack(tmp_path, dataset5, capsys):
    home = tmp_path / "home"
    image = str(sorted(dataset5.rglob("*.jpg"))[0])
    assert cli.main(["predict", image, "--data-dir", str(home)]) == 1
    assert f"no local stack is running for {home}: start one with `dogbreeds up --data-dir {home}`" in \
        capsys.readouterr().err
    assert cli.main(["batch", str(dataset5 / "test"), "--data-dir", str(home)]) == 2
    assert "start one with `dogbreeds up" in capsys.readouterr().err
    assert bucket_files(home, "batch") == {}        # nothing copied for a batch nobody can run


# --- `dogbreeds up` as a process: killed, restarted, stopped --------------------------------------

def start_up(home: Path, log: Path) -> subprocess.Popen:
    """``dogbreeds up`` in its own session (as from a terminal); returns once its API answers."""
    previous = client.Home(home).running()
    argv = [sys.executable, "-m", "dogbreeds", "up", "--data-dir", str(home), "--port", "0", "--cores", "1",
            "--trials", "1", "--trial-epochs", "50", "--poll", "0.2"]
    with open(log, "a") as output:
        process = subprocess.Popen(argv, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        info = client.Home(home).running()
        if info and info != previous and info["pid"] == process.pid:
            return process
        assert process.poll() is None, log.read_text()
        time.sleep(0.2)
    process.kill()
    raise AssertionError(f"dogbreeds up did not start:\n{log.read_text()}")


def wait_for_training_process(home: Path, timeout: float = 90) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for record in client.Home(home).records("training"):
            if record["TrainingJobStatus"] == "InProgress" and record.get("_pid"):
                return record
        time.sleep(0.2)
    raise AssertionError("no training job started")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_killing_up_mid_training_and_starting_it_again_leaves_no_job_in_progress(tmp_path, dataset5):
    home, log = tmp_path / "home", tmp_path / "up.log"
    processes = []
    try:
        processes.append(start_up(home, log))
        assert cli.main(["publish", str(dataset5), "--name", "dogs", "--data-dir", str(home)]) == 0
        trial = wait_for_training_process(home)
        os.killpg(processes[-1].pid, signal.SIGKILL)          # the whole `up`, as a crash or `kill -9` would
        processes[-1].wait(10)
        assert alive(trial["_pid"])      # the job's script outlives it (its own session, like a container)

        processes.append(start_up(home, log))
        wait_for(lambda: not alive(trial["_pid"]), 20, "the orphaned training script to be killed")
        records = {kind: client.Home(home).records(kind) for kind in ("training", "tuning")}
        assert [r["TrainingJobStatus"] for r in records["training"]] == ["Failed"]
        assert [r["HyperParameterTuningJobStatus"] for r in records["tuning"]] == ["Failed"]
        assert "the local runtime stopped while this job ran" in records["training"][0]["FailureReason"]
        # the Failed events reach the control plane: the run says so too
        wait_for(lambda: (client.current_run(client.Home(home).state()) or {}).get("tuning_status") == "Failed", 20,
                   "the run to record the failed tuning job")

        # a clean stop (Ctrl-C) of a stack running a job: the job ends Stopped, the process exits 0
        assert cli.main(["publish", str(dataset5), "--name", "dogs2", "--data-dir", str(home)]) == 0
        second = wait_for_training_process(home)
        processes[-1].send_signal(signal.SIGINT)
        assert processes[-1].wait(60) == 0, log.read_text()
        assert not alive(second["_pid"])
        statuses = {r["TrainingJobName"]: r["TrainingJobStatus"] for r in client.Home(home).records("training")}
        assert statuses == {trial["TrainingJobName"]: "Failed", second["TrainingJobName"]: "Stopped"}
        assert not (home / "stack.json").exists()
        assert "stopping: running jobs end Stopped" in log.read_text()
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        for record in client.Home(home).records("training"):
            if record.get("_pid") and alive(record["_pid"]):
                os.killpg(record["_pid"], signal.SIGKILL)


def test_up_options_change_the_quick_profile_and_bad_values_are_refused_with_the_reason(tmp_path, capsys):
    args = cli.build_parser().parse_args(["up", "--strategy", "Hyperband", "--trials", "5", "--parallel", "2",
                                          "--trial-epochs", "4", "--epochs", "7", "--accuracy-floor", "0.25",
                                          "--seed", "11"])
    config = cli.stack_config(args)
    tuning = config.tuning
    assert (tuning.strategy, tuning.max_training_jobs, tuning.max_parallel_training_jobs, tuning.random_seed) == \
        ("Hyperband", 5, 2, 11)
    assert tuning.static_hyperparameters["epochs"] == 4 and tuning.hyperband_max_epochs == 4
    assert tuning.static_hyperparameters["image-size"] == 64          # the rest of the profile stays
    assert config.final_training.static_hyperparameters["epochs"] == 7
    assert config.final_training.static_hyperparameters["profile-steps"] == 5
    assert config.gate.accuracy_floor == 0.25
    home = tmp_path / "home"
    for option, message in ((["--trials", "0"], "max training jobs must be at least 1, got 0"),
                            (["--accuracy-floor", "1.5"], "accuracy floor must be between 0 and 1, got 1.5")):
        assert cli.main(["up", *option, "--data-dir", str(home)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("dogbreeds up: invalid configuration:") and message in err
    assert not home.exists()           # refused before anything starts


def test_up_fail_endpoint_once_arms_one_failure_of_the_stacks_endpoint_before_any_event(tmp_path):
    assert cli.build_parser().parse_args(["up"]).fail_endpoint_once is None
    assert cli.build_parser().parse_args(["up", "--fail-endpoint-once"]).fail_endpoint_once == DEFAULT_FAULT_REASON
    args = cli.build_parser().parse_args(["up", "--fail-endpoint-once", "no capacity"])
    stack = LocalStack(tmp_path / "home", config=cli.stack_config(args), serve_api=False,
                       fail_endpoint_once=args.fail_endpoint_once).start()
    try:
        sagemaker, name = stack.sagemaker, stack.endpoint_name
        assert name == "dogbreeds"
        sagemaker.create_model(ModelName="m", PrimaryContainer={"ModelDataUrl": f"s3://{BUCKET}/none.tar.gz"})
        sagemaker.create_endpoint_config(EndpointConfigName="c", ProductionVariants=[
            {"VariantName": "AllTraffic", "ModelName": "m"}])
        sagemaker.create_endpoint(EndpointName=name, EndpointConfigName="c")
        failed = wait_for(lambda: (sagemaker.describe_endpoint(EndpointName=name)["EndpointStatus"] == "Failed"
                                   and sagemaker.describe_endpoint(EndpointName=name)), 30, "the endpoint to fail")
        assert failed["FailureReason"] == "no capacity"
    finally:
        stack.stop()


# --- the progress feed and when a run is over ------------------------------------------------------

def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_the_progress_feed_reports_each_change_once(tmp_path):
    from dogbreeds.progress import Watcher
    trial = {"TrainingJobName": "tune-x-001", "TrainingJobStatus": "InProgress", "CreationTime": "2026-11-22T08:00:01",
             "TuningJobArn": "arn:tuning/tune-x", "HyperParameters": {"epochs": "3"},
             "_Tuned": {"lr": "0.0035412", "batch-size": "16", "arch": '"resnet18"'}}
    write_json(tmp_path / "sagemaker/training/tune-x-001.json", trial)
    watcher = Watcher(tmp_path, BUCKET)
    assert watcher.changes() == ["trial     tune-x-001 InProgress with arch=resnet18 batch-size=16 lr=0.00354"]
    assert watcher.changes() == []

    log = tmp_path / "jobs/tune-x-001/log.txt"
    log.parent.mkdir(parents=True)
    log.write_text("2026 INFO train: starting\nepoch=1 train_loss=1.5 val_acc=0.25\n")
    assert watcher.changes() == ["          tune-x-001 epoch 1/3: train_loss=1.5 val_acc=0.25"]
    log.write_text(log.read_text() + "epoch=2 train_loss=1.1 val_acc=0.5\n")
    assert watcher.changes() == ["          tune-x-001 epoch 2/3: train_loss=1.1 val_acc=0.5"]

    write_json(tmp_path / "sagemaker/training/tune-x-001.json", {
        **trial, "TrainingJobStatus": "Stopped", "SecondaryStatus": "Stopped",
        "FinalMetricDataList": [{"MetricName": "validation:accuracy", "Value": 0.5},
                                {"MetricName": "train:loss", "Value": 1.1}]})
    write_json(tmp_path / f"s3/{BUCKET}/pipeline/state.json", {"runs": {"dogs/m1": {
        "dataset": "dogs", "marker": "m1", "gate": {"deploy": False, "reason": "refused: test accuracy 0.5 is "
                                                                              "below the floor of 0.6000"}}}})
    assert watcher.changes() == [
        "gate      refused: test accuracy 0.5 is below the floor of 0.6000",
        "trial     tune-x-001 Stopped: validation:accuracy=0.5000 (stopped early by the tuner)"]


def test_a_job_record_is_described_once_for_the_feed_and_the_status_table(tmp_path):
    from dogbreeds.progress import Watcher
    write_json(tmp_path / "sagemaker/training/tune-x-001.json", {
        "TrainingJobName": "tune-x-001", "TrainingJobStatus": "Completed", "TuningJobArn": "arn:tuning/tune-x",
        "CreationTime": "2026-11-22T08:00:01+00:00", "TrainingEndTime": "2026-11-22T08:00:43+00:00",
        "FinalMetricDataList": [{"MetricName": "validation:accuracy", "Value": 0.5},
                                {"MetricName": "train:loss", "Value": 1.1}]})
    write_json(tmp_path / "sagemaker/transform/batch-b1.json", {
        "TransformJobName": "batch-b1", "TransformJobStatus": "Completed", "CreationTime": "2026-11-22T09:30:00+00:00",
        "TransformEndTime": "2026-11-22T09:30:05+00:00", "_Written": 6, "_Skipped": 1})
    assert Watcher(tmp_path, BUCKET).changes() == [
        "trial     tune-x-001 Completed: validation:accuracy=0.5000",
        "transform batch-b1 Completed: 6 images classified, 1 already done"]
    assert client.status_lines(client.Home(tmp_path))[1:] == [
        "",
        f"{'started':<9} {'kind':<9} {'job':<44} {'status':<11} {'took':>6}  result",
        f"{'08:00:01':<9} {'trial':<9} {'tune-x-001':<44} {'Completed':<11} {'42s':>6}  validation:accuracy=0.5000",
        f"{'09:30:00':<9} {'transform':<9} {'batch-b1':<44} {'Completed':<11} {'5s':>6}  6 classified, 1 already done"]


def test_predict_asks_for_a_top_k_only_when_given_one(tmp_path, dataset5):
    class RecordingHome(client.Home):
        def api(self, method, path, body=None, content_type=None, timeout=60):
            asked.append((method, path, content_type))
            return 200, {"predictions": []}

    asked = []
    image = sorted(dataset5.rglob("*.jpg"))[0]
    home = RecordingHome(tmp_path)
    assert client.predict_file(home, image) == [] and client.predict_file(home, image, top_k=3) == []
    assert asked == [("POST", "/predict", "image/jpeg"), ("POST", "/predict?top_k=3", "image/jpeg")]


@pytest.mark.parametrize("run, state, expected", [
    ({"layout_problems": ["train/ has 1 class"]}, {}, (False, "the dataset was refused: train/ has 1 class")),
    ({"tuning_status": "Completed", "training_status": "Failed", "training_failure": "AlgorithmError: boom"}, {},
     (False, "training failed: AlgorithmError: boom")),
    ({"gate": {"deploy": False, "reason": "refused: too low"}}, {}, (False, "the gate refused the model: refused: too low")),
    ({"gate": {"deploy": True}}, {"deployed": {"training_job": "train-2", "model_name": "m2"},
                                  "endpoint": {"name": "dogbreeds", "status": "Updating"}}, None),
    ({"gate": {"deploy": True}}, {"deployed": {"training_job": "train-2", "model_name": "m2"},
                                  "endpoint": {"name": "dogbreeds", "status": "InService"}},
     (True, "deployed: endpoint dogbreeds serves m2")),
    ({"gate": {"deploy": True}}, {"deployed": {"training_job": "train-1", "model_name": "m1"},
                                  "endpoint": {"name": "dogbreeds", "status": "InService"}}, None),
    ({"tuning_status": "InProgress"}, {}, None),
], ids=["layout", "training-failed", "gate-refused", "endpoint-updating", "deployed", "older-model-serving",
        "tuning"])
def test_a_followed_run_is_over_when_deployed_refused_or_failed(run, state, expected):
    full = {"runs": {"dogs/m2": {"training_job": "train-2", **run}}, **state}
    assert client.run_outcome(full, "dogs/m2") == expected
    assert client.run_outcome(full, "dogs/other-marker") is None      # a run not yet recorded is not over


def test_fetch_and_demo_get_every_argument_after_their_name(tmp_path, capsys):
    missing = tmp_path / "none.zip"
    assert cli.main(["fetch", "--zip", str(missing), "--dest", str(tmp_path / "data"), "--no-progress"]) == 1
    assert f"no zip file at {missing}" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        cli.main(["demo", "--classes", "many"])
    assert exit_.value.code == 2 and "--classes: invalid int value: 'many'" in capsys.readouterr().err


def test_predict_explain_writes_the_photo_with_the_heatmap_over_it(tmp_path, dataset5):
    """The reply's heatmap (drawn here as the handlers draw one: opaque red on the left half, nothing on the
    right) is laid over the photo at its size: left half reddened, right half the photo as it was."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    from model_code import explain

    image = sorted(dataset5.rglob("*.jpg"))[0]
    photo = Image.open(image).convert("RGB")
    width, height = photo.size
    heat = explain.heatmap_image(np.array([[1.0, 0.0]]), width, height, (0, 0, width, height), crop=64, stride=32)
    buf = io.BytesIO()
    heat.save(buf, "PNG")
    reply = {"predictions": [{"label": "Akita", "probability": 0.9}],
             "explanation": {"heatmap": base64.b64encode(buf.getvalue()).decode(), "width": width, "height": height}}

    class RecordingHome(client.Home):
        def api(self, method, path, body=None, content_type=None, timeout=60):
            asked.append(path)
            return 200, reply

    asked = []
    out = tmp_path / "why.png"
    assert client.predict_file(RecordingHome(tmp_path), image, top_k=2, explain_to=out) == reply["predictions"]
    assert asked == ["/predict?top_k=2&explain=true"]
    written = np.asarray(Image.open(out).convert("RGB")).astype(int)
    original = np.asarray(photo).astype(int)
    assert written.shape == original.shape
    assert np.array_equal(written[:, -2:], original[:, -2:])                    # no heat: the photo
    assert (written[:, :2] - original[:, :2]).any()                             # full heat: coloured
    assert np.array_equal(written[:, :2], np.asarray(Image.alpha_composite(
        photo.convert("RGBA"), heat).convert("RGB")).astype(int)[:, :2])
