"""The training source package: ``training/`` and ``model_code/`` as one deterministic ``sourcedir.tar.gz``.

SageMaker script mode downloads the package named by the ``sagemaker_submit_directory``
hyperparameter, extracts it and runs ``training/train.py`` from the extracted folder (train.py imports
``model_code.inference``, hence both folders at the archive's root). The package is content-addressed:

- the archive is byte-identical for identical sources (entries sorted, mtime 0, uid/gid 0, no user
  or group names, normalised modes, gzip header without name or time), so its SHA-256 names it;
- it lives at ``code/sourcedir-<first 16 hex digits>.tar.gz`` and is uploaded only when absent;
- ``code/current.json`` points at it: ``{"uri", "digest", "files", "bytes", "created_at"}``. The
  control plane reads that pointer (``ControlPlane.source_uri``) when a dataset is published, so a
  new package applies to the next run and never changes a running one.

Usage (from the repository root)::

    python -m deploy.package_source --bucket my-bucket [--region eu-west-1]
    python -m deploy.package_source --dry-run                  # build, print digest and size
    python -m deploy.package_source --output /tmp/sourcedir.tar.gz

``upload`` takes any client with boto3's ``head_object``/``get_object``/``put_object`` shapes: boto3's
S3 client, moto's, or the local runtime's filesystem bucket.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import gzip
import hashlib
import io
import json
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from chalicelib.config import BucketLayout
from chalicelib.control import SOURCE_POINTER, error_code, not_found, read_json_object
from chalicelib.sagemaker_requests import source_package_uri
from deploy import REPO_ROOT

SOURCE_DIRS = ("training", "model_code")
DIGEST_PREFIX = 16                      # hex digits of the SHA-256 in the key
SKIPPED_DIRS = frozenset({"__pycache__"})
SKIPPED_SUFFIXES = (".pyc", ".pyo")
CONTENT_TYPE = "application/gzip"

# source_package_uri reads only the bucket and the layout of a configuration: no role or region is
# needed to name a package.
_Location = collections.namedtuple("_Location", "bucket layout")


@dataclass(frozen=True)
class SourcePackage:
    """One built ``sourcedir.tar.gz``: its bytes, their SHA-256 and the archived paths."""
    data: bytes
    digest: str
    files: Tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def short_digest(self) -> str:
        return self.digest[:DIGEST_PREFIX]

    def uri(self, bucket: str, layout: BucketLayout = BucketLayout()) -> str:
        """``s3://<bucket>/code/sourcedir-<16 hex>.tar.gz`` (the control plane's own naming)."""
        return source_package_uri(_Location(bucket, layout), self.short_digest)

    def key(self, layout: BucketLayout = BucketLayout()) -> str:
        """``code/sourcedir-<16 hex>.tar.gz``: the key part of ``uri`` (which names no other bucket)."""
        return self.uri("any-bucket", layout).split("/", 3)[3]


def _skipped(relative: Path) -> bool:
    return (any(part in SKIPPED_DIRS or part.startswith(".") for part in relative.parts)
            or relative.suffix in SKIPPED_SUFFIXES)


def source_files(root: Path = REPO_ROOT) -> List[Tuple[str, Path]]:
    """``(archive name, path)`` of every file to pack, sorted by name: regular files under
    ``training/`` and ``model_code/``, without ``__pycache__``, ``*.pyc``/``*.pyo`` and hidden files."""
    root = Path(root)
    found = []
    for folder in SOURCE_DIRS:
        base = root / folder
        if not (base / "__init__.py").is_file():
            raise FileNotFoundError(f"{base} is not a Python package: run this from a checkout of the "
                                    f"repository (or pass its root)")
        for path in base.rglob("*"):
            relative = path.relative_to(root)
            if path.is_symlink():
                raise ValueError(f"{relative} is a symbolic link; the package holds regular files only")
            if path.is_file() and not _skipped(relative):
                found.append((relative.as_posix(), path))
    return sorted(found)


