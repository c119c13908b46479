"""``dogbreeds``: the pipeline on this machine, one command per thing a user does.

    dogbreeds up                      start the local stack (bucket, SageMaker, events, API) in the foreground
    dogbreeds publish FOLDER          copy an ImageFolder (train/valid/test/<breed>/...) into the bucket, then
                                      write its _READY marker: tuning, training, gate and deployment follow
    dogbreeds status [--watch]        the pipeline and its jobs
    dogbreeds logs [JOB] [--follow]   a job's log (default: the newest training job)
    dogbreeds predict IMAGE...        the top breeds through POST /predict
    dogbreeds batch FOLDER            classify a folder through batch transform; says where predictions.csv is
    dogbreeds report [JOB] [--open]   the training report (report.html) of the instrumented run
    dogbreeds fetch                   download the public Udacity dog-breed dataset (resume, checksum)
    dogbreeds demo                    the whole main job on generated images

Every command takes ``--data-dir`` (default ``$DOGBREEDS_HOME``, else ``runs/local`` in this checkout):
the stack's bucket, job records, logs and event spool live there, so ``publish``, ``status`` and
``logs`` work from any terminal, and ``publish`` also while no stack runs (the stack picks the
marker's event up when it starts). ``predict`` and ``batch`` need the running stack's API.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import logging
import mimetypes
import os
import re
import signal
import sys
import tarfile
import time
import urllib.error
import urllib.request
from functools import partial
from pathlib import Path
from typing import Optional

from chalicelib.names import normalise_marker
from dogbreeds import progress
from dogbreeds.stack import BUCKET, READY_SUFFIX, ROOT

DEFAULT_HOME = ROOT / "runs" / "local"
STACK_FILE = "stack.json"


class CliError(Exception):
    """A problem the user can fix; printed without a traceback, exit status 2."""


def default_home() -> Path:
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
            from dogbreeds.stack import NotifyingS3
            raw = LocalS3(self.data_dir / "s3")
            raw.create_bucket(Bucket=self.bucket)
            self._s3 = NotifyingS3(raw, partial(emit_to, self.data_dir / "events"))
        return self._s3

    def path_of(self, key: str) -> Path:
        return self.data_dir / "s3" / self.bucket / key

    def api_url(self) -> str:
        info = self.running()
        if not info or not info.get("api_url"):
            raise CliError(f"no local stack is running for {self.data_dir}: start one with `dogbreeds up"
                           f"{'' if self.data_dir == default_home().resolve() else f' --data-dir {self.data_dir}'}`"
                           f" in another terminal")
        return info["api_url"]

    def api(self, method: str, path: str, body: Optional[bytes] = None, content_type: Optional[str] = None,
            timeout: float = 60):
        """(status, decoded JSON) from the stack's API; connection problems are CliErrors."""
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
            raise CliError(f"the stack's API at {self.api_url()} did not answer: {exc}") from exc

    def state(self) -> dict:
        return progress.read_state(self.data_dir, self.bucket) or {}

    def records(self, kind: str) -> list:
        return progress.read_records(self.data_dir, kind)


def _api_failure(status: int, body) -> CliError:
    body = body if isinstance(body, dict) else {}
    return CliError(f"HTTP {status} {body.get('Code', '')}: {body.get('Message') or body}")


# --- up -------------------------------------------------------------------------------------------

