"""Loading weights into a MultiTaskResNet3D from the checkpoint kinds users have.

The kind is detected from the contents, never from the file name:

* ``mit``        official Moments in Time ``.pth.tar``: ``{"state_dict": {"module.conv1.weight": ...,
                 "module.last_linear.weight": (K, 2048), ...}}``.  The K-class classifier is
                 dropped (reported); the multi-task head keeps its fresh initialisation.
* ``lightning``  the earlier Lightning version: ``{"state_dict": {"model.conv1.weight": ...,
                 "model.last_linear.<output>.weight": ...}}``.  Heads whose output name and width
                 match the model's selected outputs are loaded, the rest reported as skipped.
* ``training``   this project's checkpoints: ``{"model": <unwrapped state dict>, "optimizer": ...}``.
* ``state_dict`` a bare state dict.

In every case the backbone is strict: each backbone tensor of the model must be present
with the same shape and the checkpoint may hold no other backbone tensor.  Only
``num_batches_tracked`` may be absent (older checkpoints lack it).  Wrapper prefixes
(``module.``, ``_orig_mod.``, ``model.``, in any nesting) are found by locating the stem.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO, Any

from torch import Tensor, nn

from .backbone import ARCHITECTURES
from .blocks import Bottleneck
from .names import strip_wrapper_prefixes, under_prefix
from .safe_load import describe_source, read_checkpoint

HEAD = "last_linear"
MAX_LISTED = 25


class CheckpointMismatchError(ValueError):
    """The checkpoint's backbone does not match the model's (names or shapes)."""


@dataclass
class LoadReport:
    kind: str  # mit | lightning | training | state_dict
    source: str
    prefix: str  # stripped from the checkpoint's names
    loaded: list[str] = field(default_factory=list)  # model tensor names filled
    skipped: dict[str, str] = field(default_factory=dict)  # checkpoint name -> why not loaded
    defaulted: list[str] = field(default_factory=list)  # model tensors left as initialised
    heads_loaded: list[str] = field(default_factory=list)  # output names taken from the file
    heads_initialized: list[str] = field(default_factory=list)  # output names freshly initialised

    def __str__(self) -> str:
        lines = [
            f"loaded {len(self.loaded)} tensors from {self.source} (kind={self.kind}, "
            f"prefix={self.prefix!r}); heads loaded: {self.heads_loaded or 'none'}; "
            f"heads initialised: {self.heads_initialized or 'none'}"
        ]
        lines += [f"  skipped {name}: {why}" for name, why in self.skipped.items()]
        if self.defaulted:
            lines.append(f"  kept initial values for {len(self.defaulted)} tensors absent from the file")
        return "\n".join(lines)


def find_state_dict(checkpoint: Any) -> tuple[str, Mapping[str, Tensor]]:
    """Return (container key or "bare", the tensor mapping) of a loaded checkpoint."""
    if not isinstance(checkpoint, Mapping):
        raise CheckpointMismatchError(f"expected a dict checkpoint; got {type(checkpoint).__name__}")
    for key in ("model", "state_dict"):
        if _is_state_dict(checkpoint.get(key)):
            return key, checkpoint[key]
    if _is_state_dict(checkpoint):
        return "bare", checkpoint
    raise CheckpointMismatchError(
        "no state dict found: expected key 'state_dict' (MiT / Lightning), 'model' (this project) "
        f"or a bare name->tensor dict; top-level keys: {list(checkpoint)[:20]}"
    )


def _is_state_dict(value: Any) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(isinstance(v, Tensor) for v in value.values())


def find_network_prefix(names: list[str]) -> str:
    """The prefix in front of the network's names, located by the stem (conv1 + bn1)."""
    candidates = [n[: -len("conv1.weight")] for n in names if n.endswith("conv1.weight")]
    candidates = [p for p in candidates if f"{p}bn1.weight" in names and f"{p}layer1.0.conv1.weight" in names]
    if not candidates:
        raise CheckpointMismatchError(
            "no ResNet3D found in the checkpoint (no conv1.weight + bn1.weight + layer1.0.conv1.weight "
            f"under a common prefix); first names: {names[:10]}"
        )
    return min(candidates, key=len)


