"""``python -m resnet3d.flops --depth 50 --frames 16 --size 224``: parameters and FLOPs.

Prints the parameter count (backbone + head), the counted forward GFLOPs with a per-stage
breakdown, and two training figures per batch: the usual 3 x forward estimate and the
counted forward + backward (smaller: the first convolution needs no input gradient).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from utils.cli import CommandLineParser

from .complexity import CONVENTION, count_parameters_and_flops
from .model import build_model


def main(argv: Sequence[str] | None = None) -> None:
    parser = CommandLineParser(description="Parameters and FLOPs of the multi-task ResNet3D.")
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=224, help="height = width of the input clip")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--tasks", default="all")
    args = parser.parse_args(argv)

    with torch.device("meta"):  # no memory for weights, no time spent initialising them
        model = build_model(depth=args.depth, tasks=args.tasks)
    shape = (args.batch, 3, args.frames, args.size, args.size)
    r = count_parameters_and_flops(model, shape)
    print(f"ResNet3D-{args.depth}, input {shape}, {len(model.output_sizes)} head outputs")
    print(f"parameters: {r['parameters']:,} = {r['parameters_backbone']:,} backbone + {r['parameters_head']:,} head")
    print(f"forward: {r['forward_gflops']:.2f} GFLOPs per batch ({CONVENTION})")
    for name, flops in r["forward_flops_by_module"].items():
        print(f"  {name:<12} {flops / 1e9:10.4f} GFLOPs")
    print(f"training, estimate 3 x forward:     {r['training_gflops_3x_estimate']:.2f} GFLOPs per batch")
    print(
        f"training, counted forward+backward: {r['training_gflops']:.2f} GFLOPs per batch "
        f"(the first conv needs no input gradient)"
    )


if __name__ == "__main__":
    main()
