"""The sweep file: what a hyper-parameter sweep tries, read and checked before anything runs.

    name: lr-freeze                 # default: the file's name without .yaml
    base: ../earlier_version.yaml   # any train_ddp.py config file, relative to this file (optional)
    fixed: {epochs: 10}             # options every trial sets (optional)
    grid:                           # every combination of these values
      lr: [1.0e-5, 5.0e-6]
      freeze:
        - conv1,bn1,layer1,layer2,layer3,layer4.0,layer4.1
        - conv1,bn1,layer1,layer2,layer3
    random:                         # seeded draws, crossed with the grid (optional)
      trials: 4
      seed: 0
      values:
        dropout: {uniform: [0.1, 0.5]}
        weight_decay: {log_uniform: [1.0e-4, 1.0e-1]}
    seeds: [0, 1]                   # each combination once per seed
    metric: val/mean_spearman       # what ranks the trials (default: the config's early_stop_metric)
    mode: max                       # (default: the config's early_stop_mode)
    resources: {nproc_per_node: 8, nodes: 1, max_concurrent: 4}

The trials are grid combination x random draw x seed, in that order, numbered from 0.  Every
value is checked as train_ddp.py's config checks it (type, choices), and every mistake is one
SweepFileError that names the file and the key.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from utils.config import TrainConfig, check_option, load_config_file, option_name

TOP_KEYS = ("name", "base", "fixed", "grid", "random", "seeds", "metric", "mode", "resources")
RANDOM_KEYS = ("trials", "seed", "values")
RESOURCE_KEYS = ("nproc_per_node", "nodes", "max_concurrent")
DISTRIBUTIONS = ("uniform", "log_uniform", "int_uniform", "choice")
# Set by the sweep for each trial: its own output dir (and resume from it), the sweep's store
# and a run name saying which trial it is.
SET_BY_SWEEP = ("output_dir", "resume", "tracking_uri", "run_name")
# The same for every trial (a sweep may fix it, never vary it): the children must sit in the
# parent run's experiment for the MLflow UI to nest them.
NEVER_SWEPT = ("experiment",)


class SweepFileError(ValueError):
    """A mistake in a sweep file, naming the file and the key."""


@dataclass
class Trial:
    index: int
    overrides: dict[str, Any]  # swept option -> this trial's value

    @property
    def name(self) -> str:
        return f"{self.index:03d}"

    def describe(self) -> str:
        return " ".join(f"{k}={format_value(v)}" for k, v in self.overrides.items())


@dataclass
class Sweep:
    path: Path
    name: str
    base: Path | None
    options: dict[str, Any]  # the base config's options, then the fixed ones
    swept: list[str]  # the varied options, in the order the file gives them (seed last)
    trials: list[Trial]
    metric: str
    mode: str
    nproc_per_node: int = 1
    nodes: int = 1
    max_concurrent: int | None = None  # trials running at once on a cluster (None: as many as it gives)

    def trial_options(self, trial: Trial, output_dir: Path, tracking_uri: str) -> dict[str, Any]:
        """Everything the trial's config file holds: base and fixed options, the trial's values,
        then where it writes and logs."""
        return {
            **self.options,
            **trial.overrides,
            "output_dir": str(output_dir),
            "resume": "auto",
            "tracking_uri": tracking_uri,
            "run_name": f"{self.name}-{trial.name}",
        }

    @property
    def experiment(self) -> str:
        return self.options.get("experiment", TrainConfig.experiment)


def format_value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep file; a SweepFileError names the first mistake."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SweepFileError(f"cannot read sweep file {path}: {exc}") from exc
    src = str(path)
    if not isinstance(data, dict):
        raise SweepFileError(f"{src}: a sweep file is a mapping of {', '.join(TOP_KEYS)}")
    _known_keys(data, TOP_KEYS, src, "")

    base = None
    options: dict[str, Any] = {}
    if data.get("base") is not None:
        base = (path.parent / str(data["base"])).resolve()
        try:
            options = load_config_file(base)
        except ValueError as exc:
            raise SweepFileError(f"{src}: base: {exc}") from exc
    fixed = {}
    for key, value in _mapping(data.get("fixed"), src, "fixed").items():
        name = _option_name(key, src, "fixed")
        if name in SET_BY_SWEEP:
            raise SweepFileError(f"{src}: fixed.{key}: the sweep sets it for each trial")
        fixed[name] = _check(name, value, src, f"fixed.{key}")
    for key in SET_BY_SWEEP:
        options.pop(key, None)  # a base config's output dir etc. are replaced per trial
    options.update(fixed)

    grid = {}
    for key, values in _mapping(data.get("grid"), src, "grid").items():
        name = _swept_name(key, src, "grid", set(fixed))
        if not isinstance(values, list):
            raise SweepFileError(f"{src}: grid.{key}: give a list of values (a single value belongs in fixed)")
        if not values:
            raise SweepFileError(f"{src}: grid.{key}: empty list of values")
        grid[name] = [_check(name, v, src, f"grid.{key}") for v in values]
        if len(set(map(repr, grid[name]))) < len(values):
            raise SweepFileError(f"{src}: grid.{key}: a value is given twice in {values}")

    draws = _random_draws(data.get("random"), src, set(fixed), grid)

    seeds = data.get("seeds")
    seed_values: list[int] = []
    if seeds is not None:
        if not isinstance(seeds, list) or not seeds:
            raise SweepFileError(f"{src}: seeds: give a non-empty list of seeds")
        if "seed" in grid or any("seed" in d for d in draws):
            raise SweepFileError(f"{src}: seeds: seed is also swept in grid or random; give it once")
        if "seed" in fixed:
            raise SweepFileError(f"{src}: seeds: seed is also in fixed; give it once")
        seed_values = [_check("seed", s, src, "seeds") for s in seeds]

    combos = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    seed_overrides = [{"seed": s} for s in seed_values]
    overrides = [
        {**combo, **draw, **seed}
        for combo in combos or [{}]
        for draw in draws or [{}]
        for seed in seed_overrides or [{}]
    ]
    if overrides == [{}]:
        raise SweepFileError(f"{src}: sweeps nothing; give grid, random or seeds")
    swept = list(overrides[0])

    metric = data.get("metric", options.get("early_stop_metric", TrainConfig.early_stop_metric))
    if not isinstance(metric, str) or not metric:
        raise SweepFileError(f"{src}: metric: give a metric name, e.g. val/mean_spearman")
    mode = data.get("mode", options.get("early_stop_mode", TrainConfig.early_stop_mode))
    if mode not in ("max", "min"):
        raise SweepFileError(f"{src}: mode: max or min, got {mode!r}")

    resources = _mapping(data.get("resources"), src, "resources")
    _known_keys(resources, RESOURCE_KEYS, src, "resources.")
    counts = {}
    for key in RESOURCE_KEYS:
        value = resources.get(key, None if key == "max_concurrent" else 1)
        if value is None and key == "max_concurrent":
            counts[key] = None
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SweepFileError(f"{src}: resources.{key}: a whole number >= 1, got {value!r}")
        counts[key] = value

    name = str(data.get("name") or path.stem)
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise SweepFileError(f"{src}: name: letters, digits, '-', '_' and '.' only, got {name!r}")
    return Sweep(
        path=path.resolve(),
        name=name,
        base=base,
        options=options,
        swept=swept,
        trials=[Trial(i, o) for i, o in enumerate(overrides)],
        metric=metric,
        mode=mode,
        nproc_per_node=counts["nproc_per_node"],
        nodes=counts["nodes"],
        max_concurrent=counts["max_concurrent"],
    )


def _known_keys(data: dict, known: tuple[str, ...], src: str, prefix: str) -> None:
    for key in data:
        if key not in known:
            raise SweepFileError(f"{src}: unknown key {prefix}{key} (known: {', '.join(known)})")


def _mapping(value: Any, src: str, key: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SweepFileError(f"{src}: {key}: give a mapping of option: value")
    return value


def _option_name(key: Any, src: str, where: str) -> str:
    try:
        return option_name(key, f"{src}: {where}")
    except ValueError as exc:
        raise SweepFileError(str(exc)) from exc


def _swept_name(key: Any, src: str, where: str, fixed: set[str]) -> str:
    name = _option_name(key, src, where)
    if name in SET_BY_SWEEP:
        raise SweepFileError(f"{src}: {where}.{key}: the sweep sets it for each trial")
    if name in NEVER_SWEPT:
        raise SweepFileError(f"{src}: {where}.{key}: one {name} for the whole sweep (put it in fixed)")
    if name in fixed:
        raise SweepFileError(f"{src}: {where}.{key}: also in fixed; give it once")
    return name


def _check(name: Any, value: Any, src: str, where: str) -> Any:
    try:
        return check_option(str(name).replace("-", "_"), value, f"{src}: {where}")
    except ValueError as exc:
        raise SweepFileError(str(exc)) from exc


def _random_draws(spec: Any, src: str, fixed: set[str], grid: dict) -> list[dict[str, Any]]:
    """The seeded draws: ``trials`` dicts of option -> value, the same for the same file."""
    if spec is None:
        return []
    spec = _mapping(spec, src, "random")
    _known_keys(spec, RANDOM_KEYS, src, "random.")
    trials = spec.get("trials")
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise SweepFileError(f"{src}: random.trials: how many draws, a whole number >= 1, got {trials!r}")
    seed = spec.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise SweepFileError(f"{src}: random.seed: a whole number, got {seed!r}")
    values = _mapping(spec.get("values"), src, "random.values")
    if not values:
        raise SweepFileError(f"{src}: random.values: give at least one option to draw")
    samplers = {}
    for key, dist in values.items():
        where = f"random.values.{key}"
        name = _swept_name(key, src, "random.values", fixed)
        if name in grid:
            raise SweepFileError(f"{src}: {where}: {name} is also in grid; give it once")
        samplers[name] = _sampler(dist, src, where)
        if isinstance(dist, dict) and isinstance(dist.get("choice"), list):  # every choice, drawn or not
            for value in dist["choice"]:
                _check(name, value, src, f"{where}.choice")
    rng = random.Random(seed)
    return [
        {name: _check(name, draw(rng), src, f"random.values.{name}") for name, draw in samplers.items()}
        for _ in range(trials)
    ]


def _sampler(dist: Any, src: str, where: str):
    if not isinstance(dist, dict) or len(dist) != 1 or next(iter(dist)) not in DISTRIBUTIONS:
        raise SweepFileError(f"{src}: {where}: give one of {', '.join(f'{{{d}: ...}}' for d in DISTRIBUTIONS)}")
    kind, args = next(iter(dist.items()))
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise SweepFileError(f"{src}: {where}.choice: empty list of values")
        return lambda rng: rng.choice(args)
    try:
        low, high = (float(a) for a in args)
    except (TypeError, ValueError):
        raise SweepFileError(f"{src}: {where}.{kind}: give [low, high], got {args!r}") from None
    if not low < high:
        raise SweepFileError(f"{src}: {where}.{kind}: low must be below high, got {args!r}")
    if kind == "uniform":
        return lambda rng: rng.uniform(low, high)
    if kind == "int_uniform":
        if low != int(low) or high != int(high):
            raise SweepFileError(f"{src}: {where}.int_uniform: whole-number bounds, got {args!r}")
        return lambda rng: rng.randint(int(low), int(high))
    if low <= 0:
        raise SweepFileError(f"{src}: {where}.log_uniform: bounds must be > 0, got {args!r}")
    return lambda rng: math.exp(rng.uniform(math.log(low), math.log(high)))
