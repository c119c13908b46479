"""Helpers for the trainer's tests: small datasets, the trainer's arguments, an in-process run, its rules."""

from __future__ import annotations

import logging
from pathlib import Path

from chalicelib.sagemaker_requests import METRIC_DEFINITIONS
from training import train
from training.summary import RuleResult, TrainingSummary

# The MetricDefinitions the control plane sends with every tuning and training job: the trainer's
# log lines are tested against exactly these.
SAGEMAKER_METRIC_DEFINITIONS = METRIC_DEFINITIONS

# Small and quick: 64 px training, images stored at 64..128 px.
SMALL = dict(min_side=64, max_side=128)


def train_args(data: Path, out: Path, *extra: str, splits=("train", "valid", "test")) -> list[str]:
    """Arguments for a fast CPU run: no ImageNet weights, 64 px, no worker processes."""
    args = [f"--{s}={data / s}" for s in splits]
    args += [f"--model-dir={out / 'model'}", f"--output-data-dir={out / 'output'}",
             "--weights=none", "--image-size=64", "--num-workers=0", "--profile-steps=0"]
    return args + list(extra)


def run_training(data: Path, out: Path, *extra: str, **kwargs) -> TrainingSummary:
    """Train in-process and return the summary (the report's input, with rules evaluated)."""
    logging.getLogger().handlers.clear()
    args = train.parse_args(train_args(data, out, *extra, **kwargs), env={})
    return train.run(args)


def rule(summary: TrainingSummary, name: str) -> RuleResult:
    return next(r for r in summary.rules if r.name == name)
