"""What a user does with the pipeline, as a library: the ``dogbreeds`` command and the demo call it.

The verbs take a ``Stack``: where the pipeline runs. ``Home`` is a local stack's data directory; the
same verbs run against a deployment on AWS through ``dogbreeds.cloud.Cloud``, which has the same
methods over SigV4-signed API calls and S3, so what they print is the same; only the transport differs.

A local stack keeps everything in its data directory (``Home``): the filesystem bucket, the SageMaker
job records and logs, the event spool, and ``stack.json`` while a stack serves it. So

- ``publish_dataset`` works whether or not a stack runs (the stack picks the marker's event up when
  it starts), and ``follow_run`` follows what the control plane then does;
- ``status_lines``, ``training_log``/``log_chunks`` and ``extract_report`` read the directory;
- ``predict_file`` and ``run_batch`` go through the running stack's API, as a user's HTTP client would.

Problems the user can fix raise ``UserError``, whose message says what to do.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import mimetypes
import os
import re
import tarfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Iterator, List, Optional, Protocol, Sequence, Tuple, Union

from PIL import Image, ImageOps

from chalicelib.config import BucketLayout
from chalicelib.names import normalise_marker
from chalicelib.sagemaker_requests import job_artifact_uri, s3_uri, split_s3_uri
from chalicelib.state import TERMINAL
from dogbreeds import progress
from dogbreeds.stack import BUCKET, READY_SUFFIX, ROOT, NotifyingS3, local_config

DEFAULT_HOME = ROOT / "runs" / "local"
STACK_FILE = "stack.json"


class UserError(Exception):
    """A problem the user can fix (no stack running, a folder that is not a dataset, a refused request):
    the message says what is wrong and what to do."""


def default_home() -> Path:
    """``$DOGBREEDS_HOME``, else ``runs/local`` in this checkout."""
    return Path(os.environ.get("DOGBREEDS_HOME") or DEFAULT_HOME)


@dataclass(frozen=True)
class Upload:
    """One file to copy into the bucket: the local ``path``, its ``key`` and its ``content_type``."""
    path: Path
    key: str
    content_type: str


class Stack(Protocol):
    """Where the pipeline runs, as the verbs use it: ``Home`` (a local stack) or ``dogbreeds.cloud.Cloud``
    (a deployment on AWS). Each method is the transport of one step; what the verbs print is theirs."""
    bucket: str
    poll_interval: float      # seconds between two looks at a batch or a run that is not over
    jobs_dir: Optional[Path]  # the jobs' working folders with their log.txt; None when not on this machine

    @property
    def s3(self): ...         # boto3's S3 client, or the local bucket with its shapes

    def describe(self) -> str: ...            # the first line of ``dogbreeds status``

    def api(self, method: str, path: str, body: Optional[bytes] = None, content_type: Optional[str] = None,
            timeout: float = 60) -> Tuple[int, object]: ...

    def require_api(self) -> None: ...        # a UserError saying what to do when the API cannot be called

    def status_view(self) -> dict: ...        # GET /status's document ({} before any event)

    def records(self, kind: str) -> List[dict]: ...   # SageMaker's Describe* records of kind, oldest first

    def status_notes(self) -> List[str]: ...  # what ``status`` could not show, and why

    def status_document(self) -> dict: ...    # ``status --json``

    def location(self, key: str) -> str: ...  # where a person finds ``key`` of the bucket

    def located(self, uri: str) -> Union[Path, str]: ...   # the same for an ``s3://`` URI

    def upload(self, uploads: Sequence[Upload], label: str, say=print) -> None: ...

    def count_outputs(self, prefix: str) -> int: ...   # transform outputs (``.out``) under ``prefix``

    def watcher(self): ...                    # ``changes()``: the progress lines new since the last call

    def fetch_report(self, name: Optional[str] = None) -> Path: ...   # report.html of a completed run


# --- the stack as other processes see it ---------------------------------------------------------

class Home:
    """A stack's data directory: its bucket (a folder), its event spool, and the running stack's API. A
    ``Stack``."""
    poll_interval = 0.5

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
        status, answer, _ = http_exchange(request, timeout, f"the stack's API at {self.api_url()}")
        return status, answer

    def require_api(self) -> None:
        self.api_url()

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    def describe(self) -> str:
        info = self.running()
        return f"stack     {'running, API ' + info['api_url'] if info else 'not running'} ({self.data_dir})"

    def status_view(self) -> dict:
        """GET /status's document for this directory's state, made by the control plane's own code (so no
        stack needs to run); {} before the first event."""
        if not self.state():
            return {}
        from chalicelib.control import ControlPlane
        from dogbreeds.localaws.s3 import LocalS3
        return ControlPlane(local_config(bucket=self.bucket), LocalS3(self.data_dir / "s3"), None, None).status()

    def status_notes(self) -> List[str]:
        return []

    def status_document(self) -> dict:
        """``dogbreeds status --json``: the running stack, the control plane's state, every job record."""
        return {"stack": self.running(), "state": self.state(),
                "jobs": {kind: self.records(kind) for kind in ("tuning", "training", "transform", "endpoint")}}

    def location(self, key: str) -> str:
        return str(self.path_of(key))

    def located(self, uri: str) -> Path:
        return self.path_of_uri(uri)

    def upload(self, uploads: Sequence[Upload], label: str, say=print) -> None:
        """Copy ``uploads`` into the filesystem bucket one after the other, counting on one line."""
        counter = progress.Counter(label, len(uploads), say=say)
        for upload in uploads:
            self.s3.upload_file(str(upload.path), self.bucket, upload.key,
                                ExtraArgs={"ContentType": upload.content_type})
            counter.add()
        counter.close()

    def count_outputs(self, prefix: str) -> int:
        outputs = self.path_of(prefix)
        return sum(1 for _ in outputs.rglob("*.out")) if outputs.exists() else 0

    def watcher(self) -> progress.Watcher:
        return progress.Watcher(self.data_dir, self.bucket)

    def fetch_report(self, name: Optional[str] = None) -> Path:
        return extract_report(self, name)

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


