"""Training diagnostics computed inside the job (SageMaker Debugger is closed to new customers).

Three recorders collect cheap scalars while training runs:
- ``StepRecorder``: per step loss, weight-gradient and weight L2 norms per layer group, non-finite
  values, and the split of step time into waiting-for-data and compute;
- ``ActivationProbe``: on sampled forwards, activation spread per layer group and the fraction of
  ReLU outputs that are zero;
- ``SystemSampler``: a thread sampling CPU, memory and GPU use twice a second.

``evaluate_rules`` turns the record into rule results modelled on Debugger's built-in rules, each with
a status (``NoIssuesFound``, ``IssuesFound``, ``Error``, or ``NotApplicable``), a message, the evidence
and one line of advice. Rules are pure functions of the record, so they are tested on any record.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from dataclasses import dataclass

import torch
from torch import nn

from training.models import layer_group
from training.summary import ERROR, ISSUES, NO_ISSUES, NOT_APPLICABLE, RuleResult


@dataclass
class RuleThresholds:
    """Every knob of every rule, in one place. Defaults follow Debugger's built-in rules."""

    loss_min_relative_decrease: float = 0.01   # LossNotDecreasing: best epoch vs first epoch
    overfit_relative_change: float = 0.10      # Overfit: val loss up and train loss down by this much
    overfit_gap_ratio: float = 1.5             # Overfit: and val loss this many times train loss
    overfit_patience: int = 2                  # Overfit: for this many consecutive epochs
    overtraining_patience: int = 5             # Overtraining: epochs run past the best one
    vanishing_gradient_norm: float = 1e-7      # VanishingGradient: median weight-gradient L2 norm
    exploding_norm: float = 1e6                # ExplodingTensor: any group's weight or gradient norm
    exploding_loss: float = 1e3                # ExplodingTensor: a loss no classifier should reach
    poor_init_min_std: float = 1e-5            # PoorWeightInitialization: activations collapsed
    poor_init_std_ratio: float = 1e3           # PoorWeightInitialization: spread across groups
    dead_relu_fraction: float = 0.95           # DeadRelu: share of zero outputs in a layer group
    class_imbalance_ratio: float = 10.0        # ClassImbalance: largest / smallest train class
    low_gpu_p95: float = 70.0                  # LowGPUUtilization: 95th percentile below this
    cpu_bottleneck_data_share: float = 0.5     # CPUBottleneck: share of batch time waiting for data
    stall_seconds: float = 5.0                 # DataLoaderStall: one wait longer than this ...
    stall_median_multiple: float = 10.0        # ... and this many times the median wait


# ---------------------------------------------------------------------------------------- recorders

def _is_weight(param: torch.Tensor) -> bool:
    return param.dim() >= 2  # convolution kernels and linear weights; not biases or norm scales


