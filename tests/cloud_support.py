"""API Gateway in front of the Chalice app, for the cloud verbs' tests (``test_cloud.py``).

``Gateway`` serves the app (Chalice's ``LocalGateway``, the control plane on moto: ``aws_support``) over
HTTP on 127.0.0.1, under a stage path (``/api/``) as API Gateway does. With ``keys`` it authorises as
API Gateway's IAM authorisation does: it recomputes each request's SigV4 signature with botocore from
the secret key of the access key the request names, and refuses with API Gateway's 403s (its
``{"message"}`` body and ``x-amzn-ErrorType``) a request that is unsigned, names an unknown key, is
scoped to another region or service, is stale, or whose signature does not match. Without ``keys`` it
is the local stack's API: no authorisation.

An authorised request reaches the app with the identity API Gateway puts in its request context
(``requestContext.identity``: ``userArn``, ``caller``, ``accessKey``), the user ``users`` names for its
access key (default ``arn:aws:iam::123456789012:user/<key>``).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Dict, List, Optional, Tuple

from botocore.auth import SIGV4_TIMESTAMP, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from aws_support import without_environment_swaps
from chalice.test import Client

SERVICE = "execute-api"
AUTHORIZATION = re.compile(r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/,\s]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
                           r"(?P<service>[^/]+)/aws4_request, SignedHeaders=(?P<signed>[a-z0-9;-]+), "
                           r"Signature=(?P<signature>[0-9a-f]{64})$")
MAX_SKEW = timedelta(minutes=5)     # API Gateway refuses a signature older (or newer) than this

Refusal = Tuple[str, str]           # (x-amzn-ErrorType, message), as API Gateway answers


def verify_sigv4(method: str, target: str, headers: Dict[str, str], body: bytes, keys: Dict[str, str],
                 region: str, now: datetime) -> Optional[Refusal]:
    """Why API Gateway would refuse this request (``target``: its path and query as sent; ``headers``
    with lower-case names), or None when its SigV4 signature is right for one of ``keys`` (access key ->
    secret key), ``region`` and ``execute-api``."""
    authorization = headers.get("authorization")
    if not authorization:
        return "MissingAuthenticationTokenException", "Missing Authentication Token"
    parts = AUTHORIZATION.match(authorization)
    if parts is None:
        return "IncompleteSignatureException", f"Authorization header requires 'Credential', 'SignedHeaders' " \
                                               f"and 'Signature' parameters. Authorization={authorization}"
    if parts["key"] not in keys:
        return "UnrecognizedClientException", "The security token included in the request is invalid."
    if parts["region"] != region:
        return "InvalidSignatureException", "Credential should be scoped to a valid region. "
    if parts["service"] != SERVICE:
        return "InvalidSignatureException", f"Credential should be scoped to correct service: '{SERVICE}'. "
    stamp = headers.get("x-amz-date", "")
    try:
        signed_at = datetime.strptime(stamp, SIGV4_TIMESTAMP).replace(tzinfo=timezone.utc)
    except ValueError:
        return "IncompleteSignatureException", "Date must be in ISO-8601 'basic format'."
    if abs(now - signed_at) > MAX_SKEW or stamp[:8] != parts["date"]:
        return "InvalidSignatureException", f"Signature expired: {stamp} is now earlier than or after the allowed time."
    signed = parts["signed"].split(";")
    if "host" not in signed or any(name not in headers for name in signed):
        return "IncompleteSignatureException", "the signed headers must include host and be present"
    request = AWSRequest(method=method, url=f"http://{headers['host']}{target}", data=body,
                         headers={name: headers[name] for name in signed})
    request.context["timestamp"] = stamp
    signer = SigV4Auth(Credentials(parts["key"], keys[parts["key"]]), SERVICE, region)
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    if signer.signed_headers(signer.headers_to_sign(request)) != parts["signed"] or expected != parts["signature"]:
        return "InvalidSignatureException", ("The request signature we calculated does not match the signature you "
                                             "provided. Check your AWS Secret Access Key and signing method. Consult "
                                             "the service documentation for details.")
    return None


class Gateway:
    """The Chalice app over HTTP at ``url`` (``http://127.0.0.1:<port>/<stage>/``), SigV4-authorised when
    ``keys`` are given. ``seen`` records each request: (method, path, refusal type or None). Start and
    stop it, or use it as a context manager."""

    def __init__(self, app, region: str, keys: Optional[Dict[str, str]] = None, stage: str = "api",
                 users: Optional[Dict[str, str]] = None):
        self.app, self.region, self.keys, self.stage = app, region, keys, stage
        self.users = users or {}
        self.seen: List[Tuple[str, str, Optional[str]]] = []
        self.output = io.StringIO()
        # requests are served one at a time (HTTPServer), from a thread of their own: one client serves them all
        self._chalice = without_environment_swaps(Client(app))
        self._identity: Dict[str, str] = {}
        converter = self._chalice.http._local_gateway.event_converter
        create_event = converter.create_lambda_event

        def with_identity(*args, **kwargs):
            event = create_event(*args, **kwargs)
            event["requestContext"]["identity"].update(self._identity)
            return event
        converter.create_lambda_event = with_identity
        self._server: Optional[HTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/{self.stage}/"

    def answer(self, method: str, target: str, headers: Dict[str, str], body: bytes) -> Tuple[int, Dict[str, str], bytes]:
        """(status, headers, body) for one request."""
        refusal = None
        if self.keys is not None:
            refusal = verify_sigv4(method, target, headers, body, self.keys, self.region, datetime.now(timezone.utc))
        prefix = f"/{self.stage}"
        if refusal is None and not (target == prefix or target.startswith(prefix + "/") or target.startswith(prefix + "?")):
            refusal = ("MissingAuthenticationTokenException", "Missing Authentication Token")   # no such stage
        self.seen.append((method, target, refusal and refusal[0]))
        if refusal is not None:
            return 403, {"Content-Type": "application/json", "x-amzn-ErrorType": refusal[0]}, \
                json.dumps({"message": refusal[1]}).encode()
        self._identity = {}
        if self.keys is not None:
            key = AUTHORIZATION.match(headers["authorization"])["key"]
            self._identity = {"userArn": self.users.get(key, f"arn:aws:iam::123456789012:user/{key}"),
                              "caller": key, "accessKey": key}
        forwarded = {name: value for name, value in headers.items() if name != "host"}
        # The app's log and metric lines go to CloudWatch on AWS: here to ``output``, not into the command's
        # stdout (the command waits for this answer, so nothing of its own is printed meanwhile).
        with contextlib.redirect_stdout(self.output):
            response = self._chalice.http.request(method, target[len(prefix):] or "/", headers=forwarded, body=body)
        return response.status_code, dict(response.headers), response.body

    def start(self) -> "Gateway":
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {name.lower(): value for name, value in self.headers.items()}
                status, reply_headers, reply = gateway.answer(self.command, self.path, headers, body)
                self.send_response(status)
                for name, value in reply_headers.items():
                    if name.lower() not in ("content-length", "connection"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            do_GET = do_POST = _serve

            def log_message(self, *args):
                pass

        self._server = HTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="gateway", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(10)
            self._server = None

    def __enter__(self) -> "Gateway":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
