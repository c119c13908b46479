"""Content-addressed backbone feature sets: extracted once, shared by every head-only run that needs them.

A head-only run with ``augment=none`` trains on what the frozen backbone makes of each image (train.py's
``cached`` mode). Every trial of a tuning job with the same data, architecture, backbone weights, image size
and precision computes exactly the same features, so they are computed once and kept in a *feature store*:
a folder holding one sub-folder per feature set, named by its key::

    <store>/<key>/manifest.json      the key's inputs, and per split: file, sha256, shape, skipped images
    <store>/<key>/<split>.pt         {"features": float32 [n, d], "targets": int64 [n]}, split = train|valid|test

``key`` is a hash of (dataset fingerprint, arch, a digest of the backbone's weights, image size, the eval
transform's normalisation, device type and precision, this format's version). Hashing the weights
themselves (not the ``weights`` hyperparameter) makes ``imagenet``, a weights file and a seeded ``none``
all exact: two runs share a set only if their backbones are equal.

Trust nothing: a set is used only when its manifest parses, names the expected key, and every split file
is present with the recorded sha256 and the shape the dataset plan expects (one row per readable image,
``d`` = the backbone's output width). Anything else is logged and the set is recomputed.

Writing is atomic: the set is written into a scratch folder beside the store (``<store>/../.<store
name>-<key>.tmp-*``, outside the folder SageMaker syncs, so no half-written copy is ever uploaded; inside
the store when the parent is not writable), manifest last, and renamed to ``<store>/<key>/``; a reader sees a whole set or none. If the name is taken by then, another
run won the race and this copy is dropped, or a bad set is replaced. Runs sharing one store on one
machine take ``<store>/.<key>.lock`` while they look and extract, so concurrent trials extract once.

Where the store is (train.py's ``--feature-store``): by default ``<checkpoint-dir>/features`` (one job:
a resumed run does not extract again). A tuning job's trials get a shared store: on SageMaker, the
tuning job's ``CheckpointConfig`` syncs ``s3://<bucket>/features/<dataset>/`` with the store folder
(``chalicelib.sagemaker_requests.create_hyper_parameter_tuning_job``); locally the stand-in mounts that
bucket folder directly.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import secrets
import shutil
import tempfile
from pathlib import Path

import torch

log = logging.getLogger("train.features")

FORMAT_VERSION = 1
SPLITS = ("train", "valid", "test")


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 over the module's state_dict (names, dtypes, shapes, values), in order."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def feature_key(inputs: dict) -> str:
    """The set's name: 24 hex digits of sha256 over ``inputs`` (plus the format version) as sorted JSON."""
    text = json.dumps({**inputs, "format": FORMAT_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class FeatureStore:
    """A folder of feature sets (see the module docstring)."""

    def __init__(self, root):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key

    @contextlib.contextmanager
    def lock(self, key: str):
        """Hold ``<store>/.<key>.lock`` (an advisory lock): one run at a time looks for and extracts ``key``."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f".{key}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def load(self, key: str, expected_rows: dict, width: int):
        """``(features, skipped)`` of set ``key`` when it is whole and fits, else ``(None, why)``.

        ``expected_rows[split]`` is how many images the dataset plan has in that split; a set fits when
        each split has that many rows less the images its manifest records as unreadable, ``width`` columns,
        and the shape the manifest records."""
        folder = self.path(key)
        manifest_file = folder / "manifest.json"
        if not manifest_file.is_file():
            return None, "absent"
        try:
            manifest = json.loads(manifest_file.read_text())
            if manifest.get("key") != key or manifest.get("format") != FORMAT_VERSION:
                return None, f"manifest names key {manifest.get('key')!r}, format {manifest.get('format')!r}"
            features, skipped = {}, list(manifest.get("skipped", []))
            for split in SPLITS:
                entry = manifest["splits"][split]
                file = folder / entry["file"]
                if not file.is_file():
                    return None, f"{entry['file']} is missing"
                if file_sha256(file) != entry["sha256"]:
                    return None, f"{entry['file']} does not match its checksum"
                data = torch.load(file, weights_only=True)
                feats, targets = data["features"], data["targets"]
                rows = expected_rows[split] - int(entry["unreadable"])
                want = [rows, width] if rows else [0]
                if list(feats.shape) != want or list(targets.shape) != [rows] or list(feats.shape) != entry["shape"]:
                    return None, (f"{split} features have shape {list(feats.shape)} (manifest {entry['shape']}), "
                                  f"expected {want}")
                features[split] = (feats, targets)
            return (features, skipped), "ok"
        except Exception as exc:  # a broken file of any kind: recompute, never trust
            return None, f"unreadable ({type(exc).__name__}: {exc})"

    def _scratch(self, key: str) -> Path:
        """A new empty folder to write set ``key`` into: beside the store if possible, else inside it."""
        for parent in (self.root.parent, self.root):
            try:
                return Path(tempfile.mkdtemp(prefix=f".{self.root.name}-{key}.tmp-", dir=parent))
            except OSError:
                continue
        raise OSError(f"cannot write a feature set beside or inside {self.root}")

    def save(self, key: str, inputs: dict, features: dict, skipped: list, expected_rows: dict) -> Path:
        """Write set ``key`` atomically; returns its folder. Called when ``load`` found none or a bad one,
        under ``lock``: a folder already named ``key`` is replaced."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self._scratch(key)
        try:
            splits = {}
            for split in SPLITS:
                feats, targets = features[split]
                file = tmp / f"{split}.pt"
                torch.save({"features": feats.contiguous(), "targets": targets.contiguous()}, file)
                splits[split] = {"file": file.name, "sha256": file_sha256(file), "shape": list(feats.shape),
                                 "unreadable": expected_rows[split] - len(targets)}
            manifest = {"key": key, "format": FORMAT_VERSION, "inputs": inputs, "splits": splits,
                        "skipped": skipped}
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
            final = self.path(key)
            if final.exists():   # a bad set (load said so)
                shutil.rmtree(final, ignore_errors=True)
            try:
                os.rename(tmp, final)
            except OSError as exc:
                if exc.errno != errno.EXDEV:   # another run renamed its copy in between: keep that one
                    shutil.rmtree(tmp, ignore_errors=True)
                    return final
                # the scratch folder is on another filesystem: copy into the store, then rename there
                inside = self.root / f".{key}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
                shutil.copytree(tmp, inside)
                shutil.rmtree(tmp, ignore_errors=True)
                tmp = inside
                os.rename(tmp, final)
            return final
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
