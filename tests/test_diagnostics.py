"""Each diagnostics rule fires on a run that provokes it and stays quiet on a healthy run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pytest
import torch
from paths import ROOT
from training_support import SMALL, rule, run_training, train_args

from dogbreeds.synthetic import generate_dataset, render_image
from training import train
from training.diagnostics import RuleThresholds, evaluate_rules, low_gpu_utilization
from training.models import create_model
from training.summary import RuleResult, TrainingSummary

QUIET = {"NoIssuesFound", "NotApplicable"}


@pytest.fixture(scope="module")
def healthy(dataset5, tmp_path_factory):
    out = tmp_path_factory.mktemp("healthy")
    summary = run_training(dataset5, out, "--lr=0.01", "--epochs=12", "--early-stopping-patience=3",
                           "--profile-steps=3")
    return summary, out


def test_a_healthy_run_raises_no_rule(healthy):
    summary, out = healthy
    assert {r.name: r.status for r in summary.rules if r.status not in QUIET} == {}
    assert rule(summary, "LowGPUUtilization").status == "NotApplicable"  # CPU here
    diagnostics = json.loads((out / "output" / "diagnostics.json").read_text())
    assert diagnostics["issues_found"] == [] and len(diagnostics["rules"]) == 11
    assert summary.test.test_acc > 0.4  # random frozen features + a linear head, chance is 0.2


def test_the_report_page_carries_the_runs_curves_and_rules(healthy):
    summary, out = healthy
    page = (out / "output" / "report.html").read_text()
    for name in ("LossNotDecreasing", "Overfit", "Overtraining", "VanishingGradient", "ExplodingTensor",
                 "PoorWeightInitialization", "DeadRelu", "ClassImbalance", "LowGPUUtilization",
                 "CPUBottleneck", "DataLoaderStall"):
        assert name in page
    assert page.count("<svg") >= 6 and "<script" not in page
    assert f"{summary.test.test_acc * 100:.1f}%" in page
    metrics = [json.loads(line) for line in (out / "output" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics if m["type"] == "epoch"] == [e.epoch for e in summary.epochs]
    assert sum(m["type"] == "step" for m in metrics) == len(summary.steps["step"])
    assert summary.profiler["trace_file"] == "profiler-trace.json" and summary.profiler["top_ops"]


def test_the_runs_files_keep_their_contract_shape(healthy):
    summary, out = healthy
    diagnostics = json.loads((out / "output" / "diagnostics.json").read_text())
    assert list(diagnostics) == ["status", "failure_reason", "rules", "issues_found", "record"]
    assert diagnostics["status"] == "Completed" and diagnostics["failure_reason"] is None
    assert [r["name"] for r in diagnostics["rules"]] == [r.name for r in summary.rules]
    assert all(list(r) == ["name", "kind", "status", "message", "advice", "evidence"] for r in diagnostics["rules"])
    record = diagnostics["record"]
    assert list(record) == ["epochs", "steps", "gradients", "weights", "activations", "loader_batches",
                            "loader_failures", "system", "dataset", "test", "best_epoch"]
    assert [list(e) for e in record["epochs"]] == [["epoch", "train_loss", "train_acc", "val_loss", "val_acc",
                                                    "seconds"]] * len(summary.epochs)
    assert record["test"] == {"test_loss": summary.test.test_loss, "test_acc": summary.test.test_acc}
    assert record["best_epoch"] == summary.best_epoch and record["loader_failures"] == []
    assert list(record["steps"]) == ["step", "epoch", "loss", "data_seconds", "compute_seconds"]
    assert list(record["dataset"]) == ["fingerprint", "class_counts", "skipped_images", "derived_splits"]

    metrics = [json.loads(line) for line in (out / "output" / "metrics.jsonl").read_text().splitlines()]
    keys = {m["type"]: list(m) for m in metrics}
    assert keys == {"step": ["type", "time", "step", "epoch", "loss", "data_seconds", "compute_seconds"],
                    "epoch": ["type", "time", "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds"],
                    "test": ["type", "time", "split", "test_loss", "test_acc"],
                    "features": ["type", "time", "source", "key", "images", "store", "reason"]}
    assert metrics[-1]["type"] == "test"

    model = json.loads((out / "model" / "model.json").read_text())
    assert list(model) == ["format_version", "arch", "image_size", "classes", "labels", "normalization",
                           "hyperparameters", "metrics", "dataset", "versions", "variants"]
    assert list(model["metrics"]) == ["test_loss", "test_acc", "best_val_acc", "best_epoch", "epochs_run",
                                      "test_split"]


def test_diagnostics_of_a_run_that_failed_before_training_leave_the_record_null():
    summary = TrainingSummary(title="Training report: j", job={"arch": "resnet18"}, status="Failed",
                              failure_reason="DatasetError: train channel not found", seconds=0.5,
                              system={"t": [], "cpu_percent": [], "rss_mb": []},
                              rules=[RuleResult("Overfit", "training", "NoIssuesFound", "fine", "none"),
                                     RuleResult("DataLoaderStall", "system", "IssuesFound", "stalled", "fewer workers",
                                                {"failures": 1})])
    assert summary.diagnostics() == {
        "status": "Failed", "failure_reason": "DatasetError: train channel not found",
        "rules": [{"name": "Overfit", "kind": "training", "status": "NoIssuesFound", "message": "fine",
                   "advice": "none", "evidence": {}},
                  {"name": "DataLoaderStall", "kind": "system", "status": "IssuesFound", "message": "stalled",
                   "advice": "fewer workers", "evidence": {"failures": 1}}],
        "issues_found": ["DataLoaderStall"],
        "record": {"epochs": None, "steps": None, "gradients": None, "weights": None, "activations": None,
                   "loader_batches": None, "loader_failures": None,
                   "system": {"t": [], "cpu_percent": [], "rss_mb": []}, "dataset": None, "test": None,
                   "best_epoch": None}}
    # the rules read the record without the parts that were not recorded
    assert list(summary.record()) == ["title", "job", "status", "failure_reason", "system", "seconds", "rules"]


def test_zero_learning_rate_fires_loss_not_decreasing(dataset5, tmp_path):
    summary = run_training(dataset5, tmp_path, "--lr=0", "--epochs=3")
    result = rule(summary, "LossNotDecreasing")
    assert result.status == "IssuesFound"
    assert result.evidence["relative_decrease"] == pytest.approx(0, abs=1e-5)


def test_an_absurd_learning_rate_fires_exploding_tensor_and_can_stop_the_job_at_once(dataset5, tmp_path):
    summary = run_training(dataset5, tmp_path / "a", "--lr=1e6", "--epochs=1")
    assert rule(summary, "ExplodingTensor").status == "IssuesFound"
    assert rule(summary, "ExplodingTensor").evidence["first"]["step"] <= 2

    assert train.main(train_args(dataset5, tmp_path / "b", "--lr=1e6", "--epochs=3",
                                 "--fail-on-exploding-tensor=true")) == 2
    diagnostics = json.loads((tmp_path / "b" / "output" / "diagnostics.json").read_text())
    assert diagnostics["status"] == "Failed" and "ExplodingTensor at step" in diagnostics["failure_reason"]
    assert len(diagnostics["record"]["steps"]["step"]) <= 2  # stopped, not run to the end
    assert "ExplodingTensor" in diagnostics["issues_found"]


def test_memorising_a_tiny_train_set_fires_overfit(tmp_path):
    generate_dataset(tmp_path / "data", num_classes=5, train_per_class=3, valid_per_class=12, test_per_class=4,
                     seed=3, **SMALL)
    summary = run_training(tmp_path / "data", tmp_path / "out", "--lr=0.05", "--epochs=25",
                           "--early-stopping-patience=0", "--batch-size=8")
    result = rule(summary, "Overfit")
    assert result.status == "IssuesFound", result
    epochs = {e.epoch: e for e in summary.epochs}
    flagged, best = epochs[result.evidence["epoch"]], epochs[result.evidence["best_val_epoch"]]
    assert flagged.val_loss >= 1.1 * best.val_loss and flagged.train_loss <= 0.9 * best.train_loss
    assert best.val_loss == min(e.val_loss for e in summary.epochs if e.epoch < flagged.epoch)


def test_running_long_past_the_best_epoch_fires_overtraining(dataset5, tmp_path):
    summary = run_training(dataset5, tmp_path, "--lr=0.01", "--epochs=40", "--early-stopping-patience=0")
    result = rule(summary, "Overtraining")
    best = max(summary.epochs, key=lambda e: (e.val_acc, -e.epoch))
    assert result.evidence["best_epoch"] == best.epoch
    assert result.evidence["epochs_past_best"] == 40 - best.epoch >= 5
    assert result.status == "IssuesFound"
    # and the model that was saved is the best epoch's, not the last one's
    assert json.loads((tmp_path / "model" / "model.json").read_text())["metrics"]["best_epoch"] == best.epoch


def _weights_file(path, change):
    model = create_model("resnet18", 5, "none", "full")
    state = model.state_dict()
    for name, tensor in state.items():
        change(name, tensor)
    torch.save(state, path)
    return path


def test_collapsed_batchnorm_scales_fire_poor_initialisation_and_vanishing_gradients(dataset5, tmp_path):
    def shrink(name, tensor):
        if name.endswith(".weight") and tensor.dim() == 1:  # BatchNorm scales
            tensor.mul_(1e-10)
    weights = _weights_file(tmp_path / "collapsed.pth", shrink)
    summary = run_training(dataset5, tmp_path, f"--weights={weights}", "--epochs=2")
    poor = rule(summary, "PoorWeightInitialization")
    assert poor.status == "IssuesFound" and poor.evidence["activation_std"]["layer4"] < 1e-5
    vanishing = rule(summary, "VanishingGradient")
    assert vanishing.status == "IssuesFound"
    assert vanishing.evidence["median_weight_gradient_norm"]["head"] < 1e-7
    assert rule(summary, "DeadRelu").status == "NoIssuesFound"  # small is not dead


def test_negative_batchnorm_shifts_fire_dead_relu(dataset5, tmp_path):
    def kill(name, tensor):
        if name.endswith(".bias") and not name.startswith("fc."):  # BatchNorm shifts
            tensor.fill_(-10.0)
    weights = _weights_file(tmp_path / "dead.pth", kill)
    summary = run_training(dataset5, tmp_path, f"--weights={weights}", "--epochs=1")
    result = rule(summary, "DeadRelu")
    assert result.status == "IssuesFound"
    assert result.evidence["zero_fraction"]["layer2"] == pytest.approx(1.0)


def test_a_class_duplicated_tenfold_fires_class_imbalance(dataset_copy, tmp_path):
    big = dataset_copy / "train" / "003.Airedale_terrier"
    originals = sorted(big.glob("*.jpg"))
    for copy in range(1, 11):
        for image in originals:
            shutil.copy(image, big / f"copy{copy}_{image.name}")
    summary = run_training(dataset_copy, tmp_path, "--epochs=1")
    result = rule(summary, "ClassImbalance")
    assert result.status == "IssuesFound"
    assert result.evidence["largest"] == {"003.Airedale_terrier": 440}
    assert result.evidence["ratio"] == pytest.approx(11.0)


def test_huge_images_for_a_tiny_model_fire_cpu_bottleneck(tmp_path):
    rng = np.random.default_rng(0)
    for split, count in (("train", 14), ("valid", 2), ("test", 2)):
        for cls in range(3):
            folder = tmp_path / "data" / split / f"00{cls + 1}.Class_{cls}"
            folder.mkdir(parents=True)
            for i in range(count):  # lossless, 2.6 MP: slow to decode, while the model sees 32 px
                render_image(cls, rng, (1920, 1360)).save(folder / f"{i}.png", compress_level=1)
    # full fine-tuning: every training batch comes through the loader (head-only training would read each image
    # once, in a few 64-image feature-extraction batches, too few for the rule to judge)
    summary = run_training(tmp_path / "data", tmp_path / "out", "--image-size=32", "--batch-size=8",
                           "--epochs=1", "--finetune=full")
    result = rule(summary, "CPUBottleneck")
    assert result.status == "IssuesFound", result
    assert result.evidence["data_wait_share"] >= 0.5
    assert result.evidence["median_data_seconds"] > result.evidence["median_compute_seconds"]
    assert result.evidence["batches"] == 5  # 6 batches (5 of 8, 1 of 2) from 42 images, less the first (start-up)


def test_a_killed_data_loader_worker_fails_the_job_with_data_loader_stall(dataset5, tmp_path):
    argv = train_args(dataset5, tmp_path, "--finetune=full", "--epochs=3", "--num-workers=2")
    argv = [a for a in argv if a != "--num-workers=0"]
    proc = subprocess.Popen([sys.executable, str(ROOT / "training" / "train.py"), *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "KINETO_LOG_LEVEL": "5"})
    try:
        parent, deadline, victim = psutil.Process(proc.pid), time.monotonic() + 120, None
        while victim is None and time.monotonic() < deadline and proc.poll() is None:
            workers = parent.children()
            if workers:
                time.sleep(0.5)  # let the epoch get going
                victim = workers[0].pid
                os.kill(victim, signal.SIGKILL)  # what the kernel's OOM killer does
            time.sleep(0.05)
        output, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert victim is not None, "no data-loader worker appeared"
    assert proc.returncode == 2, output[-3000:]
    assert "data loader failed" in output
    diagnostics = json.loads((tmp_path / "output" / "diagnostics.json").read_text())
    stall = next(r for r in diagnostics["rules"] if r["name"] == "DataLoaderStall")
    assert stall["status"] == "IssuesFound" and str(victim) in stall["message"]
    assert diagnostics["status"] == "Failed"


def test_a_dead_workers_report_stops_training_but_never_the_handling_of_a_failure():
    """The flaky case of the test above: the dead worker's queue fails first (EOFError), and PyTorch's report
    (raised by its SIGCHLD handler) lands while that failure is being classified."""
    report = "DataLoader worker (pid 4242) is killed by signal: Killed."

    def pytorch_handler(signum, frame):
        raise RuntimeError(report)

    def child_exits():
        os.kill(os.getpid(), signal.SIGCHLD)
        time.sleep(0.05)  # Python runs the handler here

    previous = signal.signal(signal.SIGCHLD, pytorch_handler)
    try:
        deaths = train.WorkerDeaths()
        deaths.watch()
        with pytest.raises(RuntimeError, match="pid 4242"):  # training: a loop waiting on the dead worker stops
            child_exits()
        try:
            raise EOFError
        except EOFError as exc:
            child_exits()  # would have replaced the EOFError
            assert train.loader_failure(exc, deaths) == report
        assert [str(e) for e in deaths.errors] == [report, report]

        deaths.errors.clear()  # the report comes a moment after the queue fails: the classification waits for it
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGCHLD)).start()
        try:
            raise ConnectionResetError
        except ConnectionResetError as exc:
            assert train.loader_failure(exc, deaths) == report
        try:
            raise ValueError("not the loader")
        except ValueError as exc:
            assert train.loader_failure(exc, None) is None
        chained = RuntimeError("DataLoader worker (pid(s) 4242) exited unexpectedly")
        chained.__context__ = EOFError()
        assert train.loader_failure(chained, None) == str(chained)

        deaths.close()  # the run is over: nothing raises any more
        child_exits()
    finally:
        signal.signal(signal.SIGCHLD, previous)


@pytest.mark.parametrize("utilisation, status", [([12.0] * 30, "IssuesFound"), ([96.0] * 30, "NoIssuesFound"),
                                                 (None, "Error")])
def test_low_gpu_utilisation_is_judged_on_the_95th_percentile(utilisation, status):
    record = {"gpu": True, "system": {"gpu_util": utilisation}, "gpu_error": "NVMLError: not found"}
    assert low_gpu_utilization(record, RuleThresholds()).status == status


def test_a_rule_that_breaks_is_reported_as_error_and_the_others_still_run():
    results = {r.name: r.status for r in evaluate_rules({"epochs": [{"epoch": 1}]})}
    assert results["Overtraining"] == "Error"
    assert results["ClassImbalance"] == "NoIssuesFound" and len(results) == 11
