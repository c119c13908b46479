"""Serving variants (model_code/inference.py): checked against eager fp32 by the training job, recorded in
model.json, and chosen by model_fn only where they pass and run; eager otherwise, with the reason logged.

The models here really train (head only, 64 px, generated images); the numbers recorded in model.json are
recomputed from the validation images with the same batches, outside the trainer.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from training_support import run_training

from model_code import inference as inf
from training import data as data_lib

TRAIN_FLAGS = ("--epochs=2", "--batch-size=32", "--early-stopping-patience=0")


@pytest.fixture(scope="module")
def trained(dataset5, tmp_path_factory) -> Path:
    """A model directory from a real training run, with its variant checks. Treat as read-only."""
    out = tmp_path_factory.mktemp("variants")
    run_training(dataset5, out, *TRAIN_FLAGS)
    return out / "model"


@pytest.fixture
def model_copy(trained, tmp_path) -> Path:
    """A private copy of the trained model directory whose model.json a test may rewrite."""
    copy = tmp_path / "model"
    copy.mkdir()
    for name in ("model.json", "model.pth"):
        (copy / name).write_bytes((trained / name).read_bytes())
    return copy


def eager_network(model_dir: Path) -> torch.nn.Module:
    meta = json.loads((model_dir / "model.json").read_text())
    network = inf.build_network(meta["arch"], len(meta["classes"]))
    network.load_state_dict(torch.load(model_dir / "model.pth", weights_only=True))
    return network.eval()


def valid_batches(data: Path, batch_size: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The validation split as the trainer batches it: the planned sample order, eval transform, 64 px."""
    plan = data_lib.plan_dataset(str(data / "train"), str(data / "valid"), str(data / "test"), seed=0,
                                 valid_fraction=0.1, test_fraction=0.1)
    transform = inf.eval_transform(64)
    samples = plan.samples["valid"]
    batches = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        images = torch.stack([transform(inf.load_image_file(path, 64)) for path, _ in chunk])
        batches.append((images, torch.tensor([target for _, target in chunk])))
    return batches


def write_variants(model_dir: Path, variants: dict) -> None:
    meta = json.loads((model_dir / "model.json").read_text())
    meta["variants"] = variants
    (model_dir / "model.json").write_text(json.dumps(meta))


def passed(exact: bool) -> dict:
    return inf.judge(exact, 50, 1.0, 0.9, 0.9, 1e-6).record()


def perturbing(build):
    """A builder whose variant moves every image's probability mass onto class 0."""
    def broken_build(network):
        forward = build(network)
        return lambda x: forward(x) + torch.tensor([50.0] + [0.0] * (network.fc.out_features - 1), device=x.device)
    return broken_build


def failing_build(network):
    raise RuntimeError("no kernel for this graph here")


def patch_variant(monkeypatch, name: str, **changes) -> None:
    variants = dict(inf.VARIANTS)
    old = variants[name]
    variants[name] = inf.Variant(name, old.exact, changes.get("build", old.build),
                                 changes.get("unsupported", old.unsupported))
    monkeypatch.setattr(inf, "VARIANTS", variants)


# --------------------------------------------------------------------------------------- at training

def test_training_records_each_variants_check_and_the_numbers_recompute_from_the_validation_split(trained,
                                                                                               dataset5):
    recorded = json.loads((trained / "model.json").read_text())["variants"]
    assert set(recorded) == set(inf.VARIANTS)

    network = eager_network(trained)
    batches = valid_batches(dataset5)
    images = sum(len(targets) for _, targets in batches)
    assert images == 50
    with torch.inference_mode():
        eager = [torch.softmax(network(x), dim=1) for x, _ in batches]
    targets = torch.cat([t for _, t in batches])
    eager_top = torch.cat(eager).argmax(1)
    for name, variant in inf.VARIANTS.items():
        forward = variant.build(network)
        with torch.inference_mode():
            probs = [torch.softmax(forward(x).float(), dim=1) for x, _ in batches]
        top = torch.cat(probs).argmax(1)
        record = recorded[name]
        assert record["images"] == images
        assert record["eager_accuracy"] == (eager_top == targets).sum().item() / images
        assert record["accuracy"] == (top == targets).sum().item() / images
        assert record["top1_agreement"] == (top == eager_top).sum().item() / images
        assert record["max_prob_diff"] == pytest.approx(
            max((p - e).abs().max().item() for p, e in zip(probs, eager)), rel=1e-3, abs=1e-9)
        # passed is the rule for its kind applied to those numbers
        if variant.exact:
            assert record["passed"] == (record["max_prob_diff"] <= 1e-4)
        else:
            assert record["passed"] == (record["top1_agreement"] >= 0.995
                                        and record["eager_accuracy"] - record["accuracy"] <= 0.005)
        assert (record["reason"] == "") == record["passed"]
    # the fp32 graph is exact: it passes whatever the model learned
    assert recorded["fp32-frozen-cl"]["passed"] is True
    assert recorded["fp32-frozen-cl"]["max_prob_diff"] < 1e-5


