"""The ``dogbreeds`` verbs against a deployment on AWS: ``status``, ``predict``, ``batch``, ``report`` and
``publish`` with ``--aws`` (stage ``dev``), ``--stage S``, or ``--api URL`` / ``--bucket B``.

``Cloud`` is a ``client.Stack``, like the local ``client.Home``: ``dogbreeds.client``'s verbs run on it
unchanged and print the same lines. Only the transport differs:

- the API: every request is signed with SigV4 (botocore's ``SigV4Auth``, service ``execute-api``, the
  deployment's region) with the credentials of a boto3 session, so a profile, the environment, SSO or
  an instance role all work. API Gateway's own refusals (its 403 for a missing or bad signature, an
  unknown key, the wrong region, no permission) are said in words; the API's JSON errors
  ``{"Code", "Message"}`` come out as they do locally;
- the bucket: S3 through the same session; uploads run in a bounded thread pool, each file once, and a
  failure names the files (a marker or a batch request is only sent once every file is there);
- ``status``'s endpoint line and job table: SageMaker's Describe* responses for the jobs GET /status
  names, which have the shape of the local SageMaker's records (when SageMaker refuses them, ``status``
  says so and shows the rest);
- ``report``: GET /status names the completed instrumented job; its ``output.tar.gz`` is read from the
  bucket where the control plane's jobs write (``jobs/<job>/``) and unpacked into
  ``runs/aws-<stage>/reports/<job>/`` (``aws-<stage>`` beside the local ``--data-dir``).

Where the deployment is: ``deploy.target``'s record of the stage, which ``dogbreeds aws deploy`` writes;
``--api``, ``--region`` and ``--bucket`` replace what it says, or stand alone without one.
"""

from __future__ import annotations

import re
import sys
import tempfile
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, replace
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from chalicelib.config import BucketLayout
from chalicelib.sagemaker_requests import job_artifact_uri, s3_uri
from deploy import CHALICE_DIR
from deploy import target as targets
from deploy.target import Target
from dogbreeds import client, progress
from dogbreeds.client import AccessRefused, Upload, UserError

SERVICE = "execute-api"            # what API Gateway's SigV4 signatures are scoped to
UPLOAD_WORKERS = 16
DEFAULT_STAGE = targets.DEFAULT_STAGE
API_GATEWAY_URL = re.compile(r"https://[^/.]+\.execute-api\.(?P<region>[a-z]{2}(?:-[a-z]+)+-\d+)\.amazonaws\.com(?:\.cn)?/")
BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
NO_CREDENTIALS = ("no AWS credentials found: name a profile with --aws-profile NAME (or AWS_PROFILE), sign in "
                  "with `aws sso login`, or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")


# --- where the deployment is ---------------------------------------------------------------------

def cloud_home(local_home: Path, stage: str) -> Path:
    """This machine's folder for a deployment (its extracted reports): ``aws-<stage>`` beside the local
    stack's data directory (``runs/aws-dev`` beside ``runs/local``)."""
    return Path(local_home).resolve().parent / f"aws-{stage or 'api'}"


def region_of(api_url: str) -> Optional[str]:
    """The region an API Gateway URL names (``https://<id>.execute-api.<region>.amazonaws.com/...``)."""
    match = API_GATEWAY_URL.match(api_url)
    return match.group("region") if match else None


def api_base(url: str) -> str:
    """``url`` as an API's base URL, ending in ``/``. A UserError for what is not an https URL (plain
    http only on this machine, for tests and tunnels)."""
    parts = urllib.parse.urlsplit(url)
    if not parts.netloc or parts.scheme not in ("https", "http") or (
            parts.scheme == "http" and parts.hostname not in LOOPBACK):
        raise UserError(f"--api {url!r}: give the API's https URL, as `dogbreeds aws deploy` printed it "
                        f"(https://<id>.execute-api.<region>.amazonaws.com/api/)")
    if parts.query or parts.fragment:
        raise UserError(f"--api {url!r}: give the API's base URL, without a query")
    return url.rstrip("/") + "/"


