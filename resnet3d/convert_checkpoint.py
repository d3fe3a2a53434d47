"""One-off conversion of a checkpoint that needs full unpickling into a tensors-only file.

    python -m resnet3d.convert_checkpoint IN OUT --trust-this-file

Loading IN runs ``torch.load(weights_only=False)``, which can execute arbitrary code stored
in the file: run it only on files whose origin you trust, and only once.  OUT keeps the
tensors and plain containers (dict, list, tuple, str, numbers, None); ``argparse.Namespace``
and dict subclasses become dicts, numpy arrays become tensors, a pickled ``nn.Module``
becomes its ``state_dict()``; anything else is dropped and listed.  OUT then loads with
``weights_only=True`` (which this command checks before it finishes).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from utils.atomic import atomic_write
from utils.cli import CommandLineParser

PLAIN_SCALARS = (str, bytes, int, float, bool, complex, type(None), torch.dtype, torch.device)


def _type_name(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def to_plain(obj: Any, where: str, notes: list[str]) -> tuple[bool, Any]:
    """(keep, value): ``obj`` rebuilt from tensors and plain containers only.

    ``notes`` collects one line per dropped or converted object, naming its path in the file.
    """
    if isinstance(obj, torch.Tensor):
        return True, obj.detach().cpu()  # a Parameter becomes a plain tensor
    if isinstance(obj, PLAIN_SCALARS) or isinstance(obj, torch.Size):
        return True, obj
    if isinstance(obj, np.ndarray) and obj.dtype.kind in "biufc":
        notes.append(f"{where}: numpy array -> tensor")
        return True, torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return True, obj.item()
    if isinstance(obj, nn.Module):
        notes.append(f"{where}: {_type_name(obj)} module -> its state_dict()")
        return to_plain(obj.state_dict(), where, notes)
    if isinstance(obj, argparse.Namespace):
        notes.append(f"{where}: argparse.Namespace -> dict")
        obj = vars(obj)
    if isinstance(obj, dict):
        if type(obj) not in (dict, OrderedDict):
            notes.append(f"{where}: {_type_name(obj)} -> dict")
        result = {}
        for key, value in obj.items():
            if not isinstance(key, (str, int, float, bool, type(None))):
                notes.append(f"{where}[{key!r}]: dropped (key of type {_type_name(key)})")
                continue
            keep, plain = to_plain(value, f"{where}[{key!r}]", notes)
            if keep:
                result[key] = plain
        return True, result
    if isinstance(obj, (list, tuple)):
        items = []
        for index, value in enumerate(obj):
            keep, plain = to_plain(value, f"{where}[{index}]", notes)
            items.append(plain if keep else None)  # keep positions stable
        return True, (items if isinstance(obj, list) else tuple(items))
    notes.append(f"{where}: dropped ({_type_name(obj)})")
    return False, None


def convert_checkpoint(
    src: str | os.PathLike, dst: str | os.PathLike, trust_this_file: bool = False, overwrite: bool = False
) -> list[str]:
    """Write a weights_only-loadable copy of ``src`` to ``dst``; returns the conversion notes."""
    if not trust_this_file:
        raise PermissionError(
            f"{src}: converting means fully unpickling the file, which can run any code stored in it. "
            "Pass trust_this_file=True (--trust-this-file) only for a file whose origin you trust."
        )
    if os.path.abspath(src) == os.path.abspath(dst):
        raise ValueError(f"{dst}: output must differ from the input")
    if os.path.exists(dst) and not overwrite:
        raise FileExistsError(f"{dst} exists; choose another name or pass --overwrite")
    try:
        checkpoint = torch.load(src, map_location="cpu", weights_only=False)
    except (ModuleNotFoundError, AttributeError) as error:
        raise RuntimeError(
            f"{src}: the pickle refers to code that is not importable here ({error}); convert it in an "
            "environment that has that package installed"
        ) from error
    notes: list[str] = []
    _, plain = to_plain(checkpoint, "checkpoint", notes)

    def save_and_check(tmp):
        torch.save(plain, tmp)
        torch.load(tmp, map_location="cpu", weights_only=True)  # the whole point: it must load safely

    atomic_write(dst, save_and_check)
    return notes


def main(argv: Sequence[str] | None = None) -> int:
    parser = CommandLineParser(
        description="Convert a checkpoint that torch.load(weights_only=True) refuses into a "
        "tensors-only file. Loading the input can run code from it: trusted files only."
    )
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument(
        "--trust-this-file", action="store_true", help="required: confirms you trust the input file's origin"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    args = parser.parse_args(argv)
    if not args.trust_this_file:
        parser.error(
            "refusing to unpickle the input without --trust-this-file (unpickling can run arbitrary code from the file)"
        )
    notes = convert_checkpoint(args.input, args.output, trust_this_file=True, overwrite=args.overwrite)
    for note in notes:
        print(note)
    print(f"wrote {args.output}; it loads with torch.load(weights_only=True)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
