"""Build the control plane's Lambda deployment package; print its size and the cold import time of ``app``.

    python -m deploy.lambda_package [--output deploy/out/dogbreeds-lambda.zip] [--chalice] [--vendor-only]

The package is only our code: ``app.py``, ``chalicelib/``, ``batch/``, and the two files of Chalice's
runtime that Chalice adds (``chalice/__init__.py``, ``chalice/app.py``). boto3 comes with the Lambda
runtime and Powertools (with the X-Ray SDK) with the AWS-managed layer that ``deploy.configure`` puts in
the stage's configuration; ``deploy/lambda_runtime.py`` pins both and says why the runtime's botocore
suffices. ``chalice_app/requirements.txt`` therefore lists nothing; whatever it lists is installed
for the Lambda platform as ``chalice deploy`` does (``pip install --platform manylinux2014_x86_64
--implementation cp --only-binary=:all:`` for the pinned Python), and with nothing listed neither
Chalice nor this step runs pip, so no network is needed.

Our packages that the control plane imports besides ``chalicelib`` (``VENDORED``: ``batch/``) live at
the repository's top level: this first stages a fresh copy of each into ``chalice_app/vendor/``
(git-ignored), where ``chalice deploy`` and ``chalice package`` pick them up and put them at the
package root. It then builds the package the same way, zips it and prints:

- the zipped size against the 1 MB goal and the 50 MB limit of a zip uploaded directly (as ``chalice
  deploy`` does), the unzipped size against 250 MB (code and layers together);
- the top-level entries, which must be our code only, and that no torch, PIL, numpy or sagemaker SDK
  is inside;
- what the runtime and the layer provide, and how to check the layer's (derived) version number;
- the cold import time of ``app`` against the 0.3 s goal: fresh interpreters import it from the
  extracted zip (no bytecode is written, as on Lambda, whose code directory is read-only) with only the
  standard library, the runtime's and the layer's packages on the path. Those two are stood in by this
  interpreter's installations of the same distributions (``lambda_runtime.RUNTIME_DISTRIBUTIONS`` and
  ``LAYER_DISTRIBUTIONS``), not the runtime's or the layer's own files.

It exits nonzero when pip cannot fetch a listed package (naming it and saying why), when a limit is
exceeded or when a forbidden package is inside. ``--chalice`` also runs ``chalice package
--pkg-format terraform`` on a copy of ``chalice_app`` and reports the size of its ``deployment.zip``.
``--vendor-only`` stages ``chalice_app/vendor/`` and stops: run it, or the whole command, before
``chalice deploy``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import chalice.app

from deploy import CHALICE_DIR, REPO_ROOT, lambda_runtime

MB = 1024 * 1024
ZIPPED_LIMIT = 50 * MB          # 52,428,800 bytes: a deployment zip uploaded directly
UNZIPPED_LIMIT = 250 * MB       # 262,144,000 bytes: function code and layers, unzipped
ZIPPED_GOAL = 1 * MB            # only our code: what the runtime and the layer provide stays out
IMPORT_GOAL_SECONDS = 0.3       # importing app on a cold start
PLATFORM = "manylinux2014_x86_64"
# Top-level import names (and distribution names) that must never be in the Lambda package.
FORBIDDEN = {"torch": "torch", "torchvision": "torchvision", "PIL": "Pillow", "numpy": "numpy",
             "sagemaker": "sagemaker"}
DEFAULT_OUTPUT = REPO_ROOT / "deploy" / "out" / "dogbreeds-lambda.zip"
# Our top-level packages the Lambda imports besides chalicelib (chalicelib imports them; they import none of ours).
VENDORED = ("batch",)
# The package's top-level entries when it holds only our code; chalice/ is Chalice's runtime (two files).
OUR_CODE = ("app.py", "chalicelib", *VENDORED, "chalice")
_CACHES = shutil.ignore_patterns("__pycache__", "*.pyc")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


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


def has_requirements(requirements: Path) -> bool:
    """Whether ``requirements`` lists anything (a line that is neither blank nor a comment): Chalice's
    own test before it runs pip."""
    if not Path(requirements).exists():
        return False
    lines = (line.strip() for line in Path(requirements).read_text(encoding="utf-8").splitlines())
    return any(line and not line.startswith("#") for line in lines)


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

    @property
    def beyond_our_code(self) -> Tuple[str, ...]:
        """Top-level entries other than ``OUR_CODE``: what ``requirements.txt`` brought in."""
        return tuple(name for name, _ in self.by_entry if name not in OUR_CODE)


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


def _met(met: bool) -> str:
    return "met" if met else "NOT met"


def report(measurement: Measurement, top: int = 8) -> List[str]:
    """The lines ``main`` prints about the package."""
    m = measurement
    lines = [
        f"  zipped:   {_mb(m.zipped)} ({m.zipped:,} bytes), goal under {_mb(ZIPPED_GOAL)}: {_met(m.zipped < ZIPPED_GOAL)}; "
        f"limit {_mb(ZIPPED_LIMIT)} for a direct upload: "
        + (f"margin {_mb(m.zipped_margin)}" if m.zipped_margin >= 0 else f"OVER by {_mb(-m.zipped_margin)}"),
        f"  unzipped: {_mb(m.unzipped)} ({m.unzipped:,} bytes in {m.files:,} files); limit {_mb(UNZIPPED_LIMIT)}: "
        + (f"margin {_mb(m.unzipped_margin)}" if m.unzipped_margin >= 0 else f"OVER by {_mb(-m.unzipped_margin)}"),
        "  biggest (unzipped): " + ", ".join(f"{name} {_mb(size)}" for name, size in m.by_entry[:top]),
    ]
    if m.beyond_our_code:
        lines.append("  besides our code (from requirements.txt): " + ", ".join(m.beyond_our_code))
    else:
        lines.append("  only our code: " + ", ".join(OUR_CODE) + " (chalice/: the two files of Chalice's runtime)")
    if m.forbidden:
        lines.append("  FORBIDDEN inside: " + ", ".join(m.forbidden) + " (the control plane must not need them)")
    else:
        lines.append("  not inside: " + ", ".join(sorted(FORBIDDEN, key=str.lower)))
    return lines


def provided_report(python_version: str = lambda_runtime.LAMBDA_PYTHON) -> List[str]:
    """The lines that say what the runtime and the layer provide, and how to check the layer's number."""
    name, version = lambda_runtime.powertools_layer(python_version)
    parameter = lambda_runtime.powertools_layer_parameter(python_version)
    return [
        f"  from the runtime (python{python_version}): {', '.join(lambda_runtime.RUNTIME_DISTRIBUTIONS)}; every request "
        f"the control plane sends exists in botocore {lambda_runtime.RUNTIME_BOTOCORE_FLOOR} (deploy/lambda_runtime.py)",
        f"  from the layer {name}:{version}: {', '.join(lambda_runtime.LAYER_DISTRIBUTIONS)} (Powertools "
        f"{lambda_runtime.POWERTOOLS_VERSION}); its number is derived, check it once with",
        f"    aws ssm get-parameter --name {parameter} --query Parameter.Value",
    ]