def bucket_name(value: str) -> str:
    """The bucket of ``--bucket B`` or ``--bucket s3://B``; a UserError for anything else."""
    name = value[len("s3://"):] if value.startswith("s3://") else value
    name = name.rstrip("/")
    if not BUCKET_NAME.fullmatch(name) or ".." in name:
        raise UserError(f"--bucket {value!r}: give a bucket name, B or s3://B (the dataset goes under "
                        f"datasets/<name>/ in it)")
    return name


def resolve_target(stage: Optional[str] = None, api: Optional[str] = None, region: Optional[str] = None,
                   bucket: Optional[str] = None, chalice_dir: Path = CHALICE_DIR) -> Target:
    """The deployment the verbs talk to: ``stage``'s record (``deploy.target.load``) with ``api``, ``region``
    and ``bucket`` in place of what it says; without a stage, those alone (the region then defaults to
    the one an API Gateway URL names; the bucket and the API may be "" when a verb needs neither). A
    UserError when the record is missing or the API's region cannot be known."""
    api = api_base(api) if api else None
    bucket = bucket_name(bucket) if bucket else None
    region = region or (region_of(api) if api else None)
    if stage:
        try:
            record = targets.load(stage, chalice_dir)
        except targets.TargetError as exc:
            raise UserError(str(exc)) from None
        return replace(record, api_url=api or record.api_url, region=region or record.region,
                       bucket=bucket or record.bucket)
    if api and not region:
        raise UserError(f"{api} does not name its region (an API Gateway URL does: https://<id>.execute-api."
                        f"<region>.amazonaws.com/<stage>/): give --region")
    return Target(stage="", region=region or "", bucket=bucket or "", api_url=api or "", endpoint_name="")


# --- the API, signed -----------------------------------------------------------------------------

def aws_session(profile: Optional[str] = None, region: Optional[str] = None):
    """A boto3 session with the user's credentials (``profile``, else boto3's chain: the environment,
    AWS_PROFILE, SSO, an instance role); a UserError for an unknown profile."""
    import boto3
    from botocore.exceptions import ProfileNotFound
    try:
        return boto3.session.Session(profile_name=profile or None, region_name=region or None)
    except ProfileNotFound:
        raise UserError(f"AWS profile {profile!r} is not in your AWS config (~/.aws/config, ~/.aws/credentials): "
                        f"`aws configure --profile {profile}` or `aws configure sso` makes one") from None


def signed_headers(credentials, region: str, method: str, url: str, body: Optional[bytes] = None,
                   content_type: Optional[str] = None) -> Dict[str, str]:
    """The headers of a request to ``url`` signed with SigV4 for API Gateway (``execute-api``) in
    ``region`` with botocore's ``credentials``: ``Content-Type`` (when given), ``X-Amz-Date``,
    ``X-Amz-Security-Token`` (temporary credentials) and ``Authorization``."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    request = AWSRequest(method=method, url=url, data=body or b"",
                         headers={"Content-Type": content_type} if content_type else {})
    SigV4Auth(credentials, SERVICE, region).add_auth(request)
    return dict(request.headers.items())


# API Gateway's refusals of the caller (403, before the control plane sees the request), by the error
# type it names in x-amzn-ErrorType, and what to do about each.
REFUSALS = {
    "MissingAuthenticationTokenException":
        "the request carried no signature, or the API has no such stage or route (API Gateway answers both "
        "alike): check the URL {api}",
    "UnrecognizedClientException":
        "AWS does not know these credentials (another account's or a deleted access key, or a broken session "
        "token): check which ones are used (--aws-profile, AWS_PROFILE, AWS_ACCESS_KEY_ID) or sign in again "
        "(`aws sso login`)",
    "ExpiredTokenException": "the credentials' session has expired: sign in again (`aws sso login`) or renew them",
    "InvalidSignatureException":
        "the signature did not match: the request must be signed for the API's region (it was signed for "
        "{region}) with the secret key of the access key it names, and this computer's clock must be right",
    "AccessDeniedException":
        "the credentials are valid but may not call this API: their identity needs execute-api:Invoke on it",
}
WRONG_REGION = ("the request was signed for region {region}, which is not the API's: give the API's region "
                "with --region (the deployment's record, `dogbreeds aws deploy`'s, names it)")
# When the error type header is missing, the message says which refusal it is.
REFUSAL_MESSAGES = (("Missing Authentication Token", "MissingAuthenticationTokenException"),
                    ("security token included in the request is invalid", "UnrecognizedClientException"),
                    ("expired", "ExpiredTokenException"),
                    ("signature", "InvalidSignatureException"),
                    ("not authorized to perform", "AccessDeniedException"))


def gateway_refusal(status: int, body, error_type: Optional[str], api: str, region: str) -> Optional[str]:
    """In words, why API Gateway refused a request before the control plane saw it: a 403 whose body is
    its ``{"message": ...}``, not the API's ``{"Code", "Message"}``. None for any other answer."""
    if status != 403 or not isinstance(body, dict) or "Code" in body:
        return None
    message = str(body.get("message") or body.get("Message") or "").strip()
    kind = (error_type or "").split(":")[0].strip()
    if kind not in REFUSALS:
        kind = next((name for words, name in REFUSAL_MESSAGES if words.lower() in message.lower()), "")
    if kind == "IncompleteSignatureException":
        kind = "InvalidSignatureException"
    if "scoped to a valid region" in message:
        reason = WRONG_REGION
    else:
        reason = REFUSALS.get(kind, "see the message; `aws sts get-caller-identity` shows who the credentials are")
    return (f"API Gateway refused the request (HTTP 403{' ' + kind if kind else ''}: {message or 'no message'}): "
            + reason.format(api=api, region=region))


