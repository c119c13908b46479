"""Download and unpack the Udacity dog-breed dataset (133 breeds, ``train/valid/test``), standard library only.

    python -m dogbreeds.fetch [--dest DIR] [--url URL] [--sha256 HEX] [--zip PATH]

``fetch_dataset(dest_dir)`` downloads ``dogImages.zip`` into ``dest_dir`` and returns the extracted folder
that holds ``train/``, ``valid/`` and ``test/`` (``<dest_dir>/dogImages`` for the Udacity zip).

- Resumable: bytes go to ``<name>.zip.part``; a later call (or an automatic retry) asks for the rest with
  ``Range: bytes=N-`` and ``If-Range: <ETag>``. ``<name>.zip.part`` becomes ``<name>.zip`` only when it is
  complete and verified.
- Verified against the SAME remote object: at first contact the ETag and Content-Length are recorded in
  ``<name>.zip.json``; a resume whose server reports another ETag or size starts over and says why. The
  finished file must have the recorded size and, when ``sha256`` is given, that SHA-256; otherwise, when the
  ETag is a plain MD5 (32 hex digits, what S3 gives for single-part uploads), that MD5. A file that fails is
  deleted and ``FetchError`` names the expected and actual values.
- Failures a person can act on (no network, DNS, refused connection, timeout, HTTP 403/404, a bad zip) raise
  ``FetchError`` whose message says what was tried, what happened and what to do.
- ``zip_path=`` uses a zip downloaded elsewhere instead of the network.
- Extraction refuses absolute paths, ``..`` and escaping symlinks (zip-slip) before writing anything, skips
  ``__MACOSX/``, and ends by writing ``<name>.extracted.json`` in ``dest_dir``; with that marker in place a
  later call returns at once without touching the network.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import ssl
import stat
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import TextIO

UDACITY_URL = "https://s3-us-west-1.amazonaws.com/udacity-aind/dog-project/dogImages.zip"
DEFAULT_DEST = "data"
CHUNK_SIZE = 1 << 20          # bytes per read while downloading
RETRY_BACKOFF_S = 2.0         # first pause before resuming an interrupted download (doubles, capped at 30 s)
MAX_RESTARTS = 3              # times one call may start over because the remote file changed under it
SPLITS = ("train", "valid", "test")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}
_MD5_ETAG = re.compile(r"[0-9a-f]{32}")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_MB = 1_000_000

ALTERNATIVES = ("download the zip on a machine with internet access and pass it with --zip PATH "
                "(fetch_dataset(dest, zip_path=PATH)), or use the generated dataset instead: "
                "python -m dogbreeds.synthetic OUT_DIR")


class FetchError(RuntimeError):
    """A download or extraction failure, with a message meant for a person (what, why, what to do)."""


class _Interrupted(Exception):
    """The transfer stopped part-way; the .part file keeps what arrived."""


# --------------------------------------------------------------------------------------------- helpers

def _say(stream: TextIO | None, message: str) -> None:
    if stream is not None:
        print(message, file=stream, flush=True)


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _mb(n: int | None) -> str:
    return "?" if n is None else f"{n / _MB:.1f}"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def _name_for(source: str | os.PathLike) -> str:
    """``dogImages`` for ``.../dogImages.zip`` (a URL or a path); ``dataset`` when there is no usable name."""
    text = str(source)
    path = urllib.parse.urlsplit(text).path if "://" in text else text
    name = Path(urllib.parse.unquote(path)).name
    if name.lower().endswith(".zip"):
        name = name[:-4]
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name).strip(".")
    return name or "dataset"


def _plain_etag(etag: str | None) -> str | None:
    """The ETag without quotes; None for a missing or weak (``W/``) ETag."""
    if not etag or etag.startswith("W/"):
        return None
    return etag.strip().strip('"')


def _md5_from_etag(etag: str | None) -> str | None:
    value = _plain_etag(etag)
    return value.lower() if value and _MD5_ETAG.fullmatch(value.lower()) else None


def _int_or_none(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _content_range(value: str | None) -> tuple[int | None, int | None, int | None]:
    """``bytes 10-99/100`` -> (10, 99, 100); ``bytes */100`` -> (None, None, 100)."""
    m = re.fullmatch(r"\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*", value or "")
    if not m:
        return None, None, None
    return _int_or_none(m[1]), _int_or_none(m[2]), _int_or_none(m[3])


def _hash_file(path: Path, hashers: dict) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK_SIZE), b""):
            for h in hashers.values():
                h.update(block)


def _new_hashers() -> dict:
    return {"sha256": hashlib.sha256(), "md5": hashlib.md5()}


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _unlink(*paths: Path) -> None:
    for p in paths:
        try:
            p.unlink()
        except FileNotFoundError:
            pass


# -------------------------------------------------------------------------------------------- progress

class _Progress:
    """One redrawn line on a terminal (at most every ``interval`` s); a line per 10% on anything else."""

    def __init__(self, stream, label: str, total: int | None, initial: int, enabled: bool,
                 interval: float = 0.2, clock=time.monotonic):
        self.stream, self.label, self.total, self.initial = stream, label, total, initial
        self.enabled = enabled and stream is not None
        self.tty = _isatty(stream)
        self.done = initial
        self.clock, self.interval = clock, interval
        self.start = clock()
        self.last_draw = None
        self.width = 0
        if total:
            self.next_step = min(initial * 10 // total, 10) + 1   # next 10% boundary to report
        else:
            self.next_step = initial // (100 * _MB) + 1           # no size known: every 100 MB

    def _line(self, pct: int | None = None) -> str:
        elapsed = max(self.clock() - self.start, 1e-9)
        rate = (self.done - self.initial) / elapsed
        speed = f"{rate / _MB:.1f} MB/s" if self.done > self.initial else "-- MB/s"
        if self.total:
            pct = self.done * 100 // self.total if pct is None else pct
            remaining = max(self.total - self.done, 0)
            eta = _duration(remaining / rate) if rate > 0 else "--"
            return (f"{self.label} {pct:3d}% {_mb(self.done)}/{_mb(self.total)} MB {speed} ETA {eta}")
        return f"{self.label} {_mb(self.done)} MB {speed}"

    def update(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        if self.tty:
            now = self.clock()
            if self.last_draw is None or now - self.last_draw >= self.interval:
                self._draw()
                self.last_draw = now
        elif self.total:
            step = min(self.done * 10 // self.total, 10)
            if step >= self.next_step:
                _say(self.stream, self._line(pct=step * 10))
                self.next_step = step + 1
        else:
            step = self.done // (100 * _MB)
            if step >= self.next_step:
                _say(self.stream, self._line())
                self.next_step = step + 1

    def _draw(self) -> None:
        line = self._line()
        pad = " " * max(self.width - len(line), 0)
        self.width = len(line)
        self.stream.write("\r" + line + pad)
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled and self.tty:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()


# ----------------------------------------------------------------------------------------- the network

def _network_failure(url: str, reason, timeout: float) -> FetchError:
    """A FetchError for a failure to reach ``url`` (``reason``: the exception urllib reports)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "?"
    where = f"{host}:{parts.port}" if parts.port else host
    advice = f"What to do: check the network connection (and any proxy settings) and run again; or {ALTERNATIVES}."
    if isinstance(reason, socket.gaierror):
        what = (f"could not look up the host name {host!r} ({reason.strerror or reason}): this machine "
                "seems to have no network access (or no DNS), or the host name is wrong")
    elif isinstance(reason, ConnectionRefusedError):
        what = f"the connection to {where} was refused (nothing is accepting connections there)"
    elif isinstance(reason, (TimeoutError, socket.timeout)):
        what = f"no answer from {where} within {timeout:g} s (offline, or a firewall drops the traffic)"
    elif isinstance(reason, ssl.SSLError):
        what = f"the secure (TLS) connection to {where} failed ({reason})"
    elif isinstance(reason, OSError) and reason.errno in {101, 113, 51, 65}:  # ENETUNREACH, EHOSTUNREACH
        what = f"the network is unreachable ({reason.strerror or reason}): no network connection"
    else:
        what = f"the connection to {where} failed ({reason})"
    return FetchError(f"could not download {url}: {what}.\n{advice}")


