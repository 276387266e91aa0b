"""The package's layering (docs/architecture.md): imports point down only.

Every `import`/`from ... import` in ava/ (at any depth: module level, inside functions, under
TYPE_CHECKING) is read from the source with `ast`, so a lazy import inside a function cannot hide
an upward dependency.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ava"

# Layer of each top-level part of ava (higher imports lower). Parts of the same rank are siblings
# and must not import each other.
RANKS = {
    "errors": 0, "__init__": 0,
    "files": 0.5,  # may raise ava.errors.UserError; everything else may use it
    "faults": 0.5,  # crash points for the fault tests; everything may call them
    "console": 0.5,  # rich consoles for messages and progress; everything may use it
    "kernels": 1,
    "data": 2, "nn": 2,
    "checkpoint": 3, "synth": 3,
    "runtime": 4,
    "train": 5, "render": 5, "driver": 5, "view": 5, "eval": 5, "show": 5,
    "cli": 6,
    "__main__": 7,
}
# Third-party packages the data layer may use: it reads captures (numpy, Pillow, plyfile, torch's
# Dataset) and downloads them (requests, urllib3 under it for bodies read raw, rich for progress).
# No model code, no renderer.
DATA_THIRD_PARTY = {"numpy", "PIL", "plyfile", "torch", "requests", "urllib3", "rich"}


def _part(module: str) -> str:
    """'ava.data.capture' -> 'data'; 'ava' -> '__init__'."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else "__init__"


def _module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "ava":
                # `from ava import train` / `from .. import render` import the parts themselves;
                # `from ava import __version__` takes a name from ava/__init__.py.
                found += [(node.lineno, f"ava.{alias.name}" if _is_part(alias.name) else "ava")
                          for alias in node.names]
            else:
                found.append((node.lineno, target))
    return found


def _is_part(name: str) -> bool:
    return (PACKAGE / name / "__init__.py").exists() or (PACKAGE / f"{name}.py").exists()


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def layering_violations() -> list[str]:
    problems = []
    for path in _sources():
        module = _module_name(path)
        own = _part(module) if module != "ava" else "__init__"
        if own not in RANKS:
            problems.append(f"{path.relative_to(PACKAGE.parent)}: part '{own}' has no layer in RANKS")
            continue
        for line, target in _imports(path):
            top = target.split(".")[0]
            where = f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}"
            if top == "ava":
                other = _part(target)
                if other == own:
                    continue
                if other not in RANKS:
                    problems.append(f"{where} (unknown part '{other}')")
                elif RANKS[other] >= RANKS[own]:
                    relation = "a sibling" if RANKS[other] == RANKS[own] else "a layer above"
                    problems.append(f"{where}: {relation} of '{own}'")
            elif own == "data" and top not in DATA_THIRD_PARTY and top not in sys.stdlib_module_names:
                problems.append(f"{where}: the data layer uses only {sorted(DATA_THIRD_PARTY)} besides the standard library")
    return problems


def test_imports_point_down_only():
    problems = layering_violations()
    assert not problems, "imports against the layering (docs/architecture.md):\n" + "\n".join(problems)


def test_every_part_has_a_layer():
    parts = {path.name if path.is_dir() else path.stem for path in PACKAGE.iterdir()
             if (path.is_dir() and (path / "__init__.py").exists()) or path.suffix == ".py"}
    assert parts <= set(RANKS), f"parts without a layer: {sorted(parts - set(RANKS))}"


@pytest.mark.parametrize("source, message", [
    ("from ava.train.loop import train\n", "a layer above"),
    ("from ava.nn.uvmap import Topology\n", "a sibling"),
    ("import scipy\n", "the data layer uses only"),
    ("def f():\n    from ..render import cross_id\n", "a layer above"),
    ("from ava import train\n", "a layer above"),
    ("from .. import render\n", "a layer above"),
    ("from .. import errors, nn\n", "a sibling"),
    ("from ava import __version__, train\n", "a layer above"),
])
def test_the_check_catches_upward_imports(tmp_path, monkeypatch, source, message):
    # The checker itself must be able to fail: plant an offending module in a copy of ava/data.
    import shutil

    copy = tmp_path / "ava"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "data" / "planted.py").write_text(source)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", copy)
    problems = layering_violations()
    assert any("planted.py" in problem and message in problem for problem in problems), problems
