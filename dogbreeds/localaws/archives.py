"""The ``.tar.gz`` files SageMaker moves around: source packages and model archives unpacked safely,
a job's output folders packed."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path


def safe_extract(archive: Path, dest: Path) -> None:
    """Unpack ``archive`` into ``dest``; raises ValueError (before writing anything) for an entry that
    would land outside ``dest`` or is a link."""
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            target = (dest / member.name).resolve()
            if not (target == root or root in target.parents) or member.issym() or member.islnk():
                raise ValueError(f"{archive.name}: entry {member.name!r} would escape {dest}")
        tar.extractall(dest, filter="data")


def tar_directory(source: Path) -> bytes:
    """Every file under ``source`` as a gzipped tar, paths relative to ``source``, in sorted order."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(source.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=str(path.relative_to(source)))
    return buffer.getvalue()
