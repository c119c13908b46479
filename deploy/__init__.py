"""Deployment tooling for the control plane on AWS (run from the repository root):

- ``dogbreeds aws deploy`` / ``destroy`` (``deploy.cli``): every step below and the Chalice app, in
  one command each way, changing only what AWS lacks (``deploy.changes`` decides, ``deploy.stack``
  sends the requests, ``deploy.control_plane`` drives Chalice's deployer);

- ``python -m deploy.configure``: ``chalice_app/.chalice/config.json`` and the IAM policy files;
- ``python -m deploy.package_source``: the training ``sourcedir.tar.gz``, uploaded once per content;
- ``python -m deploy.lambda_package``: stages ``batch/`` into ``chalice_app/vendor/`` for ``chalice deploy``,
  builds the Lambda zip (only our code: ``app.py``, ``chalicelib/``, ``batch/``) and reports its size
  and the cold import time of ``app``.

``deploy.iam`` holds the least-privilege policy documents; ``deploy.lambda_runtime`` what the Lambda
provides beside our package (the pinned Python runtime with boto3, the Powertools layer). These modules
run on a developer's machine, never on Lambda; they import the control plane's ``chalicelib`` (configuration, bucket layout, names)
so that the deployed permissions and packages follow the code that uses them.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CHALICE_DIR = REPO_ROOT / "chalice_app"
