"""Build the control plane's Lambda deployment package and print its size against Lambda's limits.

    python -m deploy.lambda_package [--output deploy/out/dogbreeds-lambda.zip] [--chalice] [--vendor-only]

What ``chalice deploy`` uploads is ``app.py``, ``chalicelib/``, the contents of ``chalice_app/vendor/``,
chalice's runtime (``chalice/__init__.py`` and ``chalice/app.py``) and ``chalice_app/requirements.txt``
installed for the Lambda platform. Our own packages that the
control plane imports besides ``chalicelib`` (``VENDORED``: ``batch/``) live at the repository's top
level, so this first stages a fresh copy of each into ``chalice_app/vendor/`` (git-ignored), where
``chalice deploy`` and ``chalice package`` pick them up and put them at the package root.

It then builds the same package the same way chalice resolves it (``pip install --platform
manylinux2014_x86_64 --implementation cp --only-binary=:all:`` for the Python version chalice picks:
the local one, plus the same files chalice adds), zips it and prints:

- the zipped size against 50 MB (the limit of a zip uploaded directly, as ``chalice deploy`` does)
  and the unzipped size against 250 MB (code and layers together), each with its margin;
- the biggest top-level entries;
- that no torch, PIL, numpy or sagemaker SDK is inside (the control plane must not need them).

It exits nonzero when pip cannot fetch a package (naming it and saying why), when a limit is
exceeded or when a forbidden package is inside. ``--chalice`` also runs ``chalice package
--pkg-format terraform`` on a copy of ``chalice_app`` and reports the size of its ``deployment.zip``.
``--vendor-only`` stages ``chalice_app/vendor/`` and stops (no network): run it, or the whole command,
before ``chalice deploy``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import chalice.app

from deploy import CHALICE_DIR, REPO_ROOT

MB = 1024 * 1024
ZIPPED_LIMIT = 50 * MB          # 52,428,800 bytes: a deployment zip uploaded directly
UNZIPPED_LIMIT = 250 * MB       # 262,144,000 bytes: function code and layers, unzipped
PLATFORM = "manylinux2014_x86_64"
# Top-level import names (and distribution names) that must never be in the Lambda package.
FORBIDDEN = {"torch": "torch", "torchvision": "torchvision", "PIL": "Pillow", "numpy": "numpy",
             "sagemaker": "sagemaker"}
DEFAULT_OUTPUT = REPO_ROOT / "deploy" / "out" / "dogbreeds-lambda.zip"
# Our top-level packages the Lambda imports besides chalicelib (chalicelib imports them; they import none of ours).
VENDORED = ("batch",)
_CACHES = shutil.ignore_patterns("__pycache__", "*.pyc")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def lambda_python_version(version_info: Sequence[int] = sys.version_info) -> str:
    """The Lambda runtime chalice deploys to from this interpreter (chalice.config.Config
    .lambda_python_version): the local major.minor, clamped to 3.10..3.14 (later: 3.15)."""
    major, minor = version_info[0], version_info[1]
    if (major, minor) < (3, 10):
        return "3.10"
    if (major, minor) <= (3, 14):
        return f"{major}.{minor}"
    return "3.15"


class FetchError(RuntimeError):
    """pip could not get a package for the Lambda platform. ``package`` names it when pip said which."""

    def __init__(self, package: Optional[str], reason: str, output: str):
        self.package, self.reason, self.output = package, reason, output
        super().__init__(f"could not fetch {package or 'the requirements'}: {reason}")


_NETWORK = re.compile(r"(NewConnectionError|Failed to establish a new connection|Temporary failure in name "
                      r"resolution|Name or service not known|Network is unreachable|ProxyError|ConnectTimeout|"
                      r"Read timed out|SSLError|CERTIFICATE_VERIFY_FAILED)")


def explain_pip_failure(output: str, python_version: str, index_versions: Optional[str] = None) -> FetchError:
    """What pip's output says went wrong, as a FetchError naming the package when pip named it.
    ``index_versions``: what ``pip index versions <package>`` answered (any platform), when asked:
    it tells "not on the index / index unreachable" from "no wheel for the Lambda platform"."""
    missing = re.search(r"No matching distribution found for ([^\s]+)", output)
    versions = re.search(r"Could not find a version that satisfies the requirement ([^\s]+) \(from versions: ([^)]*)\)",
                         output)
    network = _NETWORK.search(output)
    fetching = re.findall(r"(?:Collecting|Downloading|Obtaining) ([^\s]+)", output)
    platform = f"{PLATFORM}, CPython {python_version}"
    if missing or versions:
        package = (missing or versions).group(1)
        available = versions.group(2).strip() if versions else ""
        if network:
            reason = f"the package index could not be reached ({network.group(1)})"
        elif available and available != "none":
            reason = f"no wheel of the requested version for {platform} (versions with such a wheel: {available})"
        elif index_versions is not None and "Available versions:" in index_versions:
            listed = index_versions.split("Available versions:", 1)[1].strip().splitlines()[0]
            reason = (f"the index has it (versions: {listed[:120]}), but no wheel for {platform}; "
                      f"--only-binary=:all: refuses source distributions")
        elif index_versions is not None:
            reason = "the package index did not list it at all: the index is unreachable or does not have it"
        else:
            reason = f"no wheel for {platform} on the index, or the index is unreachable"
        return FetchError(package, reason, output)
    if network:
        package = fetching[-1] if fetching else None
        return FetchError(package, f"the package index could not be reached ({network.group(1)})", output)
    tail = output.strip().splitlines()[-1] if output.strip() else "pip failed without output"
    return FetchError(fetching[-1] if fetching else None, tail, output)


def _pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def install_requirements(requirements: Path, target: Path, python_version: str) -> None:
    """pip-install ``requirements`` into ``target`` for the Lambda platform, or raise FetchError."""
    result = _pip("install", "--no-compile", "--target", str(target), "--platform", PLATFORM,
                  "--implementation", "cp", "--python-version", python_version, "--only-binary=:all:",
                  "-r", str(requirements))
    if result.returncode == 0:
        return
    error = explain_pip_failure(result.stdout, python_version)
    if error.package and not _NETWORK.search(result.stdout):      # ask the index what it has, for any platform
        name = re.split(r"[<>=!~\[; ]", error.package, maxsplit=1)[0]
        error = explain_pip_failure(result.stdout, python_version, _pip("index", "versions", name).stdout)
    raise error


def _copy_vendored(destination: Path, repo_root: Path = REPO_ROOT) -> List[Path]:
    """Fresh copies of the ``VENDORED`` packages in ``destination`` (older copies there are replaced)."""
    copies = []
    for name in VENDORED:
        copy = destination / name
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(repo_root / name, copy, ignore=_CACHES)
        copies.append(copy)
    return copies


def stage_vendor(app_dir: Path = CHALICE_DIR, repo_root: Path = REPO_ROOT) -> List[Path]:
    """Copy the ``VENDORED`` packages into ``app_dir/vendor/``, whose contents chalice puts at the
    Lambda package's root; return the staged folders. Run before ``chalice deploy``/``chalice package``."""
    vendor = app_dir / "vendor"
    vendor.mkdir(exist_ok=True)
    return _copy_vendored(vendor, repo_root)