def http_exchange(request: urllib.request.Request, timeout: float, what: str):
    """Send ``request``; (status, decoded JSON body, response headers), error statuses included (a body
    that is not JSON becomes ``{"Message": <its text>}``). A connection problem is a UserError naming
    ``what`` did not answer."""
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null"), response.headers
    except urllib.error.HTTPError as error:
        raw = error.read()
        try:
            return error.code, json.loads(raw), error.headers
        except ValueError:
            return error.code, {"Message": raw.decode("utf-8", "replace")[:500]}, error.headers
    except (urllib.error.URLError, OSError) as exc:
        raise UserError(f"{what} did not answer: {exc}") from exc


class AccessRefused(UserError):
    """The API refused the caller itself (API Gateway's 403: no or bad credentials, the wrong region, no
    permission): every other request would be refused too."""


def api_failure(status: int, body) -> UserError:
    """The API's JSON error ``{"Code", "Message"}`` (or whatever it answered) as a UserError."""
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


def _content_type(path: Path, default: str = "binary/octet-stream") -> str:
    return mimetypes.guess_type(path.name)[0] or default


def sync_folder(stack: Stack, folder: Path, files: list, prefix: str, label: str, keep=("_READY",),
                say=print) -> dict:
    """Make ``prefix`` in the stack's bucket hold exactly ``files`` (``folder_files(folder)``): upload new
    and changed files (compared by MD5 with the ETag), then delete objects the folder no longer has.
    Returns the counts: files, copied, unchanged, removed."""
    existing = {}
    for page in stack.s3.get_paginator("list_objects_v2").paginate(Bucket=stack.bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            existing[item["Key"]] = item["ETag"].strip('"')
    uploads = [Upload(folder / relative, prefix + relative.as_posix(), _content_type(relative))
               for relative in files if existing.get(prefix + relative.as_posix()) != _md5(folder / relative)]
    stack.upload(uploads, label, say=say)
    wanted = {prefix + r.as_posix() for r in files} | {prefix + k for k in keep}
    removed = [key for key in existing if key not in wanted]
    for key in removed:
        stack.s3.delete_object(Bucket=stack.bucket, Key=key)
    return {"files": len(files), "copied": len(uploads), "unchanged": len(files) - len(uploads),
            "removed": len(removed)}


def publish_dataset(stack: Stack, folder: Path, name: Optional[str] = None, say=print) -> str:
    """Check ``folder`` as the control plane will, mirror it into ``datasets/<name>/`` of the stack's
    bucket, then write the ``_READY`` marker, last and only once every file is there (locally its S3
    event goes to the stack's spool; on AWS, S3 sends it to EventBridge). Returns the run's key,
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
    counts = sync_folder(stack, folder, files, prefix, label="  copying into the bucket", say=say)
    say(f"  {counts['copied']} copied, {counts['unchanged']} unchanged, {counts['removed']} removed "
        f"(no longer in the folder) under {stack.location(prefix)}")
    marker = {"published_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "from": str(folder.resolve()),
              "files": counts["files"]}
    marker_key = prefix + READY_SUFFIX.lstrip("/")
    written = stack.s3.put_object(Bucket=stack.bucket, Key=marker_key, Body=json.dumps(marker).encode(),
                                  ContentType="application/json")
    say(f"  marker   {s3_uri(stack.bucket, marker_key)} (ETag {written['ETag'].strip(chr(34))[:12]})")
    return f"{name}/{normalise_marker(written['ETag'])}"


# --- following a run ------------------------------------------------------------------------------

def follow_run(stack: Stack, run_key: str, timeout: float, say=print) -> int:
    """Say what changes until the run of ``run_key`` (``<dataset>/<marker>``) is deployed, refused or
    failed; 0 when deployed, 1 otherwise. A UserError after ``timeout`` seconds."""
    watcher = stack.watcher()
    watcher.changes()                 # earlier runs are history, not progress
    deadline = time.time() + timeout
    while time.time() < deadline:
        for line in watcher.changes():
            say(progress.stamp(line))
        outcome = run_outcome(state_of_view(stack.status_view()), run_key)
        if outcome is not None:
            say(outcome[1])
            return 0 if outcome[0] else 1
        time.sleep(max(1.0, stack.poll_interval))
    raise UserError(f"gave up following after {timeout:.0f}s; `dogbreeds status` shows where it is")


def state_of_view(view: dict) -> dict:
    """The part of the control plane's state that GET /status's document holds, shaped as the state:
    the current and the latest run (keyed ``<dataset>/<marker>``), the deployed model and the endpoint."""
    runs = [run for run in (view.get("latest_run"), view.get("run")) if run]
    return {"current_dataset": view.get("dataset"), "deployed": view.get("deployed"), "endpoint": view.get("endpoint"),
            "runs": {f"{run['dataset']}/{run['marker']}": run for run in runs}}


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

def status_lines(stack: Stack) -> list:
    """``dogbreeds status``: the stack, then from GET /status's document the current run and its gate or
    refusal, the endpoint (its SageMaker record when there is one) and the last batch, then a table of
    the tuning, training and transform jobs."""
    view = stack.status_view()
    endpoints = [progress.describe("endpoint", record, None).feed_line() for record in stack.records("endpoint")]
    table = progress.job_table([progress.describe(kind, record, stack.jobs_dir)
                                for kind in ("tuning", "training", "transform") for record in stack.records(kind)])
    return ([stack.describe()] + pipeline_lines(view, stack.located, endpoints) + stack.status_notes()
            + ([""] + table if table else []))


def pipeline_lines(view: dict, located=str, endpoints: Sequence[str] = ()) -> list:
    """The lines about the pipeline from GET /status's document ``view``: the published dataset, the
    current run (tuning, training, test accuracy) and its refusal or gate decision, the endpoint
    (``endpoints``: lines from its SageMaker records; without them, from the view) and the last batch,
    whose predictions are shown where ``located(uri)`` says."""
    lines = [progress.dataset_line(view["dataset"])] if view.get("dataset") else []
    run = view.get("run")
    if run:
        accuracy = (run.get("metrics") or {}).get("test:accuracy")
        lines.append(f"run       tuning {run.get('tuning_status') or '-'}, training {run.get('training_status') or '-'}"
                     + (f", test accuracy {accuracy:.4f}" if accuracy is not None else ""))
        if run.get("layout_problems"):
            lines.append(progress.refusal_line(run))
        if run.get("gate"):
            lines.append(progress.gate_line(run))
    endpoint = view.get("endpoint")
    if endpoints:
        lines += endpoints
    elif endpoint:
        lines.append(progress.describe("endpoint", {"EndpointName": endpoint["name"], "EndpointStatus": endpoint["status"],
                                                    "FailureReason": endpoint.get("failure_reason")},
                                       None).feed_line())
    batch = view.get("last_batch")
    ended = batch and progress.batch_line(batch, batch["predictions_uri"] and located(batch["predictions_uri"]))
    return lines + ([ended] if ended else [])


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

IMAGE_BYTES = "application/x-image"     # what an image file whose extension says nothing is sent as


def predict_file(stack: Stack, path: Path, top_k: Optional[int] = None, explain_to: Optional[Path] = None) -> list:
    """The endpoint's ranked predictions for one image file, through ``POST /predict``: the top
    ``top_k``, or as many as the handler gives by default when None. With ``explain_to``, asks for the
    Grad-CAM heatmap too (``?explain=true``) and writes the photo with the heatmap over it there (PNG)."""
    params = ([] if top_k is None else [f"top_k={top_k}"]) + ([] if explain_to is None else ["explain=true"])
    query = "?" + "&".join(params) if params else ""
    photo = Path(path).read_bytes()
    status, body = stack.api("POST", f"/predict{query}", photo, _content_type(path, IMAGE_BYTES))
    if status != 200:
        raise api_failure(status, body)
    if explain_to is not None:
        overlay(photo, body["explanation"]).save(explain_to, "PNG")
    return body["predictions"]


def overlay(photo: bytes, explanation: dict):
    """The photo (upright, as the handlers saw it) with the explanation's RGBA heatmap stretched over it."""
    picture = ImageOps.exif_transpose(Image.open(io.BytesIO(photo))).convert("RGBA")
    heat = Image.open(io.BytesIO(base64.b64decode(explanation["heatmap"]))).convert("RGBA")
    return Image.alpha_composite(picture, heat.resize(picture.size, Image.Resampling.BILINEAR))


def serve_model(stack: Stack, model: str, reason: Optional[str] = None) -> dict:
    """``POST /models/<model>/serve``: the endpoint serves a model the gate deployed before again (a
    rollback); returns GET /status's document after the choice. Refusals (404 a model never deployed,
    409 the endpoint is changing) are UserErrors with the API's message."""
    from urllib.parse import quote
    body = json.dumps({"reason": reason} if reason else {}).encode("utf-8")
    status, answer = stack.api("POST", f"/models/{quote(model, safe='')}/serve", body, "application/json")
    if status != 202:
        raise api_failure(status, answer)
    return answer


def served_lines(view: dict) -> list:
    """What ``dogbreeds rollback`` prints from the status document the route answered."""
    deployed, endpoint = view.get("deployed") or {}, view.get("endpoint") or {}
    accuracy = deployed.get("test_acc")
    lines = [f"chosen    {deployed.get('model_name')} (dataset {deployed.get('dataset')}, test accuracy "
             f"{'-' if accuracy is None else f'{accuracy:.4f}'}) by {deployed.get('chosen_by')}: {deployed.get('reason')}"]
    if endpoint:
        lines.append(f"endpoint  {endpoint.get('name')} is {endpoint.get('status')}: it serves the model once it is "
                     f"InService (`dogbreeds status --watch` follows it)")
    return lines


BATCH_ID = re.compile(r"[^A-Za-z0-9._-]+")


def run_batch(stack: Stack, folder: Path, batch_id: Optional[str] = None, wait: bool = True,
              timeout: float = 3600, say=print) -> Union[Path, str, None]:
    """Copy ``folder``'s images to ``batch/<id>/input/``, ``POST /batch``, and (``wait``) follow the
    transform to its end; returns where ``predictions.csv`` is (``Stack.located``: a local path, or its
    S3 URI on AWS), None without ``wait``."""
    from chalicelib.pipeline import IMAGE_EXTENSIONS

    stack.require_api()                               # fail before copying anything when the API cannot be called
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
    stack.upload([Upload(folder / relative, f"{prefix}input/{relative.as_posix()}", _content_type(relative, IMAGE_BYTES))
                  for relative in images], "  copying into the bucket", say=say)
    status, body = stack.api("POST", "/batch", json.dumps({"batch_id": batch_id}).encode(), "application/json")
    if status != 202:
        raise api_failure(status, body)
    if not wait:
        say(f"started; `dogbreeds status` or GET /batch/{batch_id} shows it")
        return None
    counter = progress.Counter("  classified", len(images), say=say)
    deadline = time.time() + timeout
    while time.time() < deadline:
        status, view = stack.api("GET", f"/batch/{batch_id}")
        done = stack.count_outputs(f"{prefix}output/")
        if done > counter.done:
            counter.add(done - counter.done)
        if status == 200 and view["status"] in TERMINAL:
            break
        time.sleep(stack.poll_interval)
    else:
        raise UserError(f"batch {batch_id} still {view.get('status')} after {timeout:.0f}s; "
                        f"`dogbreeds status` follows it")
    counter.close()
    csv_path = stack.located(view["predictions_uri"]) if view.get("predictions_uri") else None
    if view["status"] != "Completed":
        kept = f"\nwhat it classified, and a row for each image it did not: {csv_path}" if csv_path else ""
        raise UserError(f"batch {batch_id} {view['status']}: {view.get('failure_reason')}{kept}")
    say(f"predictions: {csv_path}")
    if str(csv_path) != view["predictions_uri"]:
        say(f"             ({view['predictions_uri']})")
    return csv_path


# --- report ---------------------------------------------------------------------------------------

REPORT_MEMBERS = ("report.html", "diagnostics.json")
NO_REPORT_YET = "no instrumented training run has completed yet: publish a dataset and wait for training"


def reported_job(view: dict) -> Optional[str]:
    """The instrumented training job whose report ``dogbreeds report`` shows when none is named, from GET
    /status's document: the current run's once it completed, else the latest run's; None before."""
    for run in (view.get("run"), view.get("latest_run")):
        if run and run.get("training_status") == "Completed":
            return run["training_job"]
    return None


def extract_report(home: Home, name: Optional[str] = None) -> Path:
    """Unpack ``report.html`` and ``diagnostics.json`` of a completed training job (default: the current
    run's instrumented job) from its ``output.tar.gz`` into ``<data_dir>/reports/<job>/``; returns the
    report's path."""
    if name is None:
        name = reported_job(home.status_view())
        name = name or next((r["TrainingJobName"] for r in reversed(home.records("training"))
                             if r["TrainingJobStatus"] == "Completed" and not r.get("TuningJobArn")), None)
    if name is None:
        raise UserError(NO_REPORT_YET)
    record = home.job_record(name)
    if record is None or record.get("TrainingJobStatus") != "Completed":
        raise UserError(f"training job {name!r} is {(record or {}).get('TrainingJobStatus', 'unknown')}: "
                        f"its report is written when it completes")
    output = job_artifact_uri(record["OutputDataConfig"]["S3OutputPath"], name, "output.tar.gz")
    return unpack_report(home.path_of_uri(output), output, home.data_dir / "reports" / name)


def unpack_report(archive: Path, output_uri: str, target: Path) -> Path:
    """Extract ``report.html`` and ``diagnostics.json`` from a training job's ``output.tar.gz`` (``archive``,
    a copy of ``output_uri``) into ``target``; returns the report's path. A UserError when it holds none."""
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name in REPORT_MEMBERS]
        if not any(m.name == "report.html" for m in members):
            raise UserError(f"{output_uri} holds no report.html")
        tar.extractall(target, members=members, filter="data")
    return target / "report.html"


def rules_with_issues(report: Path) -> Optional[list]:
    """The diagnostics rules that found issues, from the ``diagnostics.json`` beside an extracted
    ``report``; None when there is none."""
    diagnostics = report.parent / "diagnostics.json"
    if not diagnostics.exists():
        return None
    return json.loads(diagnostics.read_text()).get("issues_found") or []