def build(output: Path = DEFAULT_OUTPUT, app_dir: Path = CHALICE_DIR,
          python_version: Optional[str] = None) -> Measurement:
    """Install what ``requirements.txt`` lists for Lambda (nothing: pip does not run), add the app and the
    ``VENDORED`` packages, zip it to ``output``; measure it. Raises FetchError when pip cannot get a
    requirement."""
    python_version = python_version or lambda_runtime.LAMBDA_PYTHON
    with tempfile.TemporaryDirectory(prefix="dogbreeds-lambda-") as temp:
        target = Path(temp) / "package"
        target.mkdir()
        if has_requirements(app_dir / "requirements.txt"):
            install_requirements(app_dir / "requirements.txt", target, python_version)
        _copy_app(app_dir, target)
        write_zip(target, output)
        return measure(target, output)


# --- the cold import of app, as Lambda imports it ----------------------------------------------------

IMPORT_RUNS = 3
IMPORT_PROBE = "import time; start = time.perf_counter(); import app; print(time.perf_counter() - start)"
# No site-packages: only the standard library and PYTHONPATH (the package root, then the stand-ins).
LAMBDA_PYTHON_OPTIONS = ("-S",)


def installed_top_levels(distribution: str) -> List[Path]:
    """This interpreter's installed top-level packages and modules of ``distribution``."""
    dist = importlib.metadata.distribution(distribution)
    tops = {file.parts[0] for file in dist.files or ()
            if file.parts[0] not in ("..", "__pycache__") and not file.parts[0].endswith((".dist-info", ".egg-info", ".pth"))}
    return sorted(Path(dist.locate_file(top)) for top in tops)


def stand_in(directory: Path) -> List[Path]:
    """``directory/layer`` and ``directory/runtime``, links to this interpreter's installations of the
    layer's and the runtime's distributions; returned in Lambda's path order (the layer first)."""
    folders = []
    for name, distributions in (("layer", lambda_runtime.LAYER_DISTRIBUTIONS),
                                ("runtime", lambda_runtime.RUNTIME_DISTRIBUTIONS)):
        folder = Path(directory) / name
        folder.mkdir(parents=True)
        for distribution in distributions:
            for source in installed_top_levels(distribution):
                (folder / source.name).symlink_to(source, target_is_directory=source.is_dir())
        folders.append(folder)
    return folders


def lambda_environment(root: Path, stand_ins: Sequence[Path], **variables: str) -> Dict[str, str]:
    """The environment of an interpreter (run with ``LAMBDA_PYTHON_OPTIONS``) that imports as the Lambda
    does: the package root, then the stand-ins; no bytecode written, as Lambda's code directory is
    read-only and Chalice ships none. ``variables`` are added (``DOGBREEDS_*``, say)."""
    return {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"),
            "PYTHONPATH": os.pathsep.join(str(path) for path in (root, *stand_ins)), "PYTHONDONTWRITEBYTECODE": "1",
            "AWS_LAMBDA_FUNCTION_NAME": "dogbreeds-dev", "AWS_REGION": "us-east-1", **variables}


