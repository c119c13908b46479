"""The local endpoint server (dogbreeds/serving.py): SageMaker's container protocol over the handlers
shipped in a model directory's code/inference.py, with dynamic batching and model swaps.

Model directories are built as the training job writes them (model.pth state_dict, model.json, and
code/inference.py copied from model_code/), like tests/test_inference_handlers.py does. The network is
a real resnet18 at 32 px with random weights and a scaled-up head, so different images get different
answers; every served answer is compared with the handlers called directly on the same bytes.
Every server binds 127.0.0.1 on a free port and is stopped by the test that started it.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import logging
import shutil
import socket
import threading
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dogbreeds import serving, serving_threads
from dogbreeds.serving import ModelServer
from dogbreeds.serving_http import Reply
from dogbreeds.synthetic import render_image
from model_code import inference as inf

CLASSES_A = ["001.Affenpinscher", "002.Afghan_hound", "003.Airedale_terrier", "004.Akita",
             "005.Alaskan_malamute"]
CLASSES_B = ["101.Maltese", "102.Manchester_terrier", "103.Mastiff", "104.Miniature_schnauzer",
             "105.Neapolitan_mastiff"]
IMAGE_SIZE = 32  # small input keeps the CPU forward passes fast; ResNets pool adaptively
# Appended to model B's code/inference.py: proves each model runs the code shipped in its own directory.
MARKED_OUTPUT = '''

_plain_output_fn = output_fn


def output_fn(prediction, accept):
    body, content_type = _plain_output_fn(prediction, accept)
    doc = json.loads(body)
    doc["served_by"] = "model B code"
    return json.dumps(doc), content_type
'''
# Appended to a model's code: a forward fails when the batch holds an all-black image, and input_fn
# fails with a non-client error for the body b"BOOM".
FAULTY_CODE = '''

_plain_input_fn = input_fn


def input_fn(body, content_type):
    if body == b"BOOM":
        raise RuntimeError("decoder exploded")
    return _plain_input_fn(body, content_type)


class _FaultyModel(LoadedModel):
    def probabilities(self, batch):
        black = torch.tensor([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]).view(1, 3, 1, 1)
        if ((batch - black).abs().amax(dim=(1, 2, 3)) < 1e-4).any():
            raise RuntimeError("forward exploded on a black image")
        return super().probabilities(batch)


_plain_model_fn = model_fn


def model_fn(model_dir):
    loaded = _plain_model_fn(model_dir)
    return _FaultyModel(**{f: getattr(loaded, f) for f in loaded.__dataclass_fields__})
'''


# ----------------------------------------------------------------------------------------- helpers

def write_model_dir(path: Path, classes=CLASSES_A, seed: int = 0, extra_code: str = "") -> Path:
    """model.pth (resnet18, random weights, head scaled x10), model.json and code/inference.py."""
    (path / "code").mkdir(parents=True)
    torch.manual_seed(seed)
    net = inf.build_network("resnet18", len(classes))
    with torch.no_grad():
        net.fc.weight.mul_(10)  # spread the softmax so that images differ clearly
    torch.save(net.state_dict(), path / "model.pth")
    meta = {"format_version": 1, "arch": "resnet18", "image_size": IMAGE_SIZE, "classes": classes,
            "normalization": {"mean": list(inf.IMAGENET_MEAN), "std": list(inf.IMAGENET_STD)},
            "hyperparameters": {}, "metrics": {}, "dataset": {}, "versions": {}}
    (path / "model.json").write_text(json.dumps(meta))
    code = Path(inf.__file__).read_text(encoding="utf-8") + extra_code
    (path / "code" / "inference.py").write_text(code, encoding="utf-8")
    return path


def encode(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def picture(index: int, size=(120, 90)) -> Image.Image:
    return render_image(index, np.random.default_rng(index), size)


@pytest.fixture(scope="module")
def images() -> list[tuple[bytes, str]]:
    """16 different images as (bytes, content type): synthetic photos as JPEG and PNG, noise, flat colours."""
    out = []
    for i in range(12):
        img = picture(i, (96 + 8 * i, 72 + 4 * i))
        out.append((encode(img, "JPEG", quality=90), "image/jpeg") if i % 3 else (encode(img, "PNG"), "image/png"))
    noise = Image.fromarray(np.random.default_rng(5).integers(0, 256, (64, 80, 3), np.uint8))
    out.append((encode(noise, "PNG"), "image/png"))
    out.append((encode(Image.new("RGB", (50, 40), (250, 240, 20)), "JPEG"), "image/jpeg"))
    out.append((encode(Image.new("RGB", (60, 60), (20, 30, 200)), "PNG"), "image/png"))
    out.append((encode(picture(40, (300, 200)), "JPEG", quality=75), "application/x-image"))
    return out


@pytest.fixture(scope="module")
def model_a(tmp_path_factory) -> Path:
    return write_model_dir(tmp_path_factory.mktemp("model_a"))


@pytest.fixture(scope="module")
def model_b(tmp_path_factory) -> Path:
    return write_model_dir(tmp_path_factory.mktemp("model_b"), CLASSES_B, seed=1, extra_code=MARKED_OUTPUT)


@pytest.fixture(scope="module")
def faulty_model(tmp_path_factory) -> Path:
    return write_model_dir(tmp_path_factory.mktemp("faulty"), extra_code=FAULTY_CODE)


@pytest.fixture(scope="module")
def direct_a(model_a):
    """The handlers called directly, in this process, from model_code (not from the server's copy)."""
    model = inf.model_fn(model_a)

    def predict(body, content_type, accept="application/json"):
        text, _ = inf.output_fn(inf.predict_fn(inf.input_fn(body, content_type), model), accept)
        return json.loads(text)
    return predict


@pytest.fixture
def server(model_a):
    with ModelServer(model_a, torch_threads=1) as srv:
        yield srv


def request(url_or_server, method: str, path: str, body: bytes | None = None, headers=None,
            conn: http.client.HTTPConnection | None = None):
    """One HTTP request; returns (status, headers dict with lower-case names, parsed JSON or raw bytes)."""
    own = conn is None
    if own:
        port = url_or_server.port if isinstance(url_or_server, ModelServer) else int(url_or_server)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        raw = response.read()
        reply_headers = {k.lower(): v for k, v in response.getheaders()}
    finally:
        if own:
            conn.close()
    try:
        return response.status, reply_headers, json.loads(raw) if raw else None
    except ValueError:
        return response.status, reply_headers, raw


def invoke(srv, body: bytes, content_type: str | None = "image/jpeg", accept: str | None = "application/json",
           conn=None):
    headers = {}
    if content_type is not None:
        headers["Content-Type"] = content_type
    if accept is not None:
        headers["Accept"] = accept
    return request(srv, "POST", "/invocations", body, headers, conn)


def raw_exchange(port: int, data: bytes, timeout: float = 10.0) -> tuple[bytes, float]:
    """Send raw bytes, read until the server closes; returns (response bytes, seconds until closed)."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks), time.perf_counter() - started


def status_and_json(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def assert_same_predictions(served: dict, direct: dict) -> None:
    key = "results" if "results" in direct else None
    pairs = (zip([r["predictions"] for r in served["results"]], [r["predictions"] for r in direct["results"]])
             if key else [(served["predictions"], direct["predictions"])])
    for got, want in pairs:
        assert [(p["label"], p["class"], p["index"]) for p in got] == \
            [(p["label"], p["class"], p["index"]) for p in want]
        assert [p["probability"] for p in got] == pytest.approx([p["probability"] for p in want], abs=1e-5)


def assert_still_serving(srv, images, direct) -> None:
    body, content_type = images[1]
    status, _, doc = invoke(srv, body, content_type)
    assert status == 200
    assert_same_predictions(doc, direct(body, content_type))


# ----------------------------------------------------------------------------------------- protocol

def test_ping_and_served_predictions_equal_the_handlers(server, images, direct_a):
    status, headers, doc = request(server, "GET", "/ping")
    assert status == 200 and doc == {"status": "healthy"}
    status, headers, _ = request(server, "HEAD", "/ping")
    assert status == 200
    assert server.url == f"http://127.0.0.1:{server.port}" and server.port > 0

    tops = set()
    for body, content_type in images:
        status, headers, doc = invoke(server, body, content_type)
        assert status == 200 and headers["content-type"] == "application/json"
        want = direct_a(body, content_type)
        assert_same_predictions(doc, want)
        assert len(doc["predictions"]) == len(CLASSES_A)  # top-5 default, 5 classes
        tops.add(doc["predictions"][0]["class"])
    assert len(tops) >= 2, "the test model must tell some of these images apart"

    # top_k from the Accept parameter, and Accept missing or */* means JSON (as the toolkit does)
    body, content_type = images[2]
    status, _, doc = invoke(server, body, content_type, accept="application/json; top_k=2")
    assert status == 200
    assert_same_predictions(doc, direct_a(body, content_type, "application/json; top_k=2"))
    assert len(doc["predictions"]) == 2
    for accept in (None, "*/*"):
        status, headers, doc = invoke(server, body, content_type, accept=accept)
        assert status == 200 and headers["content-type"] == "application/json"
        assert_same_predictions(doc, direct_a(body, content_type))

    # JSON with several base64 images: one result per image, in order, each its own answer
    payload = json.dumps({"images": [base64.b64encode(b).decode() for b, _ in images[:5]], "top_k": 3}).encode()
    status, _, doc = invoke(server, payload, "application/json")
    assert status == 200 and len(doc["results"]) == 5
    assert_same_predictions(doc, direct_a(payload, "application/json"))
    stats = server.stats()
    assert stats["batch_sizes"].get("5") == 1  # the five images of that request: one forward of 5
    assert stats["status"]["200"] == len(images) + 4 and stats["requests"] == len(images) + 4


def test_invoke_in_this_process_answers_as_the_http_front_does(server, images, direct_a):
    body, content_type = images[3]
    reply = server.invoke(body, content_type)  # no Accept: JSON, as over HTTP
    assert reply.status == 200 and reply.content_type == "application/json"
    assert_same_predictions(json.loads(reply.body), direct_a(body, content_type))
    status, _, doc = invoke(server, body, content_type)
    assert status == 200 and doc == json.loads(reply.body)
    reply = server.invoke(body, content_type, "application/json; top_k=2")
    assert reply.status == 200 and len(json.loads(reply.body)["predictions"]) == 2

    reply = server.invoke(b"", "image/jpeg")
    assert reply.status == 400 and reply.content_type == "application/json"
    assert "empty body" in json.loads(reply.body)["message"]
    limit = inf.MAX_BODY_BYTES
    reply = server.invoke(b"\xff" * (limit + 1), "image/jpeg")  # refused before the handlers see it
    assert reply == Reply.error(413, f"request body is {limit + 1:,} bytes, over the limit of {limit:,} bytes "
                                     f"({limit / 2**20:g} MiB)")
    stats = server.stats()
    assert stats["status"] == {"200": 3, "400": 1, "413": 1} and stats["in_flight"] == 0


def test_concurrent_requests_get_their_own_answers_and_share_forwards(model_a, images, direct_a):
    expected = [direct_a(body, content_type) for body, content_type in images]
    assert len({json.dumps(e["predictions"][0]) for e in expected}) == len(images)  # all different
    rounds, failures = 4, []
    with ModelServer(model_a, max_wait_ms=200, torch_threads=1) as srv:
        barrier = threading.Barrier(len(images))

        def client(i: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
            try:
                for r in range(rounds):
                    body, content_type = images[(i + r) % len(images)]
                    barrier.wait()
                    status, _, doc = invoke(srv, body, content_type, conn=conn)
                    assert status == 200, doc
                    assert_same_predictions(doc, expected[(i + r) % len(images)])
            except Exception as exc:  # collected: pytest does not see assertions in threads
                failures.append(f"client {i}: {exc!r}")
                barrier.abort()
            finally:
                conn.close()

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(images))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats = srv.stats()
    assert not failures, failures
    total = len(images) * rounds
    assert stats["status"] == {"200": total} and stats["images"] == total
    sizes = {int(k): v for k, v in stats["batch_sizes"].items()}
    assert sum(k * v for k, v in sizes.items()) == total
    assert max(sizes) > 1, f"no forward batched two requests: {sizes}"
    assert stats["forwards"] < total and max(sizes) <= srv.max_batch_size


def test_a_lone_request_is_not_delayed_by_the_batching_window(model_a, images):
    body, content_type = images[0]
    with ModelServer(model_a, max_wait_ms=500, torch_threads=1) as srv:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
        try:
            assert invoke(srv, body, content_type, conn=conn)[0] == 200  # warm-up
            latencies = []
            for _ in range(3):
                started = time.perf_counter()
                assert invoke(srv, body, content_type, conn=conn)[0] == 200
                latencies.append(time.perf_counter() - started)
        finally:
            conn.close()
        stats = srv.stats()
    assert sorted(latencies)[1] < 0.2, f"a lone request waited for the 500 ms window: {latencies}"
    assert stats["batch_sizes"] == {"1": 4}


def test_a_request_larger_than_max_batch_size_runs_as_its_own_batch(model_a, images, direct_a):
    payload = json.dumps({"images": [base64.b64encode(b).decode() for b, _ in images[:3]]}).encode()
    with ModelServer(model_a, max_batch_size=2, torch_threads=1) as srv:
        status, _, doc = invoke(srv, payload, "application/json")
        assert srv.stats()["batch_sizes"] == {"3": 1}
    assert status == 200
    assert_same_predictions(doc, direct_a(payload, "application/json"))


# --------------------------------------------------------------------------------------- bad input

def _truncated_jpeg() -> bytes:
    data = encode(picture(3, (200, 150)), "JPEG", quality=90)
    return data[: len(data) // 2]


@pytest.fixture(scope="module")
def huge_png() -> bytes:
    """8000x6000 = 48 MP of one grey: a 60 kB file over the handlers' 40 MP limit."""
    return encode(Image.new("L", (8000, 6000), 128), "PNG")


BAD_INPUTS = {
    "empty body": (lambda: b"", "image/jpeg", None, 400, "empty body"),
    "garbage bytes": (lambda: b"\x00\x01garbage" * 50, "image/jpeg", None, 400, "not an image"),
    "truncated jpeg": (_truncated_jpeg, "image/jpeg", None, 400, "truncated"),
    "unsupported content type": (lambda: b"hello", "text/plain", None, 415, "unsupported Content-Type"),
    "malformed json": (lambda: b'{"image": ', "application/json", None, 400, "invalid JSON"),
    "json without images": (lambda: b'{"images": []}', "application/json", None, 400, "empty list"),
    "bad base64": (lambda: b'{"image": "***"}', "application/json", None, 400, "not valid base64"),
    "unsupported accept": (lambda: encode(picture(1), "PNG"), "image/png", "text/csv", 406, "cannot reply"),
    "huge pixel count": ("huge_png", "image/png", None, 413, "pixels"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_gets_the_handlers_4xx_and_the_server_keeps_serving(server, images, direct_a, name, request):
    make, content_type, accept, status, fragment = BAD_INPUTS[name]
    body = request.getfixturevalue(make) if isinstance(make, str) else make()
    got, headers, doc = invoke(server, body, content_type, accept=accept or "application/json")
    assert got == status, doc
    assert headers["content-type"] == "application/json"
    assert fragment in doc["message"]
    with pytest.raises(inf.ClientError) as info:  # the same verdict as the handlers give directly
        direct_a(body, content_type, accept or "application/json")
    assert info.value.status_code == status and info.value.message == doc["message"]
    assert_still_serving(server, images, direct_a)
    assert server.stats()["status"] == {str(status): 1, "200": 1}


def test_body_over_the_limit_is_413_before_the_body_is_read(server, images, direct_a):
    limit = inf.MAX_BODY_BYTES
    # Headers promise limit + 1 bytes; only 10 are ever sent. The answer must come anyway, then close.
    head = (f"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
            f"Content-Length: {limit + 1}\r\n\r\n").encode() + b"0123456789"
    raw, seconds = raw_exchange(server.port, head)
    status, doc = status_and_json(raw)
    assert status == 413 and f"over the limit of {limit:,} bytes" in doc["message"]
    assert seconds < 5 and b"connection: close" in raw.lower()
    # Expect: 100-continue gets the 413 instead of a 100, so the client never uploads the body.
    head = (f"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nExpect: 100-continue\r\n"
            f"Content-Length: {limit + 1}\r\n\r\n").encode()
    raw, _ = raw_exchange(server.port, head)
    assert raw.startswith(b"HTTP/1.1 413")
    # A body exactly at the limit is read and judged by the handlers (not an image: 400).
    status, _, doc = invoke(server, b"\xff" * limit, "image/jpeg")
    assert status == 400 and "not an image" in doc["message"]
    assert_still_serving(server, images, direct_a)


def test_protocol_errors(server, images, direct_a):
    raw, _ = raw_exchange(server.port, b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n\r\n")
    status, doc = status_and_json(raw)
    assert status == 411 and "Content-Length is required" in doc["message"]
    raw, _ = raw_exchange(server.port, b"POST /invocations HTTP/1.1\r\nHost: x\r\n"
                                       b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    status, doc = status_and_json(raw)
    assert status == 411 and "chunked" in doc["message"]
    raw, _ = raw_exchange(server.port, b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: -3\r\n\r\n")
    assert status_and_json(raw)[0] == 400

    status, _, doc = request(server, "GET", "/nowhere")
    assert status == 404 and "/nowhere" in doc["message"]
    status, _, doc = request(server, "POST", "/models", b"abc")
    assert status == 404
    status, headers, doc = request(server, "GET", "/invocations")
    assert status == 405 and headers["allow"] == "POST" and "GET" in doc["message"]
    status, headers, doc = request(server, "POST", "/ping", b"")
    assert status == 405 and headers["allow"] == "GET, HEAD"
    status, _, doc = request(server, "DELETE", "/invocations")
    assert status == 405
    raw, _ = raw_exchange(server.port, b"BREW /invocations HTTP/1.1\r\nHost: x\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 501") and b"application/json" in raw
    assert_still_serving(server, images, direct_a)


def test_an_exception_fails_only_its_own_request_or_batch(faulty_model, images, direct_a, caplog):
    caplog.set_level(logging.ERROR, logger="dogbreeds.serving")
    black = encode(Image.new("RGB", (64, 64), (0, 0, 0)), "PNG")
    with ModelServer(faulty_model, max_batch_size=1, torch_threads=1) as srv:
        status, _, doc = invoke(srv, b"BOOM", "image/jpeg")  # input_fn raises a non-client error
        assert status == 500 and "decoder exploded" in doc["message"]
        status, _, doc = invoke(srv, black, "image/png")     # the forward raises
        assert status == 500 and "forward exploded" in doc["message"]
        assert_still_serving(srv, images, direct_a)

        # Concurrently: with batches of one request, the black images fail and nothing else does.
        results = {}

        def client(i: int) -> None:
            body, content_type = (black, "image/png") if i % 4 == 0 else images[i]
            results[i] = invoke(srv, body, content_type)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats = srv.stats()
    for i, (status, _, doc) in results.items():
        if i % 4 == 0:
            assert status == 500 and "forward exploded" in doc["message"]
        else:
            assert status == 200
            assert_same_predictions(doc, direct_a(*images[i]))
    assert stats["forward_failures"] == 4 and stats["status"] == {"200": 10, "500": 5}
    assert "decoder exploded" in caplog.text and "forward exploded" in caplog.text


def test_a_failed_forward_fails_the_requests_of_its_batch_only(faulty_model, images, direct_a):
    """A JSON request whose list holds a black image fails as a whole; the next batch is fine."""
    black = base64.b64encode(encode(Image.new("RGB", (64, 64), (0, 0, 0)), "PNG")).decode()
    payload = json.dumps({"images": [base64.b64encode(images[0][0]).decode(), black]}).encode()
    with ModelServer(faulty_model, torch_threads=1) as srv:
        status, _, doc = invoke(srv, payload, "application/json")
        assert status == 500
        assert_still_serving(srv, images, direct_a)
        stats = srv.stats()
    assert stats["forwards"] == 2 and stats["forward_failures"] == 1 and stats["images"] == 1


# ----------------------------------------------------------------------------------- swap and stop

def test_swap_under_load_drops_nothing_and_then_serves_the_new_model(model_a, model_b, images):
    replies, failures = [], []
    stop = threading.Event()
    with ModelServer(model_a, torch_threads=1) as srv:
        def hammer(i: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
            n = i
            try:
                while not stop.is_set():
                    body, content_type = images[n % len(images)]
                    n += 1
                    status, _, doc = invoke(srv, body, content_type, conn=conn)
                    replies.append((time.perf_counter(), status, doc))
            except Exception as exc:
                failures.append(repr(exc))
            finally:
                conn.close()

        threads = [threading.Thread(target=hammer, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        while len(replies) < 40 and not failures:
            time.sleep(0.01)
        swap_started = time.perf_counter()
        srv.swap(model_b)
        swapped = time.perf_counter()
        count_at_swap = len(replies)
        while len(replies) < count_at_swap + 40 and not failures:
            time.sleep(0.01)
        stop.set()
        for t in threads:
            t.join()
        status, _, after = invoke(srv, *images[0])
        stats = srv.stats()
    assert not failures, failures
    assert [s for _, s, _ in replies if s != 200] == [], "a request failed during the swap"
    kinds = []
    for finished, _, doc in replies:
        classes = {p["class"] for p in doc["predictions"]}
        assert classes in (set(CLASSES_A), set(CLASSES_B)), classes  # never a mix of two models
        is_b = classes == set(CLASSES_B)
        assert is_b == (doc.get("served_by") == "model B code")  # B's answers come from B's own code
        kinds.append(("B" if is_b else "A", finished))
    assert any(k == "A" and t < swap_started for k, t in kinds)
    assert not any(k == "B" and t < swap_started for k, t in kinds)  # B serves only once loaded
    assert any(k == "B" and t > swapped for k, t in kinds)
    assert status == 200 and after["served_by"] == "model B code"
    assert {p["class"] for p in after["predictions"]} == set(CLASSES_B)
    assert stats["swaps"] == 1 and stats["model_version"] == 2 and stats["model_dir"] == str(model_b)


def test_two_models_with_different_code_serve_side_by_side(model_a, model_b, images):
    with ModelServer(model_a, torch_threads=1) as a, ModelServer(model_b, torch_threads=1) as b:
        assert a.port != b.port
        _, _, doc_a = invoke(a, *images[0])
        _, _, doc_b = invoke(b, *images[0])
    assert "served_by" not in doc_a and doc_b["served_by"] == "model B code"
    assert doc_a["predictions"][0]["class"] in CLASSES_A and doc_b["predictions"][0]["class"] in CLASSES_B


def test_a_failed_swap_keeps_the_old_model(server, tmp_path, images, direct_a):
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copytree(Path(server.model_dir) / "code", broken / "code")
    with pytest.raises(RuntimeError, match=r"model\.json not found") as info:
        server.swap(broken)
    assert type(info.value).__name__ == "ModelLoadError"  # raised by the copy's own model_fn
    with pytest.raises(serving.ModelCodeError, match=r"code/inference\.py not found"):
        server.swap(tmp_path)
    assert_still_serving(server, images, direct_a)
    assert server.stats()["swaps"] == 0


def test_stop_closes_the_port_and_leaves_no_thread_running(model_a, images):
    before = set(threading.enumerate())
    srv = ModelServer(model_a, torch_threads=1).start()
    port = srv.port
    idle = http.client.HTTPConnection("127.0.0.1", port, timeout=30)  # a keep-alive connection left open
    assert invoke(srv, *images[0], conn=idle)[0] == 200
    assert request(srv, "GET", "/ping")[0] == 200
    during = set(threading.enumerate()) - before
    assert sum(t.name.startswith("dogbreeds-serving-forward-") for t in during) == srv.forward_workers
    started = time.perf_counter()
    srv.stop()
    assert time.perf_counter() - started < 5
    leftover = [t for t in threading.enumerate() if t not in before]
    assert leftover == [], leftover
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    idle.close()
    srv.stop()  # a second stop is harmless


def test_thread_plan():
    def plan(*args, **kwargs) -> dict:
        return asdict(serving_threads.default_threads(*args, **kwargs))
    # CPU defaults: one single-threaded forward worker per core, all cores for a lone request
    assert plan(2, "cpu") == {"forward_workers": 2, "torch_threads": 1, "lone_threads": 2,
                              "decode_slots": 2, "exclusive_forward": False}
    assert plan(1, "cpu") == {"forward_workers": 1, "torch_threads": 1, "lone_threads": None,
                              "decode_slots": 1, "exclusive_forward": False}
    # one worker with every core: decoding waits while it runs (no oversubscription); no lone team
    assert plan(2, "cpu", torch_threads=2) == {"forward_workers": 1, "torch_threads": 2, "lone_threads": None,
                                               "decode_slots": 2, "exclusive_forward": True}
    assert plan(16, "cpu", torch_threads=4, forward_workers=3)["exclusive_forward"] is False
    assert plan(8, "cuda") == {"forward_workers": 1, "torch_threads": 1, "lone_threads": None,
                               "decode_slots": 8, "exclusive_forward": False}


def test_lone_tuner_uses_the_faster_way_and_re_times_the_other():
    tuner = serving_threads.LoneTuner(explore_every=4, max_interval=64)
    assert tuner.choose() is True           # nothing timed: try the team
    tuner.record(True, 0.300)               # the team is slow (a busy machine)
    assert tuner.choose() is False          # now try one thread
    tuner.record(False, 0.070)
    assert tuner.interval() == 64           # 4 * (0.3 / 0.07) ** 2 = 73, capped: re-time the team rarely
    picks = [tuner.choose() for _ in range(128)]
    assert picks.count(True) == 2 and picks[63] is True and picks[127] is True
    for _ in range(12):                     # the machine got quiet: the team times faster, and close
        tuner.record(True, 0.060)
    assert tuner.seconds_per_image[True] < 0.070 and tuner.interval() == 5  # 4 * (0.07 / 0.06) ** 2
    picks = [tuner.choose() for _ in range(10)]
    assert picks.count(True) == 8 and picks.count(False) == 2


def test_default_threads_and_the_start_log(model_a, images, caplog):
    caplog.set_level(logging.INFO, logger="dogbreeds.serving")
    cores = serving_threads.usable_cores()
    body, content_type = images[0]
    with ModelServer(model_a, max_wait_ms=500) as srv:
        assert srv.host == "127.0.0.1"
        for _ in range(3):
            assert invoke(srv, body, content_type)[0] == 200
        # a lone request that fails (on either lone path) leaves nothing held: the next one is served
        status, _, doc = invoke(srv, b"garbage", "image/jpeg")
        assert status == 400 and "not an image" in doc["message"]
        started = time.perf_counter()
        assert invoke(srv, body, content_type)[0] == 200
        assert time.perf_counter() - started < 0.4  # not 500 ms: no window for a lone request
        stats = srv.stats()
    assert stats["forward_workers"] == cores and stats["torch_threads"] == 1
    assert stats["lone_threads"] == (cores if cores > 1 else None)
    assert stats["batch_sizes"] == {"1": 4}  # lone requests: no window
    if cores > 1:  # the warm-up timed both thread counts for lone requests
        assert stats["lone_ms_per_image"]["team"] > 0 and stats["lone_ms_per_image"]["single"] > 0
    assert f"{cores} usable cores; {cores} forward worker(s)" in caplog.text


def test_a_model_dir_without_code_is_refused(tmp_path):
    write_model_dir(tmp_path / "m")
    (tmp_path / "m" / "code" / "inference.py").unlink()
    with pytest.raises(serving.ModelCodeError, match="code/inference.py not found"):
        ModelServer(tmp_path / "m")


# ----------------------------------------------------------------------------------------------- metrics

def scrape(srv) -> dict:
    """``GET /metrics`` parsed by prometheus-client's own parser: {(sample name, labels as sorted tuple): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    status, headers, raw = request(srv, "GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(raw.decode("utf-8")) for sample in family.samples}


def moved(before: dict, after: dict) -> dict:
    """The samples whose value changed, by how much (counters and histogram counts only move up)."""
    return {key: after[key] - before.get(key, 0.0) for key in after if after[key] != before.get(key, 0.0)}


def test_metrics_count_exactly_the_requests_sent_by_route_and_status(model_a, images):
    with ModelServer(model_a, torch_threads=1, forward_workers=1, max_batch_size=4) as srv:
        invoke(srv, images[0][0], images[0][1])       # series exist before the first scrape
        before = scrape(srv)
        for body, content_type in images[:7]:
            assert invoke(srv, body, content_type)[0] == 200
        assert invoke(srv, b"not an image", "image/jpeg")[0] == 400
        assert invoke(srv, b"hello", "text/plain")[0] == 415
        assert request(srv, "GET", "/nowhere")[0] == 404
        assert request(srv, "GET", "/ping")[0] == 200
        after = scrape(srv)
        stats = srv.stats()
    invocations = (("route", "/invocations"),)
    changes = moved(before, after)
    assert {key: value for key, value in changes.items() if key[0] == "dogbreeds_serving_requests_total"} == {
        ("dogbreeds_serving_requests_total", (("route", "/invocations"), ("status", "200"))): 7,
        ("dogbreeds_serving_requests_total", (("route", "/invocations"), ("status", "400"))): 1,
        ("dogbreeds_serving_requests_total", (("route", "/invocations"), ("status", "415"))): 1,
        ("dogbreeds_serving_requests_total", (("route", "other"), ("status", "404"))): 1,
        ("dogbreeds_serving_requests_total", (("route", "/ping"), ("status", "200"))): 1}
    assert changes[("dogbreeds_serving_request_seconds_count", invocations)] == 9
    assert changes[("dogbreeds_serving_request_seconds_bucket", (("le", "+Inf"),) + invocations)] == 9
    assert changes[("dogbreeds_serving_request_seconds_sum", invocations)] > 0
    # Every image of the 7 good requests went through one forward; the batch-size histogram saw them all.
    forwards = sum(stats["batch_sizes"].values())
    assert after[("dogbreeds_serving_batch_size_count", ())] == forwards
    assert after[("dogbreeds_serving_batch_size_sum", ())] == stats["images"] == 8
    assert after[("dogbreeds_serving_model_version", ())] == 1
    assert after[("dogbreeds_serving_queue_images", ())] == 0
    assert after[("dogbreeds_serving_in_flight_requests", ())] == 0


def test_two_servers_in_one_process_keep_their_own_metrics(model_a, images):
    with ModelServer(model_a, torch_threads=1) as first, ModelServer(model_a, torch_threads=1) as second:
        for _ in range(3):
            invoke(first, images[0][0], images[0][1])
        invoke(second, images[1][0], images[1][1])
        key = ("dogbreeds_serving_requests_total", (("route", "/invocations"), ("status", "200")))
        assert (scrape(first)[key], scrape(second)[key]) == (3, 1)
