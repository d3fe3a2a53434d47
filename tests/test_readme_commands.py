"""Every command shown in README.md and in the manual's pages (docs/*.md; the dated record in
docs/log/ is history and not checked) parses with the real argument parser of its entry point, so a
renamed or removed flag fails here.  Commands are the lines of ```bash blocks and inline code that
starts with ``python``/``torchrun`` and passes a flag.  Nothing is run: each entry point's main() is
called with argparse stopped right after it parsed (installs, pytest, mlflow ui, sbatch and the
launch scripts are not entry points of ours and are skipped).  The pages' links are checked too."""

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


PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def page_commands(path: Path) -> list[str]:
    """The shell commands of a page: its ```bash blocks (continuation lines joined, comments cut)
    and its inline code that starts with python or torchrun, names a script or module and passes a
    flag (not --help)."""
    text = path.read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                commands += [part.strip() for part in line.split("&&")]
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    for span in re.findall(r"`((?:python|torchrun) [^`]*)`", prose):
        if " --" in span and "--help" not in span and re.search(r"\.py\b| -m ", span):
            commands.append(span)
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
        raise AssertionError(f"documented command that is neither ours nor skipped: {' '.join(tokens)}")
    if tokens[1] == "-m":
        if tokens[2] == "pytest":
            return None
        return tokens[2], tokens[3:]
    return tokens[1][:-3].replace("/", "."), tokens[2:]


def arguments(args: list[str]) -> list[str]:
    """Documentation shorthand out: ``[--opt X]`` brackets and a trailing ``...``.  A ``--config``
    file that a run writes (``runs/demo/config.yaml``) does not exist here: the demo's file, which
    that run would have written, stands in for it."""
    out = []
    for token in args:
        if token in ("...", "[...]"):
            continue
        token = token.strip("[]")
        if out and out[-1] == "--config" and token.startswith("runs/") and not (REPO / token).exists():
            token = "configs/demo.yaml"
        out.append(token)
    return out


COMMANDS = [
    (path.relative_to(REPO).as_posix(), c)
    for path in PAGES
    for c in page_commands(path)
    if entry_point(shlex.split(c)) is not None
]


def test_the_docs_have_the_commands_of_every_entry_point():
    modules = {entry_point(shlex.split(c))[0] for _, c in COMMANDS}
    for expected in (
        "train_ddp",
        "evaluate",
        "predict",
        "extract_features",
        "align_features",
        "datasets.prepare",
        "datasets.clean_annotations",
        "datasets.check_videos",
        "benchmarks.train_step",
    ):
        assert expected in modules, expected


def test_the_readme_shows_the_quick_start_and_the_three_training_commands():
    modules = [entry_point(shlex.split(c))[0] for page, c in COMMANDS if page == "README.md"]
    for expected in ("train_ddp", "datasets.clean_annotations", "datasets.prepare"):
        assert expected in modules, expected
    readme = (REPO / "README.md").read_text()
    for command in ("pip install -r requirements-dev.txt", "mlflow ui --backend-store-uri"):
        assert command in readme, command
    assert 'python -m pytest -q -m "not slow and not slurm"' in readme and "python -m pytest -q " in readme


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", "")).replace(" ", "-")


def test_the_readme_links_every_docs_page_and_every_link_resolves():
    readme = (REPO / "README.md").read_text()
    for page in PAGES[1:]:
        assert f"(docs/{page.name})" in readme, f"README.md does not link docs/{page.name}"
    for path in [*PAGES, *sorted((REPO / "docs" / "log").glob("*.md"))]:
        prose = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", prose):
            if re.match(r"^[a-z]+://", target):
                continue
            file, _, fragment = target.partition("#")
            linked = (path.parent / file).resolve() if file else path
            assert linked.exists(), f"{path.relative_to(REPO)} links {target}, which does not exist"
            if fragment and linked.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", linked.read_text(), flags=re.S), re.M)
                anchors = {github_anchor(h) for h in headings}
                assert fragment in anchors, f"{path.relative_to(REPO)} links {target}: no such heading"


def test_only_the_development_page_points_into_the_dated_record():
    for path in PAGES:
        if path.name != "development.md":
            assert "log/" not in path.read_text(), f"{path.relative_to(REPO)} depends on docs/log/"
    assert "(log/README.md)" in (REPO / "docs" / "development.md").read_text()


@pytest.mark.parametrize(("page", "command"), COMMANDS, ids=[f"{p}: {c}" for p, c in COMMANDS])
def test_documented_command_parses(page, command, monkeypatch):
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
            raise AssertionError(f"{page}: {command!r} does not parse (exit {exc.code})") from exc
