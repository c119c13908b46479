"""A filesystem bucket that answers the subset of the boto3 S3 client this project calls.

``LocalS3(root)`` takes the same keyword arguments as ``boto3.client("s3")`` and returns the same
response shapes, so the control plane runs against it unchanged. Errors are botocore ``ClientError``s
with S3's codes, HTTP statuses and operation names.

Layout under ``root``::

    <bucket>/<key>               the object: key "datasets/dogs/train/a.jpg" is that file, so a dataset
                                 copied in with shutil is a set of objects, and a training job can
                                 mount a prefix by path (``prefix_path``)
    .meta/<bucket>/<key>         sidecar JSON: ETag, content type, user metadata, and the stamp
                                 (inode, size, mtime_ns, ctime_ns) of the file it describes; a sidecar
                                 whose stamp does not match the file is ignored and the MD5 recomputed
    .locks/<bucket>.lock         flock held around every replace and delete, so conditional writes
                                 (IfMatch / IfNoneMatch) are atomic across threads and processes
    .../.tmp-<random>            a write in progress (fsync, then os.replace); never listed, and no
                                 key may have a path segment starting with ".tmp-"

Keys a filesystem cannot hold the way S3 does are refused with InvalidArgument: empty segments, "."
and "..", a leading or trailing "/", backslashes, NUL, and a key that is both an object and a folder
("a" and "a/b"). A key whose path leaves the bucket folder through a symbolic link is AccessDenied.
POSIX only (fcntl).
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import stat
import threading
import time
import uuid
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, Iterator, Optional, Tuple, Union

from botocore.exceptions import ClientError, OperationNotPageableError, PaginationError, ParamValidationError
from botocore.response import StreamingBody
from chalicelib.sagemaker_requests import split_s3_uri

META_DIR = ".meta"
LOCK_DIR = ".locks"
TEMP_PREFIX = ".tmp-"
DEFAULT_CONTENT_TYPE = "binary/octet-stream"    # what S3 stores when a put names no ContentType
MAX_KEY_BYTES = 1024
MAX_SEGMENT_BYTES = 255                          # NAME_MAX: one path segment is one file name
MAX_LIST_KEYS = 1000
IN_MEMORY_BODY = 16 * 1024 * 1024                # larger bodies stream from the open file
CHUNK = 1024 * 1024
CACHE_LIMIT = 200_000

_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_RESERVED_BUCKET_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_RESERVED_BUCKET_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")

# Parameters boto3 accepts that change nothing here; anything else is refused as boto3 refuses a typo.
_PUT_IGNORED = frozenset({
    "ACL", "BucketKeyEnabled", "CacheControl", "ChecksumAlgorithm", "ChecksumCRC32", "ChecksumCRC32C",
    "ChecksumCRC64NVME", "ChecksumSHA1", "ChecksumSHA256", "ContentDisposition", "ContentEncoding",
    "ContentLanguage", "ContentLength", "ExpectedBucketOwner", "Expires", "RequestPayer",
    "ServerSideEncryption", "SSEKMSKeyId", "StorageClass", "Tagging", "WebsiteRedirectLocation"})
_READ_IGNORED = frozenset({"ChecksumMode", "ExpectedBucketOwner", "RequestPayer"})
_LIST_IGNORED = frozenset({"EncodingType", "ExpectedBucketOwner", "FetchOwner", "OptionalObjectAttributes",
                           "RequestPayer"})


# --- errors -----------------------------------------------------------------------------------------

class NoSuchKey(ClientError):
    """Like ``s3.exceptions.NoSuchKey``: a ClientError subclass, caught by ``except ClientError`` too."""


class NoSuchBucket(ClientError):
    """Like ``s3.exceptions.NoSuchBucket``."""


_ERROR_CLASSES = {"NoSuchKey": NoSuchKey, "NoSuchBucket": NoSuchBucket}


def _response_metadata(status: int = 200) -> dict:
    return {"RequestId": uuid.uuid4().hex.upper(), "HostId": "", "HTTPStatusCode": status,
            "HTTPHeaders": {}, "RetryAttempts": 0}


def _error(code: str, status: int, message: str, operation: str, **fields) -> ClientError:
    """The ClientError boto3 raises for an S3 error response ``code`` (HTTP ``status``)."""
    response = {"Error": {"Code": code, "Message": message, **fields},
                "ResponseMetadata": _response_metadata(status)}
    return _ERROR_CLASSES.get(code, ClientError)(response, operation)


def _no_such_key(key: str, operation: str) -> ClientError:
    if operation == "HeadObject":    # a HEAD response has no body, so boto3 reports the bare status
        return _error("404", 404, "Not Found", operation)
    return _error("NoSuchKey", 404, "The specified key does not exist.", operation, Key=key)


def _precondition_failed(condition: str, operation: str) -> ClientError:
    return _error("PreconditionFailed", 412, "At least one of the pre-conditions you specified did not hold",
                  operation, Condition=condition)


def _refused_key(key: str, why: str, operation: str, code: str = "InvalidArgument", status: int = 400):
    return _error(code, status, f"Key {key!r} refused by the local bucket: {why}", operation,
                  ArgumentName="Key", ArgumentValue=key)


def _reject_unknown(operation: str, given: dict, accepted: frozenset) -> None:
    unknown = sorted(set(given) - accepted)
    if unknown:
        raise ParamValidationError(report=f'Unknown parameter in input: "{unknown[0]}" for {operation} '
                                          f"(the local bucket accepts the parameters boto3 does)")


# --- names ------------------------------------------------------------------------------------------

def bucket_name_problem(name: str) -> Optional[str]:
    """Why ``name`` breaks S3's bucket naming rules, or None when it is a valid name."""
    if not isinstance(name, str) or not _BUCKET_NAME.fullmatch(name):
        return ("a bucket name is 3-63 lowercase letters, digits, dots and hyphens, starting and ending "
                "with a letter or digit")
    if ".." in name:
        return "a bucket name may not contain two adjacent periods"
    if re.fullmatch(r"\d+\.\d+\.\d+\.\d+", name):
        return "a bucket name may not be formatted as an IP address"
    if name.startswith(_RESERVED_BUCKET_PREFIXES) or name.endswith(_RESERVED_BUCKET_SUFFIXES):
        return "the name starts or ends with a prefix or suffix S3 reserves"
    return None


