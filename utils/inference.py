"""Running a trained network over a set of videos exactly once, on one process or many.

Shared by ``evaluate.py`` and ``predict.py`` (glue for the entry points: it imports
``resnet3d`` and ``datasets``, so those packages must never import it).

* :func:`load_inference_model`: this project's training checkpoints (depth, tasks, frames and
  size are read from the file) or anything ``resnet3d.load_pretrained`` reads (the earlier
  Lightning checkpoints; depth and tasks are then read from the tensor names, frames and size
  come from flags or default to 16 / 224).  Always ``weights_only``.  With
  ``require_heads=False`` a checkpoint without a multi-task head (official Moments in Time
  weights) loads as the bare backbone; :func:`random_init_model` is the untrained control.
* :func:`shard_loader`, :func:`place_model`, :func:`clips_to_model_input`: this rank's share of
  a multi-view dataset, the model on the device, a batch of uint8 views as the network's input
  (shared with ``extract_features.py``).
* :func:`predict_shard`: this rank's videos -> per-video probabilities (views averaged).
* :func:`gather_exactly_once`: every rank's share -> whole-set arrays in dataset order, with
  a check that each video was predicted or failed exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from datasets import normalize_on_device
from datasets.gpu_augment import resized_crop_flip_normalize
from resnet3d import MultiTaskResNet3D, load_pretrained, read_checkpoint
from resnet3d.backbone import ResNet3D
from resnet3d.checkpoints import HEAD, CheckpointMismatchError, find_network_prefix, find_state_dict, guess_depth
from utils.checkpoint import CHECKPOINT_FORMAT
from utils.distributed import DistInfo, all_gather_objects
from utils.predictions import logits_to_probabilities
from utils.tasks import TASKS, output_sizes, parse_tasks, task_outputs

DEFAULT_FRAMES = 16  # the Moments in Time models' clip, for checkpoints that do not say
DEFAULT_SIZE = 224


@dataclass
class ModelSpec:
    """What was loaded and how the clips must look."""

    path: str
    kind: str                 # training | lightning | mit | state_dict (see resnet3d.load_pretrained) | random_init
    depth: int
    tasks: tuple[str, ...]
    frames: int
    size: int
    step: int | None = None   # training step of a training checkpoint
    run_id: str | None = None  # the MLflow run that wrote it
    config: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"checkpoint": self.path, "kind": self.kind, "depth": self.depth, "tasks": list(self.tasks),
                "frames": self.frames, "size": self.size, "step": self.step, "training_run_id": self.run_id}


def load_inference_model(path: str, *, depth: int | None = None, tasks: str | Iterable[str] | None = None,
                         frames: int | None = None, size: int | None = None,
                         require_heads: bool = True) -> tuple[nn.Module, ModelSpec]:
    """Build the network a checkpoint holds and load it (eval mode, CPU).

    A checkpoint with no multi-task head (the official MiT weights: their classifier is
    dropped) is refused, or with ``require_heads=False`` loaded as a bare ``ResNet3D``
    backbone (``spec.tasks == ()``), for uses that need only the backbone's layers.
    """
    raw = read_checkpoint(path)
    if isinstance(raw, dict) and raw.get("format") == CHECKPOINT_FORMAT:
        return _load_training_checkpoint(path, raw, depth, tasks, frames, size)
    container, state = find_state_dict(raw)
    prefix = find_network_prefix(list(state))
    names = [n[len(prefix):] for n in state if n.startswith(prefix)]
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
                "classification checkpoint must be trained with train_ddp.py before it can predict")
    else:
        selected = parse_tasks(tasks)
    model = MultiTaskResNet3D(depth=depth, tasks=selected, dropout=0.0)
    report = load_pretrained(model, raw, require_heads=True)
    notes = _clip_shape_notes(path, frames, size)
    spec = ModelSpec(path=str(path), kind=report.kind, depth=depth, tasks=selected,
                     frames=frames or DEFAULT_FRAMES, size=size or DEFAULT_SIZE, notes=notes)
    return model.eval(), spec


def _clip_shape_notes(path, frames, size) -> list[str]:
    if frames is None or size is None:
        return [f"{path} does not record the clip shape; using frames={frames or DEFAULT_FRAMES}, "
                f"size={size or DEFAULT_SIZE} (set --frames/--size to what it was trained with)"]
    return []


def _load_backbone(path, raw, depth, frames, size) -> tuple[nn.Module, ModelSpec]:
    model = ResNet3D(depth=depth)
    report = load_pretrained(model, raw)
    notes = _clip_shape_notes(path, frames, size)
    if report.skipped:
        notes.append(f"only the backbone of {path} is loaded; not loaded: {', '.join(sorted(report.skipped))}")
    spec = ModelSpec(path=str(path), kind=report.kind, depth=depth, tasks=(), frames=frames or DEFAULT_FRAMES,
                     size=size or DEFAULT_SIZE, notes=notes)
    return model.eval(), spec


def random_init_model(depth: int, *, seed: int = 0, frames: int | None = None,
                      size: int | None = None) -> tuple[nn.Module, ModelSpec]:
    """An untrained ``ResNet3D`` backbone (the usual control in brain/behaviour analyses), its
    weights a function of ``(depth, seed)`` only, so every rank builds the same network."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ResNet3D(depth=depth)
    spec = ModelSpec(path="", kind="random_init", depth=depth, tasks=(), frames=frames or DEFAULT_FRAMES,
                     size=size or DEFAULT_SIZE, config={"seed": seed})
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
    model = MultiTaskResNet3D(depth=ck_depth, tasks=ck_tasks, dropout=0.0)
    try:
        model.load_state_dict(raw["model"])
    except RuntimeError as exc:
        raise CheckpointMismatchError(f"{path}: the weights do not fit ResNet3D-{ck_depth} with tasks "
                                      f"{list(ck_tasks)}: {exc}") from exc
    spec = ModelSpec(path=str(path), kind="training", depth=ck_depth, tasks=ck_tasks, frames=shape["frames"],
                     size=shape["size"], step=raw.get("step"), run_id=raw.get("mlflow_run_id") or None,
                     config=config, notes=notes)
    return model.eval(), spec


