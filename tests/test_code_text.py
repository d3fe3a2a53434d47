"""Comments, docstrings and help strings state what is true now; history lives in docs/log/.

The scanner reads each Python file's comments (tokenize), docstrings (ast) and `help=` strings
(ast) and rejects investigation history: numbered investigation rounds, calendar dates, and a
bare "earlier" version that does not say it is the earlier Lightning version, whose formats we still read.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".git", ".venv", "venv", "runs", "outputs", ".cache", "mlruns", "__pycache__"}

MONTHS = (
    "January|February|March|April|May|June|July|August|September|October|November|December|"
    "Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec"
)
FORBIDDEN = {
    "round number": re.compile(r"\brounds? [0-9]+\b", re.IGNORECASE),
    "ISO date": re.compile(r"\b(?:19|20)[0-9]{2}-[01][0-9]-[0-3][0-9]\b"),
    "written date": re.compile(
        rf"\b(?:[0-3]?[0-9] (?:{MONTHS})\.? (?:19|20)[0-9]{{2}}|(?:{MONTHS})\.? [0-3]?[0-9],? (?:19|20)[0-9]{{2}})\b"
    ),
    "unnamed earlier version": re.compile(r"\bearlier version\b", re.IGNORECASE),
}


def python_files() -> list[Path]:
    files = []
    for path in sorted(REPO.rglob("*.py")):
        parts = set(path.relative_to(REPO).parts[:-1])
        if parts & SKIP_DIRS:
            continue
        files.append(path)
    return files


def prose_of(source: str) -> list[tuple[int, str, str]]:
    """(line, kind, text) for each comment, docstring and help= string in one module."""
    found = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            found.append((tok.start[0], "comment", tok.string))
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node, clean=False)
            if doc is not None:
                found.append((node.body[0].lineno, "docstring", doc))
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg == "help":
                    text = "".join(
                        part.value
                        for part in ast.walk(kw.value)
                        if isinstance(part, ast.Constant) and isinstance(part.value, str)
                    )
                    found.append((kw.value.lineno, "help string", text))
    return found


def violations(source: str, name: str = "<text>") -> list[str]:
    out = []
    for line, kind, text in prose_of(source):
        flat = " ".join(text.split())  # a date may be wrapped over two lines
        for label, pattern in FORBIDDEN.items():
            for m in pattern.finditer(flat):
                out.append(f"{name}:{line}: {kind} has a {label}: {m.group(0)!r}")
    return out


def test_the_scanner_finds_history_in_each_place_it_looks():
    source = '''"""Module doc, measured 2026-12-03."""
import argparse

# at 2e-3 it failed (round 7)
def f():
    """Trained on 3 December 2026."""
    p = argparse.ArgumentParser()
    p.add_argument("--x", help="as in the " "earlier version")
    return p
'''
    found = violations(source)
    assert any("docstring has a ISO date" in v for v in found), found
    assert any("comment has a round number" in v for v in found), found
    assert any("docstring has a written date" in v for v in found), found
    assert any("help string has a unnamed earlier version" in v for v in found), found
    assert len(found) == 4, found


def test_the_scanner_does_not_flag_ordinary_words():
    source = '''"""Around 7 clips; rounded 3 times; round-trip; surrounds 4 sides; the earlier Lightning checkpoints."""
x = "round 7"  # a plain string literal (not a comment, docstring or help string) is data
# rounded to 6 decimals; background 2026 pixels; May 3 workers
'''
    assert violations(source) == []


def yaml_comment_violations(path: Path) -> list[str]:
    """The same rules for the comments of a shipped config file (configs/, the demo's reasons)."""
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.lstrip().startswith("#"):
            for label, pattern in FORBIDDEN.items():
                out += [
                    f"{path.relative_to(REPO)}:{number}: comment has a {label}: {m.group(0)!r}"
                    for m in pattern.finditer(line)
                ]
    return out


def test_config_file_comments_say_what_is_true_now():
    found = [v for path in sorted((REPO / "configs").rglob("*.yaml")) for v in yaml_comment_violations(path)]
    assert not found, "history belongs in docs/log/, not in config files:\n" + "\n".join(found)


def test_code_text_says_what_is_true_now():
    found = [
        v for path in python_files() for v in violations(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))
    ]
    assert not found, "history belongs in docs/log/, not in code:\n" + "\n".join(found)
