"""What a user does with a local stack, as a library: the ``dogbreeds`` command and the demo call it.

A stack keeps everything in its data directory (``Home``): the filesystem bucket, the SageMaker job
records and logs, the event spool, and ``stack.json`` while a stack serves it. So

- ``publish_dataset`` works whether or not a stack runs (the stack picks the marker's event up when
  it starts), and ``follow_run`` follows what the control plane then does;
- ``status_lines``, ``training_log``/``log_chunks`` and ``extract_report`` read the directory;
- ``predict_file`` and ``run_batch`` go through the running stack's API, as a user's HTTP client would.

Problems the user can fix raise ``UserError``, whose message says what to do.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import os
import re
import tarfile
import time
import urllib.error
import urllib.request
from functools import partial
from pathlib import Path
from typing import Iterator, Optional, Tuple

from chalicelib.config import BucketLayout
from chalicelib.names import normalise_marker
from chalicelib.sagemaker_requests import job_artifact_uri, s3_uri, split_s3_uri
from chalicelib.state import TERMINAL
from dogbreeds import progress
from dogbreeds.stack import BUCKET, READY_SUFFIX, ROOT, NotifyingS3

DEFAULT_HOME = ROOT / "runs" / "local"
STACK_FILE = "stack.json"


class UserError(Exception):
    """A problem the user can fix (no stack running, a folder that is not a dataset, a refused request):
    the message says what is wrong and what to do."""


def default_home() -> Path:
    """``$DOGBREEDS_HOME``, else ``runs/local`` in this checkout."""
    return Path(os.environ.get("DOGBREEDS_HOME") or DEFAULT_HOME)


# --- the stack as other processes see it ---------------------------------------------------------

class Home:
    """A stack's data directory: its bucket (a folder), its event spool, and the running stack's API."""

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir).resolve()
        info = self.running()
        self.bucket = (info or {}).get("bucket") or BUCKET
        self._s3 = None

    def running(self) -> Optional[dict]:
        """``stack.json`` of the stack serving this directory, if its process is alive."""
        try:
            info = json.loads((self.data_dir / STACK_FILE).read_text())
            os.kill(int(info["pid"]), 0)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return info

    @property
    def s3(self):
        """The filesystem bucket; a ``/_READY`` written through it queues its S3 event in the spool."""
        if self._s3 is None:
            from dogbreeds.localaws.eventbus import emit_to
            from dogbreeds.localaws.s3 import LocalS3
            raw = LocalS3(self.data_dir / "s3")
            raw.create_bucket(Bucket=self.bucket)
            self._s3 = NotifyingS3(raw, partial(emit_to, self.data_dir / "events"))
        return self._s3

    def path_of(self, key: str) -> Path:
        """The file that holds ``key`` of this stack's bucket."""
        return self.data_dir / "s3" / self.bucket / key

    def path_of_uri(self, uri: str) -> Path:
        """The file that holds the object an ``s3://bucket/key`` URI names."""
        bucket, key = split_s3_uri(uri)
        return self.data_dir / "s3" / bucket / key

    def api_url(self) -> str:
        """The running stack's API; a UserError saying how to start one when none runs."""
        info = self.running()
        if not info or not info.get("api_url"):
            raise UserError(f"no local stack is running for {self.data_dir}: start one with `dogbreeds up"
                            f"{'' if self.data_dir == default_home().resolve() else f' --data-dir {self.data_dir}'}`"
                            f" in another terminal")
        return info["api_url"]

    def api(self, method: str, path: str, body: Optional[bytes] = None, content_type: Optional[str] = None,
            timeout: float = 60):
        """(status, decoded JSON) from the stack's API; connection problems are UserErrors."""
        headers = {"Content-Type": content_type} if content_type else {}
        request = urllib.request.Request(self.api_url() + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            raw = error.read()
            try:
                return error.code, json.loads(raw)
            except ValueError:
                return error.code, {"Message": raw.decode("utf-8", "replace")[:500]}
        except (urllib.error.URLError, OSError) as exc:
            raise UserError(f"the stack's API at {self.api_url()} did not answer: {exc}") from exc

    def state(self) -> dict:
        """The control plane's state record ({} before the first event)."""
        return progress.read_state(self.data_dir, self.bucket) or {}

    def records(self, kind: str) -> list:
        """The local SageMaker's records of ``kind`` (tuning, training, transform, endpoint), oldest first."""
        return progress.read_records(self.data_dir, kind)

    def job_record(self, name: str) -> Optional[dict]:
        """The record of the training, transform or tuning job called ``name``, if there is one."""
        from dogbreeds.localaws.records import Records
        records = Records(self.data_dir / "sagemaker")
        return next((record for kind in ("training", "transform", "tuning")
                     if (record := records.get(kind, name)) is not None), None)


def _api_failure(status: int, body) -> UserError:
    body = body if isinstance(body, dict) else {}
    return UserError(f"HTTP {status} {body.get('Code', '')}: {body.get('Message') or body}")


# --- publish --------------------------------------------------------------------------------------

DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def folder_files(folder: Path) -> list:
    """Regular files under ``folder``, relative, skipping hidden files and folders (.DS_Store, .git)."""
    found = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        found.append(relative)
    return found


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sync_folder(home: Home, folder: Path, files: list, prefix: str, label: str, keep=("_READY",),
                say=print) -> dict:
    """Make ``prefix`` in the bucket hold exactly ``files`` (``folder_files(folder)``): upload new and
    changed files (compared by MD5 with the ETag), delete objects the folder no longer has. Returns the
    counts: files, copied, unchanged, removed."""
    existing = {}
    for page in home.s3.get_paginator("list_objects_v2").paginate(Bucket=home.bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            existing[item["Key"]] = item["ETag"].strip('"')
    counter = progress.Counter(label, len(files), say=say)
    copied = unchanged = 0
    for relative in files:
        key = prefix + relative.as_posix()
        path = folder / relative
        if existing.get(key) == _md5(path):
            unchanged += 1
        else:
            content_type = mimetypes.guess_type(path.name)[0] or "binary/octet-stream"
            home.s3.upload_file(str(path), home.bucket, key, ExtraArgs={"ContentType": content_type})
            copied += 1
        counter.add()
    counter.close()
    wanted = {prefix + r.as_posix() for r in files} | {prefix + k for k in keep}
    removed = [key for key in existing if key not in wanted]
    for key in removed:
        home.s3.delete_object(Bucket=home.bucket, Key=key)
    return {"files": len(files), "copied": copied, "unchanged": unchanged, "removed": len(removed)}


def publish_dataset(home: Home, folder: Path, name: Optional[str] = None, say=print) -> str:
    """Check ``folder`` as the control plane will, mirror it into ``datasets/<name>/``, then write the
    ``_READY`` marker (its S3 event goes to the stack's spool). Returns the run's key,
    ``<name>/<marker>``."""
    from chalicelib.pipeline import check_dataset_layout

    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder: give the dataset's root, the one holding train/ (and "
                        f"valid/, test/), each with a folder per breed")
    name = name or folder.resolve().name
    if not DATASET_NAME.fullmatch(name):
        raise UserError(f"dataset name {name!r}: use letters, digits, '.', '_' and '-' (give --name)")
    files = folder_files(folder)
    report = check_dataset_layout([(p.as_posix(), (folder / p).stat().st_size) for p in files], name)
    if not report.ok:
        raise UserError(f"{folder} is not a dataset the pipeline can train on:\n  - "
                        + "\n  - ".join(report.problems))
    prefix = f"{BucketLayout().datasets}{name}/"
    summary = ", ".join(f"{split} {sum(c.values())}" for split, c in report.counts.items())
    say(f"publishing {folder} as dataset {name!r}: {len(report.counts['train'])} classes; images: {summary}")
    counts = sync_folder(home, folder, files, prefix, label="  copying into the bucket", say=say)
    say(f"  {counts['copied']} copied, {counts['unchanged']} unchanged, {counts['removed']} removed "
        f"(no longer in the folder) under {home.path_of(prefix)}")
    marker = {"published_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "from": str(folder.resolve()),
              "files": counts["files"]}
    marker_key = prefix + READY_SUFFIX.lstrip("/")
    written = home.s3.put_object(Bucket=home.bucket, Key=marker_key, Body=json.dumps(marker).encode(),
                                 ContentType="application/json")
    say(f"  marker   {s3_uri(home.bucket, marker_key)} (ETag {written['ETag'].strip(chr(34))[:12]})")
    return f"{name}/{normalise_marker(written['ETag'])}"


# --- following a run ------------------------------------------------------------------------------

def follow_run(home: Home, run_key: str, timeout: float, say=print) -> int:
    """Say what changes until the run of ``run_key`` (``<dataset>/<marker>``) is deployed, refused or
    failed; 0 when deployed, 1 otherwise. A UserError after ``timeout`` seconds."""
    watcher = progress.Watcher(home.data_dir, home.bucket)
    watcher.changes()                 # earlier runs are history, not progress
    deadline = time.time() + timeout
    while time.time() < deadline:
        for line in watcher.changes():
            say(progress.stamp(line))
        outcome = run_outcome(home.state(), run_key)
        if outcome is not None:
            say(outcome[1])
            return 0 if outcome[0] else 1
        time.sleep(1)
    raise UserError(f"gave up following after {timeout:.0f}s; `dogbreeds status` shows where it is")


def current_run(state: dict) -> Optional[dict]:
    """The run of the dataset published last, from the control plane's state; None before any."""
    current = state.get("current_dataset")
    if not current:
        return None
    return state.get("runs", {}).get(f"{current['name']}/{current['marker']}")


def run_outcome(state: dict, run_key: str) -> Optional[tuple]:
    """(succeeded, sentence) once the run of ``run_key`` is over, else None."""
    run = state.get("runs", {}).get(run_key)
    if run is None:
        return None
    if run.get("layout_problems"):
        return False, "the dataset was refused: " + "; ".join(run["layout_problems"])
    for stage in ("tuning", "training"):
        if run.get(f"{stage}_status") in ("Failed", "Stopped"):
            return False, f"{stage} {run[f'{stage}_status'].lower()}: {run.get(f'{stage}_failure') or ''}"
    gate = run.get("gate")
    if gate and not gate.get("deploy"):
        return False, f"the gate refused the model: {gate.get('reason')}"
    endpoint = state.get("endpoint") or {}
    deployed = state.get("deployed") or {}
    if gate and deployed.get("training_job") == run["training_job"]:
        if endpoint.get("status") == "InService":
            return True, f"deployed: endpoint {endpoint['name']} serves {deployed['model_name']}"
        if endpoint.get("status") == "Failed":
            return False, f"the endpoint failed: {endpoint.get('failure_reason')}"
    return None


# --- status and logs ------------------------------------------------------------------------------

def status_lines(home: Home) -> list:
    """``dogbreeds status``: the stack, the current run and its gate, the endpoint, batches, and a table
    of every tuning, training and transform job."""
    info = home.running()
    lines = [f"stack     {'running, API ' + info['api_url'] if info else 'not running'} ({home.data_dir})"]
    facts = progress.Watcher(home.data_dir, home.bucket).facts()
    lines += [line for key, line in facts.items() if key == "dataset"]
    run = current_run(home.state())
    if run:
        accuracy = run.get("metrics", {}).get("test:accuracy")
        lines.append(f"run       tuning {run.get('tuning_status') or '-'}, training {run.get('training_status') or '-'}"
                     + (f", test accuracy {accuracy:.4f}" if accuracy is not None else ""))
    this_run = f"run:{run['dataset']}/{run['marker']}:" if run else None
    lines += [line for key, line in facts.items() if (this_run and key.startswith(this_run))
              or key.split(":")[0] in ("endpoint", "batch")]
    table = progress.job_table([job for kind in ("tuning", "training", "transform")
                                for job in progress.jobs(home.data_dir, kind)])
    return lines + ([""] + table if table else [])


def status_document(home: Home) -> dict:
    """``dogbreeds status --json``: the running stack, the control plane's state, every job record."""
    return {"stack": home.running(), "state": home.state(),
            "jobs": {kind: home.records(kind) for kind in ("tuning", "training", "transform", "endpoint")}}


def newest_training_job(home: Home, trials: bool = True) -> Optional[str]:
    """The name of the training job started last (``trials=False``: not counting tuning trials)."""
    records = [r for r in home.records("training") if trials or not r.get("TuningJobArn")]
    return records[-1]["TrainingJobName"] if records else None


def training_log(home: Home, name: Optional[str] = None) -> Tuple[str, Path]:
    """(job name, its ``log.txt``) of training job ``name`` (default: the newest); a UserError naming
    recent jobs when there is no such log."""
    name = name or newest_training_job(home)
    if name is None:
        raise UserError(f"no training job has run in {home.data_dir} yet")
    log = home.data_dir / "jobs" / name / "log.txt"
    if not log.exists():
        known = ", ".join(r["TrainingJobName"] for r in home.records("training")[-5:]) or "none"
        raise UserError(f"no log for job {name!r} in {home.data_dir / 'jobs'}; recent training jobs: {known}")
    return name, log


def log_chunks(home: Home, name: str, log: Path, follow: bool = False, poll: float = 0.5) -> Iterator[str]:
    """The text of job ``name``'s ``log``: all of it, then (``follow``) what is appended, until the job
    has ended and the log has no more."""
    with open(log, "r", errors="replace") as handle:
        while True:
            chunk = handle.read()
            if chunk:
                yield chunk
            if not follow:
                return
            if job_status(home, name) in TERMINAL and not chunk:
                return
            time.sleep(poll)


def job_status(home: Home, name: str) -> Optional[str]:
    """The status of training job ``name``; None when there is no such training job."""
    return (home.job_record(name) or {}).get("TrainingJobStatus")


# --- predict and batch ----------------------------------------------------------------------------

def _content_type(path: Path) -> str:
    return mimetypes.guess_type(path.name)[0] or "application/x-image"


def predict_file(home: Home, path: Path, top_k: Optional[int] = None) -> list:
    """The endpoint's ranked predictions for one image file, through ``POST /predict``: the top
    ``top_k``, or as many as the handler gives by default when None."""
    query = "" if top_k is None else f"?top_k={top_k}"
    status, body = home.api("POST", f"/predict{query}", Path(path).read_bytes(), _content_type(path))
    if status != 200:
        raise _api_failure(status, body)
    return body["predictions"]


BATCH_ID = re.compile(r"[^A-Za-z0-9._-]+")


def run_batch(home: Home, folder: Path, batch_id: Optional[str] = None, wait: bool = True,
              timeout: float = 3600, say=print) -> Optional[Path]:
    """Copy ``folder``'s images to ``batch/<id>/input/``, ``POST /batch``, and (``wait``) follow the
    transform to its end; returns the local path of ``predictions.csv`` (None without ``wait``)."""
    from chalicelib.pipeline import IMAGE_EXTENSIONS

    home.api_url()                                    # fail before copying anything when no stack runs
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder of images")
    images = [p for p in folder_files(folder) if p.name.lower().endswith(IMAGE_EXTENSIONS)]
    if not images:
        raise UserError(f"{folder} has no images ({', '.join(IMAGE_EXTENSIONS)})")
    batch_id = batch_id or (BATCH_ID.sub("-", folder.resolve().name)[:60].strip("-.") or "batch") + time.strftime(
        "-%Y%m%d-%H%M%S")                           # the control plane takes ids of up to 100 characters
    prefix = f"{BucketLayout().batches}{batch_id}/"
    say(f"batch {batch_id}: {len(images)} images from {folder}")
    counter = progress.Counter("  copying into the bucket", len(images), say=say)
    for relative in images:
        home.s3.upload_file(str(folder / relative), home.bucket, f"{prefix}input/{relative.as_posix()}",
                            ExtraArgs={"ContentType": _content_type(relative)})
        counter.add()
    counter.close()
    status, body = home.api("POST", "/batch", json.dumps({"batch_id": batch_id}).encode(), "application/json")
    if status != 202:
        raise _api_failure(status, body)
    if not wait:
        say(f"started; `dogbreeds status` or GET /batch/{batch_id} shows it")
        return None
    outputs = home.path_of(f"{prefix}output")
    counter = progress.Counter("  classified", len(images), say=say)
    deadline = time.time() + timeout
    while time.time() < deadline:
        status, view = home.api("GET", f"/batch/{batch_id}")
        done = sum(1 for _ in outputs.rglob("*.out")) if outputs.exists() else 0
        if done > counter.done:
            counter.add(done - counter.done)
        if status == 200 and view["status"] in TERMINAL:
            break
        time.sleep(0.5)
    else:
        raise UserError(f"batch {batch_id} still {view.get('status')} after {timeout:.0f}s; "
                        f"`dogbreeds status` follows it")
    counter.close()
    csv_path = home.path_of_uri(view["predictions_uri"]) if view.get("predictions_uri") else None
    if view["status"] != "Completed":
        kept = f"\nwhat it classified, and a row for each image it did not: {csv_path}" if csv_path else ""
        raise UserError(f"batch {batch_id} {view['status']}: {view.get('failure_reason')}{kept}")
    say(f"predictions: {csv_path}")
    say(f"             ({view['predictions_uri']})")
    return csv_path


# --- report ---------------------------------------------------------------------------------------

def extract_report(home: Home, name: Optional[str] = None) -> Path:
    """Unpack ``report.html`` and ``diagnostics.json`` of a completed training job (default: the current
    run's instrumented job) from its ``output.tar.gz`` into ``<data_dir>/reports/<job>/``; returns the
    report's path."""
    if name is None:
        run = current_run(home.state())
        name = run["training_job"] if run and run.get("training_status") == "Completed" else None
        name = name or next((r["TrainingJobName"] for r in reversed(home.records("training"))
                             if r["TrainingJobStatus"] == "Completed" and not r.get("TuningJobArn")), None)
    if name is None:
        raise UserError("no instrumented training run has completed yet: publish a dataset and wait for training")
    record = home.job_record(name)
    if record is None or record.get("TrainingJobStatus") != "Completed":
        raise UserError(f"training job {name!r} is {(record or {}).get('TrainingJobStatus', 'unknown')}: "
                        f"its report is written when it completes")
    output = job_artifact_uri(record["OutputDataConfig"]["S3OutputPath"], name, "output.tar.gz")
    target = home.data_dir / "reports" / name
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(home.path_of_uri(output)) as tar:
        members = [m for m in tar.getmembers() if m.name in ("report.html", "diagnostics.json")]
        if not any(m.name == "report.html" for m in members):
            raise UserError(f"{output} holds no report.html")
        tar.extractall(target, members=members, filter="data")
    return target / "report.html"


def rules_with_issues(report: Path) -> Optional[list]:
    """The diagnostics rules that found issues, from the ``diagnostics.json`` beside an extracted
    ``report``; None when there is none."""
    diagnostics = report.parent / "diagnostics.json"
    if not diagnostics.exists():
        return None
    return json.loads(diagnostics.read_text()).get("issues_found") or []
