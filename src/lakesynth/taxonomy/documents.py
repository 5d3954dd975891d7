"""Knowledge documents: markdown, plain text and PDF read as text, and cut into chunks by their structure.

A chunk is a run of whole blocks (markdown `#` headings, paragraphs, fenced code blocks; an underlined setext
heading reads as a paragraph) within a token budget. A heading starts a new chunk (unless the chunk so far holds only
headings), so a chunk's heading path is the section its text belongs to. A block over the budget is cut at sentence
ends, and a sentence over the budget between words. Chunks of one section overlap: the next chunk starts with the
previous one's trailing paragraphs, else sentences, else words, up to `overlap_tokens`. A chunk is a slice of the
extracted text (`char_start`, `char_end`), never cut inside a word, and the chunks of a file cover every word of it,
in order.

A token is a word here (a run of non-space characters): chunks are cut between words, so counting words makes the
budget exact and the count needs no tokenizer on the executors. English runs about 1.3 subword tokens a word, so
leave that headroom below a model's context.

Chunk rows (CHUNK_COLUMNS): `chunk_id` str (hash of source, position and content hash: stable across runs),
`source` str (the file, relative to the documents root, POSIX), `position` int (0-based, in the file), `headings` str
(JSON list of the markdown headings above the chunk, outermost first), `text` str, `char_start` / `char_end` int
(offsets in the extracted text, end exclusive), `tokens` int (words), `content_hash` str (sha256 of the text, 16 hex).

The `documents` stage (`--documents DIR`, `documents.path`: a folder, on Databricks a `/Volumes/...` path) writes
these rows, every document's, whole into `document_chunks`: all documents are read (and any unreadable one named)
before the table is touched, and a document removed from the folder leaves the table with its chunks.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from bisect import bisect_left
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
from pydantic import Field, ValidationInfo, field_validator, model_validator
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lakesynth.core import tables
from lakesynth.config import Section, resolve_path
from lakesynth.taxonomy.document_paths import MARKDOWN, PDF, SUFFIXES
from lakesynth.errors import SeedError
from lakesynth.core.stage import RunContext, Stage, StageResult
from lakesynth.core.tables import INT, L, S

BUDGET_TOKENS = 400  # about 520 subword tokens: room for a chunk, its instructions and a reply in a small context
OVERLAP_TOKENS = 40
HASH_CHARS = 16

CHUNK_COLUMNS = (
    "chunk_id",
    "source",
    "position",
    "headings",
    "text",
    "char_start",
    "char_end",
    "tokens",
    "content_hash",
)

WORD = re.compile(r"\S+")
HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
SENTENCE_END = re.compile(r"(?<=[.!?…])[\"'”’)\]]*\s+")


# --- reading ------------------------------------------------------------------------------------------------------


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


def chunk_documents(
    root: str | Path, budget_tokens: int = BUDGET_TOKENS, overlap_tokens: int = OVERLAP_TOKENS
) -> list[dict]:
    """The chunk rows of every document under `root` (markdown structure for .md files, paragraphs for the rest)."""
    rows = []
    for name, text in read_documents(root).items():
        markdown = name.lower().endswith(MARKDOWN)
        rows += chunk(text, budget_tokens, overlap_tokens, source=name, markdown=markdown)
    return rows


# --- chunking -----------------------------------------------------------------------------------------------------


def count_tokens(text: str) -> int:
    """Tokens as the chunker counts them: words (the module docstring says why)."""
    return len(WORD.findall(text))


def chunk(
    text: str,
    budget_tokens: int = BUDGET_TOKENS,
    overlap_tokens: int = OVERLAP_TOKENS,
    *,
    source: str = "",
    markdown: bool = True,
) -> list[dict]:
    """The chunk rows of one document's text (CHUNK_COLUMNS); `markdown=False` reads only paragraphs (blank-line
    separated), as plain text and PDF text have no markdown headings."""
    if budget_tokens < 1:
        raise ValueError(f"budget_tokens must be at least 1, got {budget_tokens}")
    if not 0 <= overlap_tokens < budget_tokens:
        raise ValueError(f"overlap_tokens must be from 0 to budget_tokens - 1, got {overlap_tokens}")
    words = [m.start() for m in WORD.finditer(text)]

    def tokens(start: int, end: int) -> int:  # spans begin and end at word boundaries
        return bisect_left(words, end) - bisect_left(words, start)

    spans: list[tuple[int, int, list[str]]] = []  # (start, end, headings) of each chunk
    for section, headings in _sections(text, markdown):
        units = [u for block in section for u in _units(text, block, budget_tokens, tokens)]
        current: list[tuple[int, int]] = []
        for unit in units:
            size = tokens(unit[0], unit[1])
            if current and tokens(current[0][0], current[-1][1]) + size > budget_tokens:
                spans.append((current[0][0], current[-1][1], headings))
                # the overlap and the next unit together stay within the budget
                start = _overlap(text, current, min(overlap_tokens, budget_tokens - size), tokens)
                current = [(start, current[-1][1])] if start is not None else []
            current.append(unit)
        if current:
            spans.append((current[0][0], current[-1][1], headings))
    rows = []
    for position, (start, end, headings) in enumerate(spans):
        body = text[start:end]
        content_hash = hashlib.sha256(body.encode()).hexdigest()[:HASH_CHARS]
        chunk_id = hashlib.sha256(f"{source}\x00{position}\x00{content_hash}".encode()).hexdigest()[:HASH_CHARS]
        rows.append(
            {
                "chunk_id": chunk_id,
                "source": source,
                "position": position,
                "headings": json.dumps(headings, ensure_ascii=False),
                "text": body,
                "char_start": start,
                "char_end": end,
                "tokens": tokens(start, end),
                "content_hash": content_hash,
            }
        )
    return rows


def _blocks(text: str, markdown: bool) -> list[tuple[int, int, int]]:
    """(start, end, heading level or 0) of each block: a heading line, a fenced code block, or a paragraph (lines up
    to a blank line); start and end are its first and past its last non-space character."""
    blocks: list[tuple[int, int, int]] = []
    para: list[int] = []  # [start, end] of the paragraph being read
    fence: str | None = None
    offset = 0
    for line in text.split("\n"):
        start, end = offset, offset + len(line)
        offset = end + 1
        stripped = line.strip()
        lead, trail = start + len(line) - len(line.lstrip()), start + len(line.rstrip())
        if fence is not None:  # inside a fenced block: everything to the closing fence is one block
            para[1] = trail if stripped else para[1]
            if stripped.startswith(fence) and not stripped.strip(fence[0]):
                fence = None
                blocks.append((para[0], para[1], 0))
                para = []
            continue
        if not stripped:
            if para:
                blocks.append((para[0], para[1], 0))
                para = []
            continue
        opening = FENCE.match(line) if markdown else None
        heading = HEADING.match(line) if markdown else None
        if opening or heading:
            if para:
                blocks.append((para[0], para[1], 0))
                para = []
            if opening:
                fence, para = opening.group(1), [lead, trail]
            else:
                blocks.append((lead, trail, len(heading.group(1))))
            continue
        para = [para[0], trail] if para else [lead, trail]
    if para:
        blocks.append((para[0], para[1], 0))  # a fence never closed runs to the end, as markdown reads it
    return blocks


def _sections(text: str, markdown: bool):
    """The blocks in sections: a section is a run of headings and the blocks under the last of them; each comes
    with its heading path (outermost first)."""
    path: list[tuple[int, str]] = []  # (level, title) of the headings in force
    section: list[tuple[int, int, int]] = []
    body = False  # whether the section has a non-heading block yet
    for block in _blocks(text, markdown):
        level = block[2]
        if level and body:
            yield section, [title for _, title in path]
            section, body = [], False
        if level:
            title = HEADING.match(text[block[0] : block[1]]).group(2) or ""
            path = [(lv, t) for lv, t in path if lv < level] + [(level, title.strip())]
        else:
            body = True
        section.append(block)
    if section:
        yield section, [title for _, title in path]


def _units(text: str, block: tuple[int, int, int], budget: int, tokens) -> list[tuple[int, int]]:
    """A block as spans within the budget: the block itself, else its sentences, else runs of words."""
    start, end, _ = block
    if tokens(start, end) <= budget:
        return [(start, end)]
    units = []
    for s_start, s_end in _sentences(text, start, end):
        if tokens(s_start, s_end) <= budget:
            units.append((s_start, s_end))
            continue
        words = [m.span() for m in WORD.finditer(text, s_start, s_end)]
        for i in range(0, len(words), budget):
            group = words[i : i + budget]
            units.append((group[0][0], group[-1][1]))
    return units


def _sentences(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """(start, end) of each sentence in text[start:end]: cut after . ! ? … (and closing quotes or brackets) followed
    by a space. Abbreviations cut too; only blocks over the budget are cut at all."""
    spans, at = [], start
    for match in SENTENCE_END.finditer(text, start, end):
        spans.append((at, match.start() + len(match.group(0).rstrip())))
        at = match.end()
    if at < end:
        spans.append((at, end))
    return [(s, e) for s, e in spans if e > s]


def _overlap(text: str, units: list[tuple[int, int]], allowed: int, tokens) -> int | None:
    """Where the next chunk starts within the last one: the most trailing whole units (paragraphs), else sentences
    of the last unit, else words, that fit in `allowed` tokens; None for no overlap."""
    if allowed <= 0:
        return None
    first, end = units[0][0], units[-1][1]
    last_start = units[-1][0]
    levels = (
        [u[0] for u in units[1:]],
        [s for s, _ in _sentences(text, last_start, end)],
        [m.start() for m in WORD.finditer(text, last_start, end)],
    )
    for starts in levels:
        fitting = [s for s in starts if first < s < end and tokens(s, end) <= allowed]
        if fitting:
            return min(fitting)
    return None


# --- the stage ----------------------------------------------------------------------------------------------------


class DocumentsConfig(Section):
    """The knowledge documents (`--documents`): a folder of markdown, text and PDF files, and how they are chunked."""

    path: str = Field(
        "",
        description="Folder of markdown, text and PDF documents (relative to the config file; on Databricks a "
        "/Volumes/... path). Knowledge leaves' document.patterns are resolved against it. Empty: no documents.",
    )
    chunk_words: int = Field(
        BUDGET_TOKENS, ge=1, description="Most words in a chunk (about 1.3 subword tokens a word)."
    )
    overlap_words: int = Field(
        OVERLAP_TOKENS, ge=0, description="Words a chunk repeats from the one before it in the same section."
    )

    @field_validator("path")
    @classmethod
    def _resolve(cls, value: str, info: ValidationInfo) -> str:
        return resolve_path(value, info)

    @model_validator(mode="after")
    def _overlap_below_budget(self) -> DocumentsConfig:
        if self.overlap_words >= self.chunk_words:
            raise ValueError(f"overlap_words ({self.overlap_words}) must be less than chunk_words ({self.chunk_words})")
        return self


TYPES = {"position": INT, "char_start": L, "char_end": L, "tokens": INT}
TABLE = tables.contract(
    "document_chunks", [(c, TYPES.get(c, S)) for c in CHUNK_COLUMNS], key="chunk_id", parent="source"
)
CHUNK_SCHEMA = T.StructType([T.StructField(c, TYPES.get(c, S), True) for c in CHUNK_COLUMNS])


def _chunk_batches(batches: Iterator[pd.DataFrame], budget_tokens: int, overlap_tokens: int) -> Iterator[pd.DataFrame]:
    """mapInPandas body: the chunk rows of each (source, text) document."""
    for batch in batches:
        rows = []
        for source, text in zip(batch["source"], batch["text"]):
            markdown = source.lower().endswith(MARKDOWN)
            rows += chunk(text, budget_tokens, overlap_tokens, source=source, markdown=markdown)
        yield pd.DataFrame(rows, columns=list(CHUNK_COLUMNS))


def run(ctx: RunContext) -> StageResult:
    cfg, spark = ctx.cfg, ctx.spark
    d = cfg.documents
    if not d.path:
        return StageResult(metrics={"disabled": "no documents: pass --documents DIR (documents.path)"})
    # Read on the driver: every document is checked (an unreadable or empty one is named, all at once) before the
    # table is touched, which reading on the executors could only report as a task failure. The chunking runs on the
    # executors: Spark slices a local relation over its default parallelism, so no repartition (a shuffle of every
    # text) is needed. Here, in-process, that costs about twice chunking on the driver (benchmarks/chunking.py).
    texts = read_documents(d.path)
    docs = spark.createDataFrame(
        pd.DataFrame({"source": list(texts), "text": list(texts.values())}),
        schema=T.StructType([T.StructField("source", S), T.StructField("text", S)]),
    )
    chunk_rows = docs.mapInPandas(
        functools.partial(_chunk_batches, budget_tokens=d.chunk_words, overlap_tokens=d.overlap_words),
        CHUNK_SCHEMA,
    )
    chunk_rows = chunk_rows.withColumn("run_id", F.lit(cfg.run_id)).withColumn("created_at", F.current_timestamp())
    fqn = tables.ensure(spark, ctx.rt, TABLE)
    tables.conform(chunk_rows, TABLE).write.mode("overwrite").insertInto(fqn)  # the table is the folder, whole
    written = tables.count(spark, ctx.rt, TABLE)
    return StageResult(
        rows_in=len(texts), rows_out=written, tables=[TABLE], metrics={"documents": len(texts), "chunks": written}
    )


STAGE = Stage(
    name="documents",
    help="read the knowledge documents (--documents: markdown, text, PDF) and chunk them by structure into "
    "document_chunks",
    run=run,
    writes=(TABLE,),
    config=DocumentsConfig,
)