def _http_failure(url: str, code: int, reason: str) -> FetchError:
    if code == 404:
        what = "the server answered HTTP 404 Not Found: there is no file at this address"
    elif code == 403:
        what = ("the server answered HTTP 403 Forbidden (S3 also answers 403 for a file that does not exist "
                "or is not public)")
    else:
        what = f"the server answered HTTP {code} {reason}".rstrip()
    retry = " or try again later" if code >= 500 or code == 429 else ""
    return FetchError(f"could not download {url}: {what}.\n"
                      f"What to do: check the URL (--url){retry}; or {ALTERNATIVES}.")


def _request(url: str, headers: dict, timeout: float):
    """Open ``url``; a 416 answer is returned (it carries information), other failures raise FetchError."""
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise FetchError(f"could not download {url!r}: not an http(s) URL.\n"
                         f"What to do: pass a URL starting with https:// (--url), or a local file with --zip PATH.")
    request = urllib.request.Request(url, headers={"User-Agent": "dogbreeds-fetch/1",
                                                   "Accept-Encoding": "identity", **headers})
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416:
            return e
        e.close()
        raise _http_failure(url, e.code, str(e.reason or "")) from e
    except urllib.error.URLError as e:
        raise _network_failure(url, e.reason, timeout) from e
    except (http.client.HTTPException, OSError) as e:  # timeouts and resets while reading the headers
        raise _network_failure(url, e, timeout) from e
    except ValueError as e:
        raise FetchError(f"could not download {url!r}: {e}.\nWhat to do: check the URL (--url).") from e


