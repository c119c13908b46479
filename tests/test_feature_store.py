"""One backbone feature extraction per tuning job: head-only trials share content-addressed feature sets.

The trainer in-process (a shared store gives the same heads as per-run extraction; a corrupt or ill-fitting
set is recomputed), then a real tuning job of 3 head-only trials through the local SageMaker stand-in,
running the packaged train.py, with the request the control plane builds.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from training_support import run_training

from chalicelib import sagemaker_requests as requests
from chalicelib.config import CategoricalRange, PipelineConfig, TuningConfig
from deploy import package_source
from dogbreeds.localaws.s3 import LocalS3
from dogbreeds.localaws.sagemaker import LocalSageMaker
from training import features as features_lib

HEAD = ("--finetune=head", "--augment=none", "--epochs=2", "--early-stopping-patience=0")


def feature_events(metrics_file: Path) -> list[dict]:
    return [r for r in map(json.loads, metrics_file.read_text().splitlines()) if r["type"] == "features"]


def epochs_of(summary) -> list[tuple]:
    return [(e.train_loss, e.train_acc, e.val_loss, e.val_acc) for e in summary.epochs]


def test_runs_sharing_a_store_extract_once_and_train_what_per_run_extraction_trains(dataset5, tmp_path):
    store = tmp_path / "store"
    trials = [("--lr=0.01", "--batch-size=16"), ("--lr=0.003", "--batch-size=32"), ("--lr=0.03", "--batch-size=8")]
    shared = [run_training(dataset5, tmp_path / f"shared{i}", *HEAD, *hp, f"--feature-store={store}")
              for i, hp in enumerate(trials)]
    alone = [run_training(dataset5, tmp_path / f"alone{i}", *HEAD, *hp) for i, hp in enumerate(trials)]

    events = [feature_events(tmp_path / f"shared{i}/output/metrics.jsonl") for i in range(3)]
    assert [[e["source"] for e in ev] for ev in events] == [["computed"], ["loaded"], ["loaded"]]
    assert events[0][0]["images"] == 300 and events[1][0]["images"] == events[2][0]["images"] == 0  # 200+50+50
    assert len({e[0]["key"] for e in events}) == 1
    assert [p.name for p in store.iterdir() if not p.name.startswith(".")] == [events[0][0]["key"]]
    # each per-run extraction ran the backbone over every image again, into its own checkpoint folder
    for i in range(3):
        (only,) = feature_events(tmp_path / f"alone{i}/output/metrics.jsonl")
        assert (only["source"], only["images"], only["key"]) == ("computed", 300, events[0][0]["key"])
    for a, b in zip(shared, alone):
        assert epochs_of(a) == epochs_of(b) and a.test == b.test
    for i in range(3):
        head_shared = torch.load(tmp_path / f"shared{i}/model/model.pth", weights_only=True)["fc.weight"]
        head_alone = torch.load(tmp_path / f"alone{i}/model/model.pth", weights_only=True)["fc.weight"]
        assert torch.equal(head_shared, head_alone)

    # another backbone (weights none with another seed) is another key: extracted, not confused with the first
    run_training(dataset5, tmp_path / "seed1", *HEAD, "--seed=1", f"--feature-store={store}")
    (other,) = feature_events(tmp_path / "seed1/output/metrics.jsonl")
    assert other["source"] == "computed" and other["key"] != events[0][0]["key"]


def _rewrite_split(folder: Path, split: str, rows: int):
    """Replace a split's file by its first ``rows`` rows and record the new checksum and shape: a set that
    passes its checksums but no longer fits the dataset."""
    file = folder / f"{split}.pt"
    data = torch.load(file, weights_only=True)
    torch.save({"features": data["features"][:rows], "targets": data["targets"][:rows]}, file)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["splits"][split].update(sha256=features_lib.file_sha256(file), shape=[rows, data["features"].shape[1]])
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_a_corrupt_feature_set_is_recomputed_by_the_trainer_not_trusted(dataset5, tmp_path):
    store = tmp_path / "store"
    first = run_training(dataset5, tmp_path / "first", *HEAD, f"--feature-store={store}")
    (made,) = feature_events(tmp_path / "first/output/metrics.jsonl")
    data = bytearray((store / made["key"] / "valid.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (store / made["key"] / "valid.pt").write_bytes(bytes(data))

    again = run_training(dataset5, tmp_path / "again", *HEAD, f"--feature-store={store}")
    (redo,) = feature_events(tmp_path / "again/output/metrics.jsonl")
    assert (redo["source"], redo["images"], redo["key"]) == ("computed", 300, made["key"])
    assert redo["reason"] == "valid.pt does not match its checksum"
    assert epochs_of(again) == epochs_of(first)
    # the recomputed set replaced the bad one
    found, why = features_lib.FeatureStore(store).load(made["key"], {"train": 200, "valid": 50, "test": 50}, 512)
    assert why == "ok" and torch.equal(found[0]["valid"][0], torch.load(
        store / made["key"] / "valid.pt", weights_only=True)["features"])


def _small_set(store: features_lib.FeatureStore, key="k" * 24):
    generator = torch.Generator().manual_seed(0)
    features = {split: (torch.randn(n, 8, generator=generator), torch.arange(n) % 3)
                for split, n in (("train", 12), ("valid", 4), ("test", 3))}
    # one test image was unreadable: the plan has 4, the set 3 rows
    return store.save(key, {"arch": "x"}, features, [{"path": "test/c/x.jpg", "reason": "bad"}],
                      {"train": 12, "valid": 4, "test": 4})


def _rewrite_split(folder: Path, split: str, rows: int):
    """A split's file cut to ``rows`` rows with its checksum and shape recorded again: a set that passes
    its checksums but no longer fits the dataset."""
    file = folder / f"{split}.pt"
    data = torch.load(file, weights_only=True)
    torch.save({"features": data["features"][:rows], "targets": data["targets"][:rows]}, file)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["splits"][split].update(sha256=features_lib.file_sha256(file), shape=[rows, 8])
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("damage, reason", [
    ("none", "ok"),
    ("flip a byte", "valid.pt does not match its checksum"),
    ("drop rows", "train features have shape [10, 8] (manifest [10, 8]), expected [12, 8]"),
    ("truncate the manifest", "unreadable (JSONDecodeError"),
    ("delete a split", "test.pt is missing"),
    ("another key", "manifest names key 'jjjjjjjjjjjjjjjjjjjjjjjj'"),
    ("other width", "train features have shape [12, 8] (manifest [12, 8]), expected [12, 16]"),
    ("absent", "absent"),
])
def test_the_store_hands_out_only_whole_sets_that_fit(tmp_path, damage, reason):
    store = features_lib.FeatureStore(tmp_path / "store")
    folder = _small_set(store)
    rows, width, key = {"train": 12, "valid": 4, "test": 4}, 8, "k" * 24
    if damage == "flip a byte":
        data = bytearray((folder / "valid.pt").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (folder / "valid.pt").write_bytes(bytes(data))
    elif damage == "drop rows":
        _rewrite_split(folder, "train", 10)
    elif damage == "truncate the manifest":
        text = (folder / "manifest.json").read_text()
        (folder / "manifest.json").write_text(text[:len(text) // 2])
    elif damage == "delete a split":
        (folder / "test.pt").unlink()
    elif damage == "another key":
        _small_set(store, "j" * 24)
        folder.rename(tmp_path / "old")
        (store.path("j" * 24)).rename(folder)
    elif damage == "other width":
        width = 16
    elif damage == "absent":
        key = "a" * 24
    found, why = store.load(key, rows, width)
    assert why.startswith(reason), why
    if damage == "none":
        features, skipped = found
        assert [len(features[s][1]) for s in ("train", "valid", "test")] == [12, 4, 3]
        assert skipped == [{"path": "test/c/x.jpg", "reason": "bad"}]
    else:
        assert found is None
    # nothing half-written is left behind, and a later save replaces a bad set
    assert [p.name for p in [*store.root.iterdir(), *tmp_path.iterdir()] if ".tmp-" in p.name] == []
    if found is None and damage != "absent":
        _small_set(store, key)
        assert store.load(key, rows, 8)[1] == "ok"


# ------------------------------------------------------------------ a tuning job through the local stand-in

BUCKET = "local-test"


def _tuning_request(config: PipelineConfig, shared: bool) -> dict:
    tuning = TuningConfig(strategy="Random", max_training_jobs=3, max_parallel_training_jobs=1, random_seed=5,
                          continuous_ranges=(),
                          categorical_ranges=(CategoricalRange("lr", (0.003, 0.01, 0.03)),
                                              CategoricalRange("batch-size", (8, 16, 32))),
                          static_hyperparameters={"finetune": "head", "weights": "none", "image-size": 64,
                                                  "epochs": 2, "early-stopping-patience": 0, "profile-steps": 0,
                                                  "num-workers": 0})
    source = package_source.build()
    request = requests.create_hyper_parameter_tuning_job(replace(config, tuning=tuning), "dogs", "m1",
                                                         source.uri(BUCKET))
    definition = request["TrainingJobDefinition"]
    assert definition["CheckpointConfig"] == {"S3Uri": f"s3://{BUCKET}/features/dogs/", "LocalPath": "/opt/ml/features"}
    assert definition["StaticHyperParameters"]["feature-store"] == '"/opt/ml/features"'
    if not shared:   # what the trials did before: each extracts into its own checkpoint folder
        del definition["CheckpointConfig"], definition["StaticHyperParameters"]["feature-store"]
    return request


def test_a_tuning_job_of_three_head_only_trials_extracts_features_once(dataset5, tmp_path):
    s3 = LocalS3(tmp_path / "s3")
    s3.create_bucket(Bucket=BUCKET)
    for path in sorted(dataset5.rglob("*.jpg")):
        s3.put_object(Bucket=BUCKET, Key=f"datasets/dogs/{path.relative_to(dataset5)}", Body=path.read_bytes())
    source = package_source.build()
    s3.put_object(Bucket=BUCKET, Key=source.key(), Body=source.data)
    config = PipelineConfig(bucket=BUCKET, role_arn="arn:aws:iam::000000000000:role/r", region="us-east-1")
    sagemaker = LocalSageMaker(s3, tmp_path / "data", lambda event: None, cores=2)
    results = {}
    try:
        for shared in (True, False):
            request = _tuning_request(config, shared)
            request["HyperParameterTuningJobName"] += "-s" if shared else "-p"
            name = request["HyperParameterTuningJobName"]
            sagemaker.create_hyper_parameter_tuning_job(**request)
            assert sagemaker.wait_idle(600)
            tuning = sagemaker.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
            assert tuning["HyperParameterTuningJobStatus"] == "Completed", tuning.get("FailureReason")
            trials = sagemaker.list_training_jobs_for_hyper_parameter_tuning_job(
                HyperParameterTuningJobName=name)["TrainingJobSummaries"]
            assert len(trials) == 3 and {t["TrainingJobStatus"] for t in trials} == {"Completed"}
            per_trial = []
            for trial in sorted(trials, key=lambda t: t["CreationTime"]):
                job = sagemaker.describe_training_job(TrainingJobName=trial["TrainingJobName"])
                metrics_file = sagemaker.job_dir(trial["TrainingJobName"]) / "output" / "data" / "metrics.jsonl"
                (event,) = feature_events(metrics_file)
                val = [r["val_acc"] for r in map(json.loads, metrics_file.read_text().splitlines())
                       if r["type"] == "epoch"]
                per_trial.append((tuple(sorted(trial["TunedHyperParameters"].items())), event, val,
                                  {m["MetricName"]: m["Value"] for m in job["FinalMetricDataList"]}))
            results[shared] = per_trial
    finally:
        sagemaker.close()

    shared, alone = results[True], results[False]
    # the backbone ran over the 300 images once in the shared job, once per trial without sharing
    assert [(e["source"], e["images"]) for _, e, _, _ in shared] == [("computed", 300), ("loaded", 0), ("loaded", 0)]
    assert [(e["source"], e["images"]) for _, e, _, _ in alone] == [("computed", 300)] * 3
    assert shared[0][1]["store"] == str(s3.prefix_path(BUCKET, "features/dogs/"))
    key = shared[0][1]["key"]
    assert (s3.prefix_path(BUCKET, f"features/dogs/{key}") / "manifest.json").is_file()
    # the same trials (the seeded sampler), each with the same validation accuracy per epoch and final metrics
    assert [t[0] for t in shared] == [t[0] for t in alone] and len({t[0] for t in shared}) > 1
    assert [(t[2], t[3]) for t in shared] == [(t[2], t[3]) for t in alone]
