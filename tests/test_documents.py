"""Knowledge documents read (markdown, text, PDF), chunked by structure, and found by a leaf's patterns (no Spark)."""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
from pathlib import Path

import pytest

from lakesynth.errors import SeedError
from lakesynth.taxonomy.chunks import CHUNK_COLUMNS, chunk, chunk_documents
from lakesynth.taxonomy.document_files import read_document, read_documents, resolve

DOCS = Path(__file__).parent / "fixtures" / "taxonomy_docs"
WORD = re.compile(r"\S+")


def assert_chunks(text: str, rows: list[dict], budget: int) -> None:
    """What every chunking must keep: slices of the text within the budget, cut only between words, in order,
    together covering every word."""
    assert [row["position"] for row in rows] == list(range(len(rows)))
    for row in rows:
        assert tuple(row) == CHUNK_COLUMNS
        start, end = row["char_start"], row["char_end"]
        assert text[start:end] == row["text"]
        assert 0 < row["tokens"] == len(row["text"].split()) <= budget
        assert not text[start].isspace() and (start == 0 or text[start - 1].isspace()), "starts inside a word"
        assert not text[end - 1].isspace() and (end == len(text) or text[end].isspace()), "ends inside a word"
    assert all(a["char_start"] <= b["char_start"] and a["char_end"] < b["char_end"] for a, b in zip(rows, rows[1:]))
    spans = [(row["char_start"], row["char_end"]) for row in rows]
    for word in WORD.finditer(text):
        assert any(s <= word.start() and word.end() <= e for s, e in spans), f"word {word.group()!r} in no chunk"


def test_markdown_chunks_follow_headings_within_the_budget():
    text = read_document(DOCS / "lichens.md")
    rows = chunk(text, 80, 15, source="lichens.md")
    assert_chunks(text, rows, 80)
    headings = [json.loads(row["headings"]) for row in rows]
    assert headings[0] == ["Lichens"]
    assert ["Lichens", "How the partnership works", "Reproduction"] in headings
    assert headings[-1] == ["Lichens", "Uses by people"]
    for row, path in zip(rows, headings):  # a chunk starting a section starts with its heading
        if row["text"].startswith("#"):
            assert row["text"].split("\n")[0].lstrip("# ") == path[-1]
    whole = chunk(text, 10_000, 0, source="lichens.md")
    assert len(whole) == len({tuple(h) for h in headings})  # one chunk a section when the budget allows


def test_chunks_of_one_section_overlap_by_whole_words_and_sections_do_not():
    text = read_document(DOCS / "lichens.md")
    rows = chunk(text, 40, 12)
    assert_chunks(text, rows, 40)
    overlaps = 0
    for a, b in zip(rows, rows[1:]):
        if a["headings"] == b["headings"] and not b["text"].startswith("#"):
            assert b["char_start"] < a["char_end"], "chunks of one section overlap"
            shared = text[b["char_start"] : a["char_end"]]
            assert len(shared.split()) <= 12 and a["text"].endswith(shared)
            overlaps += 1
        else:
            assert b["char_start"] > a["char_end"]
    assert overlaps >= 3
    no_overlap = chunk(text, 40, 0)
    assert_chunks(text, no_overlap, 40)
    assert all(b["char_start"] > a["char_end"] for a, b in zip(no_overlap, no_overlap[1:]))


def test_a_paragraph_over_the_budget_is_cut_at_sentences_then_words():
    sentences = [f"Sentence {i} tells about lichen number {i} on the old stone wall." for i in range(12)]
    long_word = "x" * 500
    text = "# Title\n\n" + " ".join(sentences) + "\n\n" + " ".join(["word"] * 25 + [long_word] + ["tail"] * 5)
    rows = chunk(text, 20, 0)
    assert_chunks(text, rows, 20)
    body = [row for row in rows if "Sentence" in row["text"]]
    assert all(row["text"].endswith(".") for row in body), "cut at sentence ends"
    assert any(long_word == w for row in rows for w in row["text"].split()), "a word is never cut"
    assert json.loads(rows[-1]["headings"]) == ["Title"]


def test_fenced_code_and_plain_text():
    text = "# Notes\n\n```\n# not a heading\n\nstill code\n```\n\nAfter the code.\n"
    rows = chunk(text, 100, 0)
    assert len(rows) == 1 and json.loads(rows[0]["headings"]) == ["Notes"]
    plain = chunk("# not a heading here\n\nsecond paragraph", 100, 0, markdown=False)
    assert len(plain) == 1 and json.loads(plain[0]["headings"]) == []


@pytest.mark.parametrize("seed", range(40))
def test_random_documents_keep_every_rule(seed):
    rng = random.Random(seed)
    vocabulary = ["moss", "rock", "alga", "fungus", "thallus", "spore", "bark", "rain", "Arctic", "dust", "y" * 90]
    parts = []
    for _ in range(rng.randint(1, 12)):
        kind = rng.random()
        if kind < 0.2:
            parts.append("#" * rng.randint(1, 4) + " " + " ".join(rng.choices(vocabulary, k=rng.randint(1, 4))))
        elif kind < 0.3:
            parts.append("```\n" + "\n\n".join(rng.choices(vocabulary, k=rng.randint(1, 30))) + "\n```")
        else:
            sentences = [
                " ".join(rng.choices(vocabulary, k=rng.randint(1, 40))).capitalize() + rng.choice([".", "!", "?", ""])
                for _ in range(rng.randint(1, 8))
            ]
            parts.append((" " if rng.random() < 0.5 else "\n").join(sentences))
    text = rng.choice(["", "\n", "  "]) + "\n\n".join(parts) + rng.choice(["", "\n", "\n\n  "])
    budget = rng.randint(5, 60)
    overlap = rng.randint(0, budget - 1)
    rows = chunk(text, budget, overlap, source=f"doc{seed}.md")
    assert_chunks(text, rows, budget)


