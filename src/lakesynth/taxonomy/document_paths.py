"""Which files are knowledge documents, and which of them a knowledge leaf's `document.patterns` name.

Shared by the documents stage (documents.py reads and chunks every document under the folder) and the taxonomy
stage (taxonomy.py resolves each knowledge leaf's patterns against the same folder), which as stages do not import
each other.
"""

from __future__ import annotations

import glob
from pathlib import Path

from lakesynth.errors import SeedError

MARKDOWN = (".md", ".markdown")
TEXT = (".txt",)
PDF = (".pdf",)
SUFFIXES = MARKDOWN + TEXT + PDF


def resolve(patterns: list[str], root: str | Path, leaf: str | None = None) -> list[str]:
    """The documents a knowledge leaf's `document.patterns` name, relative to the documents root (POSIX, sorted).

    Patterns are globs relative to the root, as InstructLab reads them relative to the document repository: `*.md`
    is the top folder only, `**/*.md` goes down. A pattern that matches no document, or leaves the root, is an
    error naming it (and the leaf, when given); all such patterns are named at once."""
    base = Path(root)
    if not base.is_dir():
        raise SeedError(f"{root}: documents folder not found")
    where = f"{leaf}: " if leaf else ""
    found, problems = set(), []
    for pattern in patterns:
        parts = Path(pattern).parts
        if Path(pattern).is_absolute() or ".." in parts:
            problems.append(f"{where}document pattern {pattern!r} leaves the documents folder {root}")
            continue
        matched = [m for m in glob.glob(pattern, root_dir=base, recursive=True) if (base / m).is_file()]
        documents = [Path(m).as_posix() for m in matched if m.lower().endswith(SUFFIXES)]
        if documents:
            found.update(documents)
        elif matched:
            problems.append(
                f"{where}document pattern {pattern!r} matches only files that are not markdown, text or PDF: "
                + ", ".join(sorted(Path(m).as_posix() for m in matched)[:5])
            )
        else:
            problems.append(f"{where}document pattern {pattern!r} matches no document in {root}")
    if problems:
        raise SeedError("\n".join(problems))
    return sorted(found)
