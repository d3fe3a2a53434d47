"""ResNet3D (Moments in Time layout) with a multi-task head; loading, freezing, FLOP counting.

from resnet3d import build_model
model = build_model(depth=50, tasks="all", pretrained="moments_v2_RGB_imagenet_resnet3d50_segment16.pth.tar")
outputs = model(clips)            # {"distance_score": (N,), ..., "peoplecount": (N, 5)}
"""

from .backbone import MIT_WIDTH, recorded_width
from .checkpoints import CheckpointMismatchError, LoadReport, load_pretrained
from .complexity import count_parameters_and_flops
from .freeze import freeze, unfreeze
from .model import MultiTaskResNet3D, build_model
from .param_groups import no_weight_decay
from .safe_load import UnreadableCheckpointError, UnsafeCheckpointError, read_checkpoint
from .unfreeze_schedule import UnfreezeSchedule

__all__ = [
    "build_model",
    "MIT_WIDTH",
    "recorded_width",
    "MultiTaskResNet3D",
    "load_pretrained",
    "LoadReport",
    "CheckpointMismatchError",
    "UnsafeCheckpointError",
    "UnreadableCheckpointError",
    "read_checkpoint",
    "freeze",
    "unfreeze",
    "UnfreezeSchedule",
    "no_weight_decay",
    "count_parameters_and_flops",
]
