"""The import rule (DESIGN.md), checked on every import statement of the project, including those
inside functions: utils/ is the ground floor and imports no other package of ours; resnet3d/,
losses/ and datasets/ don't import each other; analysis/ builds only on utils/, and of the packages
only inference/ may import it; no package imports an entry point (the top-level scripts import
the packages, never the reverse)."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("utils", "resnet3d", "losses", "datasets", "analysis", "inference")
ENTRY_POINTS = tuple(p.stem for p in REPO.glob("*.py"))  # train_ddp, evaluate, predict, ...
OURS = set(PACKAGES) | set(ENTRY_POINTS) | {"benchmarks", "launch", "tests"}
ALLOWED = {  # package -> the packages of ours it may import (besides itself)
    "utils": set(),
    "resnet3d": {"utils"},
    "losses": {"utils"},
    "datasets": {"utils"},
    "analysis": {"utils"},
    "inference": {"utils", "resnet3d", "datasets", "losses", "analysis"},
}


def imported_top_levels(path: Path, package: str) -> list[tuple[int, str]]:
    """(line, top-level name) of every module an import statement in ``path`` names."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: inside the same package (``from .x``) or above it
                found.append((node.lineno, package if node.level == 1 else "<outside the package>"))
            elif node.module:
                found.append((node.lineno, node.module.split(".")[0]))
    return found


def violations() -> list[str]:
    bad = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            for line, name in imported_top_levels(path, package):
                if name == "<outside the package>" or (
                    name in OURS and name != package and name not in ALLOWED[package]
                ):
                    bad.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    return bad


def test_every_import_follows_the_rule():
    assert violations() == []


def test_the_rule_check_catches_an_import_inside_a_function(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from datasets import video\n    import resnet3d.model\n")
    assert imported_top_levels(module, "utils") == [(1, "os"), (4, "datasets"), (5, "resnet3d")]


def test_scipy_and_scikit_learn_are_for_the_tests_only():
    """They are the reference implementations the tests compare against (requirements-dev.txt);
    a user's install (requirements.txt) does not promise them."""
    found = []
    for path in sorted(REPO.rglob("*.py")):
        relative = path.relative_to(REPO)
        if relative.parts[0] in ("tests", ".venv", "venv") or "site-packages" in relative.parts:
            continue
        package = relative.parts[0] if len(relative.parts) > 1 else relative.stem
        found += [
            f"{relative}:{line} imports {name}"
            for line, name in imported_top_levels(path, package)
            if name in ("scipy", "sklearn")
        ]
    assert found == []
