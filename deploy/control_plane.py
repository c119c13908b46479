"""The Chalice app of one stage, as ``dogbreeds aws deploy`` ships it: its configuration files, the
digest of what it is deployed from, and Chalice's own deployer and deleter (what ``chalice deploy`` and
``chalice delete`` run, ``chalice.deploy.deployer``), driven with the caller's botocore session.

``StageApp.configuration`` runs ``deploy.configure`` in a scratch copy of ``.chalice/`` (so ``--plan``
writes nothing) and adds the stage's ``tags``, which Chalice puts on every function it deploys:
``dogbreeds:deployment=<stage>`` and ``dogbreeds:app-digest=<digest>``. The digest covers what Chalice
ships and how it configures it: ``app.py``, ``chalicelib/``, ``requirements.txt``, the packages
``deploy.lambda_package`` stages into ``vendor/`` (from their sources), Chalice's version, the stage's
configuration and its policy file. A function whose tag equals it needs no new deployment.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, Mapping, Optional, Tuple

from deploy import CHALICE_DIR, REPO_ROOT, configure, lambda_package
from deploy.changes import APP_DIGEST_TAG, DEPLOYMENT_TAG

_SKIPPED_DIRS = frozenset({"__pycache__"})
_SKIPPED_SUFFIXES = (".pyc", ".pyo")


@dataclass(frozen=True)
class AppConfiguration:
    """The stage's files under ``.chalice/`` (name -> text), the Lambda environment, and the digest."""
    files: Mapping[str, str]
    environment: Mapping[str, str]
    digest: str


def _source_files(folder: Path, name: str) -> Iterator[Tuple[str, Path]]:
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.is_file() and not (_SKIPPED_DIRS & set(relative.parts)) and path.suffix not in _SKIPPED_SUFFIXES:
            yield f"{name}/{relative.as_posix()}", path


def shipped_files(project_dir: Path, repo_root: Path = REPO_ROOT) -> Iterator[Tuple[str, Path]]:
    """(name in the package, path) of what Chalice ships from ``project_dir``: ``app.py``,
    ``requirements.txt``, ``chalicelib/`` and, from their sources, the ``VENDORED`` packages."""
    for name in ("app.py", "requirements.txt"):
        if (project_dir / name).is_file():
            yield name, project_dir / name
    yield from _source_files(project_dir / "chalicelib", "chalicelib")
    for name in lambda_package.VENDORED:
        yield from _source_files(repo_root / name, name)


def stage_configuration(config: Mapping, stage: str) -> dict:
    """The part of a Chalice ``config.json`` that configures ``stage``: the top level without other
    stages, and the stage's section without its ``tags`` (they carry the digest)."""
    settings = {key: value for key, value in config.items() if key != "stages"}
    section = dict((config.get("stages") or {}).get(stage) or {})
    section.pop("tags", None)
    settings["stage"] = section
    return settings


def app_digest(project_dir: Path, stage: str, config: Mapping, policy: str, chalice_version: str,
               repo_root: Path = REPO_ROOT) -> str:
    """SHA-256 of what the stage's functions are deployed from (see the module's docstring)."""
    digest = hashlib.sha256()

    def add(name: str, data: bytes) -> None:
        digest.update(f"{name}\0{len(data)}\0".encode("utf-8"))
        digest.update(data)

    add("chalice", chalice_version.encode("utf-8"))
    for name, path in shipped_files(project_dir, repo_root):
        add(name, path.read_bytes())
    add(".chalice/config.json#" + stage, json.dumps(stage_configuration(config, stage), sort_keys=True).encode("utf-8"))
    add(".chalice/policy", policy.encode("utf-8"))
    return digest.hexdigest()


def _chalice_version() -> str:
    import chalice
    return chalice.__version__


