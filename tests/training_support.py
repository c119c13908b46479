"""Helpers for the trainer's tests: small datasets, the trainer's arguments, an in-process run, its rules."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

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


# Corner classes for the explanation tests: each class's only signal is a coloured square on a noise image, in
# its class's corner (or anywhere, for training); the third class is noise alone.
# Class -> (the corner as (column, row) halves, the square's colour), or None for noise alone.
CORNER_CLASSES = {"001.Top_left": ((0, 0), (255, 40, 40)), "002.Bottom_right": ((1, 1), (40, 80, 255)),
                  "003.Noise": None}


def corner_image(signal, size: int, rng, anywhere: bool = False) -> Image.Image:
    """A ``size`` x ``size`` RGB noise image with, for a ``signal`` (corner, colour) of CORNER_CLASSES, a square
    of a quarter of the side in that corner ((0, 0) top-left, (1, 1) bottom-right), within the part of the
    image the eval transform's centre crop keeps (for a crop of at least 8/9 of the side). ``anywhere``: the
    square at a random place of that part instead, so only its colour tells the class."""
    pixels = rng.integers(40, 200, (size, size, 3), dtype=np.uint8)
    if signal is not None:
        (column, row), colour = signal
        side = size // 4
        low, high = size // 10, size // 5  # inside the crop, well inside the quadrant
        if anywhere:
            low, high, column, row = size // 10, size - size // 10 - side, 0, 0
        left, top = (int(rng.integers(low, high + 1)) for _ in range(2))
        left, top = (left if column == 0 else size - left - side), (top if row == 0 else size - top - side)
        pixels[top:top + side, left:left + side] = colour
    return Image.fromarray(pixels, "RGB")


def write_corner_dataset(root: Path, per_class: dict, size: int = 96, seed: int = 0, anywhere: bool = False) -> Path:
    """An ImageFolder tree ``root/<split>/<class>/<n>.png`` of CORNER_CLASSES, ``per_class[split]`` images
    each (PNG: JPEG blocks would smear the square into the noise)."""
    rng = np.random.default_rng(seed)
    for split, count in per_class.items():
        for name, signal in CORNER_CLASSES.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for n in range(count):
                corner_image(signal, size, rng, anywhere).save(folder / f"{n:03d}.png")
    return root
