"""Where a batch lives in the bucket (Contract 3), and which batch ids ``POST /batch`` accepts.

``batch/<id>/input/...`` holds the images; writing ``batch/<id>/_READY`` (or ``POST /batch``) starts
the transform; SageMaker writes ``batch/<id>/output/<path>.out`` for ``batch/<id>/input/<path>``, and
the control plane writes ``batch/<id>/output/predictions.csv`` beside them. The ``batches_prefix``
argument is the bucket layout's prefix for batches (``BucketLayout.batches``).
"""

from __future__ import annotations

import re

BATCHES_PREFIX = "batch/"
PREDICTIONS_FILE = "predictions.csv"
OUTPUT_SUFFIX = ".out"
BATCH_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
BATCH_ID_RULE = "1-100 letters, digits, '.', '_' or '-' starting with a letter or digit"


def is_batch_id(value: object) -> bool:
    """True when ``value`` is a string that follows ``BATCH_ID_RULE``."""
    return isinstance(value, str) and BATCH_ID.fullmatch(value) is not None


def input_prefix(batch_id: str, batches_prefix: str = BATCHES_PREFIX) -> str:
    """``batch/<id>/input/``: the images to classify."""
    return f"{batches_prefix}{batch_id}/input/"


def output_prefix(batch_id: str, batches_prefix: str = BATCHES_PREFIX) -> str:
    """``batch/<id>/output/``: one ``<image>.out`` per input, and ``predictions.csv``."""
    return f"{batches_prefix}{batch_id}/output/"


def predictions_key(batch_id: str, batches_prefix: str = BATCHES_PREFIX) -> str:
    """``batch/<id>/output/predictions.csv``: the batch's summary."""
    return output_prefix(batch_id, batches_prefix) + PREDICTIONS_FILE


def image_key_for_output(output_key: str, batch_id: str, batches_prefix: str = BATCHES_PREFIX) -> str:
    """The input image behind a transform output: batch transform writes the result for
    ``batch/<id>/input/<path>`` to ``batch/<id>/output/<path>.out``. Raises ValueError for a key
    that is not such an output (``predictions.csv``, another batch's file)."""
    outputs = output_prefix(batch_id, batches_prefix)
    if not (output_key.startswith(outputs) and output_key.endswith(OUTPUT_SUFFIX)):
        raise ValueError(f"{output_key!r} is not a transform output under {outputs}")
    return input_prefix(batch_id, batches_prefix) + output_key[len(outputs):-len(OUTPUT_SUFFIX)]
