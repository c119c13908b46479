"""dogbreeds.fetch against a local HTTP server (127.0.0.1, free port) that speaks Range, If-Range and ETag."""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
import socket
import stat
import subprocess
import sys
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dogbreeds import fetch
from dogbreeds.fetch import FetchError, dataset_counts, fetch_dataset
from model_code.inference import display_label

from paths import ROOT

# Images per class in each split of the test zip.
LAYOUT = {
    "train": {"001.Affenpinscher": 3, "002.Afghan_hound": 2, "003.Airedale_terrier": 4},
    "valid": {"001.Affenpinscher": 1, "002.Afghan_hound": 1, "003.Airedale_terrier": 2},
    "test": {"001.Affenpinscher": 1, "002.Afghan_hound": 2},
}
EXPECTED_COUNTS = {"train": (3, 9), "valid": (3, 4), "test": (2, 3)}


def image_files(seed: int = 0, top: str = "dogImages/") -> dict[str, bytes]:
    """{zip entry name: bytes} for the LAYOUT: fake, distinct JPEG bodies of ~1.5 kB."""
    rng = random.Random(seed)
    files = {}
    for split, classes in LAYOUT.items():
        for cls, n in classes.items():
            for i in range(n):
                breed = display_label(cls)
                files[f"{top}{split}/{cls}/{breed}_{i:05d}.jpg"] = b"\xff\xd8\xff\xe0" + rng.randbytes(1500)
    return files


def make_zip(files: dict[str, bytes], extra: dict[str, bytes] | None = None, dirs=("dogImages/",)) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for d in dirs:
            zf.writestr(d, b"")
        for name, data in {**files, **(extra or {})}.items():
            zf.writestr(name, data)
    return buf.getvalue()


FILES = image_files(seed=0)
MACOSX = {"__MACOSX/dogImages/._junk": b"apple double"}
PAYLOAD = make_zip(FILES, extra=MACOSX)


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        srv = self.server
        srv.requests.append({k.lower(): v for k, v in self.headers.items()})
        if srv.status:
            self.send_error(srv.status)
            return
        body, etag = srv.payload, f'"{srv.etag}"'
        start, partial = 0, False
        rng, if_range = self.headers.get("Range"), self.headers.get("If-Range")
        if rng and srv.honor_range and (if_range is None or if_range == etag or not srv.honor_if_range):
            start = int(re.fullmatch(r"bytes=(\d+)-", rng)[1])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            partial = True
        chunk = body[start:]
        self.send_response(206 if partial else 200)
        self.send_header("Content-Length", str(len(chunk)))
        self.send_header("ETag", etag)
        self.send_header("Accept-Ranges", "bytes")
        if partial:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        drop = srv.drop_after.pop(0) if srv.drop_after else None
        if drop is not None:  # send N bytes, then hang up
            self.wfile.write(chunk[:drop])
            self.close_connection = True
            return
        self.wfile.write(chunk)