def inference_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: ``auto`` = bf16 on GPUs that support it, else full precision."""
    if amp == "off" or device.type != "cuda":
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def average_view_probabilities(probs: dict[str, torch.Tensor], num_views: int) -> dict[str, torch.Tensor]:
    """(N * V, ...) per-view probabilities, views of a video adjacent -> (N, ...) view means.

    The mean is taken of probabilities (after sigmoid / softmax), not of logits: a view the
    network is very sure about cannot outvote the others by an unbounded logit.
    """
    out = {}
    for name, p in probs.items():
        if p.shape[0] % num_views:
            raise ValueError(f"{name}: {p.shape[0]} rows is not a multiple of {num_views} views")
        out[name] = p.reshape(p.shape[0] // num_views, num_views, *p.shape[1:]).mean(dim=1)
    return out


def clips_to_model_input(video: torch.Tensor, device: torch.device, *, size: int | None = None,
                         channels_last: bool = False) -> torch.Tensor:
    """A ``datasets.collate_views`` batch's (B, V, 3, T, H, W) clips -> the network's (B * V, 3, T,
    size, size) float input on ``device``, the views of a video adjacent.

    uint8 clips larger than ``size`` (frame-cache clips come at the stored size) are resized to
    it on the device, as the training loop's validation on the cache does; others are only
    normalized.
    """
    x = video.to(device, non_blocking=True).flatten(0, 1)
    if x.dtype == torch.uint8 and size is not None and tuple(x.shape[-2:]) != (size, size):
        whole = torch.tensor([[0, 0, x.shape[-2], x.shape[-1]]] * x.shape[0])
        x = resized_crop_flip_normalize(x, whole, torch.zeros(x.shape[0], dtype=torch.bool), size)
    else:
        x = normalize_on_device(x)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    return x


@torch.no_grad()
def predict_shard(model: nn.Module, loader, device: torch.device, *, amp_dtype: torch.dtype | None = None,
                  channels_last: bool = False, progress=None, size: int | None = None) -> dict[str, Any]:
    """Probabilities for this rank's videos.

    ``loader`` yields ``datasets.collate_views`` batches of (B, V, 3, T, H, W) uint8 clips
    (see :func:`clips_to_model_input` for ``size``).
    Returns ``{"indices": int64 (n,), "probs": {output: float32 (n, ...)}, "bad": [(index, error)]}``.
    """
    model.eval()
    indices, parts, bad = [], {}, []
    for batch in loader:
        bad += list(zip(batch["bad_indices"], (err for _, err in batch["bad"])))
        n = len(batch["indices"])
        if n:
            views = batch["video"].shape[1]
            x = clips_to_model_input(batch["video"], device, size=size, channels_last=channels_last)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                logits = model(x)
            probs = average_view_probabilities(logits_to_probabilities(logits), views)
            indices.append(batch["indices"].numpy())
            for name, p in probs.items():
                parts.setdefault(name, []).append(p.float().cpu().numpy())
        if progress is not None:
            progress.update(n + len(batch["bad"]))
    return {
        "indices": np.concatenate(indices) if indices else np.zeros(0, np.int64),
        "probs": {k: np.concatenate(v) for k, v in parts.items()},
        "bad": bad,
    }


def gather_exactly_once(local: dict[str, Any], info: DistInfo, num_items: int,
                        tasks: Iterable[str]) -> tuple[dict[str, np.ndarray], list[str | None]]:
    """All ranks' shares -> ``(probs, errors)`` in dataset order, on every rank.

    ``probs[output]`` has one row per item (NaN rows for items that failed); ``errors[i]`` is
    None or the reason item i failed.  Raises if any item was seen twice or not at all (the
    sampler's promise that metrics do not depend on the world size).
    """
    shares = all_gather_objects(local, info)
    seen = np.zeros(num_items, dtype=np.int64)
    probs = {name: np.full((num_items, width) if width > 1 else (num_items,), np.nan, dtype=np.float32)
             for name, width in output_sizes(tuple(tasks)).items()}
    errors: list[str | None] = [None] * num_items
    for rank, share in enumerate(shares):
        idx = np.asarray(share["indices"], dtype=np.int64)
        np.add.at(seen, idx, 1)
        for name, values in share["probs"].items():
            probs[name][idx] = values
        for index, error in share["bad"]:
            seen[index] += 1
            errors[index] = error
    if np.any(seen != 1):
        twice, never = np.flatnonzero(seen > 1), np.flatnonzero(seen == 0)
        raise RuntimeError(f"exactly-once violated over {info.world_size} ranks: items seen twice "
                           f"{twice[:10].tolist()}, never {never[:10].tolist()}")
    return probs, errors


def shard_loader(dataset, info: DistInfo, *, batch_size: int, num_workers: int,
                 indices: Sequence[int] | None = None):
    """A DataLoader over this rank's ``ExactShardSampler`` share of ``indices`` (default: every
    item of ``dataset``, a ``datasets`` multi-view dataset), batched with ``collate_views``, so
    over all ranks each item is loaded exactly once."""
    from torch.utils.data import DataLoader

    from datasets import ExactShardSampler, collate_views

    items = range(len(dataset)) if indices is None else indices
    mine = [int(items[i]) for i in ExactShardSampler(len(items), info.rank, info.world_size)]
    return DataLoader(dataset, batch_size=batch_size, sampler=mine, collate_fn=collate_views,
                      num_workers=num_workers, pin_memory=info.device.type == "cuda", persistent_workers=False)


def place_model(model: nn.Module, device: torch.device) -> bool:
    """Move ``model`` to ``device`` (channels_last_3d on a GPU); returns whether inputs should be
    channels_last too."""
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last_3d)
        return True
    return False


def infer_dataset(model: nn.Module, dataset, info: DistInfo, tasks, *, batch_size: int, num_workers: int,
                  amp: str = "auto", progress: bool = True, desc: str = "predicting"
                  ) -> tuple[dict[str, np.ndarray], list[str | None]]:
    """Every item of ``dataset`` (a ``datasets.MultiViewClipDataset``) predicted exactly once
    over all ranks: each rank takes its ``ExactShardSampler`` share, results are gathered.
    Returns ``(probs, errors)`` in dataset order on every rank (see ``gather_exactly_once``)."""
    from tqdm import tqdm

    loader = shard_loader(dataset, info, batch_size=batch_size, num_workers=num_workers)
    channels_last = place_model(model, info.device)
    suffix = f" (rank 0 of {info.world_size})" if info.world_size > 1 else ""
    bar = tqdm(total=len(loader.sampler), desc=desc + suffix, unit="video", dynamic_ncols=True,
               disable=not (info.is_main and progress))
    try:
        local = predict_shard(model, loader, info.device, amp_dtype=inference_dtype(amp, info.device),
                              channels_last=channels_last, progress=bar, size=getattr(dataset, "size", None))
    finally:
        bar.close()
    return gather_exactly_once(local, info, len(dataset), tasks)
