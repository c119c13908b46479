"""The console's server side without a browser: the page's files, the files it may link to (a batch's
predictions.csv, nothing else of the bucket), and the pipeline view built from job records and logs."""

from __future__ import annotations

import json

from dogbreeds.console import STATIC, Console, LocalSource, epoch_curve, pipeline_view

LOG = ("2026-12-03 23:46:27,427 INFO train: dataset 68d5c1f67b: 5 classes\n"
       "epoch=1 train_loss=2.4968 train_acc=0.1667 val_loss=54.1430 val_acc=0.2000\n"
       "epoch=2 train_loss=1.25 train_acc=0.5 val_loss=1.5e+00 val_acc=0.4\n"
       "test_loss=77.4613 test_acc=0.2000\n")


def test_epoch_lines_become_a_curve_and_other_lines_are_left_out():
    assert epoch_curve(LOG) == [
        {"epoch": 1, "train_loss": 2.4968, "train_acc": 0.1667, "val_loss": 54.143, "val_acc": 0.2},
        {"epoch": 2, "train_loss": 1.25, "train_acc": 0.5, "val_loss": 1.5, "val_acc": 0.4}]


def test_the_console_serves_its_page_and_a_batchs_predictions_but_nothing_else_of_the_bucket(tmp_path):
    bucket = tmp_path / "s3" / "b"
    (bucket / "batch" / "b1" / "output").mkdir(parents=True)
    (bucket / "batch" / "b1" / "output" / "predictions.csv").write_text("image_key,top_label\na.jpg,Akita\n")
    (bucket / "pipeline").mkdir()
    (bucket / "pipeline" / "state.json").write_text("{}")
    console = Console(LocalSource(tmp_path, "b", lambda: {}))
    assert console.answer("/") == (200, "text/html; charset=utf-8", (STATIC / "index.html").read_bytes())
    status, kind, body = console.answer("/console/static/console.js?v=1")
    assert status == 200 and "javascript" in kind and body == (STATIC / "console.js").read_bytes()
    assert console.answer("/console/files/batch/b1/output/predictions.csv") == (
        200, "text/csv; charset=utf-8", b"image_key,top_label\na.jpg,Akita\n")
    for path in ("/console/files/pipeline/state.json", "/console/files/batch/../pipeline/state.json",
                 "/console/static/../__init__.py", "/console/static/%2e%2e/__init__.py", "/console/nothing"):
        status, _, body = console.answer(path)
        assert status == 404 and json.loads(body)["Code"] == "NotFound", path
    assert console.answer("/status") is None and not Console.owns("/predict")


def test_the_view_takes_the_current_runs_trials_with_their_curves_and_its_instrumented_run():
    status = {"run": {"tuning_job": "tune-dogs-1", "training_job": "train-dogs-1"}, "endpoint": {"name": "dogbreeds"}}
    records = {
        "tuning": [{"HyperParameterTuningJobName": "tune-dogs-1", "HyperParameterTuningJobStatus": "Completed",
                    "HyperParameterTuningJobConfig": {"Strategy": "Bayesian", "ResourceLimits": {"MaxNumberOfTrainingJobs": 2},
                                                      "HyperParameterTuningJobObjective": {"Type": "Maximize",
                                                                                           "MetricName": "validation:accuracy"}},
                    "BestTrainingJob": {"TrainingJobName": "tune-dogs-1-002"}}],
        "training": [
            {"TrainingJobName": "tune-other-001", "TuningJobArn": "arn:x:hyper-parameter-tuning-job/tune-other",
             "TrainingJobStatus": "Completed"},
            {"TrainingJobName": "tune-dogs-1-001", "TuningJobArn": "arn:x:hyper-parameter-tuning-job/tune-dogs-1",
             "TrainingJobStatus": "Stopped", "SecondaryStatus": "Stopped", "_Tuned": {"lr": "0.01", "arch": '"resnet18"'}},
            {"TrainingJobName": "tune-dogs-1-002", "TuningJobArn": "arn:x:hyper-parameter-tuning-job/tune-dogs-1",
             "TrainingJobStatus": "Completed", "_Tuned": {"lr": "0.002"},
             "_Objective": {"MetricName": "validation:accuracy", "Value": 0.4}},
            {"TrainingJobName": "train-dogs-1", "TrainingJobStatus": "Completed",
             "HyperParameters": {"lr": "0.002", "sagemaker_program": '"training/train.py"'},
             "FinalMetricDataList": [{"MetricName": "test:accuracy", "Value": 0.5}]}],
        "endpoint": [{"EndpointName": "dogbreeds", "EndpointStatus": "InService", "EndpointConfigName": "config-1"}]}
    curves = {"tune-dogs-1-002": epoch_curve(LOG)}
    view = pipeline_view(status, records, lambda name: curves.get(name, []), lambda name: [{"name": "Overfit"}],
                         [], "/console/report")
    assert [(t["name"], t["stopped_early"], t["objective"], t["hyperparameters"]) for t in view["trials"]] == [
        ("tune-dogs-1-001", True, None, {"arch": "resnet18", "lr": 0.01}),
        ("tune-dogs-1-002", False, 0.4, {"lr": 0.002})]
    assert view["trials"][1]["curve"] == curves["tune-dogs-1-002"]
    assert view["training"]["hyperparameters"] == {"lr": 0.002} and view["training"]["metrics"] == {"test:accuracy": 0.5}
    assert view["training"]["rules"] == [{"name": "Overfit"}] and view["report_url"] == "/console/report"
    assert view["tuning"]["best"] == "tune-dogs-1-002" and view["tuning"]["max_trials"] == 2
    assert view["endpoint_record"] == {"status": "InService", "config": "config-1", "failure": None}
