"""Parameter-name normalisation shared by freezing and checkpoint loading."""

from __future__ import annotations

# Added by wrappers, never part of the network: DataParallel/DDP add ``module.``,
# torch.compile adds ``_orig_mod.``.  Either may be nested inside the other.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def strip_wrapper_prefixes(name: str) -> str:
    """``module._orig_mod.layer1.0.conv1.weight`` -> ``layer1.0.conv1.weight``."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix) :]
                stripped = True
    return name


def under_prefix(name: str, prefix: str) -> bool:
    """True if ``name`` is ``prefix`` or lies below it on a dot boundary.

    ``last_linear.peoplecount`` covers ``last_linear.peoplecount.weight`` but not
    ``last_linear.peoplecount_certain.weight``; ``layer4.2`` does not cover ``layer4.20``.
    """
    return name == prefix or name.startswith(prefix + ".")