def _check_bucket_name(name: str, operation: str) -> None:
    why = bucket_name_problem(name)
    if why:
        raise _error("InvalidBucketName", 400, f"The specified bucket is not valid: {why}", operation,
                     BucketName=str(name))


def _segment_problem(segment: str) -> Optional[str]:
    """Why one '/'-separated piece of a key cannot be a file name inside the bucket, or None."""
    if not segment:
        return "it has an empty path segment ('//')"
    if segment in (".", ".."):
        return f"it has a {segment!r} path segment"
    if "\\" in segment:
        return "it contains a backslash"
    if segment.startswith(TEMP_PREFIX):
        return f"a path segment starts with {TEMP_PREFIX!r}, which marks writes in progress"
    if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
        return f"a path segment is longer than the {MAX_SEGMENT_BYTES} bytes a file name may hold"
    return None


def _check_key(key: str, operation: str) -> None:
    """Refuse (ClientError) a key that cannot name a file inside the bucket folder."""
    if not isinstance(key, str):
        raise ParamValidationError(report=f"Invalid type for parameter Key, value: {key!r}, type: "
                                          f"{type(key)}, valid types: <class 'str'>")
    if not key:
        raise _refused_key(key, "the key is empty", operation)
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise _refused_key(key, "it is not valid UTF-8", operation) from None
    if size > MAX_KEY_BYTES:
        raise _error("KeyTooLongError", 400, f"Your key is too long: {size} bytes of UTF-8, at most "
                                             f"{MAX_KEY_BYTES}", operation, Size=str(size))
    if "\x00" in key:
        raise _refused_key(key, "it contains a NUL character", operation)
    if key.startswith("/"):
        raise _refused_key(key, "it starts with '/', which would make it an absolute path", operation)
    if key.endswith("/"):
        raise _refused_key(key, "it ends with '/': objects are files here, so there are no folder markers",
                           operation)
    for segment in key.split("/"):
        why = _segment_problem(segment)
        if why:
            raise _refused_key(key, why, operation)


def _listable(name: str) -> bool:
    """Whether a file name found on disk can be part of a key (others are not objects)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return _segment_problem(name) is None


def _inside(path: str, folder: str) -> bool:
    return path.startswith(folder + os.sep)


def _unquote(etag: str) -> str:
    return etag.strip().strip('"')


def _timestamp(st: os.stat_result) -> datetime:
    # S3 keeps whole seconds.
    return datetime.fromtimestamp(st.st_mtime_ns // 1_000_000_000, tz=timezone.utc)


# --- object descriptions ----------------------------------------------------------------------------

def _stamp(st: os.stat_result) -> Tuple[int, int, int, int]:
    """What identifies one version of a file: writers replace files (a new inode) and set an mtime in
    nanoseconds, and any in-place change moves ctime."""
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True)
class _Meta:
    etag: str
    content_type: str
    metadata: Dict[str, str]
    stamp: Tuple[int, int, int, int]


def _hash_fd(fd: int) -> str:
    """The S3 single-part ETag (quoted MD5) of an open file's content."""
    digest, offset = hashlib.md5(), 0
    while True:
        chunk = os.pread(fd, CHUNK, offset)
        if not chunk:
            return f'"{digest.hexdigest()}"'
        digest.update(chunk)
        offset += len(chunk)