def aws_failure(exc: BaseException) -> Optional[str]:
    """In words, an error of botocore's (S3 or SageMaker refused a call, no credentials, no connection);
    None for any other exception."""
    errors = sys.modules.get("botocore.exceptions")
    if errors is None:
        return None
    if isinstance(exc, errors.ClientError):
        error = exc.response.get("Error", {})
        code, message = error.get("Code", "?"), error.get("Message", "")
        advice = (": the credentials used need permission for it" if code in ("AccessDenied", "AccessDeniedException",
                                                                               "403") else "")
        return f"AWS refused {exc.operation_name} ({code}: {message}){advice}"
    if isinstance(exc, errors.NoCredentialsError):
        return NO_CREDENTIALS
    if isinstance(exc, errors.BotoCoreError):
        return f"AWS could not be used: {exc}"
    return None


def upload_failures(failed: Sequence[Tuple[Upload, BaseException]], total: int, bucket: str, shown: int = 20) -> str:
    """What to tell the user when ``failed`` of ``total`` uploads to ``bucket`` failed: each file and why."""
    failed = sorted(failed, key=lambda item: item[0].key)
    lines = [f"{len(failed)} of {total} files could not be uploaded to s3://{bucket}, so nothing was started "
             f"(the marker is written, or the batch requested, only once every file is there):"]
    lines += [f"  - {upload.path} -> {upload.key}: {aws_failure(error) or f'{type(error).__name__}: {error}'}"
              for upload, error in failed[:shown]]
    if len(failed) > shown:
        lines.append(f"  ... and {len(failed) - shown} more")
    lines.append("The files that did upload stay there: run the command again to send the rest.")
    return "\n".join(lines)


# --- what status shows: the records GET /status names ---------------------------------------------

DESCRIBE = {"tuning": ("describe_hyper_parameter_tuning_job", "HyperParameterTuningJobName"),
            "training": ("describe_training_job", "TrainingJobName"),
            "transform": ("describe_transform_job", "TransformJobName"),
            "endpoint": ("describe_endpoint", "EndpointName")}


def job_names(view: dict, kind: str) -> List[str]:
    """The SageMaker resources of ``kind`` GET /status's document names: the current and the latest
    run's tuning and training jobs (once started), the last batch's transform job, the endpoint."""
    runs = [run for run in (view.get("latest_run"), view.get("run")) if run]
    if kind in ("tuning", "training"):
        names = [run[f"{kind}_job"] for run in runs if run.get(f"{kind}_status")]
    elif kind == "transform":
        names = [(view.get("last_batch") or {}).get("transform_job")]
    else:
        names = [(view.get("endpoint") or {}).get("name")]
    return list(dict.fromkeys(name for name in names if name))


