"""The plan of the package holds: modules stay small, brewlab's own imports sit at module level
(where import-linter sees the layers and cycles they make), and the README's Architecture
section names every module."""

from __future__ import annotations

import ast
import re

from conftest import ROOT

PACKAGE = ROOT / "brewlab"
MODULES = sorted(p for p in PACKAGE.rglob("*.py"))
MAX_LINES = 400


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in MODULES if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


def _local_imports(path) -> list[str]:
    """brewlab imports inside functions that carry no `# lazy:` reason on their line."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    found = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for sub in ast.walk(node):
                module = sub.module if isinstance(sub, ast.ImportFrom) else None
                names = [a.name for a in sub.names] if isinstance(sub, ast.Import) else []
                if (module or "").startswith("brewlab") or any(n.startswith("brewlab") for n in names):
                    if "# lazy:" not in lines[sub.lineno - 1]:
                        found.append(f"{path.relative_to(ROOT)}:{sub.lineno}")
    return found


def test_brewlab_imports_are_at_module_level_unless_a_reason_is_given():
    assert [where for p in MODULES for where in _local_imports(p)] == []


def test_the_readme_architecture_tree_names_every_module():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Architecture", 1)[1].split("\n## ", 1)[0]
    (tree,) = [block for block in section.split("```")[1::2] if "\nbrewlab/" in block]
    listed, stack = set(), []
    for line in tree.splitlines():
        m = re.match(r"^( *)(\S+)", line)
        if not m or m.group(2) in ("run.py",):
            continue
        depth = len(m.group(1)) // 2
        name = m.group(2)
        stack[depth:] = [name]
        if name.endswith(".py"):
            listed.add("/".join(s.rstrip("/") for s in stack))
    wanted = {str(p.relative_to(ROOT)) for p in MODULES if p.name != "__init__.py"}
    assert sorted(wanted - listed) == []
    assert sorted(listed - wanted) == []
