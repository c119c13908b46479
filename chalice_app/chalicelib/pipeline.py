"""The control plane's decisions: is a dataset usable, may a model be deployed.

Pure functions over data already fetched (an S3 listing, a training job's metrics): no boto3, no
I/O, so the Chalice handlers stay thin and every decision is testable. What a batch said (its
``.out`` files as ``predictions.csv``) is the ``batch`` package's.

Standard library only: this module runs on Lambda.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

# The trainer reads the same extensions (training/data.py); Lambda cannot import it, a test keeps them equal.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SPLITS = ("train", "valid", "test")
TEST_ACCURACY = "test:accuracy"


# --- dataset layout ------------------------------------------------------------------------------

@dataclass
class LayoutReport:
    """``ok`` when ``problems`` is empty; ``counts[split][class]`` = usable images (size > 0)."""
    ok: bool
    problems: List[str]
    counts: Dict[str, Dict[str, int]] = field(default_factory=dict)


def check_dataset_layout(objects: Iterable[Tuple[str, int]], name: str,
                         datasets_prefix: str = "datasets/") -> LayoutReport:
    """Check a listing of ``datasets/<name>/`` (keys relative to the bucket, or to the dataset) against
    Contract 3's ImageFolder layout.

    Counted: keys ``<split>/<class>/<file>`` whose split is train, valid or test and whose file has
    an image extension. Ignored: everything else (the ``_READY`` marker, notes, deeper paths).
    Problems: no ``train/``; fewer than 2 classes in train; a class of valid/test that train lacks;
    a class folder with no usable image; zero-byte images.
    """
    base = f"{datasets_prefix}{name}/"
    counts: Dict[str, Dict[str, int]] = {}
    empty_files: Dict[str, List[str]] = {}
    seen_classes: Dict[str, set] = {}
    for key, size in objects:
        relative = key[len(base):] if key.startswith(base) else key
        parts = relative.split("/")
        if len(parts) != 3 or parts[0] not in SPLITS or not parts[1] or not parts[2]:
            continue
        split, label, filename = parts
        if not filename.lower().endswith(IMAGE_EXTENSIONS):
            continue
        seen_classes.setdefault(split, set()).add(label)
        per_split = counts.setdefault(split, {})
        per_split.setdefault(label, 0)
        if not isinstance(size, (int, float)) or size <= 0:
            empty_files.setdefault(f"{split}/{label}", []).append(filename)
            continue
        per_split[label] += 1

    problems: List[str] = []
    train = counts.get("train", {})
    if not train:
        problems.append(f"dataset {name!r} has no train/ split with images: expected "
                        f"{base}train/<class>/<image>")
    elif len(train) < 2:
        problems.append(f"train/ has {len(train)} class ({', '.join(sorted(train))}); "
                        f"classification needs at least 2")
    for split in SPLITS[1:]:
        unknown = sorted(set(counts.get(split, {})) - set(train))
        if unknown and train:
            problems.append(f"{split}/ has classes that train/ lacks: {', '.join(unknown)}")
    for split in SPLITS:
        for label, n in sorted(counts.get(split, {}).items()):
            if n == 0:
                problems.append(f"{split}/{label} has no usable images")
    for where, files in sorted(empty_files.items()):
        shown = ", ".join(sorted(files)[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
        problems.append(f"{where} has {len(files)} zero-byte image{'s' if len(files) != 1 else ''}: {shown}")
    ordered = {split: dict(sorted(counts[split].items())) for split in SPLITS if split in counts}
    return LayoutReport(ok=not problems, problems=problems, counts=ordered)


# --- metrics and the quality gate -----------------------------------------------------------------

def final_metrics(final_metric_data_list: Optional[Sequence[Mapping]]) -> Dict[str, float]:
    """SageMaker's ``FinalMetricDataList`` (``[{"MetricName", "Value", "Timestamp"}]``) as
    ``{name: value}``; entries without a name or a finite numeric value are left out."""
    result: Dict[str, float] = {}
    for entry in final_metric_data_list or ():
        if not isinstance(entry, Mapping):
            continue
        name, value = entry.get("MetricName"), entry.get("Value")
        if not isinstance(name, str) or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            result[name] = float(value)
    return result


@dataclass(frozen=True)
class GateDecision:
    deploy: bool
    reason: str
    candidate_accuracy: Optional[float]
    deployed_accuracy: Optional[float]
    floor: float

    def to_dict(self) -> dict:
        return {"deploy": self.deploy, "reason": self.reason, "candidate_accuracy": self.candidate_accuracy,
                "deployed_accuracy": self.deployed_accuracy, "floor": self.floor}


def _accuracy(model: Optional[Mapping]) -> Optional[float]:
    if not model:
        return None
    value = model.get("test_acc")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def gate_decision(candidate: Mapping, deployed: Optional[Mapping], floor: float) -> GateDecision:
    """May ``candidate`` (``{"dataset", "test_acc"}``) replace ``deployed`` (same shape, or None)?

    - No test accuracy -> refused (a model nobody measured is not served).
    - Below ``floor`` -> refused.
    - Same dataset as the deployed model and strictly worse -> refused. Equal is deployed: the
      candidate is the newer publication of that dataset and is just as good.
    - A different dataset's deployed model (or none) is replaced once the floor is cleared.
    """
    accuracy = _accuracy(candidate)
    deployed_accuracy = _accuracy(deployed)
    dataset = candidate.get("dataset") if candidate else None

    def decide(deploy: bool, reason: str) -> GateDecision:
        return GateDecision(deploy, reason, accuracy, deployed_accuracy, floor)

    if accuracy is None:
        return decide(False, f"refused: the candidate trained on {dataset!r} reports no {TEST_ACCURACY} "
                             f"metric, so it cannot be checked against the floor of {floor:.4f}")
    if accuracy < floor:
        return decide(False, f"refused: test accuracy {accuracy:.4f} is below the floor of {floor:.4f}")
    if deployed and deployed.get("dataset") == dataset and deployed_accuracy is not None:
        if accuracy < deployed_accuracy:
            return decide(False, f"refused: test accuracy {accuracy:.4f} is worse than the deployed model's "
                                 f"{deployed_accuracy:.4f} on the same dataset {dataset!r}")
        return decide(True, f"deploy: test accuracy {accuracy:.4f} clears the floor of {floor:.4f} and is "
                            f"not worse than the deployed model's {deployed_accuracy:.4f} on {dataset!r}")
    if deployed:
        shown = f"{deployed_accuracy:.4f}" if deployed_accuracy is not None else "unknown"
        return decide(True, f"deploy: test accuracy {accuracy:.4f} clears the floor of {floor:.4f}; it "
                            f"replaces the model of dataset {deployed.get('dataset')!r} (test accuracy {shown})")
    return decide(True, f"deploy: test accuracy {accuracy:.4f} clears the floor of {floor:.4f}; "
                        f"no model is deployed yet")
