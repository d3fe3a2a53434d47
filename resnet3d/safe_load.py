"""Reading checkpoint files without executing code from them.

Checkpoints are untrusted input: a pickle can run arbitrary code when loaded.  Everything
here loads with ``weights_only=True``, which accepts only tensors and plain containers.
Files that need more are refused with an explanation and the one-off conversion command.
"""

from __future__ import annotations

import os
import pickle
import shlex
from typing import IO, Any

import torch

CONVERT_COMMAND = "python -m resnet3d.convert_checkpoint IN OUT --trust-this-file"


def convert_command(where: str) -> str:
    """The conversion command for this file, with a suggested output name."""
    root, _ = os.path.splitext(where[:-4] if where.endswith(".pth.tar") else where)
    return CONVERT_COMMAND.replace("IN OUT", f"{shlex.quote(where)} {shlex.quote(root + '.tensors.pt')}")


class UnsafeCheckpointError(RuntimeError):
    """The file holds objects that only a full (code-executing) unpickle could rebuild."""


class UnreadableCheckpointError(ValueError):
    """The file is not a torch checkpoint at all (truncated, wrong format, ...)."""


def describe_source(source: str | os.PathLike | IO[bytes]) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return getattr(source, "name", None) or f"<{type(source).__name__}>"


def weights_only_reason(error: BaseException) -> str:
    """The useful line of torch's weights_only refusal (e.g. the class it would not import)."""
    text = str(error)
    for line in text.splitlines():
        if "WeightsUnpickler error" in line:
            return line.strip()
    return text.strip().splitlines()[-1] if text.strip() else type(error).__name__


def read_checkpoint(source: str | os.PathLike | IO[bytes]) -> Any:
    """``torch.load(source, map_location="cpu", weights_only=True)`` with clear failures."""
    where = describe_source(source)
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as error:
        if "weights only" not in str(error).lower():
            raise UnreadableCheckpointError(f"{where}: not a readable torch checkpoint ({error})") from error
        raise UnsafeCheckpointError(
            f"{where}: refused to load. torch.load(weights_only=True) found objects other than "
            f"tensors and plain containers, and rebuilding them would mean running code from the "
            f"file. Reason: {weights_only_reason(error)}\n"
            f"If you trust where this file comes from, convert it once into a tensors-only file "
            f"and use that instead:\n    {convert_command(where)}"
        ) from error
    except (RuntimeError, KeyError, EOFError, ValueError) as error:
        raise UnreadableCheckpointError(
            f"{where}: not a readable torch checkpoint ({type(error).__name__}: {error})"
        ) from error