class StageApp:
    """The Chalice app in ``project_dir`` (default ``chalice_app/``), deployed as ``stage``."""

    def __init__(self, stage: str, project_dir: Path = CHALICE_DIR, repo_root: Path = REPO_ROOT,
                 ui_out: Optional[io.TextIOBase] = None):
        self.stage = stage
        self.project_dir = Path(project_dir)
        self.repo_root = Path(repo_root)
        self.ui_out = ui_out          # where Chalice's progress lines go (None: stdout)

    @property
    def record_path(self) -> Path:
        return self.project_dir / ".chalice" / "deployed" / f"{self.stage}.json"

    def configuration(self, bucket: str, role_arn: str, region: str, endpoint_name: Optional[str] = None,
                      settings: Optional[Dict[str, str]] = None, account: Optional[str] = None) -> AppConfiguration:
        """The stage's ``.chalice/`` files as ``deploy.configure`` writes them (other stages kept), with
        the tags that record the digest; nothing is written here. ValueError/ConfigError: a bad setting."""
        with tempfile.TemporaryDirectory(prefix="dogbreeds-chalice-") as scratch:
            existing = self.project_dir / ".chalice" / "config.json"
            if existing.is_file():
                (Path(scratch) / ".chalice").mkdir()
                shutil.copyfile(existing, Path(scratch) / ".chalice" / "config.json")
            paths = configure.configure(bucket, role_arn, region, stage=self.stage, endpoint_name=endpoint_name,
                                        settings=settings, account=account, chalice_dir=Path(scratch))
            files = {path.name: path.read_text(encoding="utf-8") for path in paths.values()}
        config = json.loads(files["config.json"])
        section = config["stages"][self.stage]
        policy = files[section.get("iam_policy_file", configure.policy_file_name(self.stage))]
        digest = app_digest(self.project_dir, self.stage, config, policy, _chalice_version(), self.repo_root)
        section["tags"] = {**(section.get("tags") or {}), DEPLOYMENT_TAG: self.stage, APP_DIGEST_TAG: digest}
        files["config.json"] = json.dumps(config, indent=2) + "\n"
        return AppConfiguration(files, dict(section.get("environment_variables") or {}), digest)

    def write(self, configuration: AppConfiguration) -> None:
        """Write the stage's ``.chalice/`` files and stage ``vendor/`` for Chalice's packager."""
        folder = self.project_dir / ".chalice"
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in configuration.files.items():
            (folder / name).write_text(text, encoding="utf-8")
        lambda_package.stage_vendor(self.project_dir, self.repo_root)

    def record(self) -> Optional[dict]:
        """Chalice's record of the stage's deployment (``.chalice/deployed/<stage>.json``); None when absent."""
        try:
            return json.loads(self.record_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None

    def _chalice(self):
        """Chalice's configuration of the stage (read from ``.chalice/config.json``) and its UI."""
        from chalice.cli.factory import CLIFactory
        from chalice.utils import UI
        config = CLIFactory(project_dir=str(self.project_dir)).create_config_obj(chalice_stage_name=self.stage)
        return config, (UI(out=self.ui_out, err=self.ui_out) if self.ui_out is not None else UI())

    def deploy(self, botocore_session) -> dict:
        """Chalice's deployment of the stage (as ``chalice deploy --stage``), with ``botocore_session``'s
        credentials and region; returns Chalice's deployed values (also recorded in ``record_path``)."""
        from chalice.deploy import deployer
        config, ui = self._chalice()
        return deployer.create_default_deployer(botocore_session, config, ui).deploy(config, self.stage)

    def delete(self, botocore_session) -> None:
        """Chalice's deletion of every resource its record lists (as ``chalice delete --stage``)."""
        from chalice.awsclient import TypedAWSClient
        from chalice.deploy import deployer
        config, ui = self._chalice()
        deployer.create_deletion_deployer(TypedAWSClient(botocore_session), ui).deploy(config, self.stage)


def api_url(record: Optional[Mapping]) -> Optional[str]:
    """The REST API's URL in a Chalice record (or deployed values), None when it has none."""
    for resource in (record or {}).get("resources", []):
        if resource.get("resource_type") == "rest_api":
            return resource.get("rest_api_url")
    return None


def functions(record: Optional[Mapping]) -> Dict[str, str]:
    """Function name -> ARN of the Lambda functions in a Chalice record."""
    return {resource["lambda_arn"].rsplit(":", 1)[-1]: resource["lambda_arn"]
            for resource in (record or {}).get("resources", []) if resource.get("resource_type") == "lambda_function"}


def rest_api_id(record: Optional[Mapping]) -> Optional[str]:
    for resource in (record or {}).get("resources", []):
        if resource.get("resource_type") == "rest_api":
            return resource.get("rest_api_id")
    return None