def slowest_imports(importtime: str, module: str = "app") -> Tuple[Tuple[str, float], ...]:
    """``module``'s direct imports with their cumulative seconds, slowest first, read from the output of
    ``python -X importtime`` (which lists a module after the modules it imports, one indent deeper)."""
    entries = []                                    # (indent, name, cumulative microseconds)
    for line in importtime.splitlines():
        fields = line.partition("import time:")[2].split("|")
        if len(fields) == 3 and fields[1].strip().isdigit():
            name = fields[2].rstrip()
            entries.append((len(name) - len(name.lstrip()), name.strip(), int(fields[1])))
    found = [i for i, (_, name, _) in enumerate(entries) if name == module]
    if not found:
        return ()
    indent = entries[found[-1]][0]
    children = []
    for child_indent, name, cumulative in reversed(entries[:found[-1]]):
        if child_indent <= indent:
            break
        if child_indent == indent + 2:
            children.append((name, cumulative / 1e6))
    return tuple(sorted(children, key=lambda item: -item[1]))


@dataclass(frozen=True)
class ImportTiming:
    seconds: Tuple[float, ...]                          # one per fresh interpreter
    slowest: Tuple[Tuple[str, float], ...]              # app's direct imports (last run), slowest first

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def time_cold_import(zip_path: Path, runs: int = IMPORT_RUNS) -> ImportTiming:
    """Import ``app`` ``runs`` times, each in a fresh interpreter, from the extracted ``zip_path`` with
    only the standard library and the stood-in runtime and layer; RuntimeError if the import fails."""
    with tempfile.TemporaryDirectory(prefix="dogbreeds-import-") as temp:
        root = Path(temp) / "task"
        with zipfile.ZipFile(zip_path) as archive:
            archive.extractall(root)
        stand_ins = stand_in(Path(temp) / "opt")
        seconds, slowest = [], ()
        for _ in range(runs):
            result = subprocess.run([sys.executable, *LAMBDA_PYTHON_OPTIONS, "-X", "importtime", "-c", IMPORT_PROBE],
                                    cwd=root, env=lambda_environment(root, stand_ins), capture_output=True,
                                    text=True, timeout=120)
            if result.returncode != 0:
                raise RuntimeError("importing app as Lambda would failed:\n" + result.stderr.strip()[-3000:])
            seconds.append(float(result.stdout.strip().splitlines()[-1]))
            slowest = slowest_imports(result.stderr)
        return ImportTiming(tuple(seconds), slowest)


def import_report(timing: ImportTiming, top: int = 4) -> List[str]:
    """The lines ``main`` prints about the cold import."""
    runs = ", ".join(f"{value:.2f}" for value in timing.seconds)
    return [
        f"  cold import of app: {timing.median:.2f} s (median of {len(timing.seconds)} fresh interpreters: {runs} s), "
        f"goal under {IMPORT_GOAL_SECONDS:.1f} s: {_met(timing.median < IMPORT_GOAL_SECONDS)}",
        "    its slowest imports: " + ", ".join(f"{name} {value:.2f} s" for name, value in timing.slowest[:top]),
        "    (the runtime's and the layer's packages stood in by this interpreter's installed "
        + ", ".join(lambda_runtime.RUNTIME_DISTRIBUTIONS + lambda_runtime.LAYER_DISTRIBUTIONS) + ")",
    ]


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
                                     description="Build the Lambda zip; report its size and the cold import of app.")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"the zip (default {DEFAULT_OUTPUT})")
    parser.add_argument("--python-version", default=lambda_runtime.LAMBDA_PYTHON,
                        help=f"the Lambda runtime's Python (default {lambda_runtime.LAMBDA_PYTHON}, the pinned one)")
    parser.add_argument("--chalice", action="store_true",
                        help="also run `chalice package --pkg-format terraform` and report its deployment.zip")
    parser.add_argument("--vendor-only", action="store_true",
                        help=f"only stage {CHALICE_DIR.name}/vendor/ for `chalice deploy` (no network)")
    args = parser.parse_args(argv)
    staged = stage_vendor()
    print("staged for chalice deploy: " + ", ".join(f"{p.relative_to(REPO_ROOT).as_posix()}/" for p in staged))
    if args.vendor_only:
        return 0
    version = args.python_version
    print(f"Lambda package for python{version} ({PLATFORM}): app.py, chalicelib/, "
          f"{', '.join(name + '/' for name in VENDORED)} and what {CHALICE_DIR.name}/requirements.txt lists")
    try:
        measurement = build(args.output, python_version=version)
    except FetchError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        print("pip said (last lines):\n  " + "\n  ".join(exc.output.strip().splitlines()[-6:]), file=sys.stderr)
        return 1
    print(f"  {args.output}")
    print("\n".join(report(measurement) + provided_report(version)))
    status = 0 if measurement.ok else 1
    try:
        print("\n".join(import_report(time_cold_import(args.output))))
    except RuntimeError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        status = 1
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