def stack_config(profile: str = "quick", strategy: Optional[str] = None, trials: Optional[int] = None,
                 parallel: Optional[int] = None, trial_epochs: Optional[int] = None, epochs: Optional[int] = None,
                 accuracy_floor: Optional[float] = None, seed: Optional[int] = None):
    """The local control plane's configuration: a profile (``stack.local_config``) with ``up``'s
    overrides. Invalid values fail here with the control plane's own ConfigError message."""
    from dataclasses import replace

    from chalicelib.config import ConfigError, QualityGate
    from dogbreeds.stack import local_config

    try:
        config = local_config(profile=profile)
        tuning, final = config.tuning, config.final_training
        changes = {k: v for k, v in (("strategy", strategy), ("max_training_jobs", trials),
                                     ("max_parallel_training_jobs", parallel), ("random_seed", seed))
                   if v is not None}
        if trial_epochs is not None:
            changes["static_hyperparameters"] = {**tuning.static_hyperparameters, "epochs": trial_epochs}
            changes["hyperband_max_epochs"] = trial_epochs      # Hyperband gives every trial its maximum
            changes["hyperband_min_epochs"] = min(tuning.hyperband_min_epochs, trial_epochs)
        if epochs is not None:
            final = replace(final, static_hyperparameters={**final.static_hyperparameters, "epochs": epochs})
        gate = config.gate if accuracy_floor is None else QualityGate(accuracy_floor=accuracy_floor,
                                                                      metric=config.gate.metric)
        return replace(config, tuning=replace(tuning, **changes), final_training=final, gate=gate)
    except ConfigError as exc:
        raise CliError(str(exc)) from exc


