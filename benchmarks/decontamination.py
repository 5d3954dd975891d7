"""Decontamination at scale: new examples matched against a signatures table, lakesynth's joins in the engine beside
a one-process baseline (datasketch MinHash LSH + a Python dict of n-grams) on the same data, in the same run.

    .venv/bin/python benchmarks/decontamination.py [--signatures 100000,1000000] [--new 100000] [--rounds 1]

Data: benchmarks/dedup.py's short bank questions (no two with the same content words). The signatures are the first
N of them; the new examples are another `--new`, of which 2% are copies of a signed question (another case) and
2% the same with one content word added (5 of 6 alike, Jaccard 0.83), taken from the smallest size's signed
questions, so every size has them to find (dedup.py's own planted near-duplicate groups add more matches, the larger
the signed set). Matched: a shared word 13-gram (a question shorter than 13 words is one gram of
all its words) or content words at least 0.8 alike (negated alike), as the screen stages decide.

- lakesynth: the signatures are a Delta table written beforehand (as the format stages leave it; not timed). Timed:
  `signatures.sign` of the new examples, `near_matches` (band join, then the exact Jaccard) and `ngram_matches`
  (n-gram hash join), the matches written to a table. The engine runs in its own process (a `sail spark server`),
  so the driver's peak RSS is the driver's alone.
- baseline: one Python process. The signed questions' MinHashes (datasketch, 64 permutations, lakesynth's 16 x 4
  bands) are computed before the clock, as the table's bands are; timed: the LSH index and the n-gram dict built
  from them, the new examples' MinHashes, the queries, the exact Jaccard of each candidate, the n-gram lookups.
The two must report the same matches (pairs of new and signed ids).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NGRAM, THRESHOLD = 13, 0.8
WORD = re.compile(r"[^\W_]+")


def data(folder: Path, signed: list[int], new: int) -> tuple[Path, dict[int, Path]]:
    """Parquet files: the new examples, and the first n signed questions for each n of `signed`."""
    import random

    import pandas as pd
    from dedup import questions

    rows = [text for _, text in questions(max(signed) + new)[0]]
    reference, fresh = rows[: max(signed)], rows[max(signed) :]
    rng = random.Random(0)
    for i in range(new // 25):  # 4%: half copies, half one added content word
        source = reference[rng.randrange(min(signed))]
        fresh[i * 25] = source.upper() if i % 2 else source[:-1] + " urgently?"
    new_path = folder / "new.parquet"
    pd.DataFrame({"id": [f"n{i:07d}" for i in range(new)], "text": fresh}).to_parquet(new_path)
    paths = {}
    for n in signed:
        paths[n] = folder / f"signed_{n}.parquet"
        pd.DataFrame({"id": [f"s{i:07d}" for i in range(n)], "text": reference[:n]}).to_parquet(paths[n])
    return new_path, paths


def _context(warehouse: str):
    from lakesynth.core import registry

    return registry.open_context(ROOT / "conf" / "lakesynth.yml", [f"warehouse={warehouse}", "schema=bench_decon"])


def _prepare(signed: str, warehouse: str) -> None:
    """The signatures table, written as the format stages write it (untimed)."""
    from lakesynth.core import tables
    from lakesynth.quality import signatures
    from lakesynth.quality.dedup import NearDedup

    ctx = _context(warehouse)
    rows = signatures.sign(ctx.spark.read.parquet(signed), NearDedup(), NGRAM)
    tables.materialize(ctx.spark, ctx.rt, "bench_signatures", rows).count()


def _run_lakesynth(new: str, warehouse: str) -> tuple[float, list]:
    from pyspark.sql import functions as F

    from lakesynth.core import tables
    from lakesynth.quality import signatures
    from lakesynth.quality.dedup import NearDedup

    ctx = _context(warehouse)
    spark, rt = ctx.spark, ctx.rt
    old = spark.table(rt.fqn("_staging_bench_signatures"))
    old.limit(1).count()  # the engine is up before the clock starts
    started = time.monotonic()
    fresh = tables.materialize(spark, rt, "bench_new", signatures.sign(spark.read.parquet(new), NearDedup(), NGRAM))
    found = signatures.near_matches(fresh, old, THRESHOLD).select("new_id", "old_id")
    found = found.unionByName(signatures.ngram_matches(fresh, old).select("new_id", "old_id")).distinct()
    matches = tables.materialize(spark, rt, "bench_matches", found)
    matches.count()
    seconds = time.monotonic() - started
    return seconds, sorted([r.new_id, r.old_id] for r in matches.orderBy(F.col("new_id")).collect())


def _grams(text: str) -> set[str]:
    words = WORD.findall(text.lower())
    return {" ".join(words[i : i + NGRAM]) for i in range(max(len(words) - NGRAM, 0) + 1)} if words else set()


def _run_baseline(new: str, signed: str) -> tuple[float, list]:
    import pandas as pd
    from datasketch import MinHash, MinHashLSH

    from lakesynth.quality.duplicates import content_words, negations

    old = pd.read_parquet(signed)
    old_words = [content_words(t) for t in old["text"]]
    old_hashes = MinHash.bulk(([w.encode() for w in words] for words in old_words), num_perm=64)  # the stored bands
    started = time.monotonic()
    lsh = MinHashLSH(num_perm=64, params=(16, 4))
    grams: dict[str, list[str]] = {}
    for key, text, words, minhash in zip(old["id"], old["text"], old_words, old_hashes, strict=True):
        if words:
            lsh.insert(key, minhash)
        for gram in _grams(text):
            grams.setdefault(gram, []).append(key)
    by_id = dict(zip(old["id"], old_words, strict=True))
    fresh = pd.read_parquet(new)
    words_new = [content_words(t) for t in fresh["text"]]
    found = set()
    for key, text, words, minhash in zip(
        fresh["id"], fresh["text"], words_new, MinHash.bulk(([w.encode() for w in ws] for ws in words_new), num_perm=64)
    ):
        for other in lsh.query(minhash) if words else ():
            theirs = by_id[other]
            alike = len(set(words) & set(theirs)) / len(set(words) | set(theirs))
            if alike >= THRESHOLD and negations(words) == negations(theirs):
                found.add((key, other))
        for gram in _grams(text):
            found.update((key, other) for other in grams.get(gram, ()))
    return time.monotonic() - started, sorted(map(list, found))


def _probe(args: list[str], remote: str = "") -> tuple[object, int]:
    """One step in a fresh process: (its JSON result, its peak RSS in MiB)."""
    from run import PeakRss

    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as out:
        path = out.name
    env = {**os.environ, "LAKESYNTH_SPARK_REMOTE": remote} if remote else os.environ
    proc = subprocess.Popen([sys.executable, __file__, "--probe", path, *args], cwd=ROOT, env=env)
    peak = PeakRss(proc.pid)
    if proc.wait():
        raise SystemExit(f"decontamination probe {args[0]} failed")
    return json.loads(Path(path).read_text()), peak.stop()


def compare(folder: Path, signed: list[int], new: int) -> list[tuple]:
    from run import PeakRss, start_engine_server

    new_path, paths = data(folder, signed, new)
    rows, memory = [], {}
    for n in signed:
        size = f"{n // 1000}k signed, {new // 1000}k new"
        server, address = start_engine_server()
        engine = PeakRss(server.pid)
        try:
            warehouse = str(folder / f"warehouse_{n}")
            _probe(["prepare", str(paths[n]), warehouse], address)
            (seconds, ours), driver = _probe(["lakesynth", str(new_path), warehouse], address)
        finally:
            server.terminate()
            server.wait()
        (base_seconds, theirs), base_peak = _probe(["baseline", str(new_path), str(paths[n])])
        memory[n] = driver
        same = "same matches" if ours == theirs else f"DIFFERENT: {len(ours)} vs {len(theirs)}"
        base_note = f"{len(theirs)} matches, process peak {base_peak} MiB"
        rows.append(
            (f"baseline (datasketch + dict of n-grams), {size}", f"{base_seconds:.1f} s", "reference", base_note)
        )
        ratio = f"{seconds / base_seconds:.2f}x of baseline, goal <= 1x"
        note = f"{len(ours)} matches, {same}; driver peak {driver} MiB, engine peak {engine.stop()} MiB"
        rows.append((f"lakesynth (band + n-gram joins), {size}", f"{seconds:.1f} s", ratio, note))
    small, large = signed[0], signed[-1]
    if small != large:
        change = f"{memory[small]} -> {memory[large]} MiB"
        ratio = f"{memory[large] / memory[small]:.2f}x"
        rows.append((f"driver peak RSS, {small // 1000}k -> {large // 1000}k signed", change, ratio, "goal: flat"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signatures", default="100000,1000000", help="comma-separated sizes, smallest first")
    parser.add_argument("--new", type=int, default=100_000, help="new examples to check")
    parser.add_argument("--probe", nargs="+", help=argparse.SUPPRESS)  # output, step, args
    args = parser.parse_args()
    if args.probe:
        out, step, *rest = args.probe
        result = {"prepare": _prepare, "lakesynth": _run_lakesynth, "baseline": _run_baseline}[step](*rest)
        Path(out).write_text(json.dumps(result))
        return
    with tempfile.TemporaryDirectory() as tmp:
        rows = compare(Path(tmp), [int(x) for x in args.signatures.split(",")], args.new)
    print("| measurement | value | ratio | note |\n|---|---|---|---|")
    print("\n".join(f"| {' | '.join(row)} |" for row in rows))


if __name__ == "__main__":
    main()
