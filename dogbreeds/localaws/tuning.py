"""SageMaker tuning job configurations as Optuna studies.

``Strategy.from_config`` reads a ``HyperParameterTuningJobConfig`` (the request the control plane
sends to SageMaker) and says which Optuna sampler and pruner reproduce it locally:

| SageMaker                              | Optuna                                                    |
|----------------------------------------|-----------------------------------------------------------|
| ``Strategy: Bayesian``                 | ``TPESampler``                                            |
| ``Strategy: Random``                   | ``RandomSampler``                                         |
| ``Strategy: Grid``                     | every combination of the categorical values, enqueued in order |
| ``Strategy: Hyperband``                | ``TPESampler`` + ``HyperbandPruner(MinResource, MaxResource)``, |
|                                        | fed the objective metric after every epoch               |
| ``TrainingJobEarlyStoppingType: Auto`` | ``MedianPruner`` (SageMaker's Auto stops a trial whose objective is below the median of earlier trials at the same epoch) |

Continuous ranges with ``Logarithmic`` scaling sample on a log scale; ``Linear`` and ``Auto``
linearly (``ReverseLogarithmic`` has no Optuna counterpart and is sampled linearly). Categorical
values are passed to the trial exactly as the request spells them (JSON-encoded strings).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from typing import Dict, Optional

import optuna

optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass
class Strategy:
    name: str
    objective_metric: str
    objective_type: str
    max_jobs: int
    parallel: int
    distributions: Dict[str, optuna.distributions.BaseDistribution]
    kinds: Dict[str, str]                      # name -> continuous | integer | categorical
    early_stopping: str = "Off"
    min_resource: int = 1
    max_resource: int = 1
    seed: Optional[int] = None
    grid: Dict[str, list] = field(default_factory=dict)

    @property
    def direction(self) -> str:
        return "maximize" if self.objective_type == "Maximize" else "minimize"

    @classmethod
    def from_config(cls, config: dict) -> "Strategy":
        ranges = config.get("ParameterRanges", {})
        distributions, kinds, grid = {}, {}, {}
        for r in ranges.get("ContinuousParameterRanges", []):
            low, high = float(r["MinValue"]), float(r["MaxValue"])
            distributions[r["Name"]] = optuna.distributions.FloatDistribution(
                low, high, log=r.get("ScalingType") == "Logarithmic")
            kinds[r["Name"]] = "continuous"
        for r in ranges.get("IntegerParameterRanges", []):
            distributions[r["Name"]] = optuna.distributions.IntDistribution(
                int(r["MinValue"]), int(r["MaxValue"]), log=r.get("ScalingType") == "Logarithmic")
            kinds[r["Name"]] = "integer"
        for r in ranges.get("CategoricalParameterRanges", []):
            distributions[r["Name"]] = optuna.distributions.CategoricalDistribution(list(r["Values"]))
            kinds[r["Name"]] = "categorical"
            grid[r["Name"]] = list(r["Values"])
        if not distributions:
            raise ValueError("the tuning job has no ParameterRanges")
        objective = config["HyperParameterTuningJobObjective"]
        limits = config["ResourceLimits"]
        strategy = cls(name=config.get("Strategy", "Bayesian"), objective_metric=objective["MetricName"],
                       objective_type=objective["Type"], max_jobs=int(limits["MaxNumberOfTrainingJobs"]),
                       parallel=int(limits.get("MaxParallelTrainingJobs", 1)), distributions=distributions,
                       kinds=kinds, early_stopping=config.get("TrainingJobEarlyStoppingType", "Off"),
                       seed=config.get("RandomSeed"), grid=grid)
        if strategy.name == "Hyperband":
            hyperband = config.get("StrategyConfig", {}).get("HyperbandStrategyConfig", {})
            strategy.min_resource = int(hyperband.get("MinResource", 1))
            strategy.max_resource = int(hyperband.get("MaxResource", 1))
        if strategy.name == "Grid":
            if set(kinds.values()) != {"categorical"}:
                raise ValueError("the Grid strategy takes categorical ranges only")
            size = 1
            for values in grid.values():
                size *= len(values)
            strategy.max_jobs = min(strategy.max_jobs, size)
        return strategy

    def sampler(self) -> optuna.samplers.BaseSampler:
        if self.name == "Random":
            return optuna.samplers.RandomSampler(seed=self.seed)
        if self.name == "Grid":
            # Optuna's GridSampler stops the study from inside tell(), which the ask/tell interface
            # refuses; the grid is enqueued instead (see grid_points) and this sampler never samples.
            return optuna.samplers.RandomSampler(seed=self.seed)
        # Bayesian and Hyperband: TPE, with a random start of about a third of the budget.
        return optuna.samplers.TPESampler(seed=self.seed, n_startup_trials=max(2, min(10, self.max_jobs // 3)))

    def pruner(self) -> optuna.pruners.BasePruner:
        if self.name == "Hyperband":
            return optuna.pruners.HyperbandPruner(min_resource=self.min_resource, max_resource=self.max_resource,
                                                  reduction_factor=3)
        if self.early_stopping == "Auto":
            return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
        return optuna.pruners.NopPruner()

    def grid_points(self) -> list:
        """Every combination of a Grid's values, in a fixed order (empty for other strategies)."""
        if self.name != "Grid":
            return []
        names = sorted(self.grid)
        return [dict(zip(names, values)) for values in itertools.product(*(self.grid[n] for n in names))]

    def encode(self, name: str, value) -> str:
        """A chosen value as SageMaker reports it in TunedHyperParameters (and passes to the trial)."""
        kind = self.kinds[name]
        if kind == "categorical":
            return value
        if kind == "integer":
            return str(int(value))
        return repr(float(value))


def trial_job_name(tuning_job: str, index: int) -> str:
    """``<tuning-job>-<NNN>-<8 hex>``, as SageMaker names a tuning job's training jobs."""
    digest = hashlib.sha256(f"{tuning_job}/{index}".encode()).hexdigest()[:8]
    return f"{tuning_job}-{index:03d}-{digest}"


_DEFINITION_FIELDS = ("AlgorithmSpecification", "RoleArn", "InputDataConfig", "OutputDataConfig", "ResourceConfig",
                      "StoppingCondition", "CheckpointConfig", "EnableManagedSpotTraining", "VpcConfig",
                      "EnableNetworkIsolation", "Environment")


def trial_request(definition: dict, job_name: str, tuned: Dict[str, str], objective_metric: str) -> dict:
    """The CreateTrainingJob request a tuning job makes for one trial: the definition's statics, the
    trial's tuned values and ``_tuning_objective_metric``, as SageMaker adds it."""
    hyperparameters = dict(definition.get("StaticHyperParameters", {}))
    hyperparameters.update(tuned)
    hyperparameters["_tuning_objective_metric"] = json.dumps(objective_metric)
    request = {"TrainingJobName": job_name, "HyperParameters": hyperparameters}
    request.update({key: definition[key] for key in _DEFINITION_FIELDS if key in definition})
    return request
