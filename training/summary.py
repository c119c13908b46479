"""What a training run reports about itself: the typed summary and the records it is made of.

``train.run`` builds one ``TrainingSummary`` when the run ends (completed or failed); the rules read its
JSON-shaped ``record()``, ``report.html`` is rendered from it, and ``diagnostics()`` is the content of
``diagnostics.json`` (Contract 1; the local runtime reads its ``issues_found``). A field left None was not
recorded: the run failed before it got there. Standard library only, so the report needs no torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

NO_ISSUES, ISSUES, ERROR, NOT_APPLICABLE = "NoIssuesFound", "IssuesFound", "Error", "NotApplicable"

# The parts of the record that diagnostics.json carries under "record", in this order.
DIAGNOSTICS_RECORD = ("epochs", "steps", "gradients", "weights", "activations", "loader_batches",
                      "loader_failures", "system", "dataset", "test", "best_epoch")


@dataclass
class EpochResult:
    """One epoch's metric line (the one SageMaker's metric regexes read) and its wall time."""

    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    seconds: float


@dataclass
class TestResult:
    """The best epoch's model evaluated on the test split (or valid, when there is no test split)."""

    __test__ = False  # a record, not a pytest test class

    test_loss: float
    test_acc: float


@dataclass
class RuleResult:
    """One diagnostics rule's verdict: a status (NO_ISSUES, ISSUES, ERROR, NOT_APPLICABLE) and why."""

    name: str
    kind: str  # "training" or "system"
    status: str
    message: str = ""
    advice: str = ""
    evidence: dict = field(default_factory=dict)


@dataclass
class TrainingSummary:
    """Everything one run recorded, from its hyperparameters to the rules' verdicts."""

    title: str | None = None
    job: dict | None = None                 # the hyperparameters, plus the training mode once known
    started_at: str | None = None           # ISO 8601, UTC
    status: str | None = None               # Completed | Failed | InProgress
    failure_reason: str | None = None       # "<ExceptionType>: <message>" when the run failed
    device: str | None = None
    dataset: dict | None = None             # fingerprint, class_counts, skipped_images, derived_splits
    epochs: list[EpochResult] | None = None
    best_epoch: int | None = None
    test: TestResult | None = None
    per_class: list[dict] | None = None     # {"class", "label", "correct", "total"} per class
    confusion: dict | None = None           # {"classes": [...], "matrix": [[...]]}, rows = true class
    system: dict | None = None              # SystemSampler's samples
    seconds: float | None = None
    # The recorders' series (see training.diagnostics.StepRecorder and ActivationProbe).
    steps: dict | None = None
    gradients: dict | None = None
    weights: dict | None = None
    loader_batches: dict | None = None
    loader_failures: list[dict] | None = None
    activations: list[dict] | None = None
    profiler: dict | None = None            # trace_file, steps, top_ops
    gpu: bool | None = None
    gpu_error: str | None = None
    trainable_groups: list[str] | None = None
    rules: list[RuleResult] | None = None

    def record(self) -> dict:
        """The summary as JSON-shaped data, without the parts that were not recorded: what rules read."""
        record = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if f.name in ("epochs", "rules"):
                value = [asdict(item) for item in value]
            elif f.name == "test":
                value = asdict(value)
            record[f.name] = value
        return record

    @property
    def issues_found(self) -> list[str]:
        """The names of the rules that found issues, in rule order."""
        return [r.name for r in self.rules or [] if r.status == ISSUES]

    def diagnostics(self) -> dict:
        """The content of diagnostics.json: status, failure reason, rule results, issues and the record."""
        record = self.record()
        return {"status": self.status, "failure_reason": self.failure_reason,
                "rules": [asdict(r) for r in self.rules or []], "issues_found": self.issues_found,
                "record": {name: record.get(name) for name in DIAGNOSTICS_RECORD}}
