"""Each diagnostics rule fires on a run that provokes it and stays quiet on a healthy run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest
import torch
from conftest import ROOT, SMALL, rule, run_training, train_args

from dogbreeds.synthetic import generate_dataset, render_image
from training import train
from training.diagnostics import RuleThresholds, evaluate_rules, low_gpu_utilization
from training.models import create_model

QUIET = {"NoIssuesFound", "NotApplicable"}


@pytest.fixture(scope="module")
def healthy(dataset5, tmp_path_factory):
    out = tmp_path_factory.mktemp("healthy")
    summary = run_training(dataset5, out, "--lr=0.01", "--epochs=12", "--early-stopping-patience=3",
                           "--profile-steps=3")
    return summary, out


def test_a_healthy_run_raises_no_rule(healthy):
    summary, out = healthy
    assert {r["name"]: r["status"] for r in summary["rules"] if r["status"] not in QUIET} == {}
    assert rule(summary, "LowGPUUtilization")["status"] == "NotApplicable"  # CPU here
    diagnostics = json.loads((out / "output" / "diagnostics.json").read_text())
    assert diagnostics["issues_found"] == [] and len(diagnostics["rules"]) == 11
    assert summary["test"]["test_acc"] > 0.4  # random frozen features + a linear head, chance is 0.2


def test_the_report_page_carries_the_runs_curves_and_rules(healthy):
    summary, out = healthy
    page = (out / "output" / "report.html").read_text()
    for name in ("LossNotDecreasing", "Overfit", "Overtraining", "VanishingGradient", "ExplodingTensor",
                 "PoorWeightInitialization", "DeadRelu", "ClassImbalance", "LowGPUUtilization",
                 "CPUBottleneck", "DataLoaderStall"):
        assert name in page
    assert page.count("<svg") >= 6 and "<script" not in page
    assert f"{summary['test']['test_acc'] * 100:.1f}%" in page
    metrics = [json.loads(line) for line in (out / "output" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics if m["type"] == "epoch"] == [e["epoch"] for e in summary["epochs"]]
    assert sum(m["type"] == "step" for m in metrics) == len(summary["steps"]["step"])
    assert summary["profiler"]["trace_file"] == "profiler-trace.json" and summary["profiler"]["top_ops"]


def test_zero_learning_rate_fires_loss_not_decreasing(dataset5, tmp_path):
    summary = run_training(dataset5, tmp_path, "--lr=0", "--epochs=3")
    result = rule(summary, "LossNotDecreasing")
    assert result["status"] == "IssuesFound"
    assert result["evidence"]["relative_decrease"] == pytest.approx(0, abs=1e-5)


def test_an_absurd_learning_rate_fires_exploding_tensor_and_can_stop_the_job_at_once(dataset5, tmp_path):
    summary = run_training(dataset5, tmp_path / "a", "--lr=1e6", "--epochs=1")
    assert rule(summary, "ExplodingTensor")["status"] == "IssuesFound"
    assert rule(summary, "ExplodingTensor")["evidence"]["first"]["step"] <= 2

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
    assert result["status"] == "IssuesFound", result
    epochs = {e["epoch"]: e for e in summary["epochs"]}
    flagged, best = epochs[result["evidence"]["epoch"]], epochs[result["evidence"]["best_val_epoch"]]
    assert flagged["val_loss"] >= 1.1 * best["val_loss"] and flagged["train_loss"] <= 0.9 * best["train_loss"]
    assert best["val_loss"] == min(e["val_loss"] for e in summary["epochs"] if e["epoch"] < flagged["epoch"])


def test_running_long_past_the_best_epoch_fires_overtraining(dataset5, tmp_path):
    summary = run_training(dataset5, tmp_path, "--lr=0.01", "--epochs=40", "--early-stopping-patience=0")
    result = rule(summary, "Overtraining")
    best = max(summary["epochs"], key=lambda e: (e["val_acc"], -e["epoch"]))
    assert result["evidence"]["best_epoch"] == best["epoch"]
    assert result["evidence"]["epochs_past_best"] == 40 - best["epoch"] >= 5
    assert result["status"] == "IssuesFound"
    # and the model that was saved is the best epoch's, not the last one's
    assert json.loads((tmp_path / "model" / "model.json").read_text())["metrics"]["best_epoch"] == best["epoch"]


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
    assert poor["status"] == "IssuesFound" and poor["evidence"]["activation_std"]["layer4"] < 1e-5
    vanishing = rule(summary, "VanishingGradient")
    assert vanishing["status"] == "IssuesFound"
    assert vanishing["evidence"]["median_weight_gradient_norm"]["head"] < 1e-7
    assert rule(summary, "DeadRelu")["status"] == "NoIssuesFound"  # small is not dead


def test_negative_batchnorm_shifts_fire_dead_relu(dataset5, tmp_path):
    def kill(name, tensor):
        if name.endswith(".bias") and not name.startswith("fc."):  # BatchNorm shifts
            tensor.fill_(-10.0)
    weights = _weights_file(tmp_path / "dead.pth", kill)
    summary = run_training(dataset5, tmp_path, f"--weights={weights}", "--epochs=1")
    result = rule(summary, "DeadRelu")
    assert result["status"] == "IssuesFound"
    assert result["evidence"]["zero_fraction"]["layer2"] == pytest.approx(1.0)


def test_a_class_duplicated_tenfold_fires_class_imbalance(dataset_copy, tmp_path):
    big = dataset_copy / "train" / "003.Airedale_terrier"
    originals = sorted(big.glob("*.jpg"))
    for copy in range(1, 11):
        for image in originals:
            shutil.copy(image, big / f"copy{copy}_{image.name}")
    summary = run_training(dataset_copy, tmp_path, "--epochs=1")
    result = rule(summary, "ClassImbalance")
    assert result["status"] == "IssuesFound"
    assert result["evidence"]["largest"] == {"003.Airedale_terrier": 440}
    assert result["evidence"]["ratio"] == pytest.approx(11.0)


def test_huge_images_for_a_tiny_model_fire_cpu_bottleneck(tmp_path):
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("valid", 2), ("test", 2)):
        for cls in range(3):
            folder = tmp_path / "data" / split / f"00{cls + 1}.Class_{cls}"
            folder.mkdir(parents=True)
            for i in range(count):  # lossless, 2.6 MP: slow to decode, while the model sees 32 px
                render_image(cls, rng, (1920, 1360)).save(folder / f"{i}.png", compress_level=1)
    summary = run_training(tmp_path / "data", tmp_path / "out", "--image-size=32", "--batch-size=4",
                           "--epochs=1")
    result = rule(summary, "CPUBottleneck")
    assert result["status"] == "IssuesFound", result
    assert result["evidence"]["data_wait_share"] >= 0.5
    assert result["evidence"]["median_data_seconds"] > result["evidence"]["median_compute_seconds"]


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


@pytest.mark.parametrize("utilisation, status", [([12.0] * 30, "IssuesFound"), ([96.0] * 30, "NoIssuesFound"),
                                                 (None, "Error")])
def test_low_gpu_utilisation_is_judged_on_the_95th_percentile(utilisation, status):
    record = {"gpu": True, "system": {"gpu_util": utilisation}, "gpu_error": "NVMLError: not found"}
    assert low_gpu_utilization(record, RuleThresholds()).status == status


def test_a_rule_that_breaks_is_reported_as_error_and_the_others_still_run():
    results = {r["name"]: r["status"] for r in evaluate_rules({"epochs": [{"epoch": 1}]})}
    assert results["Overtraining"] == "Error"
    assert results["ClassImbalance"] == "NoIssuesFound" and len(results) == 11
