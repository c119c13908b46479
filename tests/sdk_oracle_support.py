"""The SageMaker Python SDK as an oracle: a session that records requests instead of sending them, and
a comparison of two requests field by field with every allowed difference named.

The SDK (``sagemaker``, a dev dependency: it is too big for Lambda) is the reference for what SageMaker
accepts. Its session here holds a real botocore ``sagemaker`` client behind a ``Stubber``: each call the
SDK makes is validated against botocore's service model, recorded, and answered with a canned response.
No network, no credentials (the keys are placeholders and the Stubber answers before signing).
"""

from __future__ import annotations

import copy
import os
import re
import socket
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Sequence, Tuple
from unittest import mock

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")   # the SDK's banner about v3, once per import

import boto3  # noqa: E402
import sagemaker  # noqa: E402
from botocore.stub import Stubber  # noqa: E402

ACCOUNT = "123456789012"
# The SDK's defaults, given instead of read from ~/.config/sagemaker: no usage telemetry (it is an HTTP call).
SDK_CONFIG = {"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}}

# What the Stubber answers to each call the SDK is expected to make (the smallest valid response).
_RESPONSES = {
    "create_hyper_parameter_tuning_job": {"HyperParameterTuningJobArn":
                                          f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:hyper-parameter-tuning-job/t"},
    "create_training_job": {"TrainingJobArn": f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:training-job/t"},
    "create_model": {"ModelArn": f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:model/m"},
    "create_endpoint_config": {"EndpointConfigArn": f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:endpoint-config/c"},
    "create_transform_job": {"TransformJobArn": f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:transform-job/t"},
}


@dataclass
class Recorded:
    """The requests the SDK made, in order: (operation name, e.g. ``CreateModel``; its parameters)."""
    calls: List[Tuple[str, dict]] = field(default_factory=list)

    def only(self, operation: str) -> dict:
        """The parameters of the one call the SDK made; fails if it made any other or none."""
        assert [name for name, _ in self.calls] == [operation], f"the SDK called {self.calls}"
        return self.calls[0][1]


@contextmanager
def stubbed_session(region: str, expected_calls: Sequence[str]) -> Iterator[Tuple[sagemaker.Session, Recorded]]:
    """A ``sagemaker.Session`` for ``region`` whose ``sagemaker`` client is stubbed.

    In: the region and the snake_case operations the SDK should call, in order. Out: the session and
    the ``Recorded`` requests. On exit, asserts the SDK made exactly those calls (the Stubber raises at
    once on any other, and botocore refuses a request its service model does not allow).
    """
    boto_session = boto3.Session(region_name=region, aws_access_key_id="placeholder",
                                 aws_secret_access_key="placeholder")
    client = boto_session.client("sagemaker")
    recorded = Recorded()

    def record(params, model, **_):
        recorded.calls.append((model.name, copy.deepcopy(params)))

    client.meta.events.register("before-parameter-build.sagemaker", record)
    stubber = Stubber(client)
    for operation in expected_calls:
        stubber.add_response(operation, _RESPONSES[operation])
    session = sagemaker.Session(boto_session=boto_session, sagemaker_client=client,
                                sagemaker_runtime_client=boto_session.client("sagemaker-runtime"),
                                sagemaker_config=SDK_CONFIG)
    # The estimator also makes a plain boto3 client of its own (for its Studio app links): it must find
    # placeholder keys in the environment rather than ask the instance metadata service.
    placeholders = {"AWS_ACCESS_KEY_ID": "placeholder", "AWS_SECRET_ACCESS_KEY": "placeholder",
                    "AWS_DEFAULT_REGION": region, "AWS_EC2_METADATA_DISABLED": "true"}
    with stubber, mock.patch.dict(os.environ, placeholders), mock.patch.object(socket.socket, "connect", _no_network):
        yield session, recorded
        stubber.assert_no_pending_responses()


def _no_network(sock, address):
    raise AssertionError(f"the SDK tried to connect to {address}: the oracle must stay offline")


# --- comparing requests ---------------------------------------------------------------------------

def flatten(value: Any, path: str = "") -> Dict[str, Any]:
    """``{"A": {"B": [1, {"C": 2}]}}`` -> ``{"A.B[0]": 1, "A.B[1].C": 2}``. Empty lists and dicts are
    dropped: SageMaker reads an absent list and an empty one alike (the SDK sends
    ``IntegerParameterRanges: []``, we leave it out)."""
    if isinstance(value, dict):
        flat = {}
        for key, item in value.items():
            flat.update(flatten(item, f"{path}.{key}" if path else key))
        return flat
    if isinstance(value, list):
        flat = {}
        for i, item in enumerate(value):
            flat.update(flatten(item, f"{path}[{i}]"))
        return flat
    return {path: value}


@dataclass(frozen=True)
class Difference:
    """One intentional difference between our request and the SDK's, and why.

    ``path`` is a flattened field path; ``*`` in it stands for any text (``InputDataConfig[*].InputMode``). ``sdk`` and ``ours`` are the
    values each side sends there (``ABSENT`` for a field one side leaves out), so the exclusion stays
    exact: if either side changes, the comparison fails and the difference must be looked at again.
    """
    path: str
    sdk: Any
    ours: Any
    why: str


ABSENT = "<absent>"


def compare(ours: dict, sdk: dict, differences: Sequence[Difference]) -> List[str]:
    """Every field where ``ours`` and ``sdk`` disagree that no ``Difference`` explains, and every
    ``Difference`` that no longer holds (so the list cannot go stale). Empty when they agree."""
    mine, theirs = flatten(ours), flatten(sdk)
    problems = []
    explained = set()
    for difference in differences:
        pattern = re.compile(re.escape(difference.path).replace(r"\*", ".*"))
        paths = [p for p in set(mine) | set(theirs) if pattern.fullmatch(p)]
        if not paths:
            problems.append(f"stale difference {difference.path}: neither request has it")
        for path in paths:
            explained.add(path)
            got = (theirs.get(path, ABSENT), mine.get(path, ABSENT))
            if got != (difference.sdk, difference.ours):
                problems.append(f"{path}: the SDK sends {got[0]!r} and we send {got[1]!r}, but the named "
                                f"difference says {difference.sdk!r} / {difference.ours!r} ({difference.why})")
    for path in sorted((set(mine) | set(theirs)) - explained):
        if mine.get(path, ABSENT) != theirs.get(path, ABSENT):
            problems.append(f"{path}: the SDK sends {theirs.get(path, ABSENT)!r}, we send {mine.get(path, ABSENT)!r}")
    return problems