class StepRecorder:
    """Per-step scalars. One device sync per step: all norms are stacked and read at once.

    Only trainable weights are watched: frozen ones never change and have no gradient, and with a
    frozen ResNet backbone their norms would cost more than the step itself."""

    def __init__(self, model: nn.Module):
        self.groups: dict[str, list[torch.nn.Parameter]] = {}
        for name, param in model.named_parameters():
            if _is_weight(param) and param.requires_grad:
                self.groups.setdefault(layer_group(name), []).append(param)
        self.steps = {"step": [], "epoch": [], "loss": [], "data_seconds": [], "compute_seconds": []}
        self.gradients = {"step": [], "groups": {g: [] for g in self.groups}}
        self.weights = {"step": [], "groups": {g: [] for g in self.groups}}
        self.loader_batches = {"phase": [], "data_seconds": [], "compute_seconds": []}
        self.loader_failures: list[dict] = []
        self.phase = "setup"  # which loader pass is running, for failure reports

    def norms(self) -> tuple[dict, dict]:
        """Weight-gradient and weight L2 norm per trainable group."""
        names, values = [], []
        for group, params in self.groups.items():
            grads = [p.grad for p in params if p.grad is not None]
            grad = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])) \
                if grads else torch.zeros((), device=params[0].device)
            weight = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.detach()) for p in params]))
            names.append(group)
            values += [grad.float(), weight.float()]
        flat = torch.stack(values).tolist()
        return ({g: flat[2 * i] for i, g in enumerate(names)},
                {g: flat[2 * i + 1] for i, g in enumerate(names)})

    def record_step(self, step: int, epoch: int, loss: float, data_seconds: float,
                    compute_seconds: float, grad_norms: dict, weight_norms: dict) -> None:
        """Store one step's scalars."""
        for key, value in (("step", step), ("epoch", epoch), ("loss", loss),
                           ("data_seconds", data_seconds), ("compute_seconds", compute_seconds)):
            self.steps[key].append(value)
        for store, values in ((self.gradients, grad_norms), (self.weights, weight_norms)):
            store["step"].append(step)
            for group, value in values.items():
                store["groups"][group].append(value)

    def record_loader_batch(self, phase: str, data_seconds: float, compute_seconds: float):
        self.loader_batches["phase"].append(phase)
        self.loader_batches["data_seconds"].append(data_seconds)
        self.loader_batches["compute_seconds"].append(compute_seconds)

    def as_dict(self) -> dict:
        return {"steps": self.steps, "gradients": self.gradients, "weights": self.weights,
                "loader_batches": self.loader_batches,
                "loader_failures": self.loader_failures}

    def load_dict(self, saved: dict):
        """Continue a record saved in a checkpoint (resume keeps the whole run's history)."""
        for key in ("steps", "gradients", "weights", "loader_batches"):
            getattr(self, key).update(saved.get(key, {}))
        self.loader_failures = saved.get("loader_failures", [])


class ActivationProbe:
    """Forward hooks that, while ``active``, measure activation spread per group and dead ReLUs."""

    def __init__(self, model: nn.Module, max_samples: int = 20):
        self.active = False
        self.max_samples = max_samples
        self.records: list[dict] = []
        self._pending: list[tuple[str, str, torch.Tensor]] = []
        self._handles = []
        outputs = {"relu": "stem", "layer1": "layer1", "layer2": "layer2", "layer3": "layer3",
                   "layer4": "layer4", "avgpool": "features"}
        for name, module in model.named_modules():
            if name in outputs:
                self._handles.append(module.register_forward_hook(self._hook("std", outputs[name])))
            if isinstance(module, nn.ReLU):
                self._handles.append(module.register_forward_hook(self._hook("zero", layer_group(name))))

    def _hook(self, what: str, group: str):
        def hook(_module, _inputs, output):
            if self.active:
                out = output.detach().float()
                stat = out.std() if what == "std" else (out <= 0).float().mean()
                self._pending.append((what, group, stat))
        return hook

    def wants_sample(self) -> bool:
        return len(self.records) < self.max_samples

    def collect(self, step: int):
        """Read the stats of the forward that just ran (one sync) and store them under ``step``."""
        if not self._pending:
            return
        values = torch.stack([s for _, _, s in self._pending]).tolist()
        std, zero = {}, {}
        for (what, group, _), value in zip(self._pending, values):
            if what == "std":
                std[group] = value
            else:
                zero.setdefault(group, []).append(value)
        self.records.append({"step": step, "std": std,
                             "zero_fraction": {g: sum(v) / len(v) for g, v in zero.items()}})
        self._pending.clear()

    def remove(self):
        for handle in self._handles:
            handle.remove()


