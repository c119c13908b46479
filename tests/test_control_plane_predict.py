"""``POST /predict`` through Chalice's test client on moto, fed a corpus of bad requests: the right status
and message for each, never a 500, and the server still answering afterwards; good requests forwarded
exactly. What Lambda checks and what the endpoint's handlers check: tests/test_predict_contract.py."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Optional, Tuple

import pytest
from aws_support import (BUCKET, DATASET, ENDPOINT, STATE_KEY, T0, FakeAws, b64, endpoint_reply, jpeg_bytes,
                         png_bytes, post_image)
from botocore.exceptions import ConnectionClosedError
from chalice.test import Client

from chalice_app import app as chalice_app
from chalicelib import names
from chalicelib.config import HostingConfig
from chalicelib.predict import SUPPORTED_TYPES
from chalicelib.state import DeployedModel, Endpoint, PipelineState
from model_code import inference

JSON = "application/json"
IMAGE = jpeg_bytes()
PNG = png_bytes()


@dataclass(frozen=True)
class Case:
    id: str
    body: bytes
    content_type: Optional[str] = "image/jpeg"
    query: str = ""
    status: int = 400
    message: str = ""
    serving: Optional[str] = "InService"     # the endpoint's status; "no model": nothing deployed
    reply: Optional[Tuple[int, object]] = None  # the endpoint's answer, when the request reaches it
    forwarded: bool = False
    fault: Optional[Exception] = None        # invoke_endpoint raises this instead


def js(document) -> bytes:
    return json.dumps(document).encode()


B64 = b64(IMAGE)
RANDOM_BYTES = b"\x00" + random.Random(7).randbytes(511)
SIX_MIB = 6 * 2**20

def judged_by_the_handler(id: str, body: bytes, content_type: str = "image/jpeg", status: int = 400,
                          message: str = "") -> Case:
    """A request Lambda forwards because only the endpoint's handlers can judge it (the image bytes, the
    JSON document): the endpoint answers with their refusal, which comes back with its status and message."""
    try:
        inference.input_fn(body, content_type)
    except inference.ClientError as refusal:
        reply = (refusal.status_code, {"message": refusal.message})
    else:
        raise AssertionError(f"{id}: the handlers accept this request")
    return Case(id, body, content_type, status=status, message=message, reply=reply, forwarded=True)


BAD_REQUESTS = [
    Case("empty body", b"", message="the body is empty"),
    judged_by_the_handler("random bytes as image/jpeg", RANDOM_BYTES,
                          message="not an image: the data is not JPEG, PNG, WebP, GIF, BMP or TIFF"),
    judged_by_the_handler("text as image/png", b"this is text, not a PNG", "image/png",
                          message="not an image: the data is not JPEG, PNG, WebP, GIF, BMP or TIFF"),
    Case("truncated JPEG header: the endpoint refuses it", b"\xff\xd8\xff", forwarded=True,
         reply=(400, {"message": "image file is truncated (3 bytes not processed)"}),
         message="image file is truncated (3 bytes not processed)"),
    judged_by_the_handler("JSON not UTF-8", b'{"image": "\xff\xfe"}', JSON,
                          message="invalid JSON: the body is not UTF-8 text"),
    judged_by_the_handler("malformed JSON", b'{"image": ', JSON, message="invalid JSON: Expecting value"),
    judged_by_the_handler("JSON array", js([B64]), JSON, message="JSON body is an array, not an object"),
    judged_by_the_handler("JSON with neither image nor images", js({"top_k": 3}), JSON,
                          message='JSON body has no "image" and "images" fields'),
    judged_by_the_handler("JSON with both image and images", js({"image": B64, "images": [B64]}), JSON,
                          message='JSON body has both "image" and "images" fields'),
    judged_by_the_handler("bad base64", js({"image": "not base64!"}), JSON, message="image is not valid base64"),
    judged_by_the_handler("base64 of text", js({"image": b64(b"hello")}), JSON, message="image: not an image"),
    judged_by_the_handler("empty images list", js({"images": []}), JSON, message='"images" is an empty list'),
    judged_by_the_handler("a bad image among images", js({"images": [B64, "%%%"]}), JSON,
                          message="images[1] is not valid base64"),
    judged_by_the_handler("65 images", js({"images": [B64] * 65}), JSON, status=413,
                          message="65 images in one request, over the limit of 64"),
    Case("top_k=-1", IMAGE, query="?top_k=-1", message="top_k must be a non-negative integer, got '-1'"),
    Case("top_k=abc", IMAGE, query="?top_k=abc", message="top_k must be a non-negative integer, got 'abc'"),
    Case("top_k=1.5", IMAGE, query="?top_k=1.5", message="top_k must be a non-negative integer, got '1.5'"),
    Case("explain=yes", IMAGE, query="?explain=yes", message="explain must be true or false, got 'yes'"),
    Case("explain=1", IMAGE, query="?explain=1", message="explain must be true or false, got '1'"),
    judged_by_the_handler("explain \"true\" in JSON", js({"image": B64, "explain": "true"}), JSON,
                          message='JSON field "explain" must be true or false, got \'true\''),
    judged_by_the_handler("top_k true in JSON", js({"image": B64, "top_k": True}), JSON,
                          message='JSON field "top_k" must be a non-negative integer, got True'),
    judged_by_the_handler("top_k 2.0 in JSON", js({"image": B64, "top_k": 2.0}), JSON,
                          message='JSON field "top_k" must be a non-negative integer, got 2.0'),
    Case("body over 6 MiB", b"\xff\xd8\xff" + bytes(SIX_MIB - 2), status=413,
         message="the body is 6,291,457 bytes; the endpoint accepts at most 6,291,456 bytes (6 MiB)"),
    Case("text/plain", b"hello", "text/plain", status=415, message="'text/plain' is not supported"),
    Case("missing Content-Type", IMAGE, None, status=415, message="no Content-Type is not supported"),
    Case("multipart/form-data", b"--x\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\n" + IMAGE + b"\r\n--x--",
         "multipart/form-data; boundary=x", status=415, message="'multipart/form-data' is not supported"),
    Case("no model deployed yet", IMAGE, serving="no model", status=503, message="no model is deployed yet"),
    Case("endpoint still Creating", IMAGE, serving="Creating", status=503,
         message="endpoint dogbreeds is Creating, not InService"),
    Case("endpoint Failed", IMAGE, serving="Failed", status=503, message="endpoint dogbreeds is Failed, not InService"),
    Case("endpoint answers 500", IMAGE, forwarded=True, reply=(500, {"message": "CUDA error: out of memory"}),
         status=502, message="the model failed on this input: CUDA error: out of memory"),
    Case("endpoint answers something not JSON", IMAGE, forwarded=True, reply=(200, b"<html>gateway</html>"),
         status=502, message="the endpoint answered something that is not JSON (20 bytes)"),
    Case("connection to the endpoint lost", IMAGE, status=502, message="could not be reached",
         fault=ConnectionClosedError(endpoint_url="https://runtime.sagemaker.us-east-1.amazonaws.com")),
]


def serve(aws, serving: Optional[str]) -> None:
    """Write the state /predict reads: a deployed model and the endpoint in ``serving`` status."""
    deployed = None if serving == "no model" else DeployedModel(
        model_name=names.model_name(DATASET, "m1"), dataset=DATASET, marker="m1", test_acc=0.85,
        training_job=names.training_job_name(DATASET, "m1"))
    endpoint = None if serving in (None, "no model") else Endpoint(ENDPOINT, serving, None, T0)
    aws.s3.put_object(Bucket=BUCKET, Key=STATE_KEY, Body=PipelineState(deployed=deployed, endpoint=endpoint).to_json())


def send(aws, client, case: Case):
    """(response, number of endpoint invocations it caused)."""
    serve(aws, case.serving)
    aws.endpoint_replies.clear()
    if case.reply:
        aws.endpoint_replies.append(case.reply)
    headers = {} if case.content_type is None else {"Content-Type": case.content_type}
    before = len(aws.invocations)
    runtime = aws.plane.runtime
    if case.fault is not None:
        def invoke_endpoint(**kwargs):
            raise case.fault
        runtime.invoke_endpoint = invoke_endpoint
    try:
        response = client.http.post(f"/predict{case.query}", headers=headers, body=case.body)
    finally:
        vars(runtime).pop("invoke_endpoint", None)
    return response, len(aws.invocations) - before


@dataclass(frozen=True)
class Good:
    id: str
    body: bytes
    content_type: str
    forwarded_type: str
    query: str = ""
    accept: str = JSON
    serving: str = "InService"


GOOD_REQUESTS = [
    Good("JPEG as image/jpeg", IMAGE, "image/jpeg", "image/jpeg"),
    Good("JPEG as application/octet-stream", IMAGE, "application/octet-stream", "application/octet-stream"),
    Good("JPEG as application/x-image", IMAGE, "application/x-image", "application/x-image"),
    Good("PNG as image/png", PNG, "image/png", "image/png"),
    Good("top_k as a query parameter", IMAGE, "image/jpeg", "image/jpeg", query="?top_k=2",
         accept="application/json; top_k=2"),
    Good("top_k=0, which the handlers clamp to 1", IMAGE, "image/jpeg", "image/jpeg", query="?top_k=0",
         accept="application/json; top_k=0"),
    Good("base64 JSON image", js({"image": B64}), JSON, JSON),
    Good("base64 JSON image as a data URL", js({"image": "data:image/jpeg;base64," + B64}), JSON, JSON),
    Good("base64 JSON images: the body and its top_k go as they came, the query's top_k in Accept",
         js({"images": [B64, b64(PNG)], "top_k": 3}), "application/json; charset=utf-8", JSON, query="?top_k=2",
         accept="application/json; top_k=2"),
    Good("explain as a query parameter: a Content-Type parameter for the handlers", IMAGE, "image/jpeg",
         "image/jpeg; explain=true", query="?explain=true&top_k=3", accept="application/json; top_k=3"),
    Good("explain=TRUE on JSON", js({"image": B64}), JSON, "application/json; explain=true", query="?explain=TRUE"),
    Good("explain=false asks for nothing", IMAGE, "image/png", "image/png", query="?explain=false"),
    Good("explain in the JSON goes as it came", js({"image": B64, "explain": True}), JSON, JSON),
    Good("an Updating endpoint still serves its model", IMAGE, "image/jpeg", "image/jpeg", serving="Updating"),
]


@pytest.fixture(scope="class")
def served():
    """One moto world for a whole class of /predict cases (each case writes the state it needs)."""
    with FakeAws() as aws, Client(chalice_app.app) as client:
        yield aws, client


class TestPredictCorpus:
    @pytest.mark.parametrize("case", BAD_REQUESTS, ids=lambda c: c.id)
    def test_a_bad_request_gets_its_status_and_a_message(self, served, case):
        response, forwarded = send(*served, case)
        assert response.status_code == case.status
        assert response.headers["Content-Type"] == "application/json"
        body = response.json_body
        assert case.message in body["Message"] and body["Code"]
        assert forwarded == int(case.forwarded)           # a refusal in Lambda costs no endpoint invocation
        if case.status == 415:
            assert all(media_type in body["Message"] for media_type in SUPPORTED_TYPES)

    @pytest.mark.parametrize("good", GOOD_REQUESTS, ids=lambda g: g.id)
    def test_a_good_request_is_forwarded_exactly(self, served, good):
        aws, client = served
        serve(aws, good.serving)
        reply = endpoint_reply(("Akita", good.id[:20]), (0.7, 0.3))
        aws.endpoint_replies[:] = [(200, reply)]
        response = client.http.post(f"/predict{good.query}", headers={"Content-Type": good.content_type},
                                    body=good.body)
        assert response.status_code == 200 and response.json_body == reply
        assert aws.invocations[-1] == {"EndpointName": ENDPOINT, "Body": good.body,
                                       "ContentType": good.forwarded_type, "Accept": good.accept}

    def test_the_server_survives_the_whole_corpus_and_never_answers_500(self, served):
        aws, client = served
        statuses = {case.id: send(aws, client, case)[0].status_code for case in BAD_REQUESTS}
        assert statuses == {case.id: case.status for case in BAD_REQUESTS}
        assert 500 not in statuses.values()
        serve(aws, "InService")
        aws.endpoint_replies[:] = [(200, endpoint_reply(("Akita",), (1.0,)))]
        after = post_image(client, IMAGE)
        assert after.status_code == 200 and after.json_body == endpoint_reply(("Akita",), (1.0,))


def test_a_serverless_endpoint_takes_at_most_4_mib():
    with FakeAws(hosting=HostingConfig(serverless=True)) as aws, Client(chalice_app.app) as client:
        serve(aws, "InService")
        limit = 4 * 2**20
        too_big = post_image(client, b"\xff\xd8\xff" + bytes(limit - 2))
        assert too_big.status_code == 413
        assert "the body is 4,194,305 bytes; the endpoint accepts at most 4,194,304 bytes (4 MiB)" \
            in too_big.json_body["Message"]
        assert aws.invocations == []
        just_fits = b"\xff\xd8\xff" + bytes(limit - 3)
        assert post_image(client, just_fits).status_code == 200
        assert aws.invocations[-1]["Body"] == just_fits