def guess_depth(backbone_names: list[str]) -> int | None:
    """The ResNet3D depth whose layout these names follow, if any."""
    blocks = [0, 0, 0, 0]
    for name in backbone_names:
        match = re.match(r"layer([1-4])\.(\d+)\.", name)
        if match:
            stage, index = int(match.group(1)) - 1, int(match.group(2))
            blocks[stage] = max(blocks[stage], index + 1)
    bottleneck = any(".conv3." in n for n in backbone_names)
    for depth, (block, layout) in ARCHITECTURES.items():
        if tuple(blocks) == layout and (block is Bottleneck) == bottleneck:
            return depth
    return None


def _listed(items: list[str]) -> str:
    shown = "\n    ".join(items[:MAX_LISTED])
    more = f"\n    ... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return f"\n    {shown}{more}"


def check_backbone(
    model_tensors: Mapping[str, Tensor], ckpt_tensors: Mapping[str, Tensor], model_depth: int | None, where: str
) -> list[str]:
    """Raise CheckpointMismatchError unless the backbones match; return names absent but allowed."""
    allowed_absent = [n for n in model_tensors if n not in ckpt_tensors and n.endswith("num_batches_tracked")]
    missing = [
        f"{n} {tuple(t.shape)}" for n, t in model_tensors.items() if n not in ckpt_tensors and n not in allowed_absent
    ]
    unexpected = [f"{n} {tuple(t.shape)}" for n, t in ckpt_tensors.items() if n not in model_tensors]
    mismatched = [
        f"{n}: checkpoint {tuple(t.shape)} vs model {tuple(model_tensors[n].shape)}"
        for n, t in ckpt_tensors.items()
        if n in model_tensors and t.shape != model_tensors[n].shape
    ]
    if not (missing or unexpected or mismatched):
        return allowed_absent
    parts = [f"{where}: the checkpoint's backbone does not match ResNet3D-{model_depth}."]
    guessed = guess_depth(list(ckpt_tensors))
    if guessed is not None and guessed != model_depth:
        parts.append(f"The checkpoint looks like ResNet3D-{guessed}; build the model with depth={guessed}.")
    stem = "conv1.weight"
    if stem in ckpt_tensors and stem in model_tensors and ckpt_tensors[stem].shape[0] != model_tensors[stem].shape[0]:
        width = ckpt_tensors[stem].shape[0]
        parts.append(f"Its stem has {width} channels, the model's {model_tensors[stem].shape[0]}: use --width {width}.")
    if missing:
        parts.append(f"Missing from the checkpoint ({len(missing)}):{_listed(missing)}")
    if unexpected:
        parts.append(f"Not in the model ({len(unexpected)}):{_listed(unexpected)}")
    if mismatched:
        parts.append(f"Shape mismatch ({len(mismatched)}):{_listed(mismatched)}")
    raise CheckpointMismatchError("\n".join(parts))


def match_heads(
    model: nn.Module, model_tensors: Mapping[str, Tensor], ckpt_head: Mapping[str, Tensor], report: LoadReport
) -> dict[str, Tensor]:
    """Choose the head tensors to load; record everything else in ``report``.

    Skipped tensors are reported under their names in the file (with ``report.prefix``).
    """
    prefix = report.prefix
    to_load: dict[str, Tensor] = {}
    classifier = ckpt_head.get(f"{HEAD}.weight")
    if classifier is not None and classifier.dim() == 2:
        for name in ckpt_head:
            report.skipped[prefix + name] = f"{classifier.shape[0]}-class classifier; replaced by the multi-task head"
        report.heads_initialized = list(getattr(model, "output_sizes", {}))
        return to_load
    for output in getattr(model, "output_sizes", {}):  # a bare ResNet3D has no heads
        names = [f"{HEAD}.{output}.weight", f"{HEAD}.{output}.bias"]
        present = all(n in ckpt_head for n in names)
        if present and all(ckpt_head[n].shape == model_tensors[n].shape for n in names):
            to_load.update({n: ckpt_head[n] for n in names})
            report.heads_loaded.append(output)
        else:
            report.heads_initialized.append(output)
    for name, tensor in ckpt_head.items():
        if name in to_load:
            continue
        if name not in model_tensors:
            report.skipped[prefix + name] = "output not among the model's selected outputs"
        elif tensor.shape != model_tensors[name].shape:
            report.skipped[prefix + name] = (
                f"shape {tuple(tensor.shape)} differs from the model's {tuple(model_tensors[name].shape)}"
            )
        else:
            report.skipped[prefix + name] = "its head is incomplete in the checkpoint (weight or bias missing)"
    return to_load