def test_a_variant_that_changes_the_answers_is_rejected_at_training_and_eager_is_served(dataset5, tmp_path,
                                                                                      monkeypatch, caplog):
    for name, variant in inf.VARIANTS.items():
        patch_variant(monkeypatch, name, build=perturbing(variant.build))
    run_training(dataset5, tmp_path, *TRAIN_FLAGS)
    recorded = json.loads((tmp_path / "model" / "model.json").read_text())["variants"]

    assert {name: r["passed"] for name, r in recorded.items()} == {name: False for name in inf.VARIANTS}
    assert recorded["fp32-frozen-cl"]["max_prob_diff"] > 0.5
    assert recorded["fp32-frozen-cl"]["reason"].startswith("max probability difference")
    assert recorded["bf16-cl"]["accuracy"] == pytest.approx(0.2)  # everything is class 0: 10 of 50 images
    assert "top-1 agreement" in recorded["bf16-cl"]["reason"]

    logging.getLogger().addHandler(caplog.handler)  # run_training cleared the root's handlers, pytest's too
    with caplog.at_level(logging.INFO, logger="dogbreeds.inference"):
        model = inf.model_fn(tmp_path / "model")
    assert model.variant == "eager" and model.forward is None
    [line] = [r.getMessage() for r in caplog.records if r.name == "dogbreeds.inference"]
    assert line.startswith("serving eager fp32 for")
    assert "no variant passed the training job's validation check" in line and "bf16-cl (top-1" in line


def test_a_tuning_trial_skips_the_variant_checks(dataset5, tmp_path):
    run_training(dataset5, tmp_path, "--epochs=1", "--_tuning_objective_metric=val_acc")
    assert "variants" not in json.loads((tmp_path / "model" / "model.json").read_text())


# ------------------------------------------------------------------------------------------ at load

def test_the_fastest_passed_variant_that_runs_here_is_served_and_agrees_with_eager(model_copy, dataset5,
                                                                                monkeypatch):
    write_variants(model_copy, {"bf16-cl": passed(False), "fp32-frozen-cl": passed(True)})
    monkeypatch.setattr(inf, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    fast = inf.model_fn(model_copy)
    assert fast.variant == "bf16-cl"

    monkeypatch.setattr(inf, "cpu_flags", lambda: frozenset({"avx2"}))
    exact = inf.model_fn(model_copy)
    assert exact.variant == "fp32-frozen-cl"

    batch = valid_batches(dataset5)[0][0]
    eager = torch.softmax(eager_network(model_copy)(batch).detach(), dim=1)
    assert (exact.probabilities(batch) - eager).abs().max().item() <= 1e-4
    assert (fast.probabilities(batch) - eager).abs().max().item() <= inf.SELF_CHECK_REDUCED_MAX_PROB_DIFF


@pytest.mark.parametrize("problem, expected", [
    ("no bf16 here", "bf16-cl: this CPU has no avx512_bf16"),
    ("cannot build", "bf16-cl: cannot build here: RuntimeError: no kernel for this graph here"),
    ("wrong answers", "bf16-cl: self-check on a fixed input: max probability difference"),
])
def test_a_recorded_variant_that_cannot_run_here_gets_eager_and_one_log_line_naming_why(
        model_copy, monkeypatch, caplog, problem, expected):
    write_variants(model_copy, {"bf16-cl": passed(False),
                                "fp32-frozen-cl": inf.judge(True, 50, 1.0, 0.9, 0.9, 3e-4).record()})
    monkeypatch.setattr(inf, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    if problem == "no bf16 here":
        monkeypatch.setattr(inf, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    elif problem == "cannot build":
        patch_variant(monkeypatch, "bf16-cl", build=failing_build)
    else:
        patch_variant(monkeypatch, "bf16-cl", build=perturbing(inf.VARIANTS["bf16-cl"].build))

    with caplog.at_level(logging.INFO, logger="dogbreeds.inference"):
        model = inf.model_fn(model_copy)
    assert model.variant == "eager" and model.forward is None
    lines = [r for r in caplog.records if r.name == "dogbreeds.inference"]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    assert expected in lines[0].getMessage()
    assert "fp32-frozen-cl" not in lines[0].getMessage()  # it failed at training: not a candidate

    batch = inf.self_check_input(64)
    with torch.inference_mode():
        assert torch.equal(model.probabilities(batch), torch.softmax(eager_network(model_copy)(batch), dim=1))


def test_the_environment_forces_eager_or_a_variant_and_refuses_an_unknown_name(model_copy, monkeypatch, caplog):
    write_variants(model_copy, {"bf16-cl": passed(False), "fp32-frozen-cl": passed(True)})
    monkeypatch.setattr(inf, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    monkeypatch.setenv("DOGBREEDS_INFERENCE_VARIANT", "eager")
    with caplog.at_level(logging.INFO, logger="dogbreeds.inference"):
        assert inf.model_fn(model_copy).variant == "eager"
    [line] = [r for r in caplog.records if r.name == "dogbreeds.inference"]
    assert line.getMessage().endswith(": DOGBREEDS_INFERENCE_VARIANT=eager") and line.levelno == logging.INFO

    monkeypatch.setenv("DOGBREEDS_INFERENCE_VARIANT", "FP32-frozen-cl")
    assert inf.model_fn(model_copy).variant == "fp32-frozen-cl"

    write_variants(model_copy, {})  # an older model.json: forcing still checks the variant here
    assert inf.model_fn(model_copy).variant == "fp32-frozen-cl"
    monkeypatch.delenv("DOGBREEDS_INFERENCE_VARIANT")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="dogbreeds.inference"):
        assert inf.model_fn(model_copy).variant == "eager"
    [line] = [r for r in caplog.records if r.name == "dogbreeds.inference"]
    assert line.getMessage().endswith(": model.json records no checked serving variants")
    assert line.levelno == logging.INFO  # nothing was expected of this model: not a warning

    monkeypatch.setenv("DOGBREEDS_INFERENCE_VARIANT", "int8")
    with pytest.raises(inf.ModelLoadError, match="DOGBREEDS_INFERENCE_VARIANT='int8' is not one of auto, eager"):
        inf.model_fn(model_copy)