def test_ids_are_stable_and_depend_on_file_position_and_content():
    text = read_document(DOCS / "lichens.md")
    first, again = chunk(text, 60, 10, source="lichens.md"), chunk(text, 60, 10, source="lichens.md")
    assert first == again
    assert len({row["chunk_id"] for row in first}) == len(first)
    other = chunk(text, 60, 10, source="copy/lichens.md")
    assert [r["content_hash"] for r in other] == [r["content_hash"] for r in first]
    assert not {r["chunk_id"] for r in other} & {r["chunk_id"] for r in first}
    for row in first:
        assert row["content_hash"] == hashlib.sha256(row["text"].encode()).hexdigest()[:16]
        assert re.fullmatch(r"[0-9a-f]{16}", row["chunk_id"])


def _pdf(path: Path, paragraphs: list[str]) -> Path:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("Helvetica", size=11)
    for paragraph in paragraphs:
        pdf.add_page()
        pdf.multi_cell(0, 6, paragraph)
    pdf.output(str(path))
    return path


def test_pdf_and_markdown_both_chunk(tmp_path):
    shutil.copy(DOCS / "lichens.md", tmp_path / "lichens.md")
    (tmp_path / "sub").mkdir()
    paragraphs = [
        "Reindeer lichen forms pale, branching mats on the tundra floor. " * 8,
        "Litmus paper turns red in acid and blue in a base, a test older than any meter. " * 6,
    ]
    _pdf(tmp_path / "sub" / "field_notes.pdf", [p.strip() for p in paragraphs])
    (tmp_path / "notes.txt").write_text("A short note.\n\nA second paragraph of the note.\n")
    (tmp_path / ".hidden.md").write_text("skipped")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")

    texts = read_documents(tmp_path)
    assert sorted(texts) == ["lichens.md", "notes.txt", "sub/field_notes.pdf"]
    assert texts["sub/field_notes.pdf"].split() == " ".join(p.strip() for p in paragraphs).split()

    rows = chunk_documents(tmp_path, 30, 5)
    by_source = {}
    for row in rows:
        by_source.setdefault(row["source"], []).append(row)
    assert sorted(by_source) == sorted(texts)
    for source, chunks in by_source.items():
        assert_chunks(texts[source], chunks, 30)
    assert len(by_source["sub/field_notes.pdf"]) >= 4
    assert {row["headings"] for row in by_source["sub/field_notes.pdf"]} == {"[]"}


def test_unreadable_and_empty_documents_are_named(tmp_path):
    (tmp_path / "empty.md").write_text("  \n\n")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "broken.pdf").write_bytes(b"this is not a PDF")
    _pdf(tmp_path / "blank.pdf", [""])
    (tmp_path / "good.md").write_text("# Fine\n\nText.")
    with pytest.raises(SeedError) as caught:
        read_documents(tmp_path)
    message = str(caught.value)
    assert "4 document(s) cannot be read" in message
    assert "empty.md: the document has no text" in message
    assert "latin1.txt: cannot be read as UTF-8 text" in message
    assert "broken.pdf: not a readable PDF" in message
    assert "blank.pdf: the document has no text (a scanned PDF needs OCR first)" in message
    (tmp_path / "none").mkdir()
    with pytest.raises(SeedError, match="no markdown, text or PDF document"):
        read_documents(tmp_path / "none")


def test_resolve_finds_a_leafs_documents_or_names_the_pattern(tmp_path):
    assert resolve(["lichens.md"], DOCS) == ["lichens.md"]
    assert resolve(["*.md"], DOCS) == ["lichens.md"]
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("top.md", "a/one.md", "a/b/two.pdf", "a/b/data.csv"):
        (tmp_path / name).write_text("x")
    assert resolve(["*.md"], tmp_path) == ["top.md"]
    assert resolve(["**/*.md", "a/b/*.pdf", "top.md"], tmp_path) == ["a/b/two.pdf", "a/one.md", "top.md"]
    with pytest.raises(SeedError) as caught:
        resolve(["*.md", "missing/*.md", "a/b/*.csv", "../x.md"], tmp_path, leaf="knowledge/x")
    message = str(caught.value)
    assert "knowledge/x: document pattern 'missing/*.md' matches no document" in message
    assert "knowledge/x: document pattern 'a/b/*.csv' matches only files that are not markdown, text or PDF" in message
    assert "knowledge/x: document pattern '../x.md' leaves the documents folder" in message
    assert "'*.md'" not in message


def test_bad_budgets_are_refused():
    with pytest.raises(ValueError, match="budget_tokens"):
        chunk("text", 0, 0)
    with pytest.raises(ValueError, match="overlap_tokens"):
        chunk("text", 10, 10)
