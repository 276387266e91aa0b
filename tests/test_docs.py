"""The repository's documents (README.md, docs/*.md): relative links must reach existing files
(and, for a `#fragment` into a Markdown file, an existing heading), and nothing may cite the
design notes that live outside the repository (SPEC.md, DESIGN.md), which readers cannot open.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# [text](target) and [text](target "title"); images too. Reference definitions: [label]: target
INLINE_LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.MULTILINE)
FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...
OUTSIDE_NOTES = re.compile(r"\b(?:SPEC|DESIGN)\.md\b|\bSPEC §")


def documents(root: Path = ROOT) -> list[Path]:
    return [root / "README.md"] + sorted((root / "docs").glob("*.md"))


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks, with inline code spans blanked out."""
    lines, fence = [], None
    for number, line in enumerate(text.splitlines(), start=1):
        opening = FENCE.match(line)
        if fence is None and opening:
            fence = opening.group(1)[0]
            continue
        if fence is not None:
            if opening and opening.group(1)[0] == fence:
                fence = None
            continue
        lines.append((number, INLINE_CODE.sub(lambda match: " " * len(match.group(0)), line)))
    return lines


def heading_anchor(title: str) -> str:
    """GitHub's anchor for a heading: the text without Markdown, lower case, punctuation dropped
    (except '-' and '_'), spaces as hyphens."""
    title = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", title)  # links keep their text
    title = title.replace("`", "").replace("*", "")
    title = re.sub(r"<[^>]+>", "", title).strip().lower()
    title = re.sub(r"[^\w\- ]", "", title)
    return title.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The heading anchors of a Markdown file (repeated headings get -1, -2, ... as on GitHub).
    Headings are read from the source line, so code spans in them keep their text."""
    found: set[str] = set()
    counts: dict[str, int] = {}
    text = path.read_text(encoding="utf-8").splitlines()
    for number, _ in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(text[number - 1])
        if not match:
            continue
        anchor = heading_anchor(match.group(2))
        if anchor in counts:
            counts[anchor] += 1
            anchor = f"{anchor}-{counts[anchor]}"
        else:
            counts[anchor] = 0
        found.add(anchor)
    return found


def links(path: Path) -> list[tuple[int, str]]:
    found = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        found += [(number, match.group(1)) for match in INLINE_LINK.finditer(line)]
        found += [(number, match.group(1)) for match in REFERENCE_DEFINITION.finditer(line)]
    return found


def broken_links(paths: list[Path], root: Path = ROOT) -> list[str]:
    problems = []
    for path in paths:
        where = path.relative_to(root)
        for number, target in links(path):
            if EXTERNAL.match(target):
                continue
            file_part, _, fragment = target.partition("#")
            destination = (path.parent / file_part).resolve() if file_part else path
            if not destination.exists():
                problems.append(f"{where}:{number}: {target} points at {file_part}, which does not exist")
                continue
            try:
                destination.relative_to(root)
            except ValueError:
                problems.append(f"{where}:{number}: {target} leaves the repository")
                continue
            if fragment and destination.suffix == ".md" and fragment not in anchors(destination):
                problems.append(f"{where}:{number}: {target}: {destination.name} has no heading #{fragment}")
    return problems


def outside_citations(paths: list[Path], root: Path = ROOT) -> list[str]:
    problems = []
    for path in paths:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if OUTSIDE_NOTES.search(line):
                problems.append(f"{path.relative_to(root)}:{number}: {line.strip()}")
    return problems


def test_docs_exist():
    names = {path.name for path in documents()}
    for name in ("README.md", "architecture.md", "data-layout.md", "raymarching.md", "checkpoint.md",
                 "original-quirks.md"):
        assert name in names, f"docs/{name} is missing"


def test_relative_links_reach_existing_files_and_headings():
    problems = broken_links(documents())
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_no_citations_of_notes_outside_the_repository():
    problems = outside_citations(documents())
    assert not problems, (
        "README.md and docs/ must not cite SPEC.md or DESIGN.md (readers cannot see them); "
        "link the docs/ page instead:\n" + "\n".join(problems)
    )


@pytest.mark.parametrize("anchor_title, expected", [
    ("Rays: `compute_raydirs`", "rays-compute_raydirs"),
    ("Importing the original's state dicts: `ava convert`", "importing-the-originals-state-dicts-ava-convert"),
    ("The headset (`encoder/`) group", "the-headset-encoder-group"),
    ("ava download", "ava-download"),
])
def test_heading_anchors_follow_github(anchor_title, expected):
    assert heading_anchor(anchor_title) == expected


def test_the_checks_can_fail(tmp_path):
    """Plant a README with each kind of defect in a scratch repository."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text("# Page\n\n## A section\n\ntext\n")
    (tmp_path / "README.md").write_text(
        "# Title\n\n"
        "[fine](docs/page.md#a-section) [web](https://example.org/x.md)\n"
        "[gone](docs/missing.md) [bad anchor](docs/page.md#no-such-section)\n\n"
        "```\n[inside a fence](docs/also-missing.md) SPEC.md\n```\n\n"
        "As `SPEC.md` says, see DESIGN.md.\n"
    )
    paths = documents(tmp_path)
    problems = broken_links(paths, tmp_path)
    assert len(problems) == 2, problems
    assert any("docs/missing.md" in problem for problem in problems)
    assert any("#no-such-section" in problem for problem in problems)
    citations = outside_citations(paths, tmp_path)
    # The fenced line and the prose line both cite notes readers cannot open.
    assert [line.split(":")[1] for line in citations] == ["7", "10"], citations


