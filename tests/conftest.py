"""Shared fixtures: small generated datasets and a way to run the trainer in-process."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest
import torch

from chalicelib.sagemaker_requests import METRIC_DEFINITIONS
from dogbreeds.synthetic import generate_dataset
from training import train

ROOT = Path(__file__).resolve().parent.parent        # the checkout
os.environ.setdefault("KINETO_LOG_LEVEL", "5")       # read when the profiler starts: its chatter about missing GPUs

torch.set_num_threads(2)

# The MetricDefinitions the control plane sends with every tuning and training job: the trainer's
# log lines are tested against exactly these.
SAGEMAKER_METRIC_DEFINITIONS = METRIC_DEFINITIONS

# Small and quick: 64 px training, images stored at 64..128 px.
SMALL = dict(min_side=64, max_side=128)


@pytest.fixture(scope="session")
def dataset5(tmp_path_factory) -> Path:
    """5 classes, 40/10/10 images per class: a healthy, learnable dataset. Treat as read-only."""
    root = tmp_path_factory.mktemp("dataset5")
    generate_dataset(root, num_classes=5, train_per_class=40, valid_per_class=10, test_per_class=10,
                     seed=0, **SMALL)
    return root


@pytest.fixture
def dataset_copy(dataset5, tmp_path) -> Path:
    """A private copy of dataset5 that a test may damage."""
    return Path(shutil.copytree(dataset5, tmp_path / "data"))


def train_args(data: Path, out: Path, *extra: str, splits=("train", "valid", "test")) -> list[str]:
    """Arguments for a fast CPU run: no ImageNet weights, 64 px, no worker processes."""
    args = [f"--{s}={data / s}" for s in splits]
    args += [f"--model-dir={out / 'model'}", f"--output-data-dir={out / 'output'}",
             "--weights=none", "--image-size=64", "--num-workers=0", "--profile-steps=0"]
    return args + list(extra)


def run_training(data: Path, out: Path, *extra: str, **kwargs) -> dict:
    """Train in-process and return the summary (the report's input, with rules evaluated)."""
    logging.getLogger().handlers.clear()
    args = train.parse_args(train_args(data, out, *extra, **kwargs), env={})
    return train.run(args)


def rule(summary: dict, name: str) -> dict:
    return next(r for r in summary["rules"] if r["name"] == name)


# --- the AWS side: moto and Chalice's test client (tests/aws_support.py has the helpers) ------------------

@pytest.fixture
def aws():
    """moto with the bucket, the code package pointer and a control plane wired into the app."""
    from aws_support import FakeAws
    with FakeAws() as fake:
        fake.upload_source_pointer()
        yield fake


@pytest.fixture
def client():
    """Chalice's test client over the app: routes and Lambda handlers, stopped after the test."""
    from aws_support import chalice_app
    from chalice.test import Client
    with Client(chalice_app.app) as test_client:
        yield test_client
