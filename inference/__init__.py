"""What composes resnet3d and datasets for the entry points that run a trained network:
evaluate.py, predict.py and extract_features.py (utils/ stays below every package, so this
cannot live there)."""

from .models import (
    CHECKPOINT_ERRORS,
    DEFAULT_FRAMES,
    DEFAULT_SIZE,
    ModelSpec,
    load_inference_model,
    random_init_model,
)
from .shards import (
    add_inference_arguments,
    average_view_probabilities,
    clips_to_model_input,
    gather_exactly_once,
    infer_dataset,
    open_cached_views,
    place_model,
    predict_shard,
    shard_loader,
)

__all__ = [
    "CHECKPOINT_ERRORS",
    "DEFAULT_FRAMES",
    "DEFAULT_SIZE",
    "ModelSpec",
    "load_inference_model",
    "random_init_model",
    "add_inference_arguments",
    "average_view_probabilities",
    "clips_to_model_input",
    "gather_exactly_once",
    "infer_dataset",
    "open_cached_views",
    "place_model",
    "predict_shard",
    "shard_loader",
]
