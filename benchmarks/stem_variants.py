"""Two exact re-formulations of the ResNet3D stem (7x7x7 conv, stride (1, 2, 2), 3 -> 64).

The stem is a third of the forward FLOPs, but with 3 input channels its implicit GEMM has a
reduction of 3 x 343 and, in channels-last layout, a channel count that tensor-core kernels
want padded to a multiple of 8 per tap.  Both wrappers below compute the *same function*
(up to floating-point summation order) with shapes that suit tensor cores better:

- ``pad``: zero-pad the input channels 3 -> C (4 or 8) and the weight's input channels
  likewise; the extra products are all zero.  This one is resnet3d/stem.py's
  ``ChannelPaddedConv3d`` (``build_model(stem_channels=C)``), imported here.
- ``s2d`` (space-to-depth): pad the frame by the conv's padding, fold each 2x2 pixel block
  into channels (3 -> 12, zero-padded to 16), and convolve with stride 1 and a 7x4x4 kernel
  whose taps are the original 7x7 taps regrouped (the 8th row/column is zero).  Stride-2
  convolutions become dense ones with 4x the channels.

Both keep the original ``conv1.weight`` Parameter (same name in the state dict, same object
in the optimizer) and rebuild the bigger weight from it on every forward, so gradients flow
to the original 3-channel weight and a checkpoint is unchanged.  They exist to *measure*
the idea (benchmarks/train_throughput.py variants ``pad4``, ``pad8``, ``s2d``); the padded
stem is already an option of the model (off by default), ``s2d`` is not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resnet3d.stem import ChannelPaddedConv3d, require_plain_conv


class SpaceToDepthConv3d(nn.Module):
    """A conv with spatial stride 2 rewritten as a stride-1 conv on 2x2-folded input.

    Derivation (one spatial axis): out[i] = sum_k w[k] * xp[2i + k], k = 0..K-1, where xp is
    x padded by p at the start.  Writing k = 2b + d (d in {0, 1}) and folding xp into blocks
    xb[j, d] = xp[2j + d] gives out[i] = sum_b sum_d w'[b, d] * xb[i + b, d] with
    w'[b, d] = w[2b + d] (zero where 2b + d >= K): a stride-1 conv with ceil(K/2) taps over
    2x the channels per axis.
    """

    def __init__(self, conv: nn.Conv3d, pad_channels_to: int = 16) -> None:
        super().__init__()
        require_plain_conv(conv)
        if conv.stride[1:] != (2, 2):
            raise ValueError(f"space-to-depth needs spatial stride 2, got {conv.stride}")
        self.weight = conv.weight
        self.t_stride, self.t_padding = conv.stride[0], conv.padding[0]
        self.kernel_hw = conv.kernel_size[1:]
        self.padding_hw = conv.padding[1:]
        folded = conv.in_channels * 4
        self.extra = max(0, pad_channels_to - folded)

    def _folded_weight(self) -> Tensor:
        out_c, in_c, kt, kh, kw = self.weight.shape
        bh, bw = (kh + 1) // 2, (kw + 1) // 2
        w = F.pad(self.weight, (0, 2 * bw - kw, 0, 2 * bh - kh))  # taps to even counts
        w = w.reshape(out_c, in_c, kt, bh, 2, bw, 2).permute(0, 1, 4, 6, 2, 3, 5)
        w = w.reshape(out_c, in_c * 4, kt, bh, bw)
        return F.pad(w, (0, 0, 0, 0, 0, 0, 0, self.extra))

    def forward(self, x: Tensor) -> Tensor:
        channels_last = x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous()
        n, c, t, h, w = x.shape
        (kh, kw), (ph, pw) = self.kernel_hw, self.padding_hw
        out_h, out_w = (h + 2 * ph - kh) // 2 + 1, (w + 2 * pw - kw) // 2 + 1
        bh, bw = (kh + 1) // 2, (kw + 1) // 2
        # Enough padding at the end for out + bh - 1 whole blocks (extra zeros meet zero taps
        # or are never reached).
        end_h = 2 * (out_h + bh - 1) - h - ph
        end_w = 2 * (out_w + bw - 1) - w - pw
        x = F.pad(x, (pw, end_w, ph, end_h))
        hb, wb = x.shape[-2] // 2, x.shape[-1] // 2
        x = x.reshape(n, c, t, hb, 2, wb, 2).permute(0, 1, 4, 6, 2, 3, 5).reshape(n, c * 4, t, hb, wb)
        x = F.pad(x, (0, 0, 0, 0, 0, 0, 0, self.extra))
        weight = self._folded_weight()
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
            weight = weight.contiguous(memory_format=torch.channels_last_3d)
        return F.conv3d(x, weight, None, (self.t_stride, 1, 1), (self.t_padding, 0, 0))


def apply_stem_variant(model: nn.Module, stem: str) -> nn.Module:
    """Replace ``model.conv1`` in place: ``plain`` (unchanged), ``pad4``, ``pad8`` or ``s2d``."""
    if stem == "plain":
        return model
    if stem in ("pad4", "pad8"):
        model.conv1 = ChannelPaddedConv3d.from_conv(model.conv1, int(stem[3:]))
    elif stem == "s2d":
        model.conv1 = SpaceToDepthConv3d(model.conv1)
    else:
        raise ValueError(f"unknown stem variant {stem!r}; choose plain, pad4, pad8 or s2d")
    return model