def source_citations(root: Path = ROOT) -> list[str]:
    """file:line of every citation of SPEC.md / DESIGN.md in the package's and tools' sources."""
    found = []
    for path in sorted([*(root / "ava").rglob("*.py"), *(root / "tools").glob("*.py")]):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if OUTSIDE_NOTES.search(line):
                found.append(f"{path.relative_to(root)}:{number}")
    return found


def test_sources_cite_the_docs_not_outside_notes(tmp_path):
    found = source_citations()
    assert not found, "docstrings must point at docs/ pages, not SPEC.md or DESIGN.md: " + ", ".join(found)
    # the scan itself can fail
    (tmp_path / "ava").mkdir()
    (tmp_path / "tools").mkdir()
    (tmp_path / "ava" / "planted.py").write_text('"""As SPEC §3 says."""\n')
    assert source_citations(tmp_path) == ["ava/planted.py:1"]


ARCHITECTURE_PART = re.compile(r"`ava\.(\w+)`")
MODULE_FILE = re.compile(r"`(\w+\.py)`")


def architecture_mismatches(text: str, package: Path) -> list[str]:
    """Where docs/architecture.md's module listing and the package disagree. Each `### ` section
    heading names the parts it describes (`ava.X`); the section of a package part names every
    module file of it (`name.py`) and no other; every top-level module is named in a heading."""
    sections: list[tuple[list[str], str]] = []
    for line in text.splitlines():
        if line.startswith("#"):
            parts = ARCHITECTURE_PART.findall(line) if line.startswith("### ") else []
            sections.append((parts, ""))
        elif sections:
            parts, body = sections[-1]
            sections[-1] = (parts, body + line + "\n")
    headed = {part for parts, _ in sections for part in parts}
    problems = []
    for path in sorted(package.iterdir()):
        if path.suffix == ".py" and path.stem != "__init__" and path.stem not in headed:
            problems.append(f"module ava.{path.stem} has no section")
        if not (path / "__init__.py").is_file():
            continue
        bodies = [body for parts, body in sections if path.name in parts]
        if not bodies:
            problems.append(f"package ava.{path.name} has no section")
            continue
        listed = set(MODULE_FILE.findall("".join(bodies)))
        present = {module.name for module in path.glob("*.py") if module.name != "__init__.py"}
        problems += [f"ava/{path.name}/{name} is not listed" for name in sorted(present - listed)]
        problems += [f"ava/{path.name}/{name} is listed but does not exist" for name in sorted(listed - present)]
    return problems


def test_the_architecture_lists_every_module():
    problems = architecture_mismatches((ROOT / "docs" / "architecture.md").read_text(encoding="utf-8"), ROOT / "ava")
    assert not problems, "docs/architecture.md's module listing and ava/ disagree:\n" + "\n".join(problems)


def test_the_architecture_check_can_fail(tmp_path):
    (tmp_path / "part").mkdir()
    for name in ("__init__.py", "kept.py", "unlisted.py"):
        (tmp_path / "part" / name).write_text("")
    (tmp_path / "alone.py").write_text("")
    text = "# Architecture\n\n### `ava.part` (rank 1)\n\n- `kept.py`, `gone.py`\n\n## Outside\n\n`unlisted.py`\n"
    assert architecture_mismatches(text, tmp_path) == [
        "module ava.alone has no section",
        "ava/part/unlisted.py is not listed",
        "ava/part/gone.py is listed but does not exist",
    ]
