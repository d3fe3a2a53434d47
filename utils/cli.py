"""Command lines that behave under torchrun: usage and errors print once (rank 0), a mistyped flag
gets a "did you mean", and a user's mistake ends in one line naming the thing, not a traceback.

Every rank of a torchrun job parses the same arguments and reaches the same mistake, so the other
ranks exit with the same status silently.  ``run_entry_point(main)`` turns a ``SystemExit`` whose
code is a message (how the entry points report bad input) into ``error: <message>`` on rank 0.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from collections.abc import Callable, Sequence

USAGE_ERROR = 2  # argparse's status for a bad command line
USER_ERROR = 1  # bad input found later (a missing file, a bad table)


def default_workers(most: int = 4) -> int:
    """DataLoader workers per process by default: ``most``, but no more than the cores this process
    may use (PyTorch warns when asked for more)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(most, cores))


def progress_bar(**kwargs):
    """A tqdm bar that suits a terminal and a log file alike: redrawn often on a terminal, a line
    every 30 s in a log (SLURM's), and its final state written once (tqdm prints it at close, so a
    log that also got the last update would show it twice)."""
    from tqdm import tqdm

    stream = kwargs.get("file", sys.stderr)
    interactive = hasattr(stream, "isatty") and stream.isatty()
    kwargs.setdefault("mininterval", 0.1 if interactive else 30.0)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(**kwargs)


def is_rank_zero() -> bool:
    """Rank 0 of a torchrun job, or a plain process (before any process group exists)."""
    return os.environ.get("RANK", "0") in ("", "0")


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" only where the help does not already say what the default is and
    there is a default to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, argparse.SUPPRESS) or action.default is False:
            return text
        return super()._get_help_string(action)


class CommandLineParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` for entry points that may run on many ranks."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # argparse calls this for every command-line mistake
        if is_rank_zero():
            usage = self.format_usage()
            if usage.count("\n") > 4:  # a long list of flags would bury the one line that matters
                usage = f"usage: {self.prog} [options]   ({self.prog} --help lists them)\n"
            print(usage + f"{self.prog}: error: {self._with_suggestions(message)}", file=sys.stderr, flush=True)
        sys.exit(USAGE_ERROR)

    def print_help(self, file=None) -> None:
        if is_rank_zero():
            super().print_help(file)

    def print_usage(self, file=None) -> None:
        if is_rank_zero():
            super().print_usage(file)

    def _with_suggestions(self, message: str) -> str:
        """``unrecognized arguments: --batchsize 8`` -> ``...; did you mean --batch-size?``"""
        match = re.match(r"unrecognized arguments: (.*)", message)
        if not match:
            return message
        known = [s for action in self._actions for s in action.option_strings if s.startswith("--")]
        hints = []
        for token in match.group(1).split():
            flag = token.split("=", 1)[0]
            if flag.startswith("--"):
                close = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
                if close:
                    hints.append(f"{flag}: did you mean {close[0]}?")
        return message + ("; " + "; ".join(hints) if hints else "")


def run_entry_point(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """``sys.exit(run_entry_point(main))``: main's status; a ``SystemExit("message")`` becomes one
    ``error: message`` line on rank 0 and status 1 on every rank."""
    try:
        return main(argv)
    except SystemExit as exc:
        if isinstance(exc.code, str):
            if is_rank_zero():
                print(f"error: {exc.code}", file=sys.stderr, flush=True)
            return USER_ERROR
        raise
