"""Shared fixtures: small generated datasets, and moto with the Chalice app. Helpers live in the support
modules (training_support.py, aws_support.py, paths.py)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from training_support import SMALL

from dogbreeds.synthetic import generate_dataset

os.environ.setdefault("KINETO_LOG_LEVEL", "5")       # read when the profiler starts: its chatter about missing GPUs

torch.set_num_threads(2)

PROCESS_ENVIRONMENT = os.environ


@pytest.fixture(autouse=True)
def environment_is_still_the_process_environment():
    """Fails the test that leaves ``os.environ`` replaced by a copy (Chalice's test client swaps it around
    each request; from two threads the swaps can interleave) and puts the real one back, so the leak is
    named where it happens instead of breaking a later test's setenv."""
    yield
    if os.environ is not PROCESS_ENVIRONMENT:
        os.environ = PROCESS_ENVIRONMENT    # noqa: B003 (putting the real mapping back is the point)
        pytest.fail("os.environ was left replaced by a copy of itself")


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
