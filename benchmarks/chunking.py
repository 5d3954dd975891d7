"""Chunking knowledge documents: seconds per 1k chunks at 100, 1k and 10k documents, measured in one run.

    .venv/bin/python benchmarks/chunking.py [--docs 100,1000,10000] [--rounds 3]

(also section 6 of benchmarks/run.py, which writes RESULTS.md). Each size gets its own deterministic folder of
markdown documents: a title, then three to six sections (some with a subsection) of one to four paragraphs of three
to eight sentences, about 950 words a document on average, and one document in ten with a fenced code block, so the
chunker meets headings, paragraphs, code and (at the default 400-word budget) sentence cuts and overlap. Measured on
the same folder, `--rounds` times interleaved (median, spread beside it):

- the chunker alone: `chunks.chunk_documents` in one Python process (reading the files included);
- the documents stage: `documents.run` on the embedded engine (the clock starts once the engine is up): every file
  read on the driver, chunked by `mapInPandas` on the executors (in-process here), the table overwritten;
- for reference, the same stage with the chunking on the driver: `chunk_documents`, then the rows shipped with
  `createDataFrame` and written.

Linear means the same seconds per 1k chunks at every size: the ratio column divides each size's by the smallest's,
and the summary rows the largest size's by the one before it (the smallest still carries fixed costs).
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS = (
    "lichen fungus alga thallus spore bark rock tundra moss fern soil water light sugar partner crust lobe branch "
    "colony growth season winter summer forest meadow river valley slope north south grazing reindeer caribou "
    "nitrogen carbon mineral surface layer edge centre pattern colour shade patch field survey sample record "
    "measure compare observe describe slowly often rarely every some most several small wide thin pale bright "
    "green grey yellow orange old young dry wet cold warm high low"
).split()
FUNCTION = "the a of in on and with by for to from as at is are was were can may that which".split()


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS if rng.random() < 0.6 else FUNCTION) for _ in range(rng.randint(6, 18))]
    return " ".join(words).capitalize() + rng.choice(".....?!")


def _paragraph(rng: random.Random) -> str:
    return " ".join(_sentence(rng) for _ in range(rng.randint(3, 8)))


def document(rng: random.Random, number: int) -> str:
    """One markdown document: a title, sections (some with a subsection) of paragraphs, sometimes a code block."""
    parts = [f"# Field notes {number}"]
    for s in range(rng.randint(3, 6)):
        parts.append(f"## Section {s + 1}: {rng.choice(WORDS)} and {rng.choice(WORDS)}")
        parts += [_paragraph(rng) for _ in range(rng.randint(1, 4))]
        if rng.random() < 0.3:
            parts.append(f"### {rng.choice(WORDS).capitalize()} details")
            parts += [_paragraph(rng) for _ in range(rng.randint(1, 3))]
    if number % 10 == 0:
        parts.append("```python\n" + "\n".join(f"count_{i} = {i} * {rng.randint(1, 9)}" for i in range(8)) + "\n```")
    return "\n\n".join(parts) + "\n"


def write_documents(folder: Path, n: int) -> tuple[int, int]:
    """`n` documents under `folder` (100 a subfolder); returns (documents, words)."""
    rng = random.Random(n)
    words = 0
    for i in range(n):
        text = document(rng, i)
        words += len(text.split())
        path = folder / f"part_{i // 100:03d}" / f"doc_{i:05d}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return n, words


def _chunker(folder: Path, ctx) -> tuple[float, int]:
    from lakesynth.taxonomy import chunks

    started = time.monotonic()
    rows = chunks.chunk_documents(folder)
    return time.monotonic() - started, len(rows)


def _stage(folder: Path, ctx) -> tuple[float, int]:
    from lakesynth.taxonomy import documents

    started = time.monotonic()
    result = documents.run(ctx)
    return time.monotonic() - started, result.rows_out


def _stage_on_driver(folder: Path, ctx) -> tuple[float, int]:
    """The reference: the same stage, chunked on the driver and the rows shipped to the engine."""
    from lakesynth.core import tables
    from lakesynth.taxonomy import chunks, documents

    started = time.monotonic()
    d = ctx.cfg.documents
    rows = chunks.chunk_documents(d.path, d.budget_tokens, d.overlap_tokens)
    frame = ctx.spark.createDataFrame(rows, schema=documents.TABLE.row_schema)
    tables.overwrite(ctx.spark, ctx.rt, documents.TABLE, frame, run_id="bench")
    return time.monotonic() - started, tables.count(ctx.spark, ctx.rt, documents.TABLE)


KINDS = {
    "chunker": ("chunker alone (chunk_documents, one process)", _chunker),
    "stage": ("documents stage (read on the driver, mapInPandas, Delta overwrite)", _stage),
    "driver": ("reference: the stage chunking on the driver (createDataFrame of the rows)", _stage_on_driver),
}


def chunking(folder: Path, sizes: list[int], rounds: int = 3) -> list[tuple]:
    """The table rows of benchmarks/run.py's section 6: per size, the median of `rounds` interleaved runs of each."""
    from lakesynth.core import registry

    rows, per_1k = [], {}
    for n in sizes:
        docs = folder / f"docs_{n}"
        _, words = write_documents(docs, n)
        settings = [f"warehouse={folder / 'warehouse'}", f"schema=bench_chunking_{n}", f"documents.path={docs}"]
        ctx = registry.open_context(ROOT / "conf" / "lakesynth.yml", settings)
        ctx.spark.range(1).count()  # the engine is up before the clock starts
        KINDS["stage"][1](docs, ctx)  # a first run creates the table and imports what the UDF needs
        times: dict[str, list[float]] = {kind: [] for kind in KINDS}
        chunks: dict[str, int] = {}
        for _, kind in itertools.product(range(rounds), KINDS):
            seconds, chunks[kind] = KINDS[kind][1](docs, ctx)
            times[kind].append(seconds)
        ctx.close()
        assert len(set(chunks.values())) == 1, chunks  # every way gives the same chunks
        rows.append((f"documents, {n}", f"{n} files", "", f"{words} words, {chunks['chunker']} chunks (budget 400)"))
        for kind, (label, _) in KINDS.items():
            median = statistics.median(times[kind])
            per_1k.setdefault(kind, {})[n] = median / chunks[kind] * 1000
            spread = f"{min(times[kind]):.2f}-{max(times[kind]):.2f}"
            ratio = f"{per_1k[kind][n] / per_1k[kind][sizes[0]]:.2f}x of {sizes[0]} docs' s/1k chunks"
            note = f"{per_1k[kind][n]:.3f} s per 1k chunks"
            if kind != "chunker":
                note += f", {median / statistics.median(times['chunker']):.2f}x the chunker alone"
            rows.append((f"{label}, {n} docs", f"{median:.2f} s ({spread})", ratio, note))
    # Linear: the same s per 1k chunks between the two largest sizes (the smallest still carries the fixed costs of
    # a Spark job and a Delta commit, which the larger ones amortise).
    before, large = sizes[max(0, len(sizes) - 2)], sizes[-1]
    for kind, (label, _) in KINDS.items():
        values = " / ".join(f"{per_1k[kind][n]:.3f}" for n in sizes) + " s"
        ratio = f"{per_1k[kind][large] / per_1k[kind][before]:.2f}x from {before} to {large} docs"
        name = f"{label.split(' (')[0]}: s per 1k chunks at {' / '.join(map(str, sizes))} docs"
        rows.append((name, values, ratio, "goal: flat (linear)"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", default="100,1000,10000", help="comma-separated sizes, smallest first")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each, interleaved; the median is shown")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = chunking(Path(tmp), [int(x) for x in args.docs.split(",")], args.rounds)
    print("| measurement | value | ratio | note |\n|---|---|---|---|")
    print("\n".join(f"| {' | '.join(row)} |" for row in rows))


if __name__ == "__main__":
    main()