def _detect_kind(container: str, prefix: str, ckpt_head: Mapping[str, Tensor]) -> str:
    if container == "model":
        return "training"
    if f"{HEAD}.weight" in ckpt_head:
        return "mit"
    if container == "state_dict" and strip_wrapper_prefixes(prefix).startswith("model."):
        return "lightning"
    return "state_dict"


def load_pretrained(
    model: nn.Module, source: str | os.PathLike | IO[bytes] | Mapping[str, Any], require_heads: bool = False
) -> LoadReport:
    """Load a checkpoint (path, file object or already-loaded dict) into ``model``.

    ``model`` is a MultiTaskResNet3D, possibly wrapped (DDP / torch.compile).  Raises
    ``CheckpointMismatchError`` if the backbone does not match, or with ``require_heads`` if
    any of the model's outputs is not in the checkpoint; ``UnsafeCheckpointError`` if the file
    needs full unpickling (see ``python -m resnet3d.convert_checkpoint``).
    """
    where = "<dict>" if isinstance(source, Mapping) else describe_source(source)
    checkpoint = source if isinstance(source, Mapping) else read_checkpoint(source)
    container, state = find_state_dict(checkpoint)
    names = list(state)
    prefix = find_network_prefix(names)

    model_state = model.state_dict()
    original_names = {strip_wrapper_prefixes(n): n for n in model_state}
    model_tensors = {clean: model_state[n] for clean, n in original_names.items()}
    network = {n[len(prefix) :]: state[n] for n in names if n.startswith(prefix)}
    ckpt_backbone = {n: t for n, t in network.items() if not under_prefix(n, HEAD)}
    ckpt_head = {n: t for n, t in network.items() if under_prefix(n, HEAD)}
    model_backbone = {n: t for n, t in model_tensors.items() if not under_prefix(n, HEAD)}

    report = LoadReport(kind=_detect_kind(container, prefix, ckpt_head), source=where, prefix=prefix)
    for name in names:
        if not name.startswith(prefix):
            report.skipped[name] = f"outside the network (no {prefix!r} prefix)"
    depth = getattr(_unwrap(model), "depth", None)
    report.defaulted = check_backbone(model_backbone, ckpt_backbone, depth, where)
    to_load = dict(ckpt_backbone)
    to_load.update(match_heads(_unwrap(model), model_tensors, ckpt_head, report))
    if require_heads and report.heads_initialized:
        raise CheckpointMismatchError(
            f"{where}: no matching head in the checkpoint for outputs {report.heads_initialized}"
        )
    report.defaulted += [f"{HEAD}.{o}.{p}" for o in report.heads_initialized for p in ("weight", "bias")]

    result = model.load_state_dict({original_names[n]: t for n, t in to_load.items()}, strict=False)
    if result.unexpected_keys:  # cannot happen: every name was taken from the model itself
        raise RuntimeError(f"internal error: unexpected keys {result.unexpected_keys}")
    report.loaded = list(to_load)
    return report


def _unwrap(model: nn.Module) -> nn.Module:
    """The MultiTaskResNet3D inside DDP (``.module``) and/or torch.compile (``._orig_mod``)."""
    while True:
        inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner
