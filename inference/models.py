"""A trained (or untrained control) network for evaluation, prediction and feature extraction.

* :func:`load_inference_model`: this project's training checkpoints (depth, tasks, frames and
  size are read from the file) or anything ``resnet3d.load_pretrained`` reads (the earlier
  Lightning checkpoints; depth and tasks are then read from the tensor names, frames and size
  come from flags or default to 16 / 224).  Always ``weights_only``.  With
  ``require_heads=False`` a checkpoint without a multi-task head (official Moments in Time
  weights) loads as the bare backbone; :func:`random_init_model` is the untrained control.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnet3d import (
    MultiTaskResNet3D,
    UnreadableCheckpointError,
    UnsafeCheckpointError,
    load_pretrained,
    read_checkpoint,
)
from resnet3d.backbone import MIT_WIDTH, ResNet3D, recorded_width
from resnet3d.checkpoints import HEAD, CheckpointMismatchError, find_network_prefix, find_state_dict, guess_depth
from utils.checkpoint import CHECKPOINT_FORMAT
from utils.tasks import TASKS, parse_tasks, task_outputs

# What a bad --checkpoint raises: entry points turn these into one line naming the file.
CHECKPOINT_ERRORS = (OSError, CheckpointMismatchError, UnreadableCheckpointError, UnsafeCheckpointError)

DEFAULT_FRAMES = 16  # the Moments in Time models' clip, for checkpoints that do not say
DEFAULT_SIZE = 224


@dataclass
class ModelSpec:
    """What was loaded and how the clips must look."""

    path: str
    kind: str  # training | lightning | mit | state_dict (see resnet3d.load_pretrained) | random_init
    depth: int
    tasks: tuple[str, ...]
    frames: int
    size: int
    step: int | None = None  # training step of a training checkpoint
    run_id: str | None = None  # the MLflow run that wrote it
    tracking_uri: str | None = None  # the store that run is in (recorded by train_ddp.py)
    config: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    width: int = MIT_WIDTH  # channels of the stem (see resnet3d.ResNet3D)

    @property
    def network(self) -> str:
        """E.g. "ResNet3D-50", or "ResNet3D-18 (width 32)" for a narrower one."""
        return f"ResNet3D-{self.depth}" + (f" (width {self.width})" if self.width != MIT_WIDTH else "")

    def as_dict(self) -> dict[str, Any]:
        return {
            "checkpoint": self.path,
            "kind": self.kind,
            "depth": self.depth,
            "width": self.width,
            "tasks": list(self.tasks),
            "frames": self.frames,
            "size": self.size,
            "step": self.step,
            "training_run_id": self.run_id,
        }


def load_inference_model(
    path: str,
    *,
    depth: int | None = None,
    tasks: str | Iterable[str] | None = None,
    frames: int | None = None,
    size: int | None = None,
    require_heads: bool = True,
) -> tuple[nn.Module, ModelSpec]:
    """Build the network a checkpoint holds and load it (eval mode, CPU).

    A checkpoint with no multi-task head (the official MiT weights: their classifier is
    dropped) is refused, or with ``require_heads=False`` loaded as a bare ``ResNet3D``
    backbone (``spec.tasks == ()``), for uses that need only the backbone's layers.
    """
    if not Path(path).is_file():
        last = Path(path).with_name("last.pt")
        hint = (
            f" (its run wrote no best.pt: no validation ran there; {last} exists)"
            if Path(path).name == "best.pt" and last.exists()
            else ""
        )
        raise FileNotFoundError(f"{path}: no such checkpoint file{hint}")
    raw = read_checkpoint(path)
    if isinstance(raw, dict) and raw.get("format") == CHECKPOINT_FORMAT:
        return _load_training_checkpoint(path, raw, depth, tasks, frames, size)
    container, state = find_state_dict(raw)
    prefix = find_network_prefix(list(state))
    names = [n[len(prefix) :] for n in state if n.startswith(prefix)]
    found_depth = guess_depth([n for n in names if not n.startswith(HEAD + ".")])
    if depth is None:
        if found_depth is None:
            raise CheckpointMismatchError(f"{path}: cannot tell the ResNet3D depth from the tensor names; pass --depth")
        depth = found_depth
    heads = {n.split(".")[1] for n in names if n.startswith(HEAD + ".") and n.count(".") == 2}
    if tasks is None:
        selected = tuple(t for t in TASKS if all(o in heads for o in task_outputs(t)))
        if not selected and not require_heads:
            return _load_backbone(path, raw, depth, frames, size)
        if not selected:
            raise CheckpointMismatchError(
                f"{path} has no multi-task head (heads found: {sorted(heads) or 'none'}); a Moments in Time "
                "classification checkpoint must be trained with train_ddp.py before it can predict"
            )
    else:
        selected = parse_tasks(tasks)
    model = MultiTaskResNet3D(depth=depth, tasks=selected, dropout=0.0)
    report = load_pretrained(model, raw, require_heads=True)
    notes = _clip_shape_notes(path, frames, size)
    spec = ModelSpec(
        path=str(path),
        kind=report.kind,
        depth=depth,
        tasks=selected,
        frames=frames or DEFAULT_FRAMES,
        size=size or DEFAULT_SIZE,
        notes=notes,
    )
    return model.eval(), spec


def _clip_shape_notes(path, frames, size) -> list[str]:
    if frames is None or size is None:
        return [
            f"{path} does not record the clip shape; using frames={frames or DEFAULT_FRAMES}, "
            f"size={size or DEFAULT_SIZE} (set --frames/--size to what it was trained with)"
        ]
    return []


def _load_backbone(path, raw, depth, frames, size) -> tuple[nn.Module, ModelSpec]:
    model = ResNet3D(depth=depth)
    report = load_pretrained(model, raw)
    notes = _clip_shape_notes(path, frames, size)
    if report.skipped:
        notes.append(f"only the backbone of {path} is loaded; not loaded: {', '.join(sorted(report.skipped))}")
    spec = ModelSpec(
        path=str(path),
        kind=report.kind,
        depth=depth,
        tasks=(),
        frames=frames or DEFAULT_FRAMES,
        size=size or DEFAULT_SIZE,
        notes=notes,
    )
    return model.eval(), spec


def random_init_model(
    depth: int, *, seed: int = 0, frames: int | None = None, size: int | None = None
) -> tuple[nn.Module, ModelSpec]:
    """An untrained ``ResNet3D`` backbone (the usual control in brain/behaviour analyses), its
    weights a function of ``(depth, seed)`` only, so every rank builds the same network."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ResNet3D(depth=depth)
    spec = ModelSpec(
        path="",
        kind="random_init",
        depth=depth,
        tasks=(),
        frames=frames or DEFAULT_FRAMES,
        size=size or DEFAULT_SIZE,
        config={"seed": seed},
    )
    return model.eval(), spec


def _load_training_checkpoint(path, raw, depth, tasks, frames, size) -> tuple[nn.Module, ModelSpec]:
    ck_depth, ck_tasks = int(raw["depth"]), parse_tasks(raw["tasks"])
    if depth is not None and int(depth) != ck_depth:
        raise CheckpointMismatchError(f"{path} holds a ResNet3D-{ck_depth}, not --depth {depth}")
    if tasks is not None and parse_tasks(tasks) != ck_tasks:
        raise CheckpointMismatchError(f"{path} was trained on tasks {list(ck_tasks)}, not --tasks {tasks}")
    config = dict(raw.get("config") or {})
    notes = []
    shape = {}
    for name, given, default in (("frames", frames, DEFAULT_FRAMES), ("size", size, DEFAULT_SIZE)):
        trained = config.get(name)
        shape[name] = int(given or trained or default)
        if given is not None and trained is not None and int(given) != int(trained):
            notes.append(f"--{name} {given} differs from the {trained} the model was trained with")
    width = recorded_width(raw)
    model = MultiTaskResNet3D(depth=ck_depth, tasks=ck_tasks, dropout=0.0, width=width)
    try:
        model.load_state_dict(raw["model"])
    except RuntimeError as exc:
        raise CheckpointMismatchError(
            f"{path}: the weights do not fit ResNet3D-{ck_depth} (width {width}) with tasks {list(ck_tasks)}: {exc}"
        ) from exc
    spec = ModelSpec(
        path=str(path),
        kind="training",
        depth=ck_depth,
        width=width,
        tasks=ck_tasks,
        frames=shape["frames"],
        size=shape["size"],
        step=raw.get("step"),
        run_id=raw.get("mlflow_run_id") or None,
        tracking_uri=raw.get("mlflow_tracking_uri") or None,
        config=config,
        notes=notes,
    )
    return model.eval(), spec