def _entry(name: str, path: Path, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def build(root: Path = REPO_ROOT) -> SourcePackage:
    """Pack ``training/`` and ``model_code/`` under ``root``; the same sources give the same bytes."""
    files = source_files(root)
    raw = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as zipped:
        with tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name, path in files:
                content = path.read_bytes()
                tar.addfile(_entry(name, path, len(content)), io.BytesIO(content))
    data = raw.getvalue()
    return SourcePackage(data, hashlib.sha256(data).hexdigest(), tuple(name for name, _ in files))


@dataclass(frozen=True)
class Upload:
    """What ``upload`` did: the package's URI, whether it put the package and whether it wrote the pointer."""
    uri: str
    pointer_key: str
    pointer: dict
    uploaded: bool
    pointer_written: bool


def head_size(s3, bucket: str, key: str) -> Optional[int]:
    """The object's size, or None when there is no such object."""
    try:
        response = s3.head_object(Bucket=bucket, Key=key)
    except Exception as exc:
        if not_found(exc):
            return None
        raise
    return int(response.get("ContentLength", -1))


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def pointer_key(layout: BucketLayout = BucketLayout()) -> str:
    """``code/current.json``: the key of the pointer the control plane reads."""
    return layout.code + SOURCE_POINTER


def needs_upload(existing_size: Optional[int], package: SourcePackage) -> bool:
    """Whether the package must be put: its key holds nothing (None) or an object of another size."""
    return existing_size != package.size


def points_at(pointer: Optional[dict], uri: str, package: SourcePackage) -> bool:
    """Whether ``pointer`` (``code/current.json``'s document, None when missing) names this package."""
    return pointer is not None and pointer.get("uri") == uri and pointer.get("digest") == package.digest


def pointer_document(package: SourcePackage, uri: str, created_at: str) -> dict:
    """``code/current.json``'s document for ``package`` stored at ``uri``."""
    return {"uri": uri, "digest": package.digest, "files": len(package.files), "bytes": package.size,
            "created_at": created_at}


def pointer_body(pointer: dict) -> bytes:
    return (json.dumps(pointer, indent=2) + "\n").encode("utf-8")


def upload(s3, bucket: str, package: SourcePackage, layout: BucketLayout = BucketLayout(),
           now: Callable[[], str] = _now, log: Callable[[str], None] = lambda line: None) -> Upload:
    """Put the package at its content-addressed key unless it is there already, then point
    ``code/current.json`` at it unless it points there already. Idempotent: a second call with the
    same package makes no write."""
    key, uri = package.key(layout), package.uri(bucket, layout)
    existing = head_size(s3, bucket, key)
    uploaded = needs_upload(existing, package)
    if uploaded:
        if existing is not None:
            log(f"s3://{bucket}/{key} exists with {existing} bytes instead of {package.size}: replacing it")
        s3.put_object(Bucket=bucket, Key=key, Body=package.data, ContentType=CONTENT_TYPE)

    where = pointer_key(layout)
    current = read_json_object(s3, bucket, where)   # None when missing or unreadable: write a good one
    if points_at(current, uri, package):
        return Upload(uri, where, current, uploaded, False)
    pointer = pointer_document(package, uri, now())
    s3.put_object(Bucket=bucket, Key=where, Body=pointer_body(pointer), ContentType="application/json")
    return Upload(uri, where, pointer, uploaded, True)


# --- command line -------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.package_source",
        description="Build training/ + model_code/ as a deterministic sourcedir.tar.gz, upload it to "
                    "s3://<bucket>/code/sourcedir-<digest>.tar.gz if absent and point code/current.json at it.")
    parser.add_argument("--bucket", help="the pipeline's bucket (DOGBREEDS_BUCKET); required unless only building")
    parser.add_argument("--region", help="the bucket's region (default: your AWS configuration's)")
    parser.add_argument("--dry-run", action="store_true", help="build only: print the digest, size and key")
    parser.add_argument("--output", type=Path, metavar="PATH", help="build only, and write the archive to PATH")
    parser.add_argument("--root", type=Path, default=REPO_ROOT, help=argparse.SUPPRESS)
    return parser


def main(argv: Optional[List[str]] = None, s3=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    local_only = args.dry_run or args.output is not None
    if not local_only and not args.bucket:
        parser.error("--bucket is required to upload (or use --dry-run / --output PATH to only build)")

    package = build(args.root)
    print(f"built sourcedir.tar.gz: {len(package.files)} files, {package.size:,} bytes")
    print(f"  sha256 {package.digest}")
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_bytes(package.data)
        print(f"  written to {args.output}")
    if local_only:
        where = package.uri(args.bucket) if args.bucket else package.key()
        print(f"  would be uploaded as {where}")
        return 0

    if s3 is None:
        import boto3
        s3 = boto3.session.Session(region_name=args.region).client("s3")
    try:
        result = upload(s3, args.bucket, package, log=print)
    except Exception as exc:  # botocore's errors: no credentials, no bucket, access denied ...
        print(f"upload to s3://{args.bucket} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        if error_code(exc) in ("403", "AccessDenied"):
            print(f"  your credentials need s3:ListBucket on the bucket (else a missing key reads as 403) and "
                  f"s3:GetObject and s3:PutObject on {BucketLayout().code}*", file=sys.stderr)
        return 1
    print(f"  {result.uri}: {'uploaded' if result.uploaded else 'already there, not uploaded again'}")
    print(f"  s3://{args.bucket}/{result.pointer_key}: "
          f"{'now points at it' if result.pointer_written else 'already points at it'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
