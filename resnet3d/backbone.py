"""The ResNet3D trunk (stem + four stages + global average pool), MiT layout.

The module tree mirrors the official Moments in Time ResNet3D so that a checkpoint with
its ``module.`` prefix stripped matches by name: ``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer1.0.downsample.0``, ...  Parameter-free modules (relu, maxpool, avgpool) carry no
tensors, so their names do not matter for loading.
"""

from __future__ import annotations

from torch import Tensor, nn

from .blocks import BasicBlock, Bottleneck, projection_shortcut
from .stem import ChannelPaddedConv3d

# depth -> (block type, blocks per stage)
ARCHITECTURES: dict[int, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}
STAGE_WIDTHS = (64, 128, 256, 512)
MIT_WIDTH = STAGE_WIDTHS[0]  # the stem's channels in the MiT network (what pretrained weights fit)


def recorded_width(checkpoint: dict) -> int:
    """The width a training checkpoint of this project was built with (those from before
    ``--width`` do not record it: they are all the MiT width)."""
    return int(checkpoint.get("width", MIT_WIDTH))


class ResNet3D(nn.Module):
    """Backbone only: ``forward_features`` maps (N, 3, T, H, W) to pooled features (N, D)."""

    def __init__(
        self, depth: int = 50, zero_init_residual: bool = False, width: int = MIT_WIDTH, stem_channels: int = 3
    ) -> None:
        super().__init__()
        if depth not in ARCHITECTURES:
            raise ValueError(f"unsupported ResNet3D depth {depth!r}; choose one of {sorted(ARCHITECTURES)}")
        if width < 1:
            raise ValueError(f"ResNet3D width must be a positive number of channels; got {width!r}")
        block, blocks_per_stage = ARCHITECTURES[depth]
        self.depth = depth
        self.width = width
        stage_widths = tuple(w * width // MIT_WIDTH for w in STAGE_WIDTHS)
        self.feature_dim = stage_widths[-1] * block.expansion

        # The stem keeps full temporal resolution (stride 1 in T); the max-pool then halves T too.
        if stem_channels < 3:
            raise ValueError(f"stem_channels pads the stem's 3 input channels; got {stem_channels!r}")
        if stem_channels == 3:
            self.conv1 = nn.Conv3d(3, width, kernel_size=7, stride=(1, 2, 2), padding=3, bias=False)
        else:  # the same function and weight, zero-padded for tensor cores (resnet3d/stem.py)
            self.conv1 = ChannelPaddedConv3d(3, width, 7, stride=(1, 2, 2), padding=3, channels=stem_channels)
        self.bn1 = nn.BatchNorm3d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)

        in_planes = width
        for index, (planes, n_blocks) in enumerate(zip(stage_widths, blocks_per_stage)):
            stride = 1 if index == 0 else 2
            stage, in_planes = _make_stage(block, in_planes, planes, n_blocks, stride)
            setattr(self, f"layer{index + 1}", stage)
        self.avgpool = nn.AdaptiveAvgPool3d(1)

        self._init_backbone(zero_init_residual)

    def _init_backbone(self, zero_init_residual: bool) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm3d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            # Each residual branch starts as identity; off by default because the MiT
            # models were trained without it.
            for module in self.modules():
                if isinstance(module, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(module.last_bn().weight)

    def forward_features(self, x: Tensor) -> Tensor:
        if x.dim() != 5 or x.shape[1] != 3:
            raise ValueError(f"ResNet3D expects input of shape (N, 3, T, H, W); got {tuple(x.shape)}")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)

    def feature_grid(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(T', H', W') of layer4's output -- the grid its BatchNorm layers normalize over --
        for a (frames, height, width) input, from the strides and paddings of the modules."""

        def out(n: int, kernel, stride, padding, axis: int) -> int:
            pick = lambda v: v[axis] if isinstance(v, tuple) else v
            return (n + 2 * pick(padding) - pick(kernel)) // pick(stride) + 1

        grid = [frames, height, width]
        strided = [self.conv1, self.maxpool]
        for stage in (self.layer2, self.layer3, self.layer4):  # layer1 keeps the size
            strided.append(stage[0].downsample[0])  # the 1x1x1 shortcut has the stage's stride
        for m in strided:
            grid = [out(n, m.kernel_size, m.stride, m.padding, a) for a, n in enumerate(grid)]
        return tuple(grid)


def _make_stage(
    block: type[nn.Module], in_planes: int, width: int, n_blocks: int, stride: int
) -> tuple[nn.Sequential, int]:
    out_planes = width * block.expansion
    downsample = None
    if stride != 1 or in_planes != out_planes:
        downsample = projection_shortcut(in_planes, out_planes, stride)
    blocks = [block(in_planes, width, stride, downsample)]
    blocks += [block(out_planes, width) for _ in range(1, n_blocks)]
    return nn.Sequential(*blocks), out_planes