def _describe_read_error(e: BaseException, timeout: float) -> str:
    if isinstance(e, (TimeoutError, socket.timeout)):
        return f"no data for {timeout:g} s"
    if isinstance(e, http.client.IncompleteRead):
        return "the server closed the connection early"
    return f"{type(e).__name__}: {e}"


def _download(url: str, final: Path, *, sha256: str | None, progress: bool, timeout: float,
              stream, retries: int) -> dict:
    """Download ``url`` to ``final`` (via ``final.part``), retrying interruptions; return the sidecar record."""
    part = final.with_name(final.name + ".part")
    attempt = 0
    while True:
        try:
            return _download_once(url, final, sha256=sha256, progress=progress, timeout=timeout, stream=stream)
        except _Interrupted as e:
            have = part.stat().st_size if part.exists() else 0
            if attempt >= retries:
                raise FetchError(
                    f"the download of {url} was interrupted after {_mb(have)} MB ({e}).\n"
                    f"What to do: run the same command again: it resumes from {part}. "
                    f"If the network keeps failing, {ALTERNATIVES}.") from None
            attempt += 1
            delay = min(RETRY_BACKOFF_S * 2 ** (attempt - 1), 30.0)
            _say(stream, f"download interrupted after {_mb(have)} MB ({e}); resuming in {delay:g} s "
                         f"(retry {attempt} of {retries})")
            time.sleep(delay)