def plain_logging(level=logging.WARNING) -> None:
    """The local runtime's own warnings as plain lines on stderr. Its loggers (``dogbreeds.*``) are
    children of the Powertools logger the Chalice app names ``dogbreeds``, whose JSON lines are for
    CloudWatch; they stop propagating there."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    for name in ("dogbreeds.stack", "dogbreeds.localaws", "dogbreeds.serving"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False


def cmd_up(args) -> int:
    from dogbreeds.stack import LocalStack

    home = Home(args.data_dir)
    already = home.running()
    if already:
        raise CliError(f"a stack already runs for {home.data_dir} (pid {already['pid']}, API {already['api_url']})")
    config = stack_config(args.profile, args.strategy, args.trials, args.parallel, args.trial_epochs, args.epochs,
                          args.accuracy_floor, args.seed)
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")   # EMF lines are CloudWatch's, not a terminal's
    plain_logging()
    stack = LocalStack(home.data_dir, config=config, api_port=args.port, cores=args.cores)
    stopping = []

    def stop(signum, _frame):
        stopping.append(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    print(f"starting the local stack in {home.data_dir} (profile {args.profile}) ...", flush=True)
    try:
        stack.start()
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        raise CliError(f"port {args.port} on 127.0.0.1 is in use: choose another with --port N "
                       f"(--port 0 takes any free one)") from exc
    stack.app_module.logger.setLevel(logging.ERROR)   # the feed below says what the handlers' warnings say
    try:
        print(f"  API      {stack.api_url}   (POST /predict, GET /status, POST /batch, GET /batch/<id>)")
        print(f"  bucket   {stack.raw_s3.prefix_path(stack.config.bucket, '')}")
        print("  publish  dogbreeds publish <folder with train/ valid/ test/>   (Ctrl-C stops the stack)",
              flush=True)
        watcher = progress.Watcher(home.data_dir, stack.config.bucket)
        if watcher.changes():      # what happened before this start is history: `dogbreeds status` shows it
            print(f"  earlier  {len(watcher.seen)} records of earlier work: `dogbreeds status` lists them")
        while not stopping:
            for line in watcher.changes():
                print(progress.stamp(line), flush=True)
            time.sleep(args.poll)
        print("stopping: running jobs end Stopped, endpoints shut down ...", flush=True)
    finally:
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


# --- publish --------------------------------------------------------------------------------------

DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def _files(folder: Path) -> list:
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
    """Make ``prefix`` in the bucket hold exactly ``files`` (``_files(folder)``): upload new and changed
    files (compared by MD5 with the ETag), delete objects the folder no longer has. Returns the counts."""
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
    from chalicelib.config import BucketLayout
    from chalicelib.pipeline import check_dataset_layout

    folder = Path(folder)
    if not folder.is_dir():
        raise CliError(f"{folder} is not a folder: give the dataset's root, the one holding train/ (and "
                       f"valid/, test/), each with a folder per breed")
    name = name or folder.resolve().name
    if not DATASET_NAME.fullmatch(name):
        raise CliError(f"dataset name {name!r}: use letters, digits, '.', '_' and '-' (give --name)")
    files = _files(folder)
    report = check_dataset_layout([(p.as_posix(), (folder / p).stat().st_size) for p in files], name)
    if not report.ok:
        raise CliError(f"{folder} is not a dataset the pipeline can train on:\n  - " + "\n  - ".join(report.problems))
    prefix = f"{BucketLayout().datasets}{name}/"
    summary = ", ".join(f"{split} {sum(c.values())}" for split, c in report.counts.items())
    say(f"publishing {folder} as dataset {name!r}: {len(report.counts['train'])} classes; images: {summary}")
    counts = sync_folder(home, folder, files, prefix, label="  copying into the bucket", say=say)
    say(f"  {counts['copied']} copied, {counts['unchanged']} unchanged, {counts['removed']} removed "
          f"(no longer in the folder) under {home.path_of(prefix)}")
    marker = {"published_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "from": str(folder.resolve()),
              "files": counts["files"]}
    written = home.s3.put_object(Bucket=home.bucket, Key=prefix + READY_SUFFIX.lstrip("/"),
                                 Body=json.dumps(marker).encode(), ContentType="application/json")
    say(f"  marker   s3://{home.bucket}/{prefix}_READY (ETag {written['ETag'].strip(chr(34))[:12]})")
    return f"{name}/{normalise_marker(written['ETag'])}"


def cmd_publish(args) -> int:
    home = Home(args.data_dir)
    run_key = publish_dataset(home, Path(args.folder), args.name)
    if home.running():
        print("the stack is on it: tuning, then the instrumented training, the gate and the deployment. "
              "Follow with `dogbreeds status --watch`.")
    else:
        print(f"no stack runs for {home.data_dir} right now: `dogbreeds up` starts one, and it picks this up.")
    if args.follow:
        return follow_run(home, run_key, timeout=args.timeout)
    return 0


def follow_run(home: Home, run_key: str, timeout: float, say=print) -> int:
    """Print what changes until the run of ``run_key`` (``<dataset>/<marker>``) is deployed, refused or
    failed; 0 when deployed."""
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
    raise CliError(f"gave up following after {timeout:.0f}s; `dogbreeds status` shows where it is")


def current_run(state: dict) -> Optional[dict]:
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

def _when(text: Optional[str]) -> str:
    return (text or "")[11:19]


def _duration(record: dict, start: str, end: str) -> str:
    from datetime import datetime, timezone
    try:
        began = datetime.fromisoformat(record[start])
    except (KeyError, TypeError, ValueError):
        return ""
    try:
        ended = datetime.fromisoformat(record[end])
    except (KeyError, TypeError, ValueError):
        ended = datetime.now(timezone.utc)
    return f"{(ended - began).total_seconds():.0f}s"


def status_lines(home: Home) -> list:
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
    jobs = []
    for kind, name_field, status_field, start, end in (
            ("tuning", "HyperParameterTuningJobName", "HyperParameterTuningJobStatus", "CreationTime",
             "HyperParameterTuningEndTime"),
            ("training", "TrainingJobName", "TrainingJobStatus", "CreationTime", "TrainingEndTime"),
            ("transform", "TransformJobName", "TransformJobStatus", "CreationTime", "TransformEndTime")):
        for record in home.records(kind):
            role = "trial" if kind == "training" and record.get("TuningJobArn") else kind
            metric = ""
            if kind == "training":
                values = {m["MetricName"]: m["Value"] for m in record.get("FinalMetricDataList") or []}
                key = "test:accuracy" if "test:accuracy" in values else "validation:accuracy"
                metric = f"{key}={values[key]:.4f}" if key in values else ""
                if record[status_field] == "InProgress":
                    epoch = progress.last_epoch(home.data_dir / "jobs" / record[name_field] / "log.txt")
                    metric = f"epoch {epoch[0]}/{record.get('HyperParameters', {}).get('epochs', '?')}" if epoch else ""
            if kind == "transform" and "_Written" in record:
                metric = f"{record['_Written']} classified, {record.get('_Skipped', 0)} already done"
            jobs.append((record.get(start) or "", role, record[name_field], record[status_field],
                         _duration(record, start, end), metric))
    if jobs:
        lines.append("")
        lines.append(f"{'started':<9} {'kind':<9} {'job':<44} {'status':<11} {'took':>6}  result")
        for started, role, name, status, took, metric in sorted(jobs):
            lines.append(f"{_when(started):<9} {role:<9} {name:<44} {status:<11} {took:>6}  {metric}")
    return lines


def cmd_status(args) -> int:
    home = Home(args.data_dir)
    if args.json:
        print(json.dumps({"stack": home.running(), "state": home.state(),
                          "jobs": {k: home.records(k) for k in ("tuning", "training", "transform", "endpoint")}},
                         indent=1, default=str))
        return 0
    print("\n".join(status_lines(home)))
    if args.watch:
        watcher = progress.Watcher(home.data_dir, home.bucket)
        watcher.changes()        # what was just printed is not news
        print("\nwatching (Ctrl-C stops) ...", flush=True)
        try:
            while True:
                for line in watcher.changes():
                    print(progress.stamp(line), flush=True)
                time.sleep(1)
        except KeyboardInterrupt:
            return 0
    return 0


def _job_record(home: Home, name: str) -> Optional[dict]:
    from dogbreeds.localaws.sagemaker import Records
    records = Records(home.data_dir / "sagemaker")
    return next((record for kind in ("training", "transform", "tuning")
                 if (record := records.get(kind, name)) is not None), None)


def newest_training_job(home: Home, trials: bool = True) -> Optional[str]:
    records = [r for r in home.records("training") if trials or not r.get("TuningJobArn")]
    return records[-1]["TrainingJobName"] if records else None


def cmd_logs(args) -> int:
    home = Home(args.data_dir)
    name = args.job or newest_training_job(home)
    if name is None:
        raise CliError(f"no training job has run in {home.data_dir} yet")
    log = home.data_dir / "jobs" / name / "log.txt"
    if not log.exists():
        known = ", ".join(r["TrainingJobName"] for r in home.records("training")[-5:]) or "none"
        raise CliError(f"no log for job {name!r} in {home.data_dir / 'jobs'}; recent training jobs: {known}")
    print(f"== {log}", file=sys.stderr, flush=True)
    with open(log, "r", errors="replace") as handle:
        while True:
            chunk = handle.read()
            if chunk:
                sys.stdout.write(chunk)
                sys.stdout.flush()
            if not args.follow:
                return 0
            record = _job_record(home, name) or {}
            status = record.get("TrainingJobStatus")
            if status in progress.TERMINAL and not chunk:
                print(f"== job {name} {status}", file=sys.stderr)
                return 0
            time.sleep(0.5)


# --- predict and batch ----------------------------------------------------------------------------

def _content_type(path: Path) -> str:
    return mimetypes.guess_type(path.name)[0] or "application/x-image"


def predict_file(home: Home, path: Path, top_k: int = 3) -> list:
    """The endpoint's ranked predictions for one image file, through ``POST /predict``."""
    status, body = home.api("POST", f"/predict?top_k={top_k}", Path(path).read_bytes(), _content_type(path))
    if status != 200:
        raise _api_failure(status, body)
    return body["predictions"]


