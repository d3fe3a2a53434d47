"""Running a network over a set of videos exactly once, on one process or many.

* :func:`shard_loader`, :func:`place_model`, :func:`clips_to_model_input`: this rank's share of
  a multi-view dataset, the model on the device, a batch of uint8 views as the network's input
  (shared with ``extract_features.py``).
* :func:`predict_shard`: this rank's videos -> per-video probabilities (views averaged).
* :func:`gather_exactly_once`: every rank's share -> whole-set arrays in dataset order, with
  a check that each video was predicted or failed exactly once.
* :func:`infer_dataset`: the three together, as evaluate.py and predict.py use them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from datasets import (
    ExactShardSampler,
    MultiViewCachedDataset,
    collate_views,
    make_loader,
    model_input,
    no_augmentation,
)
from utils.cli import default_workers, progress_bar
from utils.distributed import DistInfo, gather_rows
from utils.precision import resolve_amp
from utils.predictions import logits_to_probabilities
from utils.tasks import output_sizes


def open_cached_views(cache: str, names: list[str], spec, temporal: int, spatial: int) -> MultiViewCachedDataset:
    """The frame cache's multi-view dataset of ``names`` at the model's clip shape (``spec``); a
    cache that cannot be opened ends the command with one line naming ``--cache``."""
    try:
        return MultiViewCachedDataset(
            cache, names, num_frames=spec.frames, size=spec.size, temporal_views=temporal, spatial_views=spatial
        )
    except (OSError, ValueError) as exc:
        raise SystemExit(f"--cache: {exc}") from exc


def add_inference_arguments(parser, amp_note: str = "") -> None:
    """The options of every entry point that runs a trained network over videos (what
    :func:`infer_dataset` takes): --batch-size, --num-workers, --device, --amp."""
    parser.add_argument("--batch-size", type=int, default=8, help="videos per batch per process (x views clips)")
    parser.add_argument(
        "--num-workers",
        type=int,
        default=default_workers(),
        help="DataLoader workers per process (default: 4, at most the cores available)",
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument(
        "--amp",
        default="auto",
        choices=("auto", "bf16", "fp16", "off"),
        help="autocast on GPU (auto = bf16 where supported)" + (f"; {amp_note}" if amp_note else ""),
    )


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


def clips_to_model_input(
    video: torch.Tensor, device: torch.device, *, size: int | None = None, channels_last: bool = False
) -> torch.Tensor:
    """A ``datasets.collate_views`` batch's (B, V, 3, T, H, W) clips -> the network's (B * V, 3, T,
    size, size) float input on ``device``, the views of a video adjacent.

    uint8 clips larger than ``size`` (frame-cache clips come at the stored size) are resized to
    it on the device, as the training loop's validation on the cache does; others are only
    normalized.
    """
    batch = {"video": video.flatten(0, 1)}
    if size is not None and tuple(video.shape[-2:]) != (size, size):
        batch["augment"] = [no_augmentation(size)] * batch["video"].shape[0]
    return model_input(batch, device, channels_last)


@torch.no_grad()
def predict_shard(
    model: nn.Module,
    loader,
    device: torch.device,
    *,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    progress=None,
    size: int | None = None,
) -> dict[str, Any]:
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


def gather_exactly_once(
    local: dict[str, Any], info: DistInfo, num_items: int, tasks: Iterable[str]
) -> tuple[dict[str, np.ndarray], list[str | None]]:
    """All ranks' shares -> ``(probs, errors)`` in dataset order, on every rank.

    ``probs[output]`` has one row per item (NaN rows for items that failed); ``errors[i]`` is
    None or the reason item i failed.  Raises if any item was seen twice or not at all (the
    sampler's promise that metrics do not depend on the world size).
    """
    predicted, found = gather_rows(local["indices"], local["probs"], num_items, info)
    failed, reasons = gather_rows(
        [index for index, _ in local["bad"]],
        {"error": np.array([error for _, error in local["bad"]], dtype=object)},
        num_items,
        info,
    )
    seen = predicted + failed
    if np.any(seen != 1):
        twice, never = np.flatnonzero(seen > 1), np.flatnonzero(seen == 0)
        raise RuntimeError(
            f"exactly-once violated over {info.world_size} ranks: items seen twice "
            f"{twice[:10].tolist()}, never {never[:10].tolist()}"
        )
    probs = {
        name: found[name].astype(np.float32)
        if name in found
        else np.full((num_items, width) if width > 1 else (num_items,), np.nan, dtype=np.float32)
        for name, width in output_sizes(tuple(tasks)).items()
    }
    errors = [str(reasons["error"][i]) if failed[i] else None for i in range(num_items)]
    return probs, errors


def shard_loader(
    dataset,
    info: DistInfo,
    *,
    batch_size: int,
    num_workers: int,
    indices: Sequence[int] | None = None,
):
    """A loader over this rank's ``ExactShardSampler`` share of ``indices`` (default: every item
    of ``dataset``, a ``datasets`` multi-view dataset), batched as ``collate_views`` does, so over
    all ranks each item is loaded exactly once: ``num_workers`` reader threads into reused
    buffers for a frame cache (``datasets.make_loader``), else a DataLoader."""
    items = range(len(dataset)) if indices is None else indices
    mine = [int(items[i]) for i in ExactShardSampler(len(items), info.rank, info.world_size)]
    return make_loader(
        dataset,
        mine,
        batch_size,
        workers=num_workers,
        prefetch=2,
        pin_memory=info.device.type == "cuda",
        collate_fn=collate_views,
        persistent_workers=False,
    )


def place_model(model: nn.Module, device: torch.device) -> bool:
    """Move ``model`` to ``device`` (channels_last_3d on a GPU); returns whether inputs should be
    channels_last too."""
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last_3d)
        return True
    return False


def infer_dataset(
    model: nn.Module,
    dataset,
    info: DistInfo,
    tasks,
    *,
    batch_size: int,
    num_workers: int,
    amp: str = "auto",
    progress: bool = True,
    desc: str = "predicting",
) -> tuple[dict[str, np.ndarray], list[str | None]]:
    """Every item of ``dataset`` (a ``datasets.MultiViewClipDataset``) predicted exactly once
    over all ranks: each rank takes its ``ExactShardSampler`` share, results are gathered.
    Returns ``(probs, errors)`` in dataset order on every rank (see ``gather_exactly_once``)."""
    loader = shard_loader(dataset, info, batch_size=batch_size, num_workers=num_workers)
    channels_last = place_model(model, info.device)
    suffix = f" (rank 0 of {info.world_size})" if info.world_size > 1 else ""
    bar = progress_bar(
        total=len(loader.sampler), desc=desc + suffix, unit="video", disable=not (info.is_main and progress)
    )
    try:
        local = predict_shard(
            model,
            loader,
            info.device,
            amp_dtype=resolve_amp(amp, info.device, quiet=not info.is_main),
            channels_last=channels_last,
            progress=bar,
            size=getattr(dataset, "size", None),
        )
    finally:
        bar.close()
    return gather_exactly_once(local, info, len(dataset), tasks)
