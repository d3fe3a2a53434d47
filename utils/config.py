"""The one training configuration: a dataclass filled by argparse, optionally from a YAML/JSON file.

Precedence: dataclass defaults < ``--config FILE`` < command-line flags.  Every field is a flag
(``batch_size`` -> ``--batch-size``); booleans also get ``--no-<name>``.  The demo is a config file
too (configs/demo.yaml, chosen when a run names no data and no file).  The options that differ
from the defaults are printed with where each was set; the whole config, with the file it came
from, is stored in every checkpoint and logged to MLflow, and every run writes it to
OUTPUT_DIR/config.yaml, which ``--config`` reads back to repeat the run.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import time
import types
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from .atomic import atomic_write_text
from .cli import CommandLineParser


def _f(default: Any, help: str, choices: tuple | None = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class TrainConfig:
    config: str | None = _f(
        None,
        "YAML or JSON file of options (flags override it); a run given no --videos, --cache or "
        "--config reads configs/demo.yaml, the demo's",
    )
    # --- data ---------------------------------------------------------------------------------
    videos: str | None = _f(
        None, "video root (searched recursively for the table's video_name); unset = the built-in demo dataset"
    )
    annotations: str | None = _f(None, "annotation CSV (cleaned or raw `model_` schema)")
    cache: str | None = _f(
        None, "frame cache directory made by `python -m datasets.prepare` (used instead of decoding --videos)"
    )
    demo_dir: str = _f(".cache/demo", "where the demo dataset is generated when --videos is unset")
    demo_videos: int = _f(600, "number of demo clips to generate (split into train/val/test like any table)")
    demo_val_videos: int = _f(
        0,
        "more demo clips, rendered after those and used for validation only, so a demo's validation "
        "measures each feature to a readable standard error without taking training clips",
    )
    demo_static: bool = _f(False, "demo clips show their first frame throughout (same labels): the no-motion control")
    split: str = _f(
        "hash",
        "train/val split: hash (stable hash of video_name), column (a `split` "
        "column), random42 (the earlier version's 90/10 random split, seed 42)",
        ("hash", "column", "random42"),
    )
    val_fraction: float = _f(0.1, "validation fraction for --split hash")
    test_fraction: float = _f(0.1, "test fraction for --split hash (held out, never trained on)")
    frames: int = _f(16, "frames per clip (T)")
    size: int = _f(224, "spatial input size (H = W)")
    num_workers: int = _f(4, "DataLoader worker processes per rank; reader threads with --cache")
    prefetch_factor: int = _f(2, "batches prefetched per worker (or reader thread)")
    bad_video: str = _f(
        "skip", "unreadable/missing videos: skip (drop, count, report) or error (stop)", ("skip", "error")
    )
    # the decoding policy (datasets.decode_policy.DecodePolicy; the same flags as prepare/evaluate/predict)
    partial_videos: str = _f(
        "use",
        "videos that end early (partial downloads): use the frames that decode (reported) or skip them (as bad videos)",
        ("use", "skip"),
    )
    max_video_seconds: float = _f(30.0, "videos longer than this (by their timestamps) are skipped as bad videos")
    max_video_pixels: int = _f(1920 * 1088, "videos with larger frames (width x height) are skipped as bad videos")
    # --- model ----------------------------------------------------------------------------------
    depth: int = _f(50, "ResNet3D depth", (18, 34, 50, 101, 152))
    width: int = _f(
        64,
        "channels of the stem and the first stage (the later stages have 2x, 4x, 8x): 64 is the MiT "
        "network that pretrained weights fit; the demo uses 32 (2.9x fewer FLOPs)",
    )
    pretrained: str | None = _f(
        None,
        "initial weights: MiT .pth.tar, earlier Lightning .ckpt, one of this project's checkpoints, or "
        "runs:/RUN_ID, the best (else last) checkpoint an earlier MLflow run logged",
    )
    tasks: str = _f(
        "all",
        "tasks to train: all, or a comma list of distance,object,expanse,"
        "facingness,communicating,joint,valence,arousal,peoplecount,location",
    )
    dropout: float = _f(0.5, "dropout before the multi-task head")
    freeze: str = _f("", "comma list of module-name prefixes kept frozen (e.g. conv1,bn1,layer1)")
    unfreeze: str = _f(
        "",
        "progressive unfreezing, prefix:epoch list (e.g. layer3:2,layer2:4); "
        "those modules start frozen and unfreeze at that epoch",
    )
    unfreeze_low_lr_factor: float = _f(1.0, "LR multiplier for freshly unfrozen modules")
    unfreeze_low_lr_epochs: int = _f(0, "epochs the low LR lasts after an unfreeze")
    bn: str = _f(
        "train",
        "BatchNorm: train (per-rank batch stats), sync (SyncBatchNorm), eval (running stats, not updated)",
        ("train", "sync", "eval"),
    )
    # --- loss -----------------------------------------------------------------------------------
    include_confidence: bool = _f(False, "weight score errors by the annotated confidence")
    alpha: float = _f(1.0, "weight of the confidence-prediction terms")
    beta: float = _f(1.0, "weight of the peoplecount_certain term")
    task_weights: str = _f(
        "",
        "per-task weight overrides, e.g. location=0.1,peoplecount=0.04 "
        "(defaults: scores 1.0, location 0.1, peoplecount 0.04)",
    )
    # --- optimisation ---------------------------------------------------------------------------
    epochs: int = _f(10, "epochs")
    max_steps: int = _f(0, "stop after this many optimizer steps (0 = no limit)")
    batch_size: int = _f(8, "clips per process per micro-step")
    accum_steps: int = _f(1, "micro-steps per optimizer step (gradient accumulation)")
    optimizer: str = _f("adamw", "optimizer", ("adamw", "adam", "sgd"))
    lr: float = _f(3e-4, "peak learning rate")
    weight_decay: float = _f(0.05, "weight decay (never applied to norms and biases)")
    momentum: float = _f(0.9, "SGD momentum")
    schedule: str = _f(
        "cosine",
        "LR schedule: cosine (linear warmup + cosine), restarts (the earlier CosineAnnealingWarmRestarts), constant",
        ("cosine", "restarts", "constant"),
    )
    warmup_steps: int = _f(-1, "warmup steps (-1 = 5% of the total steps)")
    min_lr_ratio: float = _f(0.01, "final LR as a fraction of --lr (cosine)")
    restart_epochs: int = _f(1, "first restart period in epochs (restarts)")
    restart_mult: int = _f(2, "period multiplier after each restart (restarts)")
    clip_grad: float = _f(1.0, "clip the global gradient norm (0 = off)")
    amp: str = _f(
        "auto",
        "mixed precision: auto (bf16 on GPUs that support it, off on CPU), bf16, fp16 (with GradScaler), off",
        ("auto", "bf16", "fp16", "off"),
    )
    channels_last: str = _f("auto", "channels_last_3d memory format (auto = on GPU)", ("auto", "on", "off"))
    compile: bool = _f(False, "torch.compile the model")
    cudnn_benchmark: bool = _f(True, "cudnn.benchmark on GPU")
    device: str = _f("auto", "auto, cpu or cuda", ("auto", "cpu", "cuda"))
    seed: int = _f(0, "seed for data order, augmentation and initialisation")
    deterministic: bool = _f(False, "deterministic algorithms (bitwise-reproducible resume on CPU)")
    # --- validation / early stopping ------------------------------------------------------------
    val_every: int = _f(1, "validate every N epochs (0 = never)")
    early_stop_metric: str = _f("val/mean_spearman", "metric monitored for best.pt and early stopping")
    early_stop_mode: str = _f("max", "whether larger or smaller is better", ("max", "min"))
    patience: int = _f(5, "stop after this many validations without improvement (0 = never)")
    # --- checkpoints / resume -------------------------------------------------------------------
    output_dir: str | None = _f(
        None,
        "output directory (checkpoints, reports, config.yaml, the default MLflow store); unset: a new "
        "runs/<run-name>-<date>-<time> (runs/<date>-<time> without --run-name); configs/demo.yaml sets runs/demo",
    )
    checkpoint_every: int = _f(500, "write a checkpoint every N optimizer steps (0 = epoch ends only)")
    keep_last: int = _f(3, "keep the newest N step checkpoints")
    resume: str = _f("auto", "auto (newest valid checkpoint in --output-dir, if any), none, or a PATH")
    allow_world_size_change: bool = _f(False, "resume with a different world size (the epoch restarts)")
    # --- faults ---------------------------------------------------------------------------------
    nonfinite: str = _f("skip", "non-finite loss/gradients: skip the step (counted) or stop", ("skip", "stop"))
    max_nonfinite_skips: int = _f(20, "consecutive skipped steps before giving up")
    dist_timeout: float = _f(600.0, "seconds any collective may wait for a peer")
    # --- gradient communication (DDP; docs/launching.md: Gradient communication) --------------------------------------
    grad_compression: str = _f(
        "none",
        "all-reduce gradients in fp32 (none) or cast to bf16/fp16 for the "
        "all-reduce by PyTorch's DDP comm hook (half the bytes on the wire)",
        ("none", "bf16", "fp16"),
    )
    ddp_bucket_mb: float = _f(
        25.0,
        "DDP gradient bucket size in MiB (PyTorch's default); bigger buckets "
        "mean fewer, larger all-reduces, smaller ones start overlapping earlier",
    )
    gradient_as_bucket_view: bool = _f(
        False, "gradients are views into DDP's all-reduce buckets (saves one gradient-sized copy and its memory)"
    )
    # --- tracking -------------------------------------------------------------------------------
    tracking_uri: str | None = _f(
        None, "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<output-dir>/mlflow.db)"
    )
    experiment: str = _f("social-vision", "MLflow experiment name")
    run_name: str | None = _f(None, "MLflow run name")
    log_every: int = _f(10, "log train metrics every N optimizer steps")
    log_model: bool = _f(True, "log the final model with mlflow.pytorch.log_model")
    log_checkpoints: bool = _f(True, "log best.pt and last.pt as MLflow artifacts at the end")
    plots: bool = _f(
        True,
        "at the end, plot the best validation's predictions, its metrics and the training "
        "curves (OUTPUT_DIR/plots, and MLflow)",
    )
    system_metrics: bool = _f(True, "MLflow system metrics (CPU, memory, GPU)")
    progress: bool = _f(True, "tqdm progress bar on rank 0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FIELD_TYPES = get_type_hints(TrainConfig)


def _base_type(tp: Any) -> Any:
    if get_origin(tp) in (Union, types.UnionType):  # Optional[str] or str | None
        args = [a for a in get_args(tp) if a is not type(None)]
        return args[0]
    return tp


def _coerce(name: str, value: Any, source: str) -> Any:
    tp = _base_type(_FIELD_TYPES[name])
    if value is None:
        return None
    if tp is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{source}: {name} must be a boolean, got {value!r}")
    if tp is str and isinstance(value, dict):  # e.g. unfreeze: {layer4: 2} in YAML
        return ",".join(f"{k}:{v}" if name == "unfreeze" else f"{k}={v}" for k, v in value.items())
    if tp is str and isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    try:
        return tp(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{source}: {name} must be {tp.__name__}, got {value!r}") from exc


def option_name(key: Any, source: str) -> str:
    """``key`` as a TrainConfig field name (- or _), or a ValueError naming ``source``."""
    name = str(key).replace("-", "_")
    if name not in _FIELD_TYPES:
        close = difflib.get_close_matches(name, list(_FIELD_TYPES), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ValueError(f"{source}: {key!r} is not a train_ddp.py option{hint}")
    return name


def check_option(key: Any, value: Any, source: str) -> Any:
    """One option's value as the config takes it (coerced to the field's type), or a ValueError
    naming ``source`` and the option: not an option, the wrong type, or not one of its choices.
    Choices are checked here because argparse checks them only for values typed as flags."""
    name = option_name(key, source)
    coerced = _coerce(name, value, source)
    choices = next(f.metadata.get("choices") for f in fields(TrainConfig) if f.name == name)
    if choices and coerced not in choices:
        raise ValueError(f"{source}: {name} must be one of {list(choices)}, got {value!r}")
    return coerced


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config; keys may use - or _; unknown keys are an error naming them."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"cannot read config file {path}: {exc}") from exc
    if path.suffix.lower() == ".json":
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of option: value")
    known = {f.name for f in fields(TrainConfig)} - {"config"}  # one file per run: no includes
    out: dict[str, Any] = {}
    unknown = []
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in known:
            unknown.append(key)
            continue
        out[name] = _coerce(name, value, str(path))
    if unknown:
        raise ValueError(f"config file {path}: unknown option(s) {unknown}")
    return out


# ``--help`` lists the options in these groups, in this order; every option is in exactly one
# (--config stands above them).
HELP_GROUPS: dict[str, tuple[str, ...]] = {
    "data": (
        *("videos", "annotations", "cache", "num_workers", "prefetch_factor"),
        *("split", "val_fraction", "test_fraction", "frames", "size"),
        *("bad_video", "partial_videos", "max_video_seconds", "max_video_pixels"),
    ),
    "model and weights": (
        *("depth", "width", "pretrained", "dropout", "bn"),
        *("freeze", "unfreeze", "unfreeze_low_lr_factor", "unfreeze_low_lr_epochs"),
    ),
    "tasks and loss": ("tasks", "task_weights", "include_confidence", "alpha", "beta"),
    "optimisation and schedule": (
        *("epochs", "max_steps", "batch_size", "accum_steps", "optimizer", "lr", "weight_decay", "momentum"),
        *("schedule", "warmup_steps", "min_lr_ratio", "restart_epochs", "restart_mult", "clip_grad", "seed"),
        *("nonfinite", "max_nonfinite_skips"),
    ),
    "precision and speed": ("amp", "channels_last", "compile", "cudnn_benchmark", "deterministic"),
    "checkpoints and resume": ("output_dir", "checkpoint_every", "keep_last", "resume", "allow_world_size_change"),
    "validation and early stopping": ("val_every", "early_stop_metric", "early_stop_mode", "patience"),
    "logging and MLflow": (
        *("tracking_uri", "experiment", "run_name", "log_every", "log_model", "log_checkpoints"),
        *("plots", "system_metrics", "progress"),
    ),
    "distributed and launch": (
        *("device", "dist_timeout", "grad_compression", "ddp_bucket_mb", "gradient_as_bucket_view"),
    ),
    "demo (no --videos/--cache: built-in clips, configs/demo.yaml)": (
        "demo_dir",
        "demo_videos",
        "demo_val_videos",
        "demo_static",
    ),
}


def build_parser(suppress_defaults: bool = False) -> argparse.ArgumentParser:
    """The flags, in HELP_GROUPS; with ``suppress_defaults`` only options given on the command line appear."""
    parser = CommandLineParser(
        usage="%(prog)s [options]",  # the groups below list them; a full usage would repeat every one
        description="Multi-task ResNet3D training with torchrun DDP.  No --videos, --cache or --config: the demo, "
        "with the settings of configs/demo.yaml.",
    )
    by_name = {f.name: f for f in fields(TrainConfig)}
    groups = [(None, ("config",))] + [(parser.add_argument_group(t), names) for t, names in HELP_GROUPS.items()]
    for group, names in groups:
        for name in names:
            f = by_name[name]
            tp = _base_type(_FIELD_TYPES[name])
            default = argparse.SUPPRESS if suppress_defaults else f.default
            kwargs: dict[str, Any] = {"default": default, "help": f.metadata["help"].replace("%", "%%"), "dest": name}
            if tp is bool:
                kwargs["action"] = argparse.BooleanOptionalAction
            else:
                kwargs["type"] = tp
                if f.metadata.get("choices"):
                    kwargs["choices"] = f.metadata["choices"]
            (group or parser).add_argument("--" + name.replace("_", "-"), **kwargs)
    return parser


def parse_config(
    argv: list[str] | None = None, demo_config: str | Path | None = None
) -> tuple[TrainConfig, dict[str, str]]:
    """Parse flags over ``--config FILE`` over the defaults.  With no --config and neither --videos
    nor --cache on the command line, ``demo_config`` (if given) is the file: the demo's settings
    are a file a user can open, not values hidden in code.

    Returns the config (``cfg.config`` names the file used) and, for every option set by the file
    or a flag, where it came from ("command line" or the file's path)."""
    parser = build_parser()
    parser.parse_known_args(argv)  # --help and bad flags are reported with the real defaults
    given = vars(build_parser(suppress_defaults=True).parse_known_args(argv)[0])
    path = given.get("config")
    if path is None and demo_config is not None and given.get("videos") is None and given.get("cache") is None:
        path = str(demo_config)
    file_values = load_config_file(path) if path else {}
    parser.set_defaults(**file_values, config=path)
    args = parser.parse_args(argv)
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    sources = {name: str(path) for name in file_values}
    sources.update({name: "command line" for name in given if name != "config"})
    return cfg, sources


def changed_options(cfg: TrainConfig, sources: dict[str, str] | None = None) -> list[str]:
    """``--flag value`` for every option that differs from its default, each followed by where it
    was set (``sources``: option -> the config file or "command line")."""
    lines = []
    for f in fields(TrainConfig):
        value = getattr(cfg, f.name)
        if value != f.default and f.name != "config":
            source = (sources or {}).get(f.name)
            lines.append(f"--{f.name.replace('_', '-')} {value}" + (f"  ({source})" if source else ""))
    return lines


def default_output_dir(run_name: str | None, now: float | None = None) -> str:
    """A new directory for a run that names none: runs/<run-name>-<date>-<time>.  A fresh one per
    launch, so a real-data run never continues another experiment's checkpoints by accident
    (continue one by passing its --output-dir)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    if not run_name:
        return f"runs/{stamp}"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in run_name)
    return f"runs/{safe}-{stamp}"


# Left out of a run's saved config.yaml: which file it came from (the file itself is the record)
# and where it wrote (a repeat that named the same directory would continue the run, not repeat it).
NOT_REPEATED = ("config", "output_dir")


def write_config_file(cfg: TrainConfig, path: str | Path) -> None:
    """The resolved configuration as YAML that ``--config`` reads back: every option, so the file
    repeats the run even after a default changes."""
    import yaml

    values = {k: v for k, v in cfg.to_dict().items() if k not in NOT_REPEATED}
    header = (
        f"# The resolved configuration of the run in {cfg.output_dir} (from {cfg.config or 'the defaults'}"
        " and the command line).\n"
        f"# Repeat it: train_ddp.py --config {Path(path)} (a new output dir unless you pass --output-dir).\n"
    )
    text = header + yaml.safe_dump(values, sort_keys=False, default_flow_style=False)
    atomic_write_text(path, text)


def flatten_for_logging(cfg: TrainConfig) -> dict[str, str]:
    """Config as MLflow params (strings; None -> "")."""
    return {k: "" if v is None else str(v) for k, v in cfg.to_dict().items()}


def parse_key_values(spec: str, what: str, value_type=float, sep: str = "=") -> dict[str, Any]:
    """``"a=1,b=2"`` -> {"a": 1.0, "b": 2.0}; errors name the bad item."""
    out: dict[str, Any] = {}
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        if sep not in item:
            raise ValueError(f"{what}: expected name{sep}value, got {item!r}")
        key, value = item.split(sep, 1)
        try:
            out[key.strip()] = value_type(value)
        except ValueError as exc:
            raise ValueError(f"{what}: bad value in {item!r}") from exc
    return out


# Options that decide how gradients are summed across ranks.  A resumed run must keep them:
# it continues the same MLflow run, whose logged parameters cannot change, and compression or
# another bucketing changes the sums (and with them the bitwise-exact resume).
COMM_OPTIONS = ("grad_compression", "ddp_bucket_mb", "gradient_as_bucket_view")

# Options that decide what a run learns: which clips train and validate, what the model sees of
# them, and its objective.  Resumed under others, one checkpoint and one MLflow run would mix two
# experiments (or train on clips it validated on) -- e.g. an old runs/demo continued under a newer
# configs/demo.yaml.  Epochs, max steps, patience and the like may change: they say how long, not what.
LEARNING_OPTIONS = (
    *("split", "val_fraction", "test_fraction", "demo_videos", "demo_val_videos", "demo_static", "frames", "size"),
    *("tasks", "task_weights", "include_confidence", "alpha", "beta"),
)


def _changed_on_resume(saved_config: dict[str, Any], cfg: TrainConfig, names: tuple[str, ...]) -> list[str]:
    """``--flag saved -> now`` for each of ``names`` that differs.  Checkpoints from before an
    option existed were written with its default."""
    defaults = {f.name: f.default for f in fields(TrainConfig)}

    def shown(value: Any) -> Any:
        return "''" if value == "" else value  # an empty --task-weights

    return [
        f"--{name.replace('_', '-')} {shown(saved_config.get(name, defaults[name]))} -> {shown(getattr(cfg, name))}"
        for name in names
        if saved_config.get(name, defaults[name]) != getattr(cfg, name)
    ]


def comm_options_mismatch(saved_config: dict[str, Any], cfg: TrainConfig) -> str | None:
    """Why a checkpoint written with ``saved_config`` must not resume under ``cfg``'s gradient
    communication (None if it may)."""
    if changed := _changed_on_resume(saved_config, cfg, COMM_OPTIONS):
        return (
            "was trained with other gradient-communication options (" + ", ".join(changed) + "); resume "
            "with the options it was trained with or start a new --output-dir"
        )
    return None


def learning_options_mismatch(saved_config: dict[str, Any], cfg: TrainConfig) -> str | None:
    """Why a checkpoint written with ``saved_config`` must not resume under ``cfg``'s input and
    objective (None if it may)."""
    if changed := _changed_on_resume(saved_config, cfg, LEARNING_OPTIONS):
        return (
            "was trained on other input or with another objective (" + ", ".join(changed) + "); resume "
            "with the options it was trained with, or start a new --output-dir (--pretrained runs:/RUN_ID "
            "starts a new run from its weights)"
        )
    return None
