"""The zero-padded stem: the same 7x7x7 convolution with its 3 input channels padded to more.

The stem is about a third of ResNet3D-50's forward FLOPs at 16 x 224^2, but with 3 input
channels its implicit GEMM has a reduction of 3 x 343, and in channels-last layout tensor-core
kernels want a channel count padded to a multiple of 8 per tap.  ``ChannelPaddedConv3d`` pads
the input and the weight's input channels with zeros before convolving: every extra product
is zero, so it computes the same function (up to summation order) with a shape such kernels
handle.  Its weight stays the (out, 3, 7, 7, 7) ``conv1.weight``: state dicts, MiT checkpoints
and the optimizer see the plain stem.  Off by default (``build_model(stem_channels=3)``) until
a GPU measurement shows it helps (benchmarks/train_step.py, variants ``pad4``/``pad8``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def require_plain_conv(conv: nn.Conv3d) -> None:
    """The re-formulated stems assume a bias-free, ungrouped, undilated convolution."""
    if conv.groups != 1 or conv.dilation != (1, 1, 1) or conv.bias is not None:
        raise ValueError(f"a padded stem expects a plain bias-free conv, got {conv}")


class ChannelPaddedConv3d(nn.Conv3d):
    """A bias-free ``nn.Conv3d`` evaluated on input and weight zero-padded to ``channels`` input
    channels (a Conv3d still, so FLOP counts and the layer-4 grid read it as the plain stem)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride, padding, channels: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        if channels < in_channels:
            raise ValueError(f"cannot pad {in_channels} input channels down to {channels}")
        self.channels = channels

    @classmethod
    def from_conv(cls, conv: nn.Conv3d, channels: int) -> ChannelPaddedConv3d:
        """Wrap an existing stem, keeping its weight Parameter (the optimizer's, the state dict's)."""
        require_plain_conv(conv)
        padded = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, channels)
        padded.weight = conv.weight
        return padded

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, padded_to={self.channels}"

    def forward(self, x: Tensor) -> Tensor:
        channels_last = x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous()
        extra = self.channels - self.in_channels
        # F.pad's 8 numbers pad the last four dims (W, H, T, C) at (start, end): only C's end.
        x = F.pad(x, (0, 0, 0, 0, 0, 0, 0, extra))
        weight = F.pad(self.weight, (0, 0, 0, 0, 0, 0, 0, extra))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
            weight = weight.contiguous(memory_format=torch.channels_last_3d)
        return F.conv3d(x, weight, None, self.stride, self.padding)
