"""``POST /predict`` across the Lambda/handler boundary: one request corpus, both sides.

Each request goes through the route's request builder (``chalicelib.predict.endpoint_request``, what
Lambda checks and forwards) and through the endpoint's handlers (``input_fn`` -> ``predict_fn`` ->
``output_fn`` with the Accept header the route built, on a tiny model made here). The contract: what
the route forwards, the handler serves, with the top_k the request asked for; what the route refuses,
the handler refuses too, with the same status, unless the corpus names the route's reason for being
stricter (the API's own rules: a declared media type, a query parameter that cannot travel in a
header). Lambda owns the media type, the payload limit and the top_k query parameter; the handler owns
the image bytes and the JSON document. A second copy of either side's rule would show up here.
"""

from __future__ import annotations

import base64
import io
import json
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pytest
import torch
from PIL import Image, features
from torch import nn

from chalicelib import predict
from model_code import inference as inf

LABELS = [f"Breed_{i}" for i in range(1, 11)]
CLASSES = [f"{i:03d}.{label}" for i, label in enumerate(LABELS, 1)]
CONTRACT_DEFAULT_TOP_K = 5                      # DESIGN.md, Contract 2
LIMIT = predict.payload_limit(serverless=False)
JSON = "application/json"


def tiny_model() -> inf.LoadedModel:
    """Ten classes, 16 px, a network of one linear layer over the mean colour."""
    torch.manual_seed(0)
    network = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, len(CLASSES))).eval()
    return inf.LoadedModel(network=network, classes=CLASSES, labels=LABELS, image_size=16,
                           device=torch.device("cpu"), transform=inf.eval_transform(16))


MODEL = tiny_model()


def image(fmt: str, size=(20, 14), seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, fmt)
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def js(document) -> bytes:
    return json.dumps(document).encode()


JPEG, PNG = image("JPEG"), image("PNG")
WEBP_DECODABLE = features.check("webp")


@dataclass(frozen=True)
class Request:
    """One ``POST /predict``: its body, Content-Type and ``?top_k=`` text, and what both sides should say."""
    id: str
    body: bytes
    content_type: Optional[str] = "image/jpeg"
    query_top_k: Optional[str] = None
    status: Optional[int] = None     # what the handler answers; None: it serves the request
    top_k: Optional[int] = None      # what the request asks for (JSON field, else query); None: the default
    images: int = 1
    route_refuses: Optional[int] = None   # the route's status where it is stricter than the handler by design
    because: str = ""                     # ... and why


