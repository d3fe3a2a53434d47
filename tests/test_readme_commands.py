"""Every command in the README's code blocks parses with the real argument parser of its entry
point, so a renamed or removed flag fails here.  Nothing is run: each entry point's main() is
called with argparse stopped right after it parsed (installs, pytest, mlflow ui, sbatch and the
launch scripts are not entry points of ours and are skipped)."""

import argparse
import importlib
import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SKIP = (
    "pip",
    "python3",
    "mlflow",
    "pytest",
    "ruff",
    "sbatch",
    "scancel",
    "kill",
    "bash",
    "source",
    "echo",
    "git",
    "srun",
    "cd",
    "export",
    "ls",
    "cat",
    "CI=true",
    "launch/local.sh",
    "apt-get",
    "issues",
)


class Parsed(Exception):
    pass


def readme_commands() -> list[str]:
    """The shell commands of the README's ```bash blocks (continuation lines joined, comments cut)."""
    text = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                commands += [part.strip() for part in line.split("&&")]
    return commands


def entry_point(tokens: list[str]) -> tuple[str, list[str]] | None:
    """(module of the entry point, its arguments) or None for commands that are not ours."""
    while tokens and re.match(r"^[A-Z_]+=", tokens[0]):  # VAR=value prefixes
        tokens = tokens[1:]
    if not tokens or tokens[0] in SKIP or tokens[0].startswith("launch/"):
        return None
    if tokens[0] == "torchrun":
        script = next(i for i, t in enumerate(tokens) if t.endswith(".py"))
        tokens = ["python", *tokens[script:]]
    if tokens[0] != "python":
        raise AssertionError(f"README command that is neither ours nor skipped: {' '.join(tokens)}")
    if tokens[1] == "-m":
        if tokens[2] == "pytest":
            return None
        return tokens[2], tokens[3:]
    return tokens[1][:-3].replace("/", "."), tokens[2:]


def arguments(args: list[str]) -> list[str]:
    """Documentation shorthand out: ``[--opt X]`` brackets and a trailing ``...``."""
    out = []
    for token in args:
        if token in ("...", "[...]"):
            continue
        out.append(token.strip("[]"))
    return out


COMMANDS = [c for c in readme_commands() if entry_point(shlex.split(c)) is not None]


def test_the_readme_has_the_commands_of_every_entry_point():
    modules = {entry_point(shlex.split(c))[0] for c in COMMANDS}
    for expected in (
        "train_ddp",
        "evaluate",
        "predict",
        "extract_features",
        "align_features",
        "datasets.prepare",
        "datasets.clean_annotations",
        "datasets.check_videos",
        "benchmarks.train_throughput",
    ):
        assert expected in modules, expected


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_parses(command, monkeypatch):
    module_name, args = entry_point(shlex.split(command))
    real_parse_args = argparse.ArgumentParser.parse_args

    def parse_then_stop(parser, argv=None, namespace=None):
        real_parse_args(parser, argv, namespace)  # a bad flag or value exits here with status 2
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    module = importlib.import_module(module_name)
    with pytest.raises(Parsed):
        try:
            module.main(arguments(args))
        except SystemExit as exc:
            raise AssertionError(f"{command!r} does not parse (exit {exc.code})") from exc
