"""Helpers for the tests that run the local stack (``test_local_stack.py``, ``test_cli.py``): waiting
for what a running stack does, and talking to its API over HTTP."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request


def wait_for(check, timeout: float, what: str):
    """``check()``'s first truthy value, polled every half second; an AssertionError naming ``what``
    after ``timeout`` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def http(method: str, url: str, body: bytes = None, content_type: str = None):
    """(status, decoded JSON body) of one request, error statuses included."""
    request = urllib.request.Request(url, data=body, method=method,
                                     headers={"Content-Type": content_type} if content_type else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