CORPUS = [
    # image bytes of every format the handler decodes, under every image media type
    Request("JPEG as image/jpeg", JPEG),
    Request("PNG as image/png", PNG, "image/png"),
    Request("GIF as application/x-image", image("GIF"), "application/x-image"),
    Request("BMP as application/octet-stream", image("BMP"), "application/octet-stream"),
    Request("TIFF as image/jpeg (the format is sniffed)", image("TIFF"), "image/jpeg"),
    *([Request("WebP as application/octet-stream", image("WEBP"), "application/octet-stream")]
      if WEBP_DECODABLE else []),
    Request("media type in capitals with a parameter", PNG, "Image/PNG; charset=binary"),
    # ?top_k with image bytes: the handler's rule for the Accept parameter
    Request("?top_k=2", JPEG, query_top_k="2", top_k=2),
    Request("?top_k=10", PNG, "image/png", query_top_k="10", top_k=10),
    Request("?top_k=0 is clamped to 1", JPEG, query_top_k="0", top_k=0),
    Request("?top_k=1000 is clamped to the classes", JPEG, query_top_k="1000", top_k=1000),
    Request("?top_k with blanks around it", JPEG, query_top_k=" 3 ", top_k=3),
    Request("?top_k=007", JPEG, query_top_k="007", top_k=7),
    Request("?top_k=-1", JPEG, query_top_k="-1", status=400),
    Request("?top_k=abc", JPEG, query_top_k="abc", status=400),
    Request("?top_k=1.5", JPEG, query_top_k="1.5", status=400),
    Request("?top_k= (empty)", JPEG, query_top_k="", status=400),
    Request("?top_k=² (a digit, not ASCII)", JPEG, query_top_k="\u00b2", status=400),
    Request("?top_k of 5000 digits", JPEG, query_top_k="9" * 5000, status=400),
    Request("?top_k with header syntax", JPEG, query_top_k="3, text/html", route_refuses=400,
            because="a query value is put into the Accept header only when it is a number"),
    # JSON: the handler reads the document, its images and its top_k
    Request("JSON image", js({"image": b64(JPEG)}), JSON),
    Request("JSON image with charset", js({"image": b64(PNG)}), "application/json; charset=utf-8"),
    Request("JSON images", js({"images": [b64(JPEG), b64(PNG), b64(image("GIF"))]}), JSON, images=3),
    Request("JSON top_k 3", js({"image": b64(JPEG), "top_k": 3}), JSON, top_k=3),
    Request('JSON top_k "3" (a string)', js({"image": b64(JPEG), "top_k": "3"}), JSON, status=400),
    Request("JSON images with top_k 2", js({"images": [b64(JPEG), b64(PNG)], "top_k": 2}), JSON, top_k=2,
            images=2),
    Request("JSON without top_k takes ?top_k", js({"image": b64(JPEG)}), JSON, query_top_k="4", top_k=4),
    Request("JSON top_k wins over ?top_k", js({"image": b64(JPEG), "top_k": 2}), JSON, query_top_k="4", top_k=2),
    Request("JSON top_k null is no top_k", js({"image": b64(JPEG), "top_k": None}), JSON),
    Request("JSON top_k true", js({"image": b64(JPEG), "top_k": True}), JSON, status=400),
    Request("JSON top_k 2.0", js({"image": b64(JPEG), "top_k": 2.0}), JSON, status=400),
    Request("JSON top_k -1", js({"image": b64(JPEG), "top_k": -1}), JSON, status=400),
    Request("line-wrapped base64", js({"image": base64.encodebytes(JPEG).decode()}), JSON),
    Request("data: URL", js({"image": "data:image/png;base64," + b64(PNG)}), JSON),
    Request("data: URL without ;base64", js({"image": "data:image/png," + b64(PNG)}), JSON, status=400),
    Request("URL-safe base64 without padding", js({"image": base64.urlsafe_b64encode(PNG).decode().rstrip("=")}),
            JSON),
    Request("bad base64", js({"image": "not base64!"}), JSON, status=400),
    Request("base64 of text", js({"image": b64(b"hello, this is not a picture")}), JSON, status=400),
    Request("empty base64 string", js({"image": ""}), JSON, status=400),
    Request("a bad image among images", js({"images": [b64(JPEG), "%%%"]}), JSON, status=400),
    Request("a number among images", js({"images": [b64(JPEG), 42]}), JSON, status=400),
    Request("empty images list", js({"images": []}), JSON, status=400),
    Request("64 images", js({"images": [b64(PNG)] * 64}), JSON, images=64),
    Request("65 images", js({"images": [b64(PNG)] * 65}), JSON, status=413),
    Request("JSON array", js([b64(JPEG)]), JSON, status=400),
    Request("JSON with neither image nor images", js({"top_k": 3}), JSON, status=400),
    Request("JSON with both image and images", js({"image": b64(JPEG), "images": [b64(JPEG)]}), JSON, status=400),
    Request("JSON not UTF-8", b'{"image": "\xff\xfe"}', JSON, status=400),
    Request("malformed JSON", b'{"image": ', JSON, status=400),
    # bodies the handler cannot decode
    Request("empty image body", b"", status=400),
    Request("empty JSON body", b"", JSON, status=400),
    Request("random bytes as image/jpeg", b"\x00" + np.random.default_rng(7).bytes(511), status=400),
    Request("text as image/png", b"this is text, not a PNG", "image/png", status=400),
    Request("truncated JPEG header", b"\xff\xd8\xff", status=400),
    Request("truncated PNG", PNG[: len(PNG) // 2], "image/png", status=400),
    # size and media type
    Request("a JPEG padded to exactly the payload limit", JPEG + bytes(LIMIT - len(JPEG))),
    Request("one byte over the payload limit", JPEG + bytes(LIMIT - len(JPEG) + 1), status=413),
    Request("JSON over the payload limit", js({"image": "A" * LIMIT}), JSON, status=413),
    Request("text/plain", b"hello", "text/plain", status=415),
    Request("multipart/form-data", b"--x\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\n" + JPEG + b"\r\n--x--",
            "multipart/form-data; boundary=x", status=415),
    Request("image/gif is not a supported type", image("GIF"), "image/gif", status=415),
    Request("no Content-Type", JPEG, None, route_refuses=415,
            because="the API asks for a declared media type; the handler reads a missing one as bytes"),
]


@dataclass(frozen=True)
class Outcome:
    """What one side made of a request."""
    status: Optional[int]            # None: served (route: forwarded)
    message: str = ""
    top_k: Optional[int] = None      # predictions per image (handler); the Accept parameter (route)
    images: Optional[int] = None


def through_the_route(request: Request):
    """(Outcome, EndpointRequest or None): what Lambda answers or forwards."""
    try:
        forwarded = predict.endpoint_request(request.body, request.content_type, request.query_top_k, LIMIT)
    except predict.ApiError as error:
        return Outcome(error.status, error.message), None
    _, _, parameter = forwarded.accept.partition("top_k=")
    return Outcome(None, forwarded.accept, top_k=int(parameter) if parameter else None), forwarded


def through_the_handler(body, content_type, accept) -> Outcome:
    """input_fn -> predict_fn -> output_fn, as the serving toolkit chains them."""
    try:
        text, _ = inf.output_fn(inf.predict_fn(inf.input_fn(body, content_type), MODEL), accept)
    except inf.ClientError as error:
        return Outcome(error.status_code, error.message)
    reply = json.loads(text)
    rows = [entry["predictions"] for entry in reply["results"]] if "results" in reply else [reply["predictions"]]
    assert len({len(row) for row in rows}) == 1
    return Outcome(None, top_k=len(rows[0]), images=len(rows))


def as_sent_without_the_route(request: Request) -> str:
    """The Accept a pass-through would send: the query's top_k as it is."""
    return JSON if request.query_top_k is None else f"{JSON}; top_k={request.query_top_k}"


@pytest.mark.parametrize("case", CORPUS, ids=lambda r: r.id)
def test_the_route_refuses_only_what_the_handler_refuses_and_forwards_the_top_k_asked_for(case):
    """The route accepts => the handler accepts, with the top_k asked for; both refuse with one status."""
    route, forwarded = through_the_route(case)
    if forwarded is None:
        handler = through_the_handler(case.body, case.content_type, as_sent_without_the_route(case))
        sides = f"route: {route}\nhandler: {handler}"
        if case.route_refuses is not None:          # the route is stricter here, on purpose
            assert route.status == case.route_refuses and handler.status is None, f"{sides}\n{case.because}"
        else:
            assert route.status == handler.status == case.status, sides
        return

    handler = through_the_handler(forwarded.body, forwarded.content_type, forwarded.accept)
    sides = f"route: {route}\nhandler: {handler}"
    assert case.route_refuses is None, sides
    # Lambda reads no body: it forwards it as it came, and the only top_k it sends is the query's
    query = None if case.query_top_k is None else int(case.query_top_k)
    assert forwarded.body == case.body and route.top_k == query, sides
    assert handler.status == case.status, sides
    if handler.status is None:
        asked = CONTRACT_DEFAULT_TOP_K if case.top_k is None else case.top_k
        assert handler.top_k == max(1, min(asked, len(CLASSES))) and handler.images == case.images, sides
    else:   # the handler's refusal is the API's answer, status and message
        answer = predict.endpoint_failure("ModelError", "Received client error from primary", handler.status,
                                          json.dumps({"message": handler.message}))
        assert (answer.status, answer.message) == (handler.status, handler.message), sides


def test_the_route_and_the_handler_name_the_same_media_types():
    assert predict.IMAGE_TYPES == inf.IMAGE_CONTENT_TYPES
    assert predict.SUPPORTED_TYPES == inf.SUPPORTED_CONTENT_TYPES


@pytest.mark.skipif("DOGBREEDS_MAX_BODY_BYTES" in os.environ, reason="the handler's limit is overridden")
def test_the_route_payload_limits_fit_the_handlers_body_limit():
    assert predict.payload_limit(serverless=False) == inf.MAX_BODY_BYTES == 6 * 2**20
    assert predict.payload_limit(serverless=True) == 4 * 2**20


def test_the_default_top_k_is_contract_2s_and_only_the_handler_knows_it():
    assert inf.DEFAULT_TOP_K == CONTRACT_DEFAULT_TOP_K
    forwarded = predict.endpoint_request(JPEG, "image/jpeg", None, LIMIT)
    assert forwarded.accept == JSON                  # no top_k asked: none sent, the handler's default applies


@pytest.mark.parametrize("value", ["true", "TRUE", " false ", "False", "yes", "1", "", "truee", "on"])
def test_the_route_reads_the_explain_query_parameter_by_the_handlers_rule(value):
    """?explain=V is accepted by the route exactly when the handler accepts explain=V as a Content-Type
    parameter, with the same meaning; what the route forwards, the handler reads back."""
    try:
        route = predict.explain_parameter(value)
    except predict.ApiError as error:
        route = error.status
    try:
        handler = inf.input_fn(JPEG, f"image/jpeg; explain={value}").explain
    except inf.ClientError as error:
        handler = error.status_code
    assert route == handler
    if route is True:
        forwarded = predict.endpoint_request(JPEG, "image/jpeg", None, LIMIT, value)
        assert inf.input_fn(forwarded.body, forwarded.content_type).explain is True