def _download_once(url: str, final: Path, *, sha256: str | None, progress: bool, timeout: float,
                   stream) -> dict:
    part = final.with_name(final.name + ".part")
    sidecar = final.with_name(final.name + ".json")
    restarts = 0

    def start_over(reason: str) -> None:
        nonlocal restarts
        restarts += 1
        if restarts > MAX_RESTARTS:
            raise FetchError(f"could not download {url}: the remote file kept changing during the download "
                             f"({reason}).\nWhat to do: try again later; or {ALTERNATIVES}.")
        _say(stream, f"{reason}: starting the download over")
        _unlink(part, sidecar)

    while True:
        record = _read_json(sidecar) if part.exists() else None
        offset = 0
        if part.exists():
            size = part.stat().st_size
            if record is None or record.get("url") != url:
                start_over(f"{part} has no record of which remote file it is part of")
                continue
            if record.get("length") is not None and size > record["length"]:
                start_over(f"{part} ({size} bytes) is bigger than the remote file ({record['length']} bytes)")
                continue
            offset = size
        headers = {}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if record.get("etag") and not record["etag"].startswith("W/"):
                headers["If-Range"] = record["etag"]
        response = _request(url, headers, timeout)
        try:
            status = response.getcode()
            etag = response.headers.get("ETag")
            if status == 416:
                # Nothing left to send: the part is complete, or the remote file is now smaller than the part.
                total = _content_range(response.headers.get("Content-Range"))[2]
                expected = record.get("length") if record.get("length") is not None else total
                if offset and expected == offset and total in (None, offset):
                    _say(stream, f"{part.name} is already complete ({_mb(offset)} MB): verifying")
                    hashers = _new_hashers()
                    _hash_file(part, hashers)
                    return _finish(url, final, record, hashers, sha256, stream)
                start_over(f"the server says {offset} bytes is past the end of the file "
                           f"(HTTP 416, remote size {total if total is not None else 'unknown'})")
                continue
            if status == 206:
                start, _, total = _content_range(response.headers.get("Content-Range"))
                changed = _remote_changed(record, etag, total)
                if changed:
                    start_over(changed)
                    continue
                if start != offset:
                    start_over(f"the server sent bytes from {start} when asked for bytes from {offset}")
                    continue
                _say(stream, f"resuming {part.name} at {_mb(offset)} of {_mb(record.get('length'))} MB")
                hashers = _new_hashers()
                _hash_file(part, hashers)
                mode = "ab"
            elif status == 200:
                if offset:
                    reason = (_remote_changed(record, etag, _int_or_none(response.headers.get("Content-Length")))
                              or "the server ignored the Range request (it answered 200 with the whole file)")
                    _say(stream, f"{reason}: starting the download over")
                    offset = 0
                record = {"url": url, "etag": etag,
                          "length": _int_or_none(response.headers.get("Content-Length")),
                          "last_modified": response.headers.get("Last-Modified"),
                          "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
                _write_json(sidecar, record)  # first contact: later resumes must match this object
                hashers = _new_hashers()
                mode = "wb"
            else:
                raise FetchError(f"could not download {url}: unexpected answer HTTP {status}.\n"
                                 f"What to do: check the URL (--url); or {ALTERNATIVES}.")
            _receive(response, part, mode, hashers, record.get("length"), offset, final.name,
                     progress, timeout, stream)
        finally:
            response.close()
        size = part.stat().st_size
        length = record.get("length")
        if length is not None and size < length:
            raise _Interrupted(f"the connection closed after {size} of {length} bytes")
        return _finish(url, final, record, hashers, sha256, stream)


def _remote_changed(record: dict, etag: str | None, total: int | None) -> str | None:
    """Why the remote object differs from the one the .part came from, or None."""
    old_etag, old_length = record.get("etag"), record.get("length")
    if old_etag and etag and _plain_etag(old_etag) != _plain_etag(etag):
        return f"the remote file changed since the partial download (ETag {old_etag} -> {etag})"
    if old_length is not None and total is not None and old_length != total:
        return f"the remote file changed since the partial download (size {old_length} -> {total} bytes)"
    return None


def _receive(response, part: Path, mode: str, hashers: dict, total: int | None, offset: int, label: str,
             progress: bool, timeout: float, stream) -> None:
    bar = _Progress(stream, label, total, offset, progress)
    try:
        with open(part, mode) as out:
            while True:
                try:
                    chunk = response.read(CHUNK_SIZE)
                except (http.client.HTTPException, OSError) as e:
                    raise _Interrupted(_describe_read_error(e, timeout)) from e
                if not chunk:
                    break
                try:
                    out.write(chunk)
                except OSError as e:
                    raise FetchError(f"could not write {part}: {e}.\nWhat to do: free some disk space "
                                     f"or choose another folder with --dest, then run again.") from e
                for h in hashers.values():
                    h.update(chunk)
                bar.update(len(chunk))
    finally:
        bar.finish()


def _finish(url: str, final: Path, record: dict, hashers: dict, sha256: str | None, stream) -> dict:
    """Check size and digest of the complete .part; on success rename it to ``final``."""
    part = final.with_name(final.name + ".part")
    sidecar = final.with_name(final.name + ".json")
    size = part.stat().st_size
    got = {k: h.hexdigest() for k, h in hashers.items()}
    problem = None
    if record.get("length") is not None and size != record["length"]:
        problem = f"size mismatch: expected {record['length']} bytes (Content-Length), got {size}"
    elif sha256 and got["sha256"] != sha256.lower():
        problem = f"SHA-256 mismatch: expected {sha256.lower()}, got {got['sha256']}"
    elif not sha256 and _md5_from_etag(record.get("etag")) and got["md5"] != _md5_from_etag(record["etag"]):
        problem = f"MD5 mismatch: expected {_md5_from_etag(record['etag'])} (the server's ETag), got {got['md5']}"
    if problem:
        _unlink(part, sidecar)
        raise FetchError(f"the download of {url} is corrupt: {problem}. The bad file was deleted.\n"
                         f"What to do: run again to download it afresh (check the --sha256 value if you gave one); "
                         f"or {ALTERNATIVES}.")
    if sha256:
        checked = "SHA-256"
    elif _md5_from_etag(record.get("etag")):
        checked = "MD5 (from the ETag)"
    else:
        checked = "size only: the ETag is not a plain MD5 and no --sha256 was given"
    os.replace(part, final)
    record = {**record, "complete": True, "size": size, **got}
    _write_json(sidecar, record)
    _say(stream, f"downloaded {final} ({_mb(size)} MB, verified: {checked})")
    return record


# ------------------------------------------------------------------------------------------ extraction

def _within(path: Path, base: Path) -> bool:
    path, base = path.resolve(), base.resolve()
    return path == base or base in path.parents


def _zip_is_symlink(info: zipfile.ZipInfo) -> bool:
    return info.create_system == 3 and stat.S_ISLNK(info.external_attr >> 16)


def _plan(zf: zipfile.ZipFile, zip_file: Path, dest: Path, name: str):
    """Check every entry before anything is written; return (base, root, [(info, target)], skipped symlinks)."""
    def refuse(entry: str, why: str) -> FetchError:
        return FetchError(f"refusing to extract {zip_file}: entry {entry!r} {why} (a 'zip-slip' entry that "
                          f"would write outside {dest}). Nothing was extracted.\n"
                          f"What to do: get the zip from a trusted source.")

    entries = []
    for info in zf.infolist():
        raw = info.filename
        norm = raw.replace("\\", "/")
        if norm.startswith("/") or re.match(r"[A-Za-z]:", norm):
            raise refuse(raw, "has an absolute path")
        parts = [p for p in norm.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise refuse(raw, "contains '..'")
        if not parts or parts[0] == "__MACOSX":
            continue
        entries.append((info, parts))
    tops = {parts[0] for info, parts in entries}
    single_folder = len(tops) == 1 and any(len(p) > 1 or i.is_dir() for i, p in entries)
    base = dest if single_folder else dest / name

    planned, symlinks, prefixes = [], [], []
    for info, parts in entries:
        target = base.joinpath(*parts)
        if not _within(target, dest):
            raise refuse(info.filename, f"resolves to {target.resolve()} through a symlink on disk")
        if _zip_is_symlink(info):
            link = zf.read(info).decode("utf-8", "replace")
            resolved = os.path.normpath(os.path.join(os.path.dirname(target), link))
            if os.path.isabs(link) or not _within(Path(resolved), dest):
                raise refuse(info.filename, f"is a symlink to {link!r}")
            symlinks.append(info.filename)  # harmless, but not created: the dataset has none
            continue
        if "train" in parts[:-1] or (info.is_dir() and parts[-1] == "train"):
            prefixes.append(tuple(parts[:parts.index("train")]))
        planned.append((info, target))
    if not prefixes:
        raise FetchError(f"{zip_file} has no train/ folder: this is not the dog-breed dataset "
                         f"(expected e.g. dogImages/train/001.Affenpinscher/*.jpg).\n"
                         f"What to do: check the zip (--zip) or URL (--url).")
    root = base.joinpath(*min(prefixes, key=lambda p: (len(p), p)))
    return base, root, planned, symlinks


def _extract(zip_file: Path, dest: Path, name: str, stream) -> Path:
    try:
        with zipfile.ZipFile(zip_file) as zf:
            base, root, planned, symlinks = _plan(zf, zip_file, dest, name)
            _say(stream, f"extracting {zip_file} into {base} ({len(planned)} entries)")
            for info, target in planned:
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, CHUNK_SIZE)
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise FetchError(f"{zip_file} is not a valid zip file or is damaged ({e}).\n"
                         f"What to do: delete it and download it again.") from e
    if symlinks:
        _say(stream, f"skipped {len(symlinks)} symlink entries (not created): {symlinks[:3]}")
    return root


# ------------------------------------------------------------------------------------------- public API

def dataset_counts(root: str | os.PathLike) -> dict[str, tuple[int, int]]:
    """``{split: (class folders, image files)}`` for each of train/valid/test present under ``root``."""
    counts = {}
    for split in SPLITS:
        folder = Path(root) / split
        if folder.is_dir():
            classes = [d for d in folder.iterdir() if d.is_dir()]
            images = sum(1 for d in classes for f in d.iterdir()
                         if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            counts[split] = (len(classes), images)
    return counts


def _already_extracted(marker: Path, dest: Path, sha256: str | None) -> Path | None:
    info = _read_json(marker)
    if not info or not isinstance(info.get("root"), str):
        return None
    root = dest / info["root"]
    if not (root / "train").is_dir():
        return None
    if sha256 and str(info.get("zip_sha256", "")).lower() != sha256.lower():
        return None
    return root


def fetch_dataset(dest_dir: str | os.PathLike = DEFAULT_DEST, url: str = UDACITY_URL, sha256: str | None = None,
                  progress: bool = True, timeout: float = 30, stream: TextIO | None = None, *,
                  zip_path: str | os.PathLike | None = None, retries: int = 3) -> Path:
    """Make the dataset available under ``dest_dir``; return the folder holding ``train/ valid/ test/``.

    ``url``: where to download the zip (ignored with ``zip_path``). ``sha256``: the zip's expected SHA-256
    (otherwise an MD5 ETag is checked). ``progress``: show a progress bar on ``stream`` (default
    ``sys.stderr``; notices about resuming or restarting are written there too). ``timeout``: seconds to
    wait for the server at each step. ``zip_path``: an already downloaded zip to use instead of the network.
    ``retries``: times an interrupted transfer is resumed automatically before giving up (the .part stays
    for the next call). Raises ``FetchError`` with a message for people.
    """
    stream = sys.stderr if stream is None else stream
    if sha256 is not None and not _HEX64.fullmatch(sha256.strip()):
        raise FetchError(f"--sha256 must be 64 hexadecimal digits, got {sha256!r}.")
    sha256 = sha256.strip().lower() if sha256 else None
    dest = Path(dest_dir).expanduser()
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FetchError(f"cannot create the folder {dest}: {e}.\nWhat to do: choose another folder with --dest.") from e
    name = _name_for(zip_path if zip_path is not None else url)
    marker = dest / f"{name}.extracted.json"
    done = _already_extracted(marker, dest, sha256)
    if done is not None:
        _say(stream, f"dataset already extracted at {done}")
        return done

    if zip_path is not None:
        zip_file = Path(zip_path).expanduser()
        if not zip_file.is_file():
            raise FetchError(f"no zip file at {zip_file}.\nWhat to do: check the path given with --zip.")
        hashers = {"sha256": hashlib.sha256()}
        _hash_file(zip_file, hashers)
        digest = hashers["sha256"].hexdigest()
        if sha256 and digest != sha256:
            raise FetchError(f"{zip_file} does not match the expected checksum: SHA-256 mismatch: expected "
                             f"{sha256}, got {digest}. The file was left in place (it is yours).\n"
                             f"What to do: check the --sha256 value, or download the zip again.")
        source = str(zip_file.resolve())
    else:
        zip_file = dest / f"{name}.zip"
        sidecar = zip_file.with_name(zip_file.name + ".json")
        record = _read_json(sidecar) or {}
        if zip_file.is_file():  # downloaded and verified earlier; the extraction did not finish
            digest = record.get("sha256") if record.get("url") == url else None
            if digest is None or sha256:
                hashers = {"sha256": hashlib.sha256()}
                _hash_file(zip_file, hashers)
                digest = hashers["sha256"].hexdigest()
            if sha256 and digest != sha256:
                _unlink(zip_file, sidecar)
                raise FetchError(f"{zip_file} (downloaded earlier) is corrupt: SHA-256 mismatch: expected "
                                 f"{sha256}, got {digest}. The bad file was deleted.\n"
                                 f"What to do: run again to download it afresh (check the --sha256 value).")
            _say(stream, f"using the already downloaded {zip_file}")
        else:
            record = _download(url, zip_file, sha256=sha256, progress=progress, timeout=timeout,
                               stream=stream, retries=max(int(retries), 0))
            digest = record["sha256"]
        source = url

    root = _extract(zip_file, dest, name, stream)
    counts = dataset_counts(root)
    _write_json(marker, {"root": os.path.relpath(root, dest), "source": source, "zip": str(zip_file),
                         "zip_sha256": digest, "counts": {k: {"classes": c, "images": n}
                                                          for k, (c, n) in counts.items()},
                         "extracted": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return root


# ------------------------------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dogbreeds.fetch",
        description="Download (resumably) and unpack the Udacity dog-breed dataset; print where it is.")
    parser.add_argument("--dest", default=DEFAULT_DEST, metavar="DIR", help=f"folder to download into (default: {DEFAULT_DEST})")
    parser.add_argument("--url", default=UDACITY_URL, metavar="URL", help="where the zip is (default: the Udacity S3 URL)")
    parser.add_argument("--sha256", metavar="HEX", help="expected SHA-256 of the zip")
    parser.add_argument("--zip", dest="zip_path", metavar="PATH", help="use this already downloaded zip")
    parser.add_argument("--timeout", type=float, default=30, metavar="S", help="seconds to wait for the server (default 30)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        root = fetch_dataset(args.dest, url=args.url, sha256=args.sha256, progress=not args.no_progress,
                             timeout=args.timeout, zip_path=args.zip_path)
    except FetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume the download", file=sys.stderr)
        return 130
    print(f"dataset: {root}")
    for split, (classes, images) in dataset_counts(root).items():
        print(f"  {split:<5} {classes:4d} classes {images:6d} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