def _chunks(body) -> Iterator[bytes]:
    """A put's Body (bytes, str or a readable file object) as byte chunks."""
    if isinstance(body, str):
        yield body.encode("utf-8")
    elif isinstance(body, (bytes, bytearray, memoryview)):
        yield bytes(body)
    elif hasattr(body, "read"):
        while True:
            chunk = body.read(CHUNK)
            if not chunk:
                return
            yield chunk.encode("utf-8") if isinstance(chunk, str) else chunk
    else:
        raise ParamValidationError(report=f"Invalid type for parameter Body, value: {body!r}, type: "
                                          f"{type(body)}, valid types: bytes, bytearray, file-like object")


def _open_temp(folder: Path) -> Tuple[int, Path]:
    temp = folder / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
    return os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), temp


def _replace_small_file(path: Path, data: bytes) -> None:
    """Write ``path`` so that readers see the old or the new content, never a part (no fsync)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = _open_temp(path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(temp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(temp)
        raise


def _prune_empty_folders(folder: Path, stop: Path) -> None:
    """Remove ``folder`` and its parents up to (not including) ``stop`` while they are empty."""
    while folder != stop and stop in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


# --- listing ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Cursor:
    """Where a listing resumes: after the key ``after``, or after every key under the common prefix
    ``after`` when ``whole_prefix``. Python orders str by code point, which is UTF-8 byte order."""
    after: str = ""
    whole_prefix: bool = False

    def passed(self, key: str) -> bool:
        return key > self.after and not (self.whole_prefix and key.startswith(self.after))

    def passed_nothing_under(self, prefix: str) -> bool:
        """True when no key starting with ``prefix`` comes after the cursor."""
        if self.whole_prefix and prefix.startswith(self.after):
            return True
        return prefix < self.after and not self.after.startswith(prefix)

    def token(self) -> str:
        return base64.urlsafe_b64encode(json.dumps([self.after, self.whole_prefix]).encode()).decode()

    @classmethod
    def from_token(cls, token: str, operation: str) -> "_Cursor":
        try:
            after, whole_prefix = json.loads(base64.urlsafe_b64decode(token.encode()))
            if isinstance(after, str) and isinstance(whole_prefix, bool):
                return cls(after, whole_prefix)
        except (ValueError, TypeError, binascii.Error):
            pass
        raise _error("InvalidArgument", 400, "The continuation token provided is incorrect", operation,
                     ArgumentName="continuation-token", ArgumentValue=str(token))


def _walk(bucket_dir: str, folder: str, folder_real: str, rel: str, match: str, cursor: _Cursor,
          ancestors: frozenset) -> Iterator[Tuple[str, os.DirEntry]]:
    """(key, entry) for every file under ``folder`` (whose keys start with ``rel``) with a name
    starting with ``match``, past the cursor, in S3's key order. Folders are entered in the order of
    ``name + "/"``, which puts each folder's keys where they sort among its siblings."""
    try:
        with os.scandir(folder) as listing:
            entries = list(listing)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return
    ordered = []
    for entry in entries:
        if not entry.name.startswith(match) or not _listable(entry.name):
            continue
        try:
            is_dir = entry.is_dir()
        except OSError:
            continue
        real = os.path.join(folder_real, entry.name)
        if entry.is_symlink():       # follow a link only while it stays inside the bucket, and never in a loop
            real = os.path.realpath(entry.path)
            if not _inside(real, bucket_dir) or real in ancestors:
                continue
        ordered.append((rel + entry.name + ("/" if is_dir else ""), entry, is_dir, real))
    ordered.sort(key=lambda item: item[0])
    for key, entry, is_dir, real in ordered:
        if not is_dir:
            if cursor.passed(key):
                yield key, entry
        elif not cursor.passed_nothing_under(key):
            yield from _walk(bucket_dir, entry.path, real, key, "", cursor, ancestors | {real})


def _keys(bucket_dir: str, prefix: str, cursor: _Cursor) -> Iterator[Tuple[str, os.DirEntry]]:
    """(key, entry) for every object whose key starts with ``prefix``, past the cursor, in order;
    only the folders that can hold such keys are read."""
    folder, _, match = prefix.rpartition("/")
    if folder and any(_segment_problem(segment) for segment in folder.split("/")):
        return           # no valid key has this prefix (and ".." must not be walked)
    start = os.path.join(bucket_dir, folder) if folder else bucket_dir
    start_real = os.path.realpath(start)
    if start_real != bucket_dir and not _inside(start_real, bucket_dir):
        return
    yield from _walk(bucket_dir, start, start_real, folder + "/" if folder else "", match, cursor,
                     frozenset({start_real}))


