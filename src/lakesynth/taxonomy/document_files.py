"""The knowledge documents on disk: which files are documents, their text, and which of them a leaf's patterns name.

Shared by the documents stage (documents.py reads and chunks every document under the folder) and the taxonomy
stage (taxonomy.py resolves each knowledge leaf's patterns against the same folder), which as stages do not import
each other.
"""

from __future__ import annotations

import glob
import os
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


def read_document(path: str | Path, name: str | None = None) -> str:
    """A file's text: markdown and plain text as written (UTF-8), a PDF's pages as extracted by pypdf, a blank line
    between pages. An unreadable file, or one without text (a scanned PDF needs OCR first), is an error naming it."""
    file, name = Path(path), name or str(path)
    suffix = file.suffix.lower()
    if suffix not in SUFFIXES:
        raise SeedError(f"{name}: not a markdown, text or PDF file (.md, .markdown, .txt, .pdf)")
    if suffix in PDF:
        text = _pdf_text(file, name)
    else:
        try:
            text = file.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise SeedError(f"{name}: cannot be read as UTF-8 text: {exc}") from None
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise SeedError(
            f"{name}: the document has no text" + (" (a scanned PDF needs OCR first)" if suffix in PDF else "")
        )
    return text


def _pdf_text(file: Path, name: str) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(file)
        if reader.is_encrypted and not reader.decrypt(""):
            raise SeedError(f"{name}: the PDF is encrypted with a password")
        pages = [page.extract_text() or "" for page in reader.pages]
    except SeedError:
        raise
    except (OSError, PyPdfError, ValueError, KeyError, TypeError) as exc:  # what pypdf raises on a broken file
        raise SeedError(f"{name}: not a readable PDF: {type(exc).__name__}: {exc}") from None
    return "\n\n".join(page.strip() for page in pages if page.strip())


def document_files(root: str | Path) -> list[Path]:
    """The markdown, text and PDF files under `root` (hidden files and folders skipped), in path order; `root` may
    also be one file."""
    base = Path(root)
    if base.is_file():
        return [base]
    if not base.is_dir():
        raise SeedError(f"{root}: documents folder not found")
    found = []
    for folder, dirs, names in os.walk(base):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(folder) / n for n in sorted(names) if not n.startswith(".") and n.lower().endswith(SUFFIXES)]
    return found


def _relative(file: Path, root: Path) -> str:
    return file.name if root.is_file() else file.relative_to(root).as_posix()


def read_documents(root: str | Path) -> dict[str, str]:
    """Every document under `root` as {path relative to root (POSIX): text}. No document is an error, and so is
    any unreadable or empty one: all of them are named at once."""
    base = Path(root)
    files = document_files(base)
    if not files:
        raise SeedError(f"{root}: no markdown, text or PDF document ({', '.join(SUFFIXES)}) found")
    texts, problems = {}, []
    for file in files:
        name = _relative(file, base)
        try:
            texts[name] = read_document(file, name)
        except SeedError as exc:
            problems.append(str(exc))
    if problems:
        raise SeedError(f"{root}: {len(problems)} document(s) cannot be read:\n  " + "\n  ".join(problems))
    return texts
