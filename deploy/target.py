"""Where a deployment of the control plane lives, as ``dogbreeds aws deploy`` leaves it and the cloud
verbs (``status``, ``predict``, ``batch``, ``report``, ``publish`` with a target) find it.

One JSON file per stage, ``chalice_app/.chalice/target-<stage>.json`` (git-ignored with the rest of
``.chalice/``: it names the account)::

    {"stage": "dev", "region": "eu-west-1", "bucket": "my-dogbreeds",
     "api_url": "https://abc123.execute-api.eu-west-1.amazonaws.com/api/",
     "endpoint_name": "dogbreeds", "account": "123456789012"}
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from deploy import CHALICE_DIR

DEFAULT_STAGE = "dev"


class TargetError(Exception):
    """No deployment is recorded for a stage, or its record is unreadable."""


@dataclass(frozen=True)
class Target:
    stage: str
    region: str
    bucket: str
    api_url: str              # the API's base URL, ending in "/"
    endpoint_name: str
    account: Optional[str] = None

    def url(self, path: str) -> str:
        """The URL of ``path`` (``status``, ``/predict?top_k=3``) under the API."""
        return self.api_url.rstrip("/") + "/" + path.lstrip("/")


def target_path(stage: str = DEFAULT_STAGE, chalice_dir: Path = CHALICE_DIR) -> Path:
    return chalice_dir / ".chalice" / f"target-{stage}.json"


def save(target: Target, chalice_dir: Path = CHALICE_DIR) -> Path:
    """Write ``target``'s record (replacing the stage's earlier one); returns its path."""
    path = target_path(target.stage, chalice_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(target), indent=2, sort_keys=True) + "\n")
    return path


def load(stage: str = DEFAULT_STAGE, chalice_dir: Path = CHALICE_DIR) -> Target:
    """The recorded deployment of ``stage``; TargetError saying what to run when there is none."""
    path = target_path(stage, chalice_dir)
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise TargetError(f"no deployment of stage {stage!r} is recorded ({path} is missing): run "
                          f"`dogbreeds aws deploy --stage {stage} ...` first, or give --api URL") from None
    except ValueError as exc:
        raise TargetError(f"{path} is not JSON ({exc}): run `dogbreeds aws deploy --stage {stage}` again") from None
    try:
        return Target(**{name: document[name] for name in ("stage", "region", "bucket", "api_url", "endpoint_name")},
                      account=document.get("account"))
    except (KeyError, TypeError) as exc:
        raise TargetError(f"{path} lacks {exc}: run `dogbreeds aws deploy --stage {stage}` again") from None