def cmd_predict(args) -> int:
    home = Home(args.data_dir)
    failed = 0
    for image in args.images:
        path = Path(image)
        if not path.is_file():
            print(f"{image}: no such file", file=sys.stderr)
            failed += 1
            continue
        try:
            predictions = predict_file(home, path, args.top_k)
        except CliError as exc:
            print(f"{image}: {exc}", file=sys.stderr)
            failed += 1
            continue
        guesses = ", ".join(f"{p['label']} {p['probability']:.1%}" for p in predictions)
        print(f"{image}: {guesses}")
    return 1 if failed else 0


BATCH_ID = re.compile(r"[^A-Za-z0-9._-]+")


def run_batch(home: Home, folder: Path, batch_id: Optional[str] = None, wait: bool = True,
              timeout: float = 3600, say=print) -> Optional[Path]:
    """Copy ``folder``'s images to ``batch/<id>/input/``, ``POST /batch``, and (``wait``) follow the
    transform to its end; returns the local path of ``predictions.csv``."""
    from chalicelib.config import BucketLayout
    from chalicelib.pipeline import IMAGE_EXTENSIONS

    home.api_url()                                    # fail before copying anything when no stack runs
    folder = Path(folder)
    if not folder.is_dir():
        raise CliError(f"{folder} is not a folder of images")
    images = [p for p in _files(folder) if p.name.lower().endswith(IMAGE_EXTENSIONS)]
    if not images:
        raise CliError(f"{folder} has no images ({', '.join(IMAGE_EXTENSIONS)})")
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
        if status == 200 and view["status"] in ("Completed", "Failed", "Stopped"):
            break
        time.sleep(0.5)
    else:
        raise CliError(f"batch {batch_id} still {view.get('status')} after {timeout:.0f}s; "
                       f"`dogbreeds status` follows it")
    counter.close()
    csv_path = home.path_of(view["predictions_uri"].split("/", 3)[3]) if view.get("predictions_uri") else None
    if view["status"] != "Completed":
        kept = f"\nwhat it classified, and a row for each image it did not: {csv_path}" if csv_path else ""
        raise CliError(f"batch {batch_id} {view['status']}: {view.get('failure_reason')}{kept}")
    say(f"predictions: {csv_path}")
    say(f"             ({view['predictions_uri']})")
    return csv_path