def _entries(bucket_dir: str, prefix: str, delimiter: Optional[str],
             cursor: _Cursor) -> Iterator[Tuple[str, Optional[os.DirEntry]]]:
    """What a listing returns, in order: (key, entry) for an object, (common prefix, None) for keys
    rolled up by ``delimiter``."""
    while True:
        for key, entry in _keys(bucket_dir, prefix, cursor):
            cut = key.find(delimiter, len(prefix)) if delimiter else -1
            if cut < 0:
                yield key, entry
                continue
            common = key[:cut + len(delimiter)]
            yield common, None
            cursor = _Cursor(common, whole_prefix=True)
            break        # walk again from past the common prefix: nothing under it is read
        else:
            return


# --- the client -------------------------------------------------------------------------------------

class LocalS3:
    """The S3 client subset the project uses, on folders under ``root``. Safe to share between threads;
    several processes may use the same ``root`` at once."""

    exceptions = SimpleNamespace(ClientError=ClientError, NoSuchKey=NoSuchKey, NoSuchBucket=NoSuchBucket)

    def __init__(self, root: Union[str, Path]):
        self.root = Path(root).resolve()
        (self.root / LOCK_DIR).mkdir(parents=True, exist_ok=True)
        self._thread_lock = threading.Lock()
        self._meta_root = str(self.root / META_DIR)
        self._cache: Dict[Tuple[str, str], _Meta] = {}

    # --- buckets --------------------------------------------------------------------------------

    def create_bucket(self, *, Bucket: str, **ignored) -> dict:
        """Make the bucket's folder; an existing bucket is fine (S3 in us-east-1 answers the same)."""
        _reject_unknown("CreateBucket", ignored, frozenset({"ACL", "CreateBucketConfiguration",
                                                            "ObjectLockEnabledForBucket", "ObjectOwnership"}))
        _check_bucket_name(Bucket, "CreateBucket")
        (self.root / Bucket).mkdir(exist_ok=True)
        return {"ResponseMetadata": _response_metadata(), "Location": f"/{Bucket}"}

    def head_bucket(self, *, Bucket: str, **ignored) -> dict:
        _reject_unknown("HeadBucket", ignored, frozenset({"ExpectedBucketOwner"}))
        self._bucket_dir(Bucket, "HeadBucket")
        return {"ResponseMetadata": _response_metadata()}

    def _bucket_dir(self, bucket: str, operation: str) -> Path:
        """The bucket's folder, symlinks resolved; InvalidBucketName or NoSuchBucket."""
        _check_bucket_name(bucket, operation)
        folder = self.root / bucket
        if not folder.is_dir():
            if operation == "HeadBucket":
                raise _error("404", 404, "Not Found", operation)
            raise _error("NoSuchBucket", 404, "The specified bucket does not exist", operation, BucketName=bucket)
        return folder.resolve()

    # --- paths ----------------------------------------------------------------------------------

    def _locate(self, bucket: str, key: str, operation: str) -> Path:
        """The object's path (``<bucket folder>/<key>``) after refusing a bad key and a key whose
        resolved path leaves the bucket folder."""
        bucket_dir = self._bucket_dir(bucket, operation)
        _check_key(key, operation)
        path = bucket_dir / key
        resolved = path.resolve()
        if not _inside(str(resolved), str(bucket_dir)):
            raise _refused_key(key, f"its path leaves the bucket folder through a symbolic link "
                                    f"(it resolves to {resolved})", operation, "AccessDenied", 403)
        return path

    def path_of(self, bucket: str, key: str) -> Path:
        """The file that holds (or would hold) object ``key``, validated like a request for it."""
        return self._locate(bucket, key, "HeadObject")

    def prefix_path(self, bucket: str, prefix: str) -> Path:
        """The folder that holds every key under ``prefix`` ("datasets/dogs/train/", with or without
        the slash; "" is the bucket's folder). A prefix naming an object gives that object's file."""
        folder = prefix[:-1] if prefix.endswith("/") else prefix
        if not folder:
            return self._bucket_dir(bucket, "ListObjectsV2")
        return self._locate(bucket, folder, "ListObjectsV2")

    def path_of_uri(self, uri: str) -> Path:
        """The file or folder an ``s3://<bucket>/<key or prefix>`` URI names here (see ``prefix_path``):
        jobs read their channels, source package and model archive in place."""
        return self.prefix_path(*split_s3_uri(uri))

    @contextmanager
    def _locked(self, bucket: str):
        """Exclusive use of ``bucket`` for a check-then-replace: other threads (the thread lock) and
        other processes (flock on the bucket's lock file, outside the key space)."""
        with self._thread_lock:
            fd = os.open(self.root / LOCK_DIR / f"{bucket}.lock", os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)     # releases the flock

    # --- descriptions (ETag, content type) ------------------------------------------------------

    def _sidecar(self, bucket: str, key: str) -> str:
        return os.path.join(self._meta_root, bucket, key)     # str, not Path: listing calls this per key

    def _remember(self, bucket: str, key: str, meta: _Meta) -> None:
        """Keep a description in memory and in the sidecar (best effort: a missing or stale sidecar
        only costs an MD5)."""
        if len(self._cache) > CACHE_LIMIT:
            self._cache.clear()
        self._cache[(bucket, key)] = meta
        record = {"etag": meta.etag, "content_type": meta.content_type, "metadata": meta.metadata,
                  "stamp": list(meta.stamp)}
        with suppress(OSError):
            _replace_small_file(Path(self._sidecar(bucket, key)), json.dumps(record).encode("utf-8"))

    def _recorded(self, bucket: str, key: str) -> Optional[_Meta]:
        try:
            with open(self._sidecar(bucket, key), "rb") as sidecar:
                record = json.loads(sidecar.read())
            return _Meta(record["etag"], record["content_type"], dict(record["metadata"]),
                         tuple(record["stamp"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _forget(self, bucket: str, key: str) -> None:
        self._cache.pop((bucket, key), None)
        sidecar = Path(self._sidecar(bucket, key))
        with suppress(OSError):
            sidecar.unlink()
        _prune_empty_folders(sidecar.parent, Path(self._meta_root, bucket))

    def _describe(self, bucket: str, key: str, path: Union[str, Path], st: os.stat_result,
                  fd: Optional[int] = None) -> _Meta:
        """ETag, content type and metadata of the file ``path`` whose stat is ``st``: from memory, else
        the sidecar, else (a file copied in by hand, or changed in place) its MD5, which is then
        recorded. ``fd``, when given, is the open file to hash."""
        stamp = _stamp(st)
        cached = self._cache.get((bucket, key))
        if cached is not None and cached.stamp == stamp:
            return cached
        recorded = self._recorded(bucket, key)
        if recorded is not None and recorded.stamp == stamp:
            self._cache[(bucket, key)] = recorded
            return recorded
        own = fd is None
        if own:
            fd = os.open(path, os.O_RDONLY)
        try:
            before = _stamp(os.fstat(fd))
            etag = _hash_fd(fd)
            after = _stamp(os.fstat(fd))
        finally:
            if own:
                os.close(fd)
        same = recorded if recorded is not None and recorded.etag == etag else None   # only the stamp moved
        meta = _Meta(etag, same.content_type if same else DEFAULT_CONTENT_TYPE,
                     same.metadata if same else {}, after)
        if before == after:          # not rewritten while it was hashed
            self._remember(bucket, key, meta)
        return meta

    def _current_etag(self, path: Path) -> Optional[str]:
        """The exact ETag of the object at ``path`` now, hashed rather than cached: conditional writes
        must never trust a stamp (callers hold the bucket lock)."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        try:
            return _hash_fd(fd) if stat.S_ISREG(os.fstat(fd).st_mode) else None
        finally:
            os.close(fd)

    def _check_condition(self, key: str, path: Path, if_match: Optional[str], if_none_match: Optional[str],
                         operation: str) -> None:
        if if_match is None and if_none_match is None:
            return
        current = self._current_etag(path)
        if if_match is not None:
            if current is None:
                raise _no_such_key(key, operation)
            if if_match.strip() != "*" and _unquote(if_match) != _unquote(current):
                raise _precondition_failed("If-Match", operation)
        if if_none_match is not None:
            if if_none_match.strip() != "*":
                raise _error("NotImplemented", 501, "A header you provided implies functionality that is not "
                                                    "implemented: IfNoneMatch on a write must be '*'", operation)
            if current is not None:
                raise _precondition_failed("If-None-Match", operation)

    # --- writes ---------------------------------------------------------------------------------

    def _temp_beside(self, key: str, path: Path, operation: str) -> Tuple[int, Path]:
        for _ in range(5):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                return _open_temp(path.parent)
            except FileNotFoundError:
                continue     # a delete pruned the (empty) folder between mkdir and open: make it again
            except (FileExistsError, NotADirectoryError):
                raise _refused_key(key, "a folder is needed where an object is stored: objects are files "
                                        "here, so no key can extend another key followed by '/'",
                                   operation) from None
        raise _error("InternalError", 500, f"could not create the folder for {key!r}", operation)

    def _store(self, operation: str, bucket: str, key: str, body, content_type: Optional[str],
               metadata: Optional[Dict[str, str]], if_match: Optional[str] = None,
               if_none_match: Optional[str] = None, content_md5: Optional[str] = None) -> Tuple[_Meta, datetime]:
        """Write ``body`` as object ``key``: a temp file beside it, fsync, then (under the bucket lock,
        after checking the conditions) os.replace. Returns the description and LastModified."""
        path = self._locate(bucket, key, operation)
        fd, temp = self._temp_beside(key, path, operation)
        try:
            digest = hashlib.md5()
            with os.fdopen(fd, "wb", closefd=False) as out:
                for chunk in _chunks(body):
                    digest.update(chunk)
                    out.write(chunk)
            now = time.time_ns()
            os.utime(fd, ns=(now, now))      # a nanosecond mtime keeps every version's stamp distinct
            os.fsync(fd)
            if content_md5 is not None and base64.b64encode(digest.digest()).decode() != content_md5:
                raise _error("BadDigest", 400, "The Content-MD5 you specified did not match what we received.",
                             operation)
            with self._locked(bucket):
                self._check_condition(key, path, if_match, if_none_match, operation)
                try:
                    os.replace(temp, path)
                except IsADirectoryError:
                    try:
                        path.rmdir()         # an empty folder left where the object goes
                    except OSError:
                        raise _refused_key(key, f"keys under {key + '/'!r} exist: objects are files here, so "
                                                f"a key cannot also be a folder", operation) from None
                    os.replace(temp, path)
                st = os.fstat(fd)            # after the rename, which moves ctime
        except BaseException:
            with suppress(OSError):
                os.unlink(temp)
            raise
        finally:
            os.close(fd)
        meta = _Meta(f'"{digest.hexdigest()}"', content_type or DEFAULT_CONTENT_TYPE, dict(metadata or {}),
                     _stamp(st))
        self._remember(bucket, key, meta)
        return meta, _timestamp(st)

    def put_object(self, *, Bucket: str, Key: str, Body=b"", ContentType: Optional[str] = None,
                   Metadata: Optional[Dict[str, str]] = None, IfMatch: Optional[str] = None,
                   IfNoneMatch: Optional[str] = None, ContentMD5: Optional[str] = None, **ignored) -> dict:
        """Store ``Body`` (bytes, str or a file object); ``IfNoneMatch="*"`` writes only a new key,
        ``IfMatch=etag`` only over that version (PreconditionFailed otherwise). Returns {"ETag"}."""
        _reject_unknown("PutObject", ignored, _PUT_IGNORED)
        meta, _ = self._store("PutObject", Bucket, Key, Body, ContentType, Metadata, IfMatch, IfNoneMatch,
                              ContentMD5)
        return {"ResponseMetadata": _response_metadata(), "ETag": meta.etag}

    def upload_file(self, Filename, Bucket: str, Key: str, ExtraArgs: Optional[dict] = None,
                    Callback=None, Config=None) -> None:
        """boto3's managed upload: the file's bytes as one object. Failures are S3UploadFailedError,
        as boto3 raises them."""
        from boto3.exceptions import S3UploadFailedError
        extra = dict(ExtraArgs or {})
        _reject_unknown("upload_file", extra, _PUT_IGNORED | {"ContentType", "Metadata"})
        try:
            with open(Filename, "rb") as source:
                self._store("PutObject", Bucket, Key, source, extra.get("ContentType"), extra.get("Metadata"))
        except ClientError as exc:
            raise S3UploadFailedError(f"Failed to upload {Filename} to {Bucket}/{Key}: {exc}") from exc
        if Callback is not None:
            Callback(os.path.getsize(Filename))

    def copy_object(self, *, Bucket: str, Key: str, CopySource, MetadataDirective: str = "COPY",
                    ContentType: Optional[str] = None, Metadata: Optional[Dict[str, str]] = None,
                    **ignored) -> dict:
        """Copy ``CopySource`` ({"Bucket", "Key"} or "bucket/key") to ``Key``; metadata is copied unless
        ``MetadataDirective="REPLACE"``. Returns {"CopyObjectResult": {"ETag", "LastModified"}}."""
        _reject_unknown("CopyObject", ignored, _PUT_IGNORED | {"CopySourceIfMatch", "TaggingDirective"})
        if isinstance(CopySource, str):
            source_bucket, _, source_key = CopySource.lstrip("/").partition("/")
        else:
            source_bucket, source_key = CopySource["Bucket"], CopySource["Key"]
        if (source_bucket, source_key) == (Bucket, Key) and MetadataDirective != "REPLACE":
            raise _error("InvalidRequest", 400, "This copy request is illegal because it is trying to copy an "
                                                "object to itself without changing the object's metadata, "
                                                "storage class, website redirect location or encryption "
                                                "attributes.", "CopyObject")
        fd, _, source_meta = self._open_object(source_bucket, source_key, "CopyObject")
        with os.fdopen(fd, "rb") as source:
            if MetadataDirective == "REPLACE":
                content_type, metadata = ContentType, Metadata
            else:
                content_type, metadata = source_meta.content_type, source_meta.metadata
            meta, modified = self._store("CopyObject", Bucket, Key, source, content_type, metadata)
        return {"ResponseMetadata": _response_metadata(),
                "CopyObjectResult": {"ETag": meta.etag, "LastModified": modified}}

    def delete_object(self, *, Bucket: str, Key: str, IfMatch: Optional[str] = None, **ignored) -> dict:
        """Remove the object; a missing key is no error (S3 answers 204 either way)."""
        _reject_unknown("DeleteObject", ignored, frozenset({"ExpectedBucketOwner", "RequestPayer"}))
        path = self._locate(Bucket, Key, "DeleteObject")
        with self._locked(Bucket):
            self._check_condition(Key, path, IfMatch, None, "DeleteObject")
            with suppress(FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError):
                if not path.is_dir():
                    os.unlink(path)
        self._forget(Bucket, Key)
        _prune_empty_folders(path.parent, self._bucket_dir(Bucket, "DeleteObject"))
        return {"ResponseMetadata": _response_metadata(204)}

    # --- reads ----------------------------------------------------------------------------------

    def _open_object(self, bucket: str, key: str, operation: str) -> Tuple[int, os.stat_result, _Meta]:
        """An open descriptor on the object, its stat and description; the caller closes it."""
        path = self._locate(bucket, key, operation)
        try:
            fd = os.open(path, os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise _no_such_key(key, operation) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise _no_such_key(key, operation)
            return fd, st, self._describe(bucket, key, path, st, fd)
        except BaseException:
            os.close(fd)
            raise

    @staticmethod
    def _check_read_condition(meta: _Meta, if_match: Optional[str], if_none_match: Optional[str],
                              operation: str) -> None:
        if if_match is not None and if_match.strip() != "*" and _unquote(if_match) != _unquote(meta.etag):
            raise _precondition_failed("If-Match", operation)
        if if_none_match is not None and (if_none_match.strip() == "*"
                                          or _unquote(if_none_match) == _unquote(meta.etag)):
            raise _error("304", 304, "Not Modified", operation)

    @staticmethod
    def _head_fields(st: os.stat_result, meta: _Meta) -> dict:
        return {"ResponseMetadata": _response_metadata(), "AcceptRanges": "bytes", "LastModified": _timestamp(st),
                "ContentLength": st.st_size, "ETag": meta.etag, "ContentType": meta.content_type,
                "Metadata": dict(meta.metadata)}

    def head_object(self, *, Bucket: str, Key: str, IfMatch: Optional[str] = None,
                    IfNoneMatch: Optional[str] = None, **ignored) -> dict:
        """The object's fields without its body; a missing key is ClientError code "404"."""
        _reject_unknown("HeadObject", ignored, _READ_IGNORED)
        path = self._locate(Bucket, Key, "HeadObject")
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            raise _no_such_key(Key, "HeadObject") from None
        if not stat.S_ISREG(st.st_mode):
            raise _no_such_key(Key, "HeadObject")
        meta = self._describe(Bucket, Key, path, st)
        self._check_read_condition(meta, IfMatch, IfNoneMatch, "HeadObject")
        return self._head_fields(st, meta)

    def get_object(self, *, Bucket: str, Key: str, IfMatch: Optional[str] = None,
                   IfNoneMatch: Optional[str] = None, **ignored) -> dict:
        """The object with ``Body`` a botocore StreamingBody; NoSuchKey when missing, PreconditionFailed
        when ``IfMatch`` names another version."""
        _reject_unknown("GetObject", ignored, _READ_IGNORED)
        fd, st, meta = self._open_object(Bucket, Key, "GetObject")
        try:
            self._check_read_condition(meta, IfMatch, IfNoneMatch, "GetObject")
        except ClientError:
            os.close(fd)
            raise
        if st.st_size <= IN_MEMORY_BODY:
            with os.fdopen(fd, "rb") as source:
                raw = io.BytesIO(source.read())
        else:
            raw = os.fdopen(fd, "rb")              # the caller closes the body, as with botocore
        return {**self._head_fields(st, meta), "Body": StreamingBody(raw, st.st_size)}

    def download_file(self, Bucket: str, Key: str, Filename, ExtraArgs: Optional[dict] = None,
                      Callback=None, Config=None) -> None:
        """boto3's managed download: written beside ``Filename`` and renamed into place. A missing key
        is ClientError "404" from HeadObject, as boto3 reports it."""
        fd, st, _ = self._open_object(Bucket, Key, "HeadObject")
        target = Path(Filename)
        temp = target.with_name(f"{target.name}.{secrets.token_hex(4)}")
        try:
            with os.fdopen(fd, "rb") as source, open(temp, "wb") as out:
                shutil.copyfileobj(source, out, CHUNK)
            os.replace(temp, target)
        except BaseException:
            with suppress(OSError):
                os.unlink(temp)
            raise
        if Callback is not None:
            Callback(st.st_size)

    # --- listing --------------------------------------------------------------------------------

    def list_objects_v2(self, *, Bucket: str, Prefix: str = "", Delimiter: Optional[str] = None,
                        MaxKeys: int = MAX_LIST_KEYS, ContinuationToken: Optional[str] = None,
                        StartAfter: Optional[str] = None, **ignored) -> dict:
        """Keys under ``Prefix`` in UTF-8 byte order, at most ``MaxKeys`` (and 1000) per call; with
        ``Delimiter``, keys that contain it after the prefix roll up into CommonPrefixes. Reads only the
        folders the prefix and the continuation point can reach, and no object's content once its ETag
        is recorded."""
        operation = "ListObjectsV2"
        _reject_unknown(operation, ignored, _LIST_IGNORED)
        bucket_dir = str(self._bucket_dir(Bucket, operation))
        cursor = _Cursor.from_token(ContinuationToken, operation) if ContinuationToken else _Cursor(StartAfter or "")
        limit = max(0, min(int(MaxKeys), MAX_LIST_KEYS))
        contents, prefixes, last, truncated = [], [], cursor, False
        if limit:
            for name, entry in _entries(bucket_dir, Prefix, Delimiter or None, cursor):
                if len(contents) + len(prefixes) == limit:
                    truncated = True
                    break
                if entry is None:
                    prefixes.append({"Prefix": name})
                    last = _Cursor(name, whole_prefix=True)
                    continue
                try:
                    st = entry.stat()
                    meta = self._describe(Bucket, name, entry.path, st)
                except OSError:          # removed while listed
                    continue
                contents.append({"Key": name, "LastModified": _timestamp(st), "ETag": meta.etag,
                                 "Size": st.st_size, "StorageClass": "STANDARD"})
                last = _Cursor(name)
        response = {"ResponseMetadata": _response_metadata(), "IsTruncated": truncated}
        if contents:
            response["Contents"] = contents
        response.update(Name=Bucket, Prefix=Prefix)
        if Delimiter:
            response["Delimiter"] = Delimiter
        response["MaxKeys"] = MaxKeys
        if prefixes:
            response["CommonPrefixes"] = prefixes
        response["EncodingType"] = "url"     # boto3 asks for it and decodes the keys itself
        response["KeyCount"] = len(contents) + len(prefixes)
        if ContinuationToken:
            response["ContinuationToken"] = ContinuationToken
        if truncated:
            response["NextContinuationToken"] = last.token()
        if StartAfter:
            response["StartAfter"] = StartAfter
        return response

    def can_paginate(self, operation_name: str) -> bool:
        return operation_name == "list_objects_v2"

    def get_paginator(self, operation_name: str) -> "ListObjectsV2Paginator":
        if not self.can_paginate(operation_name):
            raise OperationNotPageableError(operation_name=operation_name)
        return ListObjectsV2Paginator(self)


@dataclass
class ListObjectsV2Paginator:
    """``s3.get_paginator("list_objects_v2")``: ``paginate(**list_objects_v2 arguments)`` yields every
    page; ``PaginationConfig`` takes PageSize and StartingToken."""
    client: LocalS3

    def paginate(self, *, PaginationConfig: Optional[dict] = None, **kwargs) -> "PageIterator":
        return PageIterator(self.client, kwargs, dict(PaginationConfig or {}))


@dataclass
class PageIterator:
    client: LocalS3
    kwargs: dict
    config: dict = field(default_factory=dict)

    def __iter__(self) -> Iterator[dict]:
        unknown = set(self.config) - {"PageSize", "StartingToken"}
        if unknown:
            raise ParamValidationError(report=f"PaginationConfig {sorted(unknown)} is not supported by the "
                                              f"local bucket (PageSize and StartingToken are)")
        kwargs = dict(self.kwargs)
        if self.config.get("PageSize"):
            kwargs["MaxKeys"] = self.config["PageSize"]
        if self.config.get("StartingToken"):
            kwargs["ContinuationToken"] = self.config["StartingToken"]
        while True:
            page = self.client.list_objects_v2(**kwargs)
            yield page
            if not page["IsTruncated"]:
                return
            if page["NextContinuationToken"] == kwargs.get("ContinuationToken"):    # as boto3 guards
                raise PaginationError(message=f"The same next token was received twice: {kwargs}")
            kwargs["ContinuationToken"] = page["NextContinuationToken"]