def _copy_app(app_dir: Path, target: Path) -> None:
    """What chalice puts beside the requirements: its runtime (``chalice/__init__.py`` and
    ``chalice/app.py``, which app.py imports), app.py, chalicelib/ and (from vendor/) our packages."""
    (target / "chalice").mkdir()
    for module in (chalice, chalice.app):
        shutil.copy2(Path(module.__file__), target / "chalice" / Path(module.__file__).name)
    shutil.copy2(app_dir / "app.py", target / "app.py")
    shutil.copytree(app_dir / "chalicelib", target / "chalicelib", ignore=_CACHES)
    _copy_vendored(target)


def write_zip(directory: Path, output: Path) -> None:
    """Zip ``directory``'s files, sorted, with fixed timestamps (the same tree gives the same zip)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    with zipfile.ZipFile(output, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for path in files:
            info = zipfile.ZipInfo(path.relative_to(directory).as_posix(), date_time=_ZIP_TIME)
            info.external_attr = (0o755 if os.access(path, os.X_OK) else 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())


def _top_level(entry: str) -> str:
    """A dist-info/egg-info folder counts as its distribution's (``pkg-1.0.dist-info`` -> ``pkg``)."""
    match = re.fullmatch(r"(.+?)-[^-]+\.(?:dist|egg)-info", entry)
    return match.group(1).lower().replace("_", "-") + " (metadata)" if match else entry