def cmd_batch(args) -> int:
    run_batch(Home(args.data_dir), Path(args.folder), args.id, wait=not args.no_wait, timeout=args.timeout)
    return 0


# --- report ---------------------------------------------------------------------------------------

def extract_report(home: Home, name: Optional[str] = None) -> Path:
    """Unpack ``report.html`` and ``diagnostics.json`` of a completed training job (default: the current
    run's instrumented job) from its ``output.tar.gz`` into ``<data_dir>/reports/<job>/``."""
    if name is None:
        run = current_run(home.state())
        name = run["training_job"] if run and run.get("training_status") == "Completed" else None
        name = name or next((r["TrainingJobName"] for r in reversed(home.records("training"))
                             if r["TrainingJobStatus"] == "Completed" and not r.get("TuningJobArn")), None)
    if name is None:
        raise CliError("no instrumented training run has completed yet: publish a dataset and wait for training")
    record = _job_record(home, name)
    if record is None or record.get("TrainingJobStatus") != "Completed":
        raise CliError(f"training job {name!r} is {(record or {}).get('TrainingJobStatus', 'unknown')}: "
                       f"its report is written when it completes")
    output = record["OutputDataConfig"]["S3OutputPath"].rstrip("/") + f"/{name}/output/output.tar.gz"
    archive = home.path_of(output.split("/", 3)[3])
    target = home.data_dir / "reports" / name
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name in ("report.html", "diagnostics.json")]
        if not any(m.name == "report.html" for m in members):
            raise CliError(f"{output} holds no report.html")
        tar.extractall(target, members=members, filter="data")
    return target / "report.html"


def cmd_report(args) -> int:
    report = extract_report(Home(args.data_dir), args.job)
    print(f"report: {report}")
    diagnostics = report.parent / "diagnostics.json"
    if diagnostics.exists():
        found = json.loads(diagnostics.read_text()).get("issues_found") or []
        print(f"rules with issues: {', '.join(found) or 'none'}")
    if args.open:
        import webbrowser
        webbrowser.open(report.as_uri())
    return 0


# --- fetch and demo -------------------------------------------------------------------------------

def cmd_fetch(args) -> int:
    from dogbreeds import fetch
    return fetch.main(args.rest)


