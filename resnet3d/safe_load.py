"""Reading checkpoint files without executing code from them.

Checkpoints are untrusted input: a pickle can run arbitrary code when loaded.  Everything
here loads with ``weights_only=True``, which accepts only tensors and plain containers.
Files that need more are refused with an explanation and the one-off conversion command.
"""

from __future__ import annotations

import os
import pickle
import re
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
    """The core of torch's weights_only refusal, e.g. "Unsupported global: GLOBAL x.Y was not
    an allowed global by default" (torch's advice to allowlist the class is left out on purpose)."""
    text = str(error)
    match = re.search(r"WeightsUnpickler error:\s*(.*?)\s*(?:Check the documentation|$)", text, re.DOTALL)
    reason = " ".join((match.group(1) if match else text).split())
    return reason.split(". Please use")[0] or type(error).__name__


def read_checkpoint(source: str | os.PathLike | IO[bytes]) -> Any:
    """``torch.load(source, map_location="cpu", weights_only=True)`` with clear failures."""
    where = describe_source(source)
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as error:
        reason = weights_only_reason(error)
        if "weights only" not in str(error).lower() or reason.startswith("Unsupported operand"):
            # not a pickle torch could parse at all, as opposed to one it refused to trust
            raise UnreadableCheckpointError(f"{where}: not a readable torch checkpoint ({reason})") from error
        raise UnsafeCheckpointError(
            f"{where}: refused to load. torch.load(weights_only=True) found objects other than "
            f"tensors and plain containers, and rebuilding them would mean running code from the "
            f"file. Reason: {reason}\n"
            f"If you trust where this file comes from, convert it once into a tensors-only file "
            f"and use that instead:\n    {convert_command(where)}"
        ) from error
    except (RuntimeError, KeyError, EOFError, ValueError) as error:
        raise UnreadableCheckpointError(
            f"{where}: not a readable torch checkpoint ({type(error).__name__}: {error})"
        ) from error