def plain(value):
    """A Describe* response as JSON-able data, like the local SageMaker's records: times as ISO text,
    no ResponseMetadata."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items() if k != "ResponseMetadata"}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value.isoformat() if isinstance(value, datetime) else value


# --- the deployment as a Stack --------------------------------------------------------------------

class Cloud:
    """A deployment on AWS as the verbs use it (a ``client.Stack``): its API called with SigV4-signed
    requests and its bucket through S3, with the credentials of one boto3 session."""
    poll_interval = 5.0
    jobs_dir = None            # the jobs' logs are in CloudWatch, not on this machine

    def __init__(self, target: Target, session=None, profile: Optional[str] = None,
                 data_dir: Optional[Path] = None, workers: int = UPLOAD_WORKERS):
        self.target = target
        self.bucket = target.bucket
        self.session = session or aws_session(profile, target.region)
        self.region = target.region or self.session.region_name or ""
        self.data_dir = Path(data_dir) if data_dir else cloud_home(client.default_home(), target.stage)
        self.workers = workers
        self._clients: Dict[str, object] = {}
        self._view: Optional[dict] = None
        self._notes: List[str] = []

    def _client(self, service: str):
        if service not in self._clients:
            from botocore.config import Config
            config = Config(max_pool_connections=self.workers + 4, retries={"mode": "standard"})
            self._clients[service] = self.session.client(service, region_name=self.region or None, config=config)
        return self._clients[service]

    @property
    def s3(self):
        if not self.bucket:
            raise UserError("this needs the deployment's bucket: give --aws or --stage S (its record names the "
                            "bucket), or --bucket B")
        return self._client("s3")

    def credentials(self):
        """The session's credentials, frozen for one request; a UserError saying how to get some."""
        from botocore.exceptions import BotoCoreError
        try:
            found = self.session.get_credentials()
            frozen = found.get_frozen_credentials() if found is not None else None
        except BotoCoreError as exc:
            raise UserError(f"your AWS credentials could not be loaded: {exc}") from None
        if frozen is None or not frozen.access_key:
            raise UserError(NO_CREDENTIALS)
        return frozen

    # --- the API ---

    def require_api(self) -> None:
        if not self.target.api_url:
            raise UserError("this needs the deployment's API: give --aws or --stage S (its record names the API), "
                            "or --api URL")
        if not self.region:
            raise UserError("the API's region is not known: give --region")
        self.credentials()

    def api(self, method: str, path: str, body: Optional[bytes] = None, content_type: Optional[str] = None,
            timeout: float = 60):
        """(status, decoded JSON) from the deployment's API, the request SigV4-signed; API Gateway's refusal
        of the caller is an AccessRefused saying why, a connection problem a UserError."""
        self.require_api()
        url = self.target.url(path)
        headers = signed_headers(self.credentials(), self.region, method, url, body, content_type)
        request = urllib.request.Request(url, data=body, method=method, headers=headers)
        status, answer, response_headers = client.http_exchange(request, timeout, f"the API at {self.target.api_url}")
        refusal = gateway_refusal(status, answer, response_headers.get("x-amzn-ErrorType"), self.target.api_url,
                                  self.region)
        if refusal:
            raise AccessRefused(refusal)
        return status, answer

    # --- status ---

    def describe(self) -> str:
        stage = f"stage {self.target.stage}, " if self.target.stage else ""
        return (f"stack     AWS {stage}API {self.target.api_url or '-'} (region {self.region or '-'}, "
                f"bucket {self.bucket or '-'})")

    def status_view(self) -> dict:
        """GET /status's document (kept for the ``records`` that follow)."""
        status, view = self.api("GET", "/status")
        if status != 200:
            raise client.api_failure(status, view)
        self._view = view or {}
        return self._view

    def records(self, kind: str) -> List[dict]:
        """SageMaker's Describe* responses for the resources of ``kind`` that the last GET /status named.
        One that no longer exists is left out; when SageMaker refuses, the note says so (``status_notes``)."""
        from chalicelib.control import error_code, not_found
        view = self._view if self._view is not None else self.status_view()
        method, argument = DESCRIBE[kind]
        found = []
        for name in job_names(view, kind):
            try:
                found.append(plain(getattr(self._client("sagemaker"), method)(**{argument: name})))
            except Exception as exc:
                if not_found(exc):
                    continue
                if error_code(exc) not in ("AccessDenied", "AccessDeniedException"):
                    raise
                note = (f"jobs      not shown: SageMaker refused {getattr(exc, 'operation_name', method)} "
                        f"({error_code(exc)}); the table needs sagemaker:Describe* on the pipeline's jobs")
                if note not in self._notes:
                    self._notes.append(note)
                return found
        return found

    def status_notes(self) -> List[str]:
        return list(self._notes)

    def status_document(self) -> dict:
        """``dogbreeds status --json``: the deployment, GET /status's document, the SageMaker records."""
        view = self.status_view()
        return {"target": asdict(self.target), "status": view,
                "jobs": {kind: self.records(kind) for kind in DESCRIBE}, "notes": self.status_notes()}

    def watcher(self) -> progress.LineWatcher:
        """The feed of ``status --watch`` and ``publish --follow``: the pipeline's lines and each job's."""
        def lines():
            view = self.status_view()
            endpoints = [progress.describe("endpoint", record, None).feed_line() for record in self.records("endpoint")]
            return client.pipeline_lines(view, self.located, endpoints) + [
                progress.describe(kind, record, None).feed_line()
                for kind in ("tuning", "training", "transform") for record in self.records(kind)]
        return progress.LineWatcher(lines)

    # --- the bucket ---

    def location(self, key: str) -> str:
        return s3_uri(self.bucket, key)

    def located(self, uri: str) -> str:
        return uri

    def upload(self, uploads: Sequence[Upload], label: str, say=print) -> None:
        """Copy ``uploads`` into the bucket, ``workers`` at a time (boto3's clients are thread-safe), counting
        on one line; each file is sent once. When some fail, a UserError naming them, after the rest ended."""
        from boto3.s3.transfer import TransferConfig
        s3 = self.s3
        one_thread_each = TransferConfig(use_threads=False)     # the pool is the parallelism
        counter = progress.Counter(label, len(uploads), say=say)
        failed = []
        pool = ThreadPoolExecutor(max_workers=self.workers)
        try:
            sent = {pool.submit(s3.upload_file, str(upload.path), self.bucket, upload.key,
                                ExtraArgs={"ContentType": upload.content_type}, Config=one_thread_each): upload
                    for upload in uploads}
            for future in as_completed(sent):
                if future.exception() is not None:
                    failed.append((sent[future], future.exception()))
                else:
                    counter.add()
        finally:
            pool.shutdown(cancel_futures=True)     # Ctrl-C: the files not started yet are not sent
        counter.close()
        if failed:
            raise UserError(upload_failures(failed, len(uploads), self.bucket))

    def count_outputs(self, prefix: str) -> int:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sum(1 for page in pages for item in page.get("Contents", []) if item["Key"].endswith(".out"))

    # --- report ---

    def fetch_report(self, name: Optional[str] = None) -> Path:
        """``report.html`` (and ``diagnostics.json``) of training job ``name`` (default: the one GET /status
        names), from its ``output.tar.gz`` in the bucket, unpacked into ``<data_dir>/reports/<job>/``."""
        from chalicelib.control import not_found
        if name is None:
            name = client.reported_job(self.status_view())
            if name is None:
                raise UserError(client.NO_REPORT_YET)
        # where the control plane's jobs write (sagemaker_requests.job_output_path, the default layout)
        output = job_artifact_uri(s3_uri(self.bucket, f"{BucketLayout().jobs}{name}/"), name, "output.tar.gz")
        target = self.data_dir / "reports" / name
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target) as scratch:
            archive = Path(scratch) / "output.tar.gz"
            try:
                self.s3.download_file(self.bucket, output[len(f"s3://{self.bucket}/"):], str(archive))
            except Exception as exc:
                if not not_found(exc):
                    raise
                raise UserError(f"there is no {output}: training job {name!r} has not completed (its report is "
                                f"written when it does), or it is not this deployment's") from None
            return client.unpack_report(archive, output, target)
