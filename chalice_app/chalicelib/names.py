"""Deterministic SageMaker resource names for one pipeline run.

A run is identified by the dataset's name and its publish marker (the ``_READY`` object's ETag or
version id); a batch by its id and its marker. The same identity always gives the same names, so a
repeated S3 or EventBridge event asks SageMaker to create a resource that already exists and gets
``ResourceInUse`` instead of a second job.

A name is ``<kind>-<readable dataset slug>-<hash>``: the slug (lowercase ASCII letters, digits and
single dashes) is cut to fit SageMaker's length limit, and the hash (10 hex digits of SHA-256 over
the full, unshortened identity) keeps two identities apart even when their slugs are cut to the same
text. All names of one run share the hash, so they are easy to find together.

Limits (SageMaker): tuning jobs 32 characters (the tuner appends ``-NNN-xxxxxxxx`` to name its
training jobs), everything else 63; letters, digits and inner dashes only.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Optional

TUNING_JOB_MAX = 32
NAME_MAX = 63
HASH_LENGTH = 10
_VALID = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9])*")


def normalise_marker(marker: str) -> str:
    """The marker as an identity: surrounding whitespace and quotes removed.

    S3 event notifications carry ETags bare while HeadObject quotes them (``"abc..."``); both
    spellings of one ETag must name the same run.
    """
    value = str(marker).strip().strip('"').strip()
    if not value:
        raise ValueError("a publish marker (ETag or version id) is required: without it every "
                         "republication would map to the same job names")
    return value


def dataset_name_problem(name: str) -> Optional[str]:
    """Why ``name`` (one key segment under ``datasets/``) cannot name a dataset, or None. ``.`` and
    ``..`` pass as a key segment but not as a folder in the S3 URIs of SageMaker's channels."""
    if str(name).strip() in (".", ".."):
        return (f"dataset name {name!r} cannot be used: '.' and '..' are not folder names; move the "
                f"images to datasets/<name>/ with a name of letters, digits, '.', '_' or '-' and publish again")
    return None


def slug(text: str, max_length: int) -> str:
    """``text`` as lowercase ASCII letters and digits joined by single dashes, at most ``max_length``
    characters, without leading or trailing dashes (may be empty: the hash still names the run).

    Accents are dropped (``Hündé`` -> ``hunde``); anything else that is not a letter or digit becomes
    a dash.
    """
    ascii_text = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode("ascii")
    dashed = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    return dashed[:max(0, max_length)].rstrip("-")


def identity_hash(name: str, marker: str) -> str:
    """10 hex digits of SHA-256 over the full name and the normalised marker."""
    identity = f"{name}\x00{normalise_marker(marker)}".encode("utf-8", "surrogatepass")
    return hashlib.sha256(identity).hexdigest()[:HASH_LENGTH]


def _name(kind: str, name: str, marker: str, max_length: int) -> str:
    if not str(name).strip():
        raise ValueError(f"a {kind} name needs a non-empty dataset or batch name")
    digest = identity_hash(name, marker)
    room = max_length - len(kind) - len(digest) - 2    # two dashes around the slug
    readable = slug(name, room)
    result = "-".join(part for part in (kind, readable, digest) if part)
    assert len(result) <= max_length and _VALID.fullmatch(result), result
    return result


def tuning_job_name(dataset: str, marker: str) -> str:
    """``tune-<dataset>-<hash>``, at most 32 characters."""
    return _name("tune", dataset, marker, TUNING_JOB_MAX)


def training_job_name(dataset: str, marker: str) -> str:
    """``train-<dataset>-<hash>``: the instrumented run after tuning, at most 63 characters."""
    return _name("train", dataset, marker, NAME_MAX)


def model_name(dataset: str, marker: str) -> str:
    """``model-<dataset>-<hash>``: the SageMaker model made from that run's artifact."""
    return _name("model", dataset, marker, NAME_MAX)


def endpoint_config_name(dataset: str, marker: str) -> str:
    """``config-<dataset>-<hash>``: the endpoint configuration that serves that model."""
    return _name("config", dataset, marker, NAME_MAX)


def transform_job_name(batch_id: str, marker: str) -> str:
    """``batch-<id>-<hash>``: the transform job of one batch (its ``_READY`` ETag or request id)."""
    return _name("batch", batch_id, marker, NAME_MAX)


def endpoint_name(configured: str = "dogbreeds") -> str:
    """The endpoint's stable name: one endpoint per deployment, updated in place with each new model."""
    if not (len(configured) <= NAME_MAX and _VALID.fullmatch(configured)):
        raise ValueError(f"endpoint name {configured!r} must be 1-63 letters, digits and inner dashes")
    return configured
