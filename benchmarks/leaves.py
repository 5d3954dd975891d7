"""Generation per taxonomy leaf: seconds per leaf and per request at 10, 100 and 1k leaves, measured in one run.

    .venv/bin/python benchmarks/leaves.py [--leaves 10,100,1000] [--rounds 3] [--per-leaf 2]

(also section 8 of benchmarks/run.py, which writes RESULTS.md). Each size gets its own deterministic InstructLab
taxonomy (qna.yaml version 3, valid for `qna.read_taxonomy`), its leaves in turn a freeform skill (five seed
questions and answers), a grounded skill (five, each with a small markdown table as its context) and a knowledge
leaf (five seed contexts of three questions and answers each, and its own generated markdown document of about 950
words, benchmarks/chunking.py's, named by `document.patterns`), 100 leaves a folder. The teacher is the stand-in
(lakesynth.llm.standin in its own process: 100 ms a request, at most 64 at a time, so at most 640 req/s) with
`endpoints.teacher.max_concurrency` 64 and `taxonomy.per_leaf` 2: three requests a leaf (per_leaf and its 0.5 spare, rounded
up). Per size and round, a fresh schema on one embedded engine (started before any clock): the `documents` stage
chunks the knowledge documents (before the clock; leaf generation reads `document_chunks`), then the clock runs
over
- the `taxonomy` stage: every qna.yaml read and validated, knowledge patterns resolved, both tables overwritten;
- the `leaf_generation` stage: the plan (leaves, seed examples and chunks collected), one loop of the LLM stage per
  mode (freeform, grounded, knowledge) against the stand-in, `leaf_pairs` written.
`--rounds` rounds (median, spread beside it). Linear means the same seconds per leaf at every size: the ratio column
divides each size's by the smallest's, and the summary rows the largest size's by the one before it (the smallest
still carries fixed costs: Spark jobs, Delta commits, three loops' start).
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
LATENCY_MS, CAP = 100, 64
LIMIT = CAP / (LATENCY_MS / 1000)
KINDS = ("freeform", "grounded", "knowledge")


def _words(rng: random.Random, n: int) -> str:
    from chunking import WORDS  # benchmarks/chunking.py, beside this file

    return " ".join(rng.choice(WORDS) for _ in range(n))


def _table(rng: random.Random, number: int) -> str:
    stops = [_words(rng, 1).capitalize() for _ in range(4)]
    head = "| Stop | Bus 1 | Bus 2 |\n|---|---|---|\n"
    return head + "\n".join(
        f"| {s} {number}.{j} | 07:{10 + j * 7:02d} | 08:{10 + j * 7:02d} |" for j, s in enumerate(stops)
    )


def leaf_file(rng: random.Random, i: int) -> tuple[str, dict, str | None]:
    """Leaf `i`: (its folder under the taxonomy root, its qna.yaml content, its document's text or None)."""
    from chunking import document

    kind, group = KINDS[i % 3], f"group_{i // 100:03d}"
    if kind == "knowledge":
        text = document(rng, i)
        paragraphs = [p for p in text.split("\n\n") if not p.startswith(("#", "```"))]
        seeds = [
            {
                "context": paragraphs[s % len(paragraphs)][:600] + f" (seed {s})",
                "questions_and_answers": [
                    {"question": f"What does note {i}.{s}.{q} say about {_words(rng, 2)}?", "answer": _words(rng, 12)}
                    for q in range(3)
                ],
            }
            for s in range(5)
        ]
        content = {
            "version": 3,
            "domain": f"Field notes {i}",
            "created_by": "lakesynth-bench",
            "document_outline": f"Field notes {i} on {_words(rng, 3)}",
            "seed_examples": seeds,
            "document": {"repo": "https://example.invalid/notes", "commit": "0" * 40, "patterns": [f"leaf_{i:05d}.md"]},
        }
        return f"knowledge/{group}/notes_{i:05d}", content, text
    seeds = []
    for s in range(5):
        seed = {"question": f"Question {i}.{s}: {_words(rng, 10)}?", "answer": _words(rng, 25)}
        if kind == "grounded":
            seed = {"context": _table(rng, s), **seed}
        seeds.append(seed)
    content = {
        "version": 3,
        "task_description": f"Task {i}: {_words(rng, 12)}.",
        "created_by": "lakesynth-bench",
        "seed_examples": seeds,
    }
    return f"compositional_skills/{kind}/{group}/skill_{i:05d}", content, None


def write_taxonomy(folder: Path, n: int) -> dict[str, int]:
    """`n` leaves under `folder/taxonomy`, knowledge documents under `folder/docs`; returns counts."""
    rng = random.Random(n)
    counts = dict.fromkeys(KINDS, 0) | {"documents": 0}
    (folder / "docs").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        leaf, content, text = leaf_file(rng, i)
        path = folder / "taxonomy" / leaf / "qna.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.dump(content, Dumper=yaml.CSafeDumper, sort_keys=False, width=120), encoding="utf-8")
        counts[KINDS[i % 3]] += 1
        if text is not None:
            (folder / "docs" / f"leaf_{i:05d}.md").write_text(text, encoding="utf-8")
            counts["documents"] += 1
    return counts


def _round(folder: Path, n: int, r: int | str, url: str, per_leaf: int) -> dict:
    """One run of size `n` on a fresh schema; the warehouse is shared (one embedded engine per warehouse)."""
    from lakesynth.core import registry
    from lakesynth.taxonomy import documents, leaf_generation, taxonomy

    settings = [
        f"warehouse={folder.parent / 'warehouse'}",
        f"schema=bench_leaves_{n}_{r}",
        f"taxonomy.path={folder / 'taxonomy'}",
        f"documents.path={folder / 'docs'}",
        f"taxonomy.per_leaf={per_leaf}",
        f"endpoints.teacher.base_url={url}",
        "endpoints.teacher.model=standin",
        f"endpoints.teacher.max_concurrency={CAP}",
    ]
    ctx = registry.open_context(ROOT / "conf" / "lakesynth.yml", settings)
    ctx.spark.range(1).count()  # the engine is up before the clock starts
    started = time.monotonic()
    chunks = documents.run(ctx).rows_out  # before the clock: leaf generation reads document_chunks
    chunked = time.monotonic() - started
    started = time.monotonic()
    read = taxonomy.run(ctx)
    tax = time.monotonic() - started
    started = time.monotonic()
    generated = leaf_generation.run(ctx)
    gen = time.monotonic() - started
    ctx.close()
    if generated.errors or generated.rows_out != generated.rows_in:
        raise SystemExit(f"leaf_generation at {n} leaves: {generated.errors} errors, {generated.rows_out} rows")
    return {
        "documents": chunked,
        "taxonomy": tax,
        "generation": gen,
        "both": tax + gen,
        "chunks": chunks,
        "examples": read.rows_out,
        "requests": generated.rows_in,
        "modes": generated.metrics["requests_per_mode"],
    }


def leaf_generation(folder: Path, sizes: list[int], rounds: int = 3, per_leaf: int = 2) -> list[tuple]:
    """The rows of benchmarks/run.py's section 8: per size, the median of `rounds` runs, each on a fresh schema."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "lakesynth.llm.standin", "--latency-ms", str(LATENCY_MS), "--max-concurrency", str(CAP)],
        stdout=subprocess.PIPE,
        text=True,
    )
    url = proc.stdout.readline().strip()
    rows, per_leaf_s = [], {}
    labels = {
        "taxonomy": "taxonomy stage (read, validate, resolve patterns, 2 Delta overwrites)",
        "generation": "leaf_generation stage (plan, 3 LLM loops on the stand-in, leaf_pairs)",
        "both": "taxonomy + leaf_generation",
    }
    try:
        for n in sizes:
            counts = write_taxonomy(folder / f"leaves_{n}", n)
            if n == sizes[0]:  # a first round, not counted, imports what the stages and the UDFs need
                _round(folder / f"leaves_{n}", n, "warm", url, per_leaf)
            runs = [_round(folder / f"leaves_{n}", n, r, url, per_leaf) for r in range(rounds)]
            first = runs[0]
            assert all(
                (x["requests"], x["chunks"], x["examples"]) == (first["requests"], first["chunks"], first["examples"])
                for x in runs
            ), runs
            requests = first["requests"]
            docs_s = statistics.median(x["documents"] for x in runs)
            rows.append(
                (
                    f"taxonomy, {n} leaves",
                    f"{n} leaves",
                    "",
                    f"{counts['freeform']} freeform, {counts['grounded']} grounded, {counts['knowledge']} knowledge; "
                    f"{first['examples']} seed examples; {counts['documents']} documents, {first['chunks']} chunks "
                    f"(documents stage {docs_s:.2f} s, before the clock); {requests} requests (per_leaf {per_leaf} "
                    "+ spare)",
                )
            )
            for kind, label in labels.items():
                times = [x[kind] for x in runs]
                median = statistics.median(times)
                per_leaf_s.setdefault(kind, {})[n] = median / n
                spread = f"{min(times):.2f}-{max(times):.2f}"
                ratio = f"{per_leaf_s[kind][n] / per_leaf_s[kind][sizes[0]]:.2f}x of {sizes[0]} leaves' s/leaf"
                note = f"{median / n * 1000:.1f} ms per leaf"
                if kind == "generation":
                    rate = requests / median
                    note += (
                        f", {median / requests * 1000:.2f} ms per request ({rate:.0f} req/s, {rate / LIMIT:.2f} of the "
                        f"stand-in's {LIMIT:.0f})"
                    )
                rows.append((f"{label}, {n} leaves", f"{median:.2f} s ({spread})", ratio, note))
    finally:
        proc.terminate()
        proc.wait()
    # Linear: the same s per leaf between the two largest sizes (the smallest still carries the fixed costs).
    before, large = sizes[max(0, len(sizes) - 2)], sizes[-1]
    for kind, label in labels.items():
        values = " / ".join(f"{per_leaf_s[kind][n] * 1000:.1f}" for n in sizes) + " ms"
        ratio = f"{per_leaf_s[kind][large] / per_leaf_s[kind][before]:.2f}x from {before} to {large} leaves"
        name = f"{label.split(' (')[0]}: ms per leaf at {' / '.join(map(str, sizes))} leaves"
        rows.append((name, values, ratio, "goal: flat (linear)"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leaves", default="10,100,1000", help="comma-separated sizes, smallest first")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each size, a fresh schema each; median shown")
    parser.add_argument("--per-leaf", type=int, default=2, help="taxonomy.per_leaf (requests: it and its spare)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = leaf_generation(Path(tmp), [int(x) for x in args.leaves.split(",")], args.rounds, args.per_leaf)
    print("| measurement | value | ratio | note |\n|---|---|---|---|")
    print("\n".join(f"| {' | '.join(row)} |" for row in rows))


if __name__ == "__main__":
    main()
