"""The multi-task network: ResNet3D trunk + dropout + one linear head per output."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from torch import Tensor, nn

from utils.tasks import output_sizes, parse_tasks

from .backbone import ResNet3D
from .checkpoints import load_pretrained
from .freeze import apply_frozen_batchnorm_rule

log = logging.getLogger(__name__)


class MultiTaskResNet3D(ResNet3D):
    """ResNet3D whose final layer ``last_linear`` is a ModuleDict of ``nn.Linear(D, width)``.

    ``forward(x)`` returns ``{output_name: logits}`` with size-1 outputs shaped (N,) and
    wider ones (``peoplecount``) shaped (N, width).  The tensor names equal the earlier
    Lightning version's (``model.last_linear.<output>.weight`` minus ``model.``).

    ``train()`` is overridden: BatchNorm layers whose parameters are all frozen stay in eval
    mode (running statistics fixed) whatever mode the rest of the model is in.
    """

    def __init__(
        self,
        depth: int = 50,
        tasks: Sequence[str] | str | None = "all",
        dropout: float = 0.5,
        zero_init_residual: bool = False,
        width: int = 64,
        stem_channels: int = 3,
    ) -> None:
        super().__init__(depth=depth, zero_init_residual=zero_init_residual, width=width, stem_channels=stem_channels)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {dropout!r}")
        self.tasks = parse_tasks(tasks)
        self.output_sizes = output_sizes(self.tasks)
        self.dropout = nn.Dropout(p=dropout)
        self.last_linear = nn.ModuleDict(
            {name: nn.Linear(self.feature_dim, width) for name, width in self.output_sizes.items()}
        )
        for head in self.last_linear.values():
            # Small weights: every output starts near logit 0 (probability 0.5 / uniform classes).
            nn.init.normal_(head.weight, std=0.01)
            nn.init.zeros_(head.bias)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        features = self.dropout(self.forward_features(x))
        outputs = {}
        for name, head in self.last_linear.items():
            logits = head(features)
            outputs[name] = logits[:, 0] if logits.shape[1] == 1 else logits
        return outputs

    def train(self, mode: bool = True) -> MultiTaskResNet3D:
        super().train(mode)
        apply_frozen_batchnorm_rule(self)
        return self


def build_model(
    depth: int = 50,
    tasks: Sequence[str] | str | None = "all",
    pretrained: str | os.PathLike | None = None,
    dropout: float = 0.5,
    zero_init_residual: bool = False,
    width: int = 64,
    stem_channels: int = 3,
) -> MultiTaskResNet3D:
    """Build the multi-task ResNet3D; ``pretrained`` is a checkpoint path (MiT, Lightning or own).

    ``stem_channels`` > 3 zero-pads the stem convolution's input channels (resnet3d/stem.py):
    the same function and weights, a shape tensor-core kernels suit; off (3) by default.

    The load report (what was loaded, what skipped) is logged and kept as
    ``model.pretrained_report``.
    """
    model = MultiTaskResNet3D(
        depth=depth,
        tasks=tasks,
        dropout=dropout,
        zero_init_residual=zero_init_residual,
        width=width,
        stem_channels=stem_channels,
    )
    model.pretrained_report = None
    if pretrained is not None:
        model.pretrained_report = load_pretrained(model, pretrained)
        log.info("%s", model.pretrained_report)
    return model


__all__ = ["MultiTaskResNet3D", "build_model"]
