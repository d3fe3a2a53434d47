"""Data for the project: annotation tables -> targets, video decoding, clip Datasets,
and the built-in synthetic demo dataset.

Run from the repo root: this package shadows the PyPI package named ``datasets``.
Nothing here imports ``resnet3d``, ``losses`` or ``analysis``; only ``utils.tasks`` is shared.
Human rating tables and extracted-feature folders belong to the analysis: ``analysis/``.

Exports are resolved lazily (PEP 562): ``from datasets import VideoClipDataset`` imports
``datasets.clips`` on first use.  That keeps ``python -m datasets.<tool>`` commands that
need no video code (annotation cleaning, the demo generator) from paying for importing
torch/torchvision/PyAV, and lets ``python -m datasets.demo`` run without runpy warning that
the module was already imported by its package.
"""

from __future__ import annotations

import importlib

# public name -> submodule that defines it
_EXPORTS: dict[str, str] = {
    # video.py: decoding
    "BadVideoError": "video",
    "decode_clip": "video",
    "probe_video": "video",
    "sample_clip_indices": "video",
    "write_video": "video",
    # augment.py: stored uint8 frames -> the model's input: the training augmentation (its steps,
    # the per-sample draw, one function applying it), the evaluation transform, the normalizer
    "Augmentation": "augment",
    "Step": "augment",
    "RandomResizedCrop": "augment",
    "HorizontalFlip": "augment",
    "Drawn": "augment",
    "no_augmentation": "augment",
    "apply_drawn": "augment",
    "DEFAULT_CROP_SCALE": "augment",
    "DEFAULT_CROP_RATIO": "augment",
    "IMAGENET_MEAN": "augment",
    "IMAGENET_STD": "augment",
    "ClipTransform": "augment",
    "normalize": "augment",
    "model_input": "augment",
    # decode_policy.py: partial files and decoding limits, the same flags in every command
    "DecodePolicy": "decode_policy",
    "VideoSkipped": "decode_policy",
    "add_decode_arguments": "decode_policy",
    "decode_policy_from_args": "decode_policy",
    # clips.py: the map-style Dataset and its collate
    "LEGACY_SUFFIX": "clips",
    "AmbiguousVideoError": "clips",
    "PtClipsError": "clips",
    "VideoIndex": "clips",
    "scan_video_root": "clips",
    "VideoClipDataset": "clips",
    "collate_clips": "clips",
    # demo.py: synthetic demo dataset
    "ensure_demo_dataset": "demo",
    "ensure_demo_frame_cache": "demo",
    "demo_frame_cache_dir": "demo",
    "demo_validation_names": "demo",
    "generate_demo_dataset": "demo",
    # annotations.py / splits.py: tables -> targets, train/val/test splits
    "AnnotationError": "annotations",
    "NormalizationReport": "annotations",
    "load_annotation_table": "annotations",
    "build_targets": "annotations",
    "SplitError": "splits",
    "assign_splits": "splits",
    "split_indices": "splits",
    # cache.py: the uint8 frame cache (python -m datasets.prepare)
    "CACHE_FORMAT_VERSION": "cache",
    "CacheParams": "cache",
    "CacheMismatchError": "cache",
    "FrameCache": "cache",
    "CachedClipDataset": "cache",
    "collate_cached": "cache",
    # cache_loader.py: reader threads into reused batch buffers for the frame cache (else a DataLoader)
    "CacheLoader": "cache_loader",
    "make_loader": "cache_loader",
    # samplers.py: resumable training sampler, exactly-once evaluation sampler
    "ResumableShardSampler": "samplers",
    "ExactShardSampler": "samplers",
    # views.py: multi-view (N temporal x M spatial) test-time sampling
    "MultiViewClipDataset": "views",
    "MultiViewCachedDataset": "views",
    "collate_views": "views",
    "multi_view_clips": "views",
    "parse_views": "views",
    "spatial_crop_offsets": "views",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'datasets' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