class SystemSampler(threading.Thread):
    """Samples whole-machine CPU %, this process tree's memory, and GPU use, every ``interval`` s."""

    def __init__(self, interval: float = 0.5):
        super().__init__(daemon=True, name="system-sampler")
        self.interval = interval
        self.samples = {"t": [], "cpu_percent": [], "rss_mb": [], "gpu_util": None, "gpu_mem_mb": None}
        self._stop_event = threading.Event()
        self.gpu = torch.cuda.is_available()
        self.gpu_error = None
        if self.gpu:
            self.samples["gpu_util"], self.samples["gpu_mem_mb"] = [], []

    def run(self):
        import psutil
        process, start = psutil.Process(), time.monotonic()
        psutil.cpu_percent(None)
        while not self._stop_event.wait(self.interval):
            rss = process.memory_info().rss
            for child in process.children(recursive=True):
                try:
                    rss += child.memory_info().rss
                except psutil.Error:
                    pass
            self.samples["t"].append(round(time.monotonic() - start, 2))
            self.samples["cpu_percent"].append(psutil.cpu_percent(None))
            self.samples["rss_mb"].append(round(rss / 2**20, 1))
            if self.gpu:
                self.samples["gpu_mem_mb"].append(round(torch.cuda.memory_reserved() / 2**20, 1))
                try:
                    self.samples["gpu_util"].append(float(torch.cuda.utilization()))
                except Exception as exc:  # noqa: BLE001 - needs NVML; absent in some containers
                    self.gpu_error = f"{type(exc).__name__}: {exc}"

    def stop(self) -> dict:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=2)
        return self.samples


# ---------------------------------------------------------------------------------------------- rules

def _finite(values):
    return [v for v in values if v is not None and math.isfinite(v)]


def _percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def loss_not_decreasing(record, th: RuleThresholds) -> RuleResult:
    name, advice = "LossNotDecreasing", "Check the learning rate (not zero, not too small) and that labels match images."
    losses = [e["train_loss"] for e in record.get("epochs", [])]
    if len(_finite(losses)) < 2:  # one epoch: compare the first and last fifth of its steps
        step_losses = _finite(record.get("steps", {}).get("loss", []))
        if len(step_losses) < 10:
            return RuleResult(name, "training", NO_ISSUES, "too few steps to judge", advice,
                              {"steps": len(step_losses)})
        fifth = len(step_losses) // 5
        losses = [statistics.fmean(step_losses[:fifth]), statistics.fmean(step_losses[-fifth:])]
    losses = _finite(losses)
    first, best = losses[0], min(losses[1:])
    decrease = (first - best) / abs(first) if first else 0.0
    evidence = {"first": round(first, 6), "best_later": round(best, 6),
                "relative_decrease": round(decrease, 6), "values": [round(v, 6) for v in losses]}
    if decrease < th.loss_min_relative_decrease:
        return RuleResult(name, "training", ISSUES,
                          f"training loss fell only {decrease:.2%} from {first:.4g} (best {best:.4g})",
                          advice, evidence)
    return RuleResult(name, "training", NO_ISSUES, f"training loss fell {decrease:.1%}", advice, evidence)


def overfit(record, th: RuleThresholds) -> RuleResult:
    name, advice = "Overfit", "Stop earlier, add augmentation or weight decay, or get more data."
    epochs = [e for e in record.get("epochs", []) if math.isfinite(e.get("val_loss", math.nan))]
    streak = 0
    for i in range(1, len(epochs)):
        best = min(epochs[:i], key=lambda e: e["val_loss"])
        now = epochs[i]
        diverging = (now["val_loss"] >= best["val_loss"] * (1 + th.overfit_relative_change)
                     and now["train_loss"] <= best["train_loss"] * (1 - th.overfit_relative_change)
                     and now["val_loss"] >= th.overfit_gap_ratio * now["train_loss"])
        streak = streak + 1 if diverging else 0
        if streak >= th.overfit_patience:  # one noisy epoch (BatchNorm statistics settling) is not overfitting
            return RuleResult(
                name, "training", ISSUES,
                f"epoch {now['epoch']}: val loss rose to {now['val_loss']:.4g} from {best['val_loss']:.4g} "
                f"(epoch {best['epoch']}) while train loss fell to {now['train_loss']:.4g}", advice,
                {"epoch": now["epoch"], "val_loss": now["val_loss"], "train_loss": now["train_loss"],
                 "best_val_epoch": best["epoch"], "best_val_loss": best["val_loss"]})
    return RuleResult(name, "training", NO_ISSUES, "validation loss tracked training loss", advice,
                      {"epochs": len(epochs)})