def serve(srv, payload: bytes, etag: str | None = None) -> None:
    srv.payload, srv.etag = payload, etag or hashlib.md5(payload).hexdigest()


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setattr(fetch, "RETRY_BACKOFF_S", 0.0)
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    srv.requests, srv.status, srv.drop_after = [], None, []
    srv.honor_range, srv.honor_if_range = True, True
    serve(srv, PAYLOAD)
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/udacity-aind/dog-project/dogImages.zip"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def free_port() -> int:
    """A port nothing listens on (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_extracted(root: Path, files: dict[str, bytes], top: str = "dogImages/") -> None:
    on_disk = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert on_disk == {name[len(top):]: data for name, data in files.items()}
    assert dataset_counts(root) == EXPECTED_COUNTS


def get(srv, out: Path, **kw) -> Path:
    kw.setdefault("stream", io.StringIO())
    return fetch_dataset(out, url=srv.url, **kw)


# ------------------------------------------------------------------------------------------- downloads

def test_full_download_extracts_the_dataset_and_records_the_remote(server, tmp_path):
    out = io.StringIO()
    root = get(server, tmp_path, sha256=hashlib.sha256(PAYLOAD).hexdigest(), stream=out)

    assert root == tmp_path / "dogImages"
    assert_extracted(root, FILES)
    assert not (tmp_path / "__MACOSX").exists()
    assert (tmp_path / "dogImages.zip").read_bytes() == PAYLOAD
    assert not (tmp_path / "dogImages.zip.part").exists()
    record = json.loads((tmp_path / "dogImages.zip.json").read_text())
    assert record["etag"] == f'"{hashlib.md5(PAYLOAD).hexdigest()}"' and record["length"] == len(PAYLOAD)
    marker = json.loads((tmp_path / "dogImages.extracted.json").read_text())
    assert marker["root"] == "dogImages" and marker["zip_sha256"] == hashlib.sha256(PAYLOAD).hexdigest()
    assert marker["counts"]["train"] == {"classes": 3, "images": 9}
    assert len(server.requests) == 1 and "range" not in server.requests[0]
    assert "verified: SHA-256" in out.getvalue()


def test_second_call_is_a_no_op(server, tmp_path):
    root = get(server, tmp_path)
    server.requests.clear()
    touched = next((root / "train").rglob("*.jpg"))
    touched.write_bytes(b"changed after extraction")
    out = io.StringIO()
    assert get(server, tmp_path, stream=out) == root
    assert server.requests == []
    assert touched.read_bytes() == b"changed after extraction"  # not extracted again either
    assert out.getvalue() == f"dataset already extracted at {root}\n"
    # Not even a reachable server is needed once the marker is there.
    again = fetch_dataset(tmp_path, url=f"http://127.0.0.1:{free_port()}/dogImages.zip", stream=io.StringIO())
    assert again == root


def test_interrupted_download_resumes_from_the_part_with_a_range_request(server, tmp_path):
    n = len(PAYLOAD) // 3
    server.drop_after = [n]
    with pytest.raises(FetchError) as info:
        get(server, tmp_path, retries=0)
    msg = str(info.value)
    assert "interrupted" in msg and "resume" in msg and server.url in msg
    part = tmp_path / "dogImages.zip.part"
    assert part.read_bytes() == PAYLOAD[:n]
    assert not (tmp_path / "dogImages.zip").exists()

    root = get(server, tmp_path)
    assert server.requests[1]["range"] == f"bytes={n}-"
    assert server.requests[1]["if-range"] == f'"{server.etag}"'
    assert (tmp_path / "dogImages.zip").read_bytes() == PAYLOAD
    assert_extracted(root, FILES)


def test_interruption_is_retried_within_one_call(server, tmp_path):
    n = len(PAYLOAD) // 2
    server.drop_after = [n]
    out = io.StringIO()
    get(server, tmp_path, retries=2, stream=out)
    assert [r.get("range") for r in server.requests] == [None, f"bytes={n}-"]
    assert (tmp_path / "dogImages.zip").read_bytes() == PAYLOAD
    assert "retry 1 of 2" in out.getvalue() and "resuming dogImages.zip.part" in out.getvalue()


def test_a_complete_part_is_verified_after_a_416(server, tmp_path):
    n = 100
    server.drop_after = [n]
    with pytest.raises(FetchError):
        get(server, tmp_path, retries=0)
    part = tmp_path / "dogImages.zip.part"
    part.write_bytes(PAYLOAD)  # as if killed after the last byte, before the rename
    out = io.StringIO()
    root = get(server, tmp_path, stream=out)
    assert server.requests[1]["range"] == f"bytes={len(PAYLOAD)}-" and len(server.requests) == 2
    assert "already complete" in out.getvalue()
    assert (tmp_path / "dogImages.zip").read_bytes() == PAYLOAD
    assert_extracted(root, FILES)


@pytest.mark.parametrize("honor_if_range", [True, False], ids=["if-range", "no-if-range"])
def test_changed_remote_etag_between_sessions_restarts(server, tmp_path, honor_if_range):
    server.honor_if_range = honor_if_range
    server.drop_after = [len(PAYLOAD) // 2]
    with pytest.raises(FetchError):
        get(server, tmp_path, retries=0)
    old_etag = server.etag

    new_files = image_files(seed=1)
    new_payload = make_zip(new_files, extra=MACOSX)
    assert len(new_payload) == len(PAYLOAD)  # same size: only the ETag tells them apart
    serve(server, new_payload)
    out = io.StringIO()
    root = get(server, tmp_path, stream=out)

    text = out.getvalue()
    assert "remote file changed" in text and old_etag in text and server.etag in text
    assert "starting the download over" in text
    assert server.requests[1]["range"] == f"bytes={len(PAYLOAD) // 2}-"
    # Honouring If-Range, the server sends the new file at once; otherwise its 206 is discarded and re-asked.
    assert len(server.requests) == (2 if honor_if_range else 3)
    assert "range" not in server.requests[-1] or honor_if_range
    assert (tmp_path / "dogImages.zip").read_bytes() == new_payload
    assert_extracted(root, new_files)
    assert json.loads((tmp_path / "dogImages.zip.json").read_text())["etag"] == f'"{server.etag}"'


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    server.honor_range = False
    server.drop_after = [len(PAYLOAD) // 4]
    with pytest.raises(FetchError):
        get(server, tmp_path, retries=0)
    out = io.StringIO()
    root = get(server, tmp_path, stream=out)
    assert server.requests[1]["range"] == f"bytes={len(PAYLOAD) // 4}-"
    assert "ignored the Range request" in out.getvalue()
    assert (tmp_path / "dogImages.zip").read_bytes() == PAYLOAD  # not the old prefix + the whole file
    assert_extracted(root, FILES)


# ----------------------------------------------------------------------------------------- integrity

def assert_nothing_kept(dest: Path) -> None:
    assert not (dest / "dogImages.zip.part").exists()
    assert not (dest / "dogImages.zip").exists()
    assert not (dest / "dogImages").exists()
    assert not (dest / "dogImages.extracted.json").exists()


def test_md5_etag_mismatch_raises_and_deletes_the_file(server, tmp_path):
    wrong = hashlib.md5(b"another file").hexdigest()
    serve(server, PAYLOAD, etag=wrong)
    with pytest.raises(FetchError) as info:
        get(server, tmp_path)
    msg = str(info.value)
    assert "MD5 mismatch" in msg and wrong in msg and hashlib.md5(PAYLOAD).hexdigest() in msg
    assert "deleted" in msg
    assert_nothing_kept(tmp_path)


def test_sha256_mismatch_raises_and_deletes_the_file(server, tmp_path):
    expected = "ab" * 32
    with pytest.raises(FetchError) as info:
        get(server, tmp_path, sha256=expected)
    msg = str(info.value)
    assert "SHA-256 mismatch" in msg and expected in msg and hashlib.sha256(PAYLOAD).hexdigest() in msg
    assert_nothing_kept(tmp_path)


def test_multipart_etag_is_not_taken_for_an_md5(server, tmp_path):
    serve(server, PAYLOAD, etag="0123456789abcdef0123456789abcdef-3")  # S3 multipart upload
    out = io.StringIO()
    root = get(server, tmp_path, stream=out)
    assert_extracted(root, FILES)
    assert "verified: size only" in out.getvalue()


# ------------------------------------------------------------------------------------------- failures

def test_connection_refused_raises_fetch_error_with_url_and_advice(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/udacity-aind/dog-project/dogImages.zip"
    with pytest.raises(FetchError) as info:
        fetch_dataset(tmp_path, url=url, timeout=5, stream=io.StringIO())
    msg = str(info.value)
    assert url in msg and "refused" in msg
    assert "--zip PATH" in msg and "dogbreeds.synthetic" in msg


@pytest.mark.parametrize("status", [404, 403])
def test_http_error_raises_fetch_error(server, tmp_path, status):
    server.status = status
    with pytest.raises(FetchError) as info:
        get(server, tmp_path)
    msg = str(info.value)
    assert server.url in msg and f"HTTP {status}" in msg and "--zip PATH" in msg
    assert not (tmp_path / "dogImages.zip.part").exists()


def test_dns_failure_says_there_is_no_network(tmp_path, monkeypatch):
    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    with pytest.raises(FetchError) as info:
        fetch_dataset(tmp_path, url="http://no-such-host.invalid/dogImages.zip", stream=io.StringIO())
    msg = str(info.value)
    assert "no-such-host.invalid" in msg and "no network access" in msg and "--zip PATH" in msg


# ---------------------------------------------------------------------------------------- extraction

def test_local_zip_without_top_folder_is_extracted_under_its_name(tmp_path):
    files = image_files(seed=2, top="")
    zip_file = tmp_path / "mydogs.zip"
    zip_file.write_bytes(make_zip(files, dirs=()))
    dest = tmp_path / "data"
    root = fetch_dataset(dest, zip_path=zip_file, stream=io.StringIO())
    assert root == dest / "mydogs"
    assert_extracted(root, files, top="")
    assert zip_file.exists()


@pytest.mark.parametrize("evil", ["../evil.txt", "/tmp/evil_abs.txt", "dogImages/train/../../../evil.txt",
                                  "symlink"])
def test_zip_slip_entries_are_refused(tmp_path, evil):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in FILES.items():
            zf.writestr(name, data)
        if evil == "symlink":
            info = zipfile.ZipInfo("dogImages/train/001.Affenpinscher/link")
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "../../../../outside")
        else:
            zf.writestr(evil, b"pwned")
    zip_file = tmp_path / "dogImages.zip"
    zip_file.write_bytes(buf.getvalue())
    dest = tmp_path / "a" / "b"
    with pytest.raises(FetchError) as info:
        fetch_dataset(dest, zip_path=zip_file, stream=io.StringIO())
    msg = str(info.value)
    assert "zip-slip" in msg and "Nothing was extracted" in msg
    assert ("link" if evil == "symlink" else evil) in msg
    assert not (dest / "dogImages").exists()  # checked before anything is written
    assert not any(p.name in ("evil.txt", "evil_abs.txt", "outside") for p in tmp_path.rglob("*"))
    assert not Path("/tmp/evil_abs.txt").exists()


# ------------------------------------------------------------------------------------------- progress

def test_progress_on_a_non_tty_stream_prints_every_10_percent(server, tmp_path, monkeypatch):
    monkeypatch.setattr(fetch, "CHUNK_SIZE", 512)  # ~50 reads for this payload
    out = io.StringIO()
    get(server, tmp_path, stream=out)
    lines = [line for line in out.getvalue().splitlines() if "%" in line]
    assert [int(re.search(r"(\d+)%", line)[1]) for line in lines] == list(range(10, 101, 10))
    total_mb = f"{len(PAYLOAD) / 1e6:.1f}"
    assert all(line.startswith("dogImages.zip") and f"/{total_mb} MB" in line and "MB/s" in line
               and "ETA" in line for line in lines)
    assert "\r" not in out.getvalue()


def test_progress_on_a_tty_redraws_one_line_and_can_be_turned_off(server, tmp_path, monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(fetch, "CHUNK_SIZE", 512)
    out = Tty()
    get(server, tmp_path / "a", stream=out)
    text = out.getvalue()
    assert text.count("\r") >= 2 and "100%" in text.split("\r")[-1].splitlines()[0]
    assert text.count("\r") < 20  # ~50 reads, but redrawn at most 5 times a second

    quiet = Tty()
    get(server, tmp_path / "b", stream=quiet, progress=False)
    assert "\r" not in quiet.getvalue() and "%" not in quiet.getvalue()


# ------------------------------------------------------------------------------------------------- CLI

def test_cli_prints_where_the_dataset_is_and_its_counts(server, tmp_path, capsys):
    assert fetch.main(["--dest", str(tmp_path), "--url", server.url, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"dataset: {tmp_path / 'dogImages'}" in out
    assert re.search(r"train\s+3 classes\s+9 images", out)
    assert re.search(r"valid\s+3 classes\s+4 images", out)
    assert re.search(r"test\s+2 classes\s+3 images", out)


def test_cli_failure_exits_1_with_the_message_and_no_traceback(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/dogImages.zip"
    proc = subprocess.run([sys.executable, "-m", "dogbreeds.fetch", "--dest", str(tmp_path), "--url", url],
                          cwd=ROOT, capture_output=True, text=True, timeout=30,
                          env={"PATH": "/usr/bin:/bin", "NO_PROXY": "127.0.0.1"})
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: could not download " + url)
    assert "--zip PATH" in proc.stderr and "Traceback" not in proc.stderr
