"""The local stack's API under load: many clients at once through ``POST /predict``.

The route adds a hop (API -> control plane -> the local SageMaker Runtime -> the endpoint's server), and
every hop is shared by concurrent requests: the listen backlog, the Chalice app's current request, the
control plane's metrics and the kept-alive connections to the endpoint. Each client sends its own
images, so an answer given to the wrong request would show as a wrong prediction. A small model
(resnet18 at 32 px, tests/test_serving.py's) is deployed straight onto the running stack
(``LocalStack.deploy_model_dir``) instead of being trained. Bounded in requests; no timing asserted.
"""

from __future__ import annotations

import http.client
import json
import threading

import pytest
from local_support import http as http_request, wait_for
from test_serving import assert_same_predictions, encode, picture, write_model_dir

from dogbreeds.stack import LocalStack, local_config
from model_code import inference as inf

CLIENTS = 32
REQUESTS_PER_CLIENT = 8


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_model_dir(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def served_stack(tmp_path_factory, model_dir):
    """A running stack whose endpoint serves ``model_dir``, reached through the control plane."""
    with LocalStack(tmp_path_factory.mktemp("stack"), config=local_config("quick"), cores=2,
                    reconcile_seconds=0.5) as stack:
        stack.deploy_model_dir(model_dir)
        wait_for(lambda: (stack.plane.status()["endpoint"] or {}).get("status") == "InService", 60,
                 "the endpoint to serve")
        yield stack


def test_32_clients_through_predict_all_get_their_own_answers(served_stack, model_dir):
    images = [encode(picture(i, (80 + 4 * i, 60 + 2 * i)), "JPEG", quality=90) for i in range(CLIENTS)]
    model = inf.model_fn(model_dir)
    expected = [json.loads(inf.output_fn(inf.predict_fn(inf.input_fn(body, "image/jpeg"), model),
                                         "application/json")[0]) for body in images]
    assert len({json.dumps(e["predictions"][0]) for e in expected}) > CLIENTS // 2   # answers tell images apart
    port = int(served_stack.api_url.rsplit(":", 1)[1])
    statuses, failures = [], []
    lock = threading.Lock()
    barrier = threading.Barrier(CLIENTS)

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            barrier.wait()                      # every client connects at once: the backlog's test
            for r in range(REQUESTS_PER_CLIENT):
                n = (i + r) % CLIENTS
                conn.request("POST", "/predict", body=images[n], headers={"Content-Type": "image/jpeg"})
                response = conn.getresponse()
                body = response.read()
                with lock:
                    statuses.append(response.status)
                assert response.status == 200, body[:300]
                assert_same_predictions(json.loads(body), expected[n])
        except Exception as exc:                # collected: pytest does not see assertions in threads
            with lock:
                failures.append(f"client {i}: {exc!r}")
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures, failures[:5]
    assert statuses == [200] * CLIENTS * REQUESTS_PER_CLIENT
    _, stats = http_request("GET", served_stack.sagemaker.endpoint_url(served_stack.endpoint_name) + "/stats")
    assert stats["status"] == {"200": CLIENTS * REQUESTS_PER_CLIENT}     # one invocation per request, none lost
