"""``invoke_endpoint`` against the local endpoints, with SageMaker Runtime's response and errors.

A 200 from the endpoint's server comes back as ``{"Body": <stream>, "ContentType": ...}``; a refusal
by the model's handlers is a ``ModelError`` ClientError carrying ``OriginalStatusCode`` and
``OriginalMessage``, as SageMaker reports a container's 4xx/5xx; an unknown endpoint is the
``ValidationException`` "Endpoint ... not found".
"""

from __future__ import annotations

import http.client
import io

from botocore.exceptions import ClientError

from .resources import ACCOUNT
from .sagemaker import LocalSageMaker
from .invocations import InvocationClient


class _Body(io.BytesIO):
    """Enough of botocore's StreamingBody: read(), iter_chunks(), close()."""

    def iter_chunks(self, chunk_size: int = 1024):
        while True:
            chunk = self.read(chunk_size)
            if not chunk:
                return
            yield chunk


class LocalSageMakerRuntime:
    def __init__(self, sagemaker: LocalSageMaker):
        self.sagemaker = sagemaker
        self._client = InvocationClient()     # kept-alive connections to the endpoints' servers

    def invoke_endpoint(self, EndpointName: str, Body, ContentType: str = "application/octet-stream",
                        Accept: str = "application/json", **_) -> dict:
        url = self.sagemaker.endpoint_url(EndpointName)
        if url is None:
            raise ClientError({"Error": {"Code": "ValidationException",
                                         "Message": f"Endpoint {EndpointName} of account {ACCOUNT} not found."},
                               "ResponseMetadata": {"HTTPStatusCode": 400}}, "InvokeEndpoint")
        body = Body.encode() if isinstance(Body, str) else bytes(Body)
        try:
            status, answer = self._client.post(url, body, ContentType, Accept, timeout=60)
        except (OSError, http.client.HTTPException) as exc:
            raise ClientError({"Error": {"Code": "ServiceUnavailable", "Message": f"endpoint unreachable: {exc}"},
                               "ResponseMetadata": {"HTTPStatusCode": 503}}, "InvokeEndpoint") from exc
        if status == 200:
            return {"Body": _Body(answer), "ContentType": Accept.split(";")[0].strip() or "application/json",
                    "InvokedProductionVariant": "AllTraffic"}
        text = answer.decode("utf-8", "replace")
        raise ClientError({"Error": {"Code": "ModelError",
                                     "Message": f"Received client error ({status}) from primary with message "
                                                f"\"{text[:500]}\"."},
                           "OriginalStatusCode": status, "OriginalMessage": text,
                           "ResponseMetadata": {"HTTPStatusCode": 424}}, "InvokeEndpoint")

    def close(self) -> None:
        """Close the kept-alive connections to the endpoints."""
        self._client.close()