@dataclass(frozen=True)
class Measurement:
    zipped: int
    unzipped: int
    files: int
    by_entry: Tuple[Tuple[str, int], ...]     # (top-level entry, unzipped bytes), biggest first
    forbidden: Tuple[str, ...]                 # forbidden packages found inside

    @property
    def zipped_margin(self) -> int:
        return ZIPPED_LIMIT - self.zipped

    @property
    def unzipped_margin(self) -> int:
        return UNZIPPED_LIMIT - self.unzipped

    @property
    def ok(self) -> bool:
        return self.zipped_margin >= 0 and self.unzipped_margin >= 0 and not self.forbidden


def measure(directory: Path, zip_path: Path) -> Measurement:
    """Sizes of the unpacked package ``directory`` and its zip, per top-level entry, and which
    forbidden packages (module folder, module file or dist-info) it contains."""
    directory = Path(directory)
    sizes: Dict[str, int] = {}
    files = 0
    for path in directory.rglob("*"):
        if path.is_file():
            entry = path.relative_to(directory).parts[0]
            sizes[entry] = sizes.get(entry, 0) + path.stat().st_size
            files += 1
    found = set()
    distributions = {dist.lower(): module for module, dist in FORBIDDEN.items()}
    for entry in sizes:
        module = entry[:-3] if entry.endswith(".py") else entry
        if module in FORBIDDEN:
            found.add(module)
        match = re.fullmatch(r"(.+?)-[^-]+\.(?:dist|egg)-info", entry)
        if match and match.group(1).lower().replace("_", "-") in distributions:
            found.add(distributions[match.group(1).lower().replace("_", "-")])
    grouped: Dict[str, int] = {}
    for entry, size in sizes.items():
        grouped[_top_level(entry)] = grouped.get(_top_level(entry), 0) + size
    by_entry = tuple(sorted(grouped.items(), key=lambda item: (-item[1], item[0])))
    return Measurement(Path(zip_path).stat().st_size, sum(sizes.values()), files, by_entry, tuple(sorted(found)))


def _mb(size: int) -> str:
    return f"{size / MB:.2f} MB"


def report(measurement: Measurement, top: int = 8) -> List[str]:
    """The lines ``main`` prints."""
    m = measurement
    lines = [
        f"  zipped:   {_mb(m.zipped)} ({m.zipped:,} bytes); limit {_mb(ZIPPED_LIMIT)} for a direct upload: "
        + (f"margin {_mb(m.zipped_margin)}" if m.zipped_margin >= 0 else f"OVER by {_mb(-m.zipped_margin)}"),
        f"  unzipped: {_mb(m.unzipped)} ({m.unzipped:,} bytes in {m.files:,} files); limit {_mb(UNZIPPED_LIMIT)}: "
        + (f"margin {_mb(m.unzipped_margin)}" if m.unzipped_margin >= 0 else f"OVER by {_mb(-m.unzipped_margin)}"),
        "  biggest (unzipped): " + ", ".join(f"{name} {_mb(size)}" for name, size in m.by_entry[:top]),
    ]
    if m.forbidden:
        lines.append("  FORBIDDEN inside: " + ", ".join(m.forbidden) + " (the control plane must not need them)")
    else:
        lines.append("  not inside: " + ", ".join(sorted(FORBIDDEN, key=str.lower)))
    return lines