def overtraining(record, th: RuleThresholds) -> RuleResult:
    name = "Overtraining"
    advice = "Lower early-stopping-patience or epochs: the saved model is the best epoch's, later ones cost time."
    epochs = record.get("epochs", [])
    if not epochs:
        return RuleResult(name, "training", NO_ISSUES, "no epochs recorded", advice)
    best = max(epochs, key=lambda e: (e["val_acc"], -e["epoch"]))
    extra = epochs[-1]["epoch"] - best["epoch"]
    evidence = {"best_epoch": best["epoch"], "best_val_acc": best["val_acc"], "last_epoch": epochs[-1]["epoch"],
                "epochs_past_best": extra}
    if extra >= th.overtraining_patience:
        return RuleResult(name, "training", ISSUES,
                          f"ran {extra} epochs past the best epoch {best['epoch']} "
                          f"(val_acc {best['val_acc']:.4f}) without improving", advice, evidence)
    return RuleResult(name, "training", NO_ISSUES, f"stopped {extra} epoch(s) after the best", advice, evidence)


def vanishing_gradient(record, th: RuleThresholds) -> RuleResult:
    name = "VanishingGradient"
    advice = "Check the initialisation (normalisation scales near zero?) and the learning-rate schedule."
    grads = record.get("gradients", {}).get("groups", {})
    trainable = record.get("trainable_groups") or list(grads)
    medians = {g: statistics.median(_finite(v[1:])) for g, v in grads.items() if g in trainable and _finite(v[1:])}
    small = {g: m for g, m in medians.items() if m < th.vanishing_gradient_norm}
    evidence = {"median_weight_gradient_norm": medians}
    if small:
        return RuleResult(name, "training", ISSUES,
                          "weight gradients vanish in " + ", ".join(f"{g} (median {m:.2g})" for g, m in small.items()),
                          advice, evidence)
    return RuleResult(name, "training", NO_ISSUES, "gradients are above the vanishing threshold", advice, evidence)


def exploding_in_step(loss: float, grad_norms: dict, weight_norms: dict, th: RuleThresholds) -> list[str]:
    """What exploded in one step: non-finite or absurdly large loss, gradient or weight norms."""
    found = [] if math.isfinite(loss) and loss <= th.exploding_loss else [f"loss={loss:.3g}"]
    for kind, norms in (("gradient", grad_norms), ("weight", weight_norms)):
        found += [f"{kind}:{g}={v:.3g}" for g, v in norms.items() if not (math.isfinite(v) and v <= th.exploding_norm)]
    return found


def exploding_tensor(record, th: RuleThresholds) -> RuleResult:
    name = "ExplodingTensor"
    advice = "Lower the learning rate (it is probably far too high) or clip gradients; check inputs for NaN."
    steps, grads, weights = record.get("steps", {}), record.get("gradients", {}), record.get("weights", {})
    hits = 0
    first = None
    for i, step in enumerate(steps.get("step", [])):
        found = exploding_in_step(steps["loss"][i], {g: v[i] for g, v in grads.get("groups", {}).items()},
                                  {g: v[i] for g, v in weights.get("groups", {}).items()}, th)
        if found:
            hits += 1
            first = first or {"step": step, "tensors": found}
    if first:
        return RuleResult(name, "training", ISSUES, f"at step {first['step']}: {', '.join(first['tensors'][:4])}",
                          advice, {"first": first, "steps_affected": hits, "steps": len(steps["step"])})
    return RuleResult(name, "training", NO_ISSUES, "all recorded values finite and bounded", advice)