def cmd_demo(args) -> int:
    from dogbreeds import demo
    return demo.main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dogbreeds", description=__doc__.split("\n", 1)[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n", 2)[2])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", type=Path, default=default_home(),
                        help="the stack's data directory (default: $DOGBREEDS_HOME or runs/local)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser("up", parents=[common], help="start the local stack in the foreground")
    up.add_argument("--port", type=int, default=8000, help="API port on 127.0.0.1 (0: any free port)")
    up.add_argument("--profile", choices=("quick", "default"), default="quick",
                    help="quick: sized for a CPU (64 px, from scratch, 3 short trials); default: the AWS "
                         "defaults (ImageNet weights, 224 px, 6 trials)")
    up.add_argument("--cores", type=int, default=None, help="cores jobs may use (default: all)")
    up.add_argument("--strategy", choices=("Bayesian", "Random", "Hyperband", "Grid"),
                    help="tuning strategy (default Bayesian)")
    up.add_argument("--trials", type=int, help="most tuning trials (quick: 3)")
    up.add_argument("--parallel", type=int, help="trials at once, within the cores (quick: 1)")
    up.add_argument("--trial-epochs", type=int, help="epochs per trial (quick: 3)")
    up.add_argument("--epochs", type=int, help="epochs of the instrumented run (quick: 10)")
    up.add_argument("--accuracy-floor", type=float, help="the gate's test-accuracy floor (default 0.6)")
    up.add_argument("--seed", type=int, help="the tuner's seed (default: none, a new choice each time)")
    up.add_argument("--poll", type=float, default=1.0, help=argparse.SUPPRESS)
    up.set_defaults(run=cmd_up)

    publish = commands.add_parser("publish", parents=[common], help="publish an ImageFolder as a dataset")
    publish.add_argument("folder", help="the dataset's root: train/<breed>/<image> (and valid/, test/)")
    publish.add_argument("--name", help="dataset name (default: the folder's name)")
    publish.add_argument("--follow", action="store_true", help="follow the run until it is deployed or fails")
    publish.add_argument("--timeout", type=float, default=6 * 3600, help=argparse.SUPPRESS)
    publish.set_defaults(run=cmd_publish)

    status = commands.add_parser("status", parents=[common], help="the pipeline and its jobs")
    status.add_argument("--watch", action="store_true", help="then print what changes")
    status.add_argument("--json", action="store_true", help="state and job records as JSON")
    status.set_defaults(run=cmd_status)

    logs = commands.add_parser("logs", parents=[common], help="a training job's log")
    logs.add_argument("job", nargs="?", help="job name (default: the newest training job)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    logs.set_defaults(run=cmd_logs)

    predict = commands.add_parser("predict", parents=[common], help="classify images through POST /predict")
    predict.add_argument("images", nargs="+", help="image files (JPEG, PNG, ...)")
    predict.add_argument("--top-k", type=int, default=3)
    predict.set_defaults(run=cmd_predict)

    batch = commands.add_parser("batch", parents=[common], help="classify a folder through batch transform")
    batch.add_argument("folder", help="a folder of images (sub-folders included)")
    batch.add_argument("--id", help="batch id (default: the folder's name and the time)")
    batch.add_argument("--no-wait", action="store_true", help="start it and return")
    batch.add_argument("--timeout", type=float, default=3600, help="seconds to wait for it (default 3600)")
    batch.set_defaults(run=cmd_batch)

    report = commands.add_parser("report", parents=[common], help="the instrumented run's report.html")
    report.add_argument("job", nargs="?", help="training job (default: the current run's)")
    report.add_argument("--open", action="store_true", help="open it in a browser")
    report.set_defaults(run=cmd_report)

    for name, run, what in (("fetch", cmd_fetch, "download the Udacity dog-breed dataset (see --help)"),
                            ("demo", cmd_demo, "the whole main job on generated images (see --help)")):
        sub = commands.add_parser(name, help=what, add_help=False)
        sub.add_argument("rest", nargs=argparse.REMAINDER)
        sub.set_defaults(run=run)
    return parser


PASS_THROUGH = {"fetch": cmd_fetch, "demo": cmd_demo}    # their own parsers take every argument after the name


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PASS_THROUGH:
        return PASS_THROUGH[argv[0]](argparse.Namespace(rest=argv[1:]))
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except CliError as exc:
        print(f"dogbreeds {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:          # `dogbreeds status | head`: the reader left; nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