def build(output: Path = DEFAULT_OUTPUT, app_dir: Path = CHALICE_DIR,
          python_version: Optional[str] = None) -> Measurement:
    """Install the requirements for Lambda, add the app and the ``VENDORED`` packages, zip it to
    ``output``; measure it. Raises FetchError when pip cannot get a requirement."""
    python_version = python_version or lambda_python_version()
    with tempfile.TemporaryDirectory(prefix="dogbreeds-lambda-") as temp:
        target = Path(temp) / "package"
        target.mkdir()
        install_requirements(app_dir / "requirements.txt", target, python_version)
        _copy_app(app_dir, target)
        write_zip(target, output)
        return measure(target, output)


def chalice_package(app_dir: Path = CHALICE_DIR) -> Path:
    """Run ``chalice package --pkg-format terraform`` on a copy of ``app_dir`` (with a placeholder
    configuration when it has none); return the size-checked ``deployment.zip``'s path in a temp dir."""
    temp = Path(tempfile.mkdtemp(prefix="dogbreeds-chalice-"))
    project = temp / "chalice_app"
    shutil.copytree(app_dir, project, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "deployed", "deployments"))
    stage_vendor(project)
    config = project / ".chalice" / "config.json"
    if not config.exists():
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(json.dumps({"version": "2.0", "app_name": "dogbreeds", "autogen_policy": False,
                                      "stages": {"dev": {"iam_policy_file": "policy-dev.json"}}}))
        (config.parent / "policy-dev.json").write_text(json.dumps({"Version": "2012-10-17", "Statement": []}))
    chalice = Path(sys.executable).with_name("chalice")
    env = dict(os.environ, AWS_DEFAULT_REGION=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
    result = subprocess.run([str(chalice), "package", "--pkg-format", "terraform", str(temp / "out")], cwd=project,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"chalice package failed:\n{result.stdout.strip()}")
    return temp / "out" / "deployment.zip"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.lambda_package",
                                     description="Build the Lambda zip and report its size against Lambda's limits.")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"the zip (default {DEFAULT_OUTPUT})")
    parser.add_argument("--python-version", help="the Lambda runtime's Python, e.g. 3.12 (default: chalice's choice)")
    parser.add_argument("--chalice", action="store_true",
                        help="also run `chalice package --pkg-format terraform` and report its deployment.zip")
    parser.add_argument("--vendor-only", action="store_true",
                        help=f"only stage {CHALICE_DIR.name}/vendor/ for `chalice deploy` (no network)")
    args = parser.parse_args(argv)
    staged = stage_vendor()
    print("staged for chalice deploy: " + ", ".join(f"{p.relative_to(REPO_ROOT).as_posix()}/" for p in staged))
    if args.vendor_only:
        return 0
    version = args.python_version or lambda_python_version()
    print(f"Lambda package for python{version} ({PLATFORM}) from {CHALICE_DIR.name}/requirements.txt, "
          f"app.py, chalicelib/ and {', '.join(name + '/' for name in VENDORED)}")
    try:
        measurement = build(args.output, python_version=version)
    except FetchError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        print("pip said (last lines):\n  " + "\n  ".join(exc.output.strip().splitlines()[-6:]), file=sys.stderr)
        return 1
    print(f"  {args.output}")
    print("\n".join(report(measurement)))
    status = 0 if measurement.ok else 1
    if args.chalice:
        try:
            deployment = chalice_package()
        except RuntimeError as exc:
            print(f"  chalice package: {exc}", file=sys.stderr)
            return 1
        size = deployment.stat().st_size
        with zipfile.ZipFile(deployment) as archive:
            unzipped = sum(info.file_size for info in archive.infolist())
        print(f"  chalice package --pkg-format terraform: deployment.zip {_mb(size)} zipped, {_mb(unzipped)} unzipped")
        shutil.rmtree(deployment.parent.parent, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