def poor_weight_initialization(record, th: RuleThresholds) -> RuleResult:
    name = "PoorWeightInitialization"
    advice = "Start from pretrained weights or a standard init (Kaiming); check the weights file you passed."
    samples = record.get("activations", [])[:3]
    if not samples:
        return RuleResult(name, "training", NO_ISSUES, "no activations sampled", advice)
    groups = samples[0]["std"].keys()
    stds = {g: statistics.fmean(s["std"].get(g, math.nan) for s in samples) for g in groups}
    evidence = {"activation_std": stds}
    if not all(math.isfinite(v) for v in stds.values()):
        return RuleResult(name, "training", ISSUES, "non-finite activations at the start", advice, evidence)
    low = {g: v for g, v in stds.items() if v < th.poor_init_min_std}
    ratio = max(stds.values()) / max(min(stds.values()), 1e-30)
    evidence["max_min_ratio"] = ratio
    if low:
        return RuleResult(name, "training", ISSUES,
                          "activations collapse at the start in " + ", ".join(f"{g} (std {v:.2g})" for g, v in low.items()),
                          advice, evidence)
    if ratio > th.poor_init_std_ratio:
        return RuleResult(name, "training", ISSUES, f"activation spread differs {ratio:.3g}x across layers",
                          advice, evidence)
    return RuleResult(name, "training", NO_ISSUES, f"activation spread within {ratio:.3g}x across layers",
                      advice, evidence)


def dead_relu(record, th: RuleThresholds) -> RuleResult:
    name = "DeadRelu"
    advice = "Dead units never recover: lower the learning rate, check normalisation biases and the init."
    samples = record.get("activations", [])
    per_group: dict[str, list[float]] = {}
    for s in samples:
        for g, v in s.get("zero_fraction", {}).items():
            per_group.setdefault(g, []).append(v)
    fractions = {g: statistics.fmean(v) for g, v in per_group.items()}
    dead = {g: f for g, f in fractions.items() if f >= th.dead_relu_fraction}
    evidence = {"zero_fraction": fractions, "samples": len(samples)}
    if dead:
        return RuleResult(name, "training", ISSUES,
                          "ReLU outputs are almost all zero in " + ", ".join(f"{g} ({f:.1%})" for g, f in dead.items()),
                          advice, evidence)
    return RuleResult(name, "training", NO_ISSUES, "ReLU layers are active", advice, evidence)


def class_imbalance(record, th: RuleThresholds) -> RuleResult:
    name = "ClassImbalance"
    advice = "Rebalance: collect more images of the small classes, or oversample / weight them."
    counts = record.get("dataset", {}).get("class_counts", {}).get("train", {})
    if not counts:
        return RuleResult(name, "training", NO_ISSUES, "no class counts recorded", advice)
    most = max(counts, key=counts.get)
    least = min(counts, key=counts.get)
    ratio = counts[most] / max(counts[least], 1)
    evidence = {"largest": {most: counts[most]}, "smallest": {least: counts[least]}, "ratio": round(ratio, 3)}
    if ratio >= th.class_imbalance_ratio:
        return RuleResult(name, "training", ISSUES,
                          f"{most} has {counts[most]} train images, {least} only {counts[least]} ({ratio:.1f}x)",
                          advice, evidence)
    return RuleResult(name, "training", NO_ISSUES, f"largest/smallest class ratio {ratio:.2f}", advice, evidence)


def low_gpu_utilization(record, th: RuleThresholds) -> RuleResult:
    name = "LowGPUUtilization"
    advice = "Feed the GPU: larger batches, more data-loader workers, cached features, or a smaller instance."
    system = record.get("system", {})
    if not record.get("gpu"):
        return RuleResult(name, "system", NOT_APPLICABLE, "no GPU in this job", advice)
    util = _finite(system.get("gpu_util") or [])
    if not util:
        return RuleResult(name, "system", ERROR,
                          f"GPU utilisation could not be read ({record.get('gpu_error') or 'no samples'})", advice)
    p95, p50 = _percentile(util, 95), _percentile(util, 50)
    evidence = {"p50": p50, "p95": p95, "samples": len(util)}
    if p95 < th.low_gpu_p95:
        return RuleResult(name, "system", ISSUES, f"GPU utilisation p95 {p95:.0f}% (median {p50:.0f}%)",
                          advice, evidence)
    return RuleResult(name, "system", NO_ISSUES, f"GPU utilisation p95 {p95:.0f}%", advice, evidence)


