"""The whole pipeline on this machine: the unchanged Chalice control plane over the local runtime.

Publishing a generated dataset runs real tuning trials and a real instrumented training run (tiny:
64 px, one or two epochs), the gate, a local endpoint serving /predict, and a batch transform whose
predictions.csv lands in the filesystem bucket.
"""

from __future__ import annotations

import csv
import io
import json
import tarfile

from local_support import http, wait_for

from chalicelib import names
from chalicelib.sagemaker_requests import job_artifact_uri, split_s3_uri
from dogbreeds import cli
from dogbreeds.stack import LocalStack, local_config
from model_code.inference import display_label


def test_publish_to_predictions_through_the_local_runtime(tmp_path, dataset5, capsys):
    config = local_config("quick", trials=2, parallel=2, seed=3, trial_epochs=1, epochs=2, accuracy_floor=0.0)
    with LocalStack(tmp_path / "stack", config=config, cores=2) as stack:
        status, body = http("POST", f"{stack.api_url}/predict", b"\xff\xd8\xff\xe0", "image/jpeg")
        assert (status, body["Code"]) == (503, "NoModel")

        for path in sorted(dataset5.rglob("*.jpg")):
            stack.s3.upload_file(str(path), config.bucket, f"datasets/dogs/{path.relative_to(dataset5)}")
        stack.s3.put_object(Bucket=config.bucket, Key="datasets/dogs/_READY", Body=b"first publication")

        def served():
            view = stack.plane.status()
            run = view["run"] or {}
            if run.get("training_status") == "Failed" or run.get("tuning_status") in ("Failed", "Invalid"):
                raise AssertionError(f"the run failed: {json.dumps(run)[:2000]}")
            return view if (view["endpoint"] or {}).get("status") == "InService" else None

        view = wait_for(served, 400, "the endpoint to serve")
        run = view["run"]
        assert run["tuning_status"] == "Completed" and run["training_status"] == "Completed"
        tuning = stack.sagemaker.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=run["tuning_job"])
        trials = stack.sagemaker.list_training_jobs_for_hyper_parameter_tuning_job(
            HyperParameterTuningJobName=run["tuning_job"])["TrainingJobSummaries"]
        assert len(trials) == 2 and all(t["TrainingJobStatus"] == "Completed" for t in trials)
        objectives = {t["TrainingJobName"]: t["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] for t in trials}
        best = tuning["BestTrainingJob"]
        assert best["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] == max(objectives.values())
        assert objectives[best["TrainingJobName"]] == max(objectives.values())
        # the instrumented run got the best trial's hyperparameters and the final statics
        final = stack.sagemaker.describe_training_job(TrainingJobName=run["training_job"])
        for name, value in tuning["BestTrainingJob"]["TunedHyperParameters"].items():
            assert final["HyperParameters"][name] == value
        assert json.loads(final["HyperParameters"]["epochs"]) == 2
        log = (stack.sagemaker.job_dir(run["training_job"]) / "log.txt").read_text()
        assert log.count(" val_acc=") == 2 and "test_acc=" in log
        test_acc = {m["MetricName"]: m["Value"] for m in final["FinalMetricDataList"]}["test:accuracy"]
        assert run["gate"]["deploy"] is True and run["gate"]["candidate_accuracy"] == test_acc
        assert view["deployed"]["test_acc"] == test_acc
        # output.tar.gz holds the job's outputs, not its checkpoints (a trial has no CheckpointConfig)
        for name in (best["TrainingJobName"], run["training_job"]):
            output = stack.sagemaker.describe_training_job(TrainingJobName=name)["OutputDataConfig"]["S3OutputPath"]
            _, key = split_s3_uri(job_artifact_uri(output, name, "output.tar.gz"))
            with tarfile.open(fileobj=stack.s3.get_object(Bucket=config.bucket, Key=key)["Body"]) as tar:
                names = set(tar.getnames())
            assert {"report.html", "diagnostics.json", "metrics.jsonl"} <= names
            assert not [n for n in names if n.startswith("checkpoints")], names

        # /predict over HTTP: real JPEG bytes, the model's own top-k
        image = sorted((dataset5 / "test").rglob("*.jpg"))[0]
        status, body = http("POST", f"{stack.api_url}/predict?top_k=3", image.read_bytes(), "image/jpeg")
        assert status == 200, body
        classes = sorted(p.name for p in (dataset5 / "train").iterdir())
        assert len(body["predictions"]) == 3
        assert all(p["class"] in classes for p in body["predictions"])
        assert abs(sum(p["probability"] for p in body["predictions"])) <= 1.0 + 1e-6
        status, body = http("POST", f"{stack.api_url}/predict", b"not an image", "image/png")
        assert status == 400 and "not an image" in body["Message"]

        # a batch: images in batch/<id>/input/, POST /batch, predictions.csv in the bucket
        inputs = sorted((dataset5 / "test").rglob("*.jpg"))[:6]
        for path in inputs:
            stack.s3.upload_file(str(path), config.bucket, f"batch/b1/input/{path.parent.name}/{path.name}")
        status, body = http("POST", f"{stack.api_url}/batch", json.dumps({"batch_id": "b1"}).encode(),
                            "application/json")
        assert status == 202, body

        def batch_done():
            _, view = http("GET", f"{stack.api_url}/batch/b1")
            if view["status"] in ("Failed", "Stopped"):
                raise AssertionError(f"the batch failed: {view}")
            return view if view["status"] == "Completed" else None

        view = wait_for(batch_done, 120, "the batch")
        assert view["predictions_uri"] == f"s3://{config.bucket}/batch/b1/output/predictions.csv"
        rows = list(csv.DictReader(io.StringIO(stack.s3.get_object(
            Bucket=config.bucket, Key="batch/b1/output/predictions.csv")["Body"].read().decode())))
        assert [r["image_key"] for r in rows] == sorted(
            f"batch/b1/input/{p.parent.name}/{p.name}" for p in inputs)
        labels = {display_label(c) for c in classes}
        assert all(r["top_label"] in labels and r["error"] == "" for r in rows)

        # the `dogbreeds` command against the same running stack, as a user in another terminal uses it
        home = ["--data-dir", str(stack.data_dir)]
        assert cli.main(["status", *home]) == 0
        out = capsys.readouterr().out
        assert f"stack     running, API {stack.api_url}" in out
        assert f"run       tuning Completed, training Completed, test accuracy {test_acc:.4f}" in out
        assert f"endpoint  dogbreeds InService at {stack.sagemaker.endpoint_url('dogbreeds')}" in out
        assert len([line for line in out.splitlines() if " trial " in f" {line} "]) == 2

        assert cli.main(["logs", run["training_job"], *home]) == 0
        assert capsys.readouterr().out == log

        assert cli.main(["predict", str(image), str(dataset5 / "train"), "--top-k", "2", *home]) == 1
        captured = capsys.readouterr()
        shown = captured.out.strip().split(": ", 1)[1].split(", ")
        assert len(shown) == 2 and all(s.rsplit(" ", 1)[0] in labels for s in shown)
        assert f"{dataset5 / 'train'}: no such file" in captured.err
        assert cli.main(["predict", str(image), *home]) == 0
        shown = capsys.readouterr().out.strip().split(": ", 1)[1].split(", ")
        assert len(shown) == len(classes) == 5       # the handler's default top_k (5): the command sends none

        folder = tmp_path / "to-classify"
        folder.mkdir()
        for path in inputs[:3]:
            (folder / path.name).write_bytes(path.read_bytes())
        (folder / "notes.txt").write_text("not an image: left out")
        assert cli.main(["batch", str(folder), "--id", "cli1", *home]) == 0
        out = capsys.readouterr().out
        written = stack.raw_s3.path_of(config.bucket, "batch/cli1/output/predictions.csv")
        assert f"predictions: {written}" in out and "classified 3/3" in out
        assert [row["image_key"] for row in csv.DictReader(io.StringIO(written.read_text()))] == sorted(
            f"batch/cli1/input/{p.name}" for p in inputs[:3])

        # a corrupt image fails the transform; the other images' predictions are kept, the bad one named
        (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
        (folder / "notes.txt").unlink()
        assert cli.main(["batch", str(folder), "--id", "cli2", *home]) == 2
        err = capsys.readouterr().err
        written = stack.raw_s3.path_of(config.bucket, "batch/cli2/output/predictions.csv")
        assert "batch cli2 Failed: ClientError: 1 of 4 objects failed: " in err and str(written) in err
        rows = {row["image_key"]: row for row in csv.DictReader(io.StringIO(written.read_text()))}
        assert sorted(rows) == sorted(f"batch/cli2/input/{name}" for name in
                                      ["broken.jpg", *(p.name for p in inputs[:3])])
        assert rows.pop("batch/cli2/input/broken.jpg")["error"].startswith("not classified: ClientError")
        assert all(row["top_label"] in labels and row["error"] == "" for row in rows.values())

        assert cli.main(["report", *home]) == 0
        out = capsys.readouterr().out
        report = stack.data_dir / "reports" / run["training_job"] / "report.html"
        assert f"report: {report}" in out
        assert f"<title>Training report: {run['training_job']}</title>" in report.read_text()


def test_an_endpoint_made_to_fail_is_deleted_and_the_chosen_model_served_on_a_new_one(tmp_path, dataset5):
    """The local SageMaker fails the endpoint's first creation on purpose; the unchanged control plane
    records the failure, deletes the Failed endpoint, creates it again with the model the gate chose,
    and /predict answers from it."""
    config = local_config("quick", trials=1, parallel=1, seed=3, trial_epochs=1, epochs=1, accuracy_floor=0.0)
    reason = "CapacityError: no ml.m5.large capacity (failed on purpose by the test)"
    # no reconciliation tick here (every 2 s by default): the calls below are the event path's, in order
    with LocalStack(tmp_path / "stack", config=config, cores=2, fail_endpoint_once=reason,
                    reconcile_seconds=3600) as stack:
        calls = []
        for name in ("create_endpoint", "update_endpoint", "delete_endpoint"):
            original = getattr(stack.sagemaker, name)

            def recorded(*args, _original=original, _name=name, **kwargs):
                calls.append(_name)
                return _original(*args, **kwargs)
            setattr(stack.sagemaker, name, recorded)

        for path in sorted(dataset5.rglob("*.jpg")):
            stack.s3.upload_file(str(path), config.bucket, f"datasets/dogs/{path.relative_to(dataset5)}")
        stack.s3.put_object(Bucket=config.bucket, Key="datasets/dogs/_READY", Body=b"publication to fail once")

        def serving():
            view = stack.plane.status()
            deployed = view.get("deployed") or {}
            if deployed.get("deployment") == "FailedToDeploy":
                raise AssertionError(f"the model was given up: {json.dumps(deployed)[:2000]}")
            return view if deployed.get("deployment") == "Serving" else None

        view = wait_for(serving, 400, "the model to serve after the endpoint's failure")
        assert calls == ["create_endpoint", "delete_endpoint", "create_endpoint"]
        deployed = view["deployed"]
        assert deployed["endpoint_attempts"] == 2
        assert deployed["endpoint_failures"] == [f"endpoint {stack.endpoint_name} failed: {reason}"]
        assert view["endpoint"]["status"] == "InService"
        assert stack.sagemaker.describe_endpoint(EndpointName=stack.endpoint_name)["EndpointConfigName"] == \
            names.endpoint_config_name(deployed["dataset"], deployed["marker"])
        image = sorted((dataset5 / "test").rglob("*.jpg"))[0]
        status, body = http("POST", f"{stack.api_url}/predict?top_k=2", image.read_bytes(), "image/jpeg")
        assert status == 200 and len(body["predictions"]) == 2, body


def test_the_local_api_serves_prometheus_metrics_that_count_exactly_the_requests_sent(tmp_path):
    """7 good and 3 refused requests with no dataset published: GET /status is 200, POST /predict of text is
    the control plane's 415 before any endpoint is asked."""
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    def scrape(url) -> dict:
        with urlopen(f"{url}/metrics", timeout=30) as response:
            assert response.headers["Content-Type"].startswith("text/plain; version=")
            text = response.read().decode("utf-8")
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    with LocalStack(tmp_path / "stack", cores=1) as stack:
        before = scrape(stack.api_url)
        statuses = [http("GET", f"{stack.api_url}/status")[0] for _ in range(7)]
        statuses += [http("POST", f"{stack.api_url}/predict", b"hello", "text/plain")[0] for _ in range(3)]
        after = scrape(stack.api_url)
    assert statuses == [200] * 7 + [415] * 3
    moved = {key: after[key] - before.get(key, 0.0) for key in after if after[key] != before.get(key, 0.0)}
    assert {key: value for key, value in moved.items() if key[0] == "dogbreeds_api_requests_total"} == {
        ("dogbreeds_api_requests_total", (("method", "GET"), ("route", "/status"), ("status", "200"))): 7,
        ("dogbreeds_api_requests_total", (("method", "POST"), ("route", "/predict"), ("status", "415"))): 3}
    assert moved[("dogbreeds_api_request_seconds_count", (("method", "GET"), ("route", "/status")))] == 7
    assert moved[("dogbreeds_api_request_seconds_count", (("method", "POST"), ("route", "/predict")))] == 3
    assert moved[("dogbreeds_api_request_seconds_bucket", (("le", "+Inf"), ("method", "POST"),
                                                           ("route", "/predict")))] == 3