def _loader_waits(record):
    """Data waits and compute times of loader-fed batches, without each pass's first batch (start-up)."""
    batches = record.get("loader_batches", {})
    phases = batches.get("phase", [])
    keep = [i for i in range(len(phases)) if i > 0 and phases[i] == phases[i - 1]]
    return ([batches["data_seconds"][i] for i in keep], [batches["compute_seconds"][i] for i in keep])


def cpu_bottleneck(record, th: RuleThresholds) -> RuleResult:
    name = "CPUBottleneck"
    advice = ("Data loading is the bottleneck: raise num-workers, store smaller images, or use "
              "finetune=head with augment=none so features are computed once.")
    waits, compute = _loader_waits(record)
    if len(waits) < 3:
        return RuleResult(name, "system", NO_ISSUES, "too few loader batches to judge", advice,
                          {"batches": len(waits)})
    share = sum(waits) / max(sum(waits) + sum(compute), 1e-9)
    evidence = {"data_wait_share": round(share, 4), "median_data_seconds": statistics.median(waits),
                "median_compute_seconds": statistics.median(compute), "batches": len(waits)}
    cpu = _finite(record.get("system", {}).get("cpu_percent", []))
    if cpu:
        evidence["cpu_percent_p50"] = _percentile(cpu, 50)
    if share >= th.cpu_bottleneck_data_share:
        return RuleResult(name, "system", ISSUES, f"{share:.0%} of batch time was spent waiting for data",
                          advice, evidence)
    return RuleResult(name, "system", NO_ISSUES, f"{share:.0%} of batch time waiting for data", advice, evidence)


def data_loader_stall(record, th: RuleThresholds) -> RuleResult:
    name = "DataLoaderStall"
    advice = ("A data-loader worker died or hung (often killed for memory): lower num-workers or batch size, "
              "check for huge images; the job can resume from its last checkpoint.")
    failures = record.get("loader_failures", [])
    if failures:
        first = failures[0]
        return RuleResult(name, "system", ISSUES, f"data loader failed during {first['phase']}: {first['error']}",
                          advice, {"failures": failures})
    waits, _ = _loader_waits(record)
    if len(waits) >= 3:
        median = statistics.median(waits)
        worst = max(waits)
        if worst > th.stall_seconds and worst > th.stall_median_multiple * median:
            return RuleResult(name, "system", ISSUES, f"one batch waited {worst:.1f}s for data (median {median:.3f}s)",
                              advice, {"max_wait_seconds": worst, "median_wait_seconds": median})
    return RuleResult(name, "system", NO_ISSUES, "no loader failures or stalls", advice)


RULES = (loss_not_decreasing, overfit, overtraining, vanishing_gradient, exploding_tensor,
         poor_weight_initialization, dead_relu, class_imbalance, low_gpu_utilization, cpu_bottleneck,
         data_loader_stall)


def evaluate_rules(record: dict, thresholds: RuleThresholds | None = None) -> list[RuleResult]:
    """Run every rule on ``record`` (a ``TrainingSummary.record()``, or any part of one); a rule that
    raises is reported with status Error, not lost."""
    thresholds = thresholds or RuleThresholds()
    results = []
    for rule in RULES:
        try:
            results.append(rule(record, thresholds))
        except Exception as exc:  # noqa: BLE001 - one broken rule must not hide the others
            name = "".join(part.title() for part in rule.__name__.split("_"))
            results.append(RuleResult(name, "training", ERROR, f"{type(exc).__name__}: {exc}",
                                      "Report this as a bug in the diagnostics."))
    return results


__all__ = ["RuleThresholds", "RuleResult", "StepRecorder", "ActivationProbe", "SystemSampler", "evaluate_rules",
           "exploding_in_step", "NO_ISSUES", "ISSUES", "ERROR", "NOT_APPLICABLE"]
