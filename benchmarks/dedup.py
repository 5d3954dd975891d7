"""Near-duplicate dedup of questions: lakesynth's near path against datasketch MinHashLSH, side by side in one run.

    .venv/bin/python benchmarks/dedup.py [--rows 10000,100000] [--rounds 3]

(also section 5 of benchmarks/run.py, which writes RESULTS.md). Each size gets its own deterministic set of short
bank questions from templates and five vocabularies of about 50 words, every question five content words (one
template adds a "not") and no two alike, so unrelated questions share at most 4 of 6 (Jaccard 0.67; 5 of 7 with the
"not") and never reach the default threshold (0.8). About 5% of the rows are planted near-duplicates of another (a
changed function word, a reordered phrase, one added content word), and 4% are control pairs, two questions that
differ in a word that matters, of three kinds: a swapped action or object ("add" / "remove", "car" / "motorbike");
the same object swap in a longer question (two more content words: 6 of 8 alike, 0.75); and a negation ("with" /
"without", "can" / "can't", "never"; 5 of 6 alike, 0.83, so only the negation rule keeps them apart). Measured, each
in a fresh process on the same Parquet file, `--rounds` times interleaved (median):

- datasketch MinHashLSH (NearDedup's default threshold, num_perm 64, `MinHash.bulk` over the same `content_words`, `insert` every
  question then `query` each, pairs grouped by `duplicates.groups`): its own bands (8 x 8 at these settings) and the
  16 x 4 lakesynth uses. One Python process, no exact check.
- lakesynth: `duplicates.near_pairs` + `duplicates.groups` with the default NearDedup, on the embedded engine (the clock
  starts after the engine is up), and again with the engine in its own process (a `sail spark server`,
  LAKESYNTH_SPARK_REMOTE) for the driver's peak RSS, as on a cluster.

Recall: the planted pairs (every two rows of a planted group) found in one group. Precision: of the pairs that
share a found group, the planted ones. Controls merged: control pairs found in one group, by kind (should be 0).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (question, the same with a function word changed, the same with a phrase moved): only stop words besides the slots.
TEMPLATES = [
    (
        "How do I {verb} a {adj} {product} on the {channel} for my {person}?",
        "How can I {verb} a {adj} {product} on the {channel} for my {person}?",
        "For my {person}, how do I {verb} a {adj} {product} on the {channel}?",
    ),
    (
        "Can I {verb} my {person}'s {adj} {product} from the {channel}?",
        "Could I {verb} my {person}'s {adj} {product} from the {channel}?",
        "From the {channel}, can I {verb} my {person}'s {adj} {product}?",
    ),
    (
        "How can I {verb} the {adj} {product} of my {person} with the {channel}?",
        "How could I {verb} the {adj} {product} of my {person} with the {channel}?",
        "With the {channel}, how can I {verb} the {adj} {product} of my {person}?",
    ),
    (
        "What do I do to {verb} our {adj} {product} with my {person} on the {channel}?",
        "What should I do to {verb} our {adj} {product} with my {person} on the {channel}?",
        "On the {channel}, what do I do to {verb} our {adj} {product} with my {person}?",
    ),
    (
        "Where do I {verb} the {adj} {product} for my {person} on the {channel}?",
        "Where can I {verb} the {adj} {product} for my {person} on the {channel}?",
        "On the {channel}, where do I {verb} the {adj} {product} for my {person}?",
    ),
    (
        "Why can I not {verb} my {adj} {product} on the {channel} for my {person}?",
        "Why could I not {verb} my {adj} {product} on the {channel} for my {person}?",
        "For my {person}, why can I not {verb} my {adj} {product} on the {channel}?",
    ),
    (
        "When can my {person} {verb} our {adj} {product} from the {channel}?",
        "When could my {person} {verb} our {adj} {product} from the {channel}?",
        "From the {channel}, when can my {person} {verb} our {adj} {product}?",
    ),
    (
        "Should we {verb} the {adj} {product} of our {person} on the {channel}?",
        "Should we just {verb} the {adj} {product} of our {person} on the {channel}?",
        "On the {channel}, should we {verb} the {adj} {product} of our {person}?",
    ),
    (
        "Who can {verb} a {adj} {product} for my {person} from the {channel}?",
        "Who may {verb} a {adj} {product} for my {person} from the {channel}?",
        "From the {channel}, who can {verb} a {adj} {product} for my {person}?",
    ),
    (
        "How would I {verb} my {adj} {product} at the {channel} with my {person}?",
        "How should I {verb} my {adj} {product} at the {channel} with my {person}?",
        "With my {person}, how would I {verb} my {adj} {product} at the {channel}?",
    ),
    (
        "What if I {verb} my {adj} {product} from the {channel} for my {person}?",
        "What if I just {verb} my {adj} {product} from the {channel} for my {person}?",
        "For my {person}, what if I {verb} my {adj} {product} from the {channel}?",
    ),
]
# Each template's first form negated: one negation word more (or, for the one that has "not", less).
NEGATED = [
    "How do I {verb} a {adj} {product} on the {channel} without my {person}?",
    "Can't I {verb} my {person}'s {adj} {product} from the {channel}?",
    "How can I {verb} the {adj} {product} of my {person} without the {channel}?",
    "What do I do to {verb} our {adj} {product} without my {person} on the {channel}?",
    "Where do I {verb} the {adj} {product} for my {person} without the {channel}?",
    "Why can I {verb} my {adj} {product} on the {channel} for my {person}?",
    "When can't my {person} {verb} our {adj} {product} from the {channel}?",
    "Should we never {verb} the {adj} {product} of our {person} on the {channel}?",
    "Who can't {verb} a {adj} {product} for my {person} from the {channel}?",
    "How would I {verb} my {adj} {product} at the {channel} without my {person}?",
    "What if I don't {verb} my {adj} {product} from the {channel} for my {person}?",
]
VERB_PAIRS = "add/remove increase/decrease open/close lock/unlock enable/disable activate/deactivate freeze/unfreeze "
VERB_PAIRS += "upgrade/downgrade link/unlink block/unblock deposit/withdraw"
PRODUCT_PAIRS = "car/motorbike house/flat van/caravan"
OPPOSITES = {
    a: b for pair in f"{VERB_PAIRS} {PRODUCT_PAIRS}".split() for a, b in (pair.split("/"), pair.split("/")[::-1])
}
SLOTS = {
    "verb": VERB_PAIRS.replace("/", " ").split()
    + "cancel renew transfer pay refund dispute report replace register verify update change order request claim "
    "check track split switch move reset suspend reinstate consolidate view export download print share authorise "
    "approve reject".split(),
    "adj": "joint business student premium contactless virtual current credit debit prepaid travel fixed variable "
    "flexible digital instant monthly annual international domestic corporate personal shared secondary primary "
    "green gold platinum basic standard youth senior offshore ethical regular cashback reward secured unsecured "
    "private family holiday emergency backup paperless foreign dormant overdue new old".split(),
    "product": PRODUCT_PAIRS.replace("/", " ").split()
    + "card account loan mortgage overdraft pension bond cheque isa policy wallet allowance limit mandate insurance "
    "annuity portfolio fund voucher statement balance subscription certificate guarantee lease invoice salary token "
    "pin passcode beneficiary payee chequebook vault trust plan pet bike ring budget grant rebate".split(),
    "channel": "app phone branch website chat email post telephone kiosk atm smartwatch tablet browser letter video "
    "agent advisor counter terminal helpline portal desktop mobile chatbot laptop hotline intranet webchat callback "
    "appointment form machine computer fax text message assistant".split(),
    "person": "partner child son daughter wife husband mother father grandson granddaughter niece nephew cousin uncle "
    "aunt friend employer employee landlord tenant company charity club school trustee executor guardian spouse "
    "sibling brother sister grandmother grandfather colleague flatmate fiancee stepson stepdaughter neighbour carer "
    "accountant solicitor lodger housemate godson goddaughter boss teenager baby twin".split(),
}
EXTRA = "urgently quickly safely today immediately permanently temporarily easily legally securely cheaply tonight "
EXTRA = (EXTRA + "automatically manually remotely officially").split()


def _check_vocabulary() -> None:
    """Each slot word is one content word of its own, in one slot only, and the templates add none."""
    from lakesynth.quality.duplicates import NEGATIONS, content_words

    words = [w for slot in SLOTS.values() for w in slot] + EXTRA
    assert len(set(words)) == len(words) and all(content_words(w) == [w] for w in words)
    fill = {slot: words[0] for slot, words in SLOTS.items()}
    for forms, negated in zip(TEMPLATES, NEGATED, strict=True):
        base = set(content_words(forms[0].format(**fill)))
        assert all(set(content_words(t.format(**fill))) == base for t in forms)
        assert base - NEGATIONS == set(fill.values()) and len(base ^ set(content_words(negated.format(**fill)))) == 1


CONTROLS = ("swap", "long swap", "negation")


def questions(n: int) -> tuple[list[tuple[str, str]], list[list[str]], dict[str, list[tuple[str, str]]]]:
    """`n` (question_id, question) rows, the planted groups of near-duplicates (ids) and the control pairs (ids) by
    kind."""
    _check_vocabulary()
    rng = random.Random(n)
    seen: set[frozenset] = set()  # every base question's content words: no two alike
    added: set[tuple] = set()  # (content words less one, added word) of each added-word variant
    rows: list[tuple[str, int | None, tuple | None]] = []  # (question, planted group, (control kind, pair))

    def base(swappable: tuple[str, ...] = ()) -> tuple[int, dict]:
        while True:
            t = rng.randrange(len(TEMPLATES))
            fill = {slot: rng.choice(words) for slot, words in SLOTS.items()}
            key = frozenset(fill.values())
            if key not in seen and (not swappable or any(fill[slot] in OPPOSITES for slot in swappable)):
                seen.add(key)
                return t, fill

    groups, controls = round(n * 0.05 / 1.2), n // 50  # one group in five has two variants
    for g in range(groups):
        t, fill = base()
        template = TEMPLATES[t]
        texts = [template[0].format(**fill)]
        for kind in [g % 3] + ([(g + 1) % 3] if g % 5 == 4 else []):
            if kind < 2:
                texts.append(template[kind + 1].format(**fill))
            else:  # one more content word: never one that would bring it to 0.7 with another such variant
                less_one = [frozenset(fill.values()) - {w} for w in fill.values()]
                word = next(x for x in rng.sample(EXTRA, len(EXTRA)) if not {(k, x) for k in less_one} & added)
                added |= {(k, word) for k in less_one}
                texts.append(texts[0][:-1] + f" {word}?")
        rows += [(t, g, None) for t in texts]
    for c in range(controls):
        kind = CONTROLS[c % 3]
        if kind == "negation":
            t, fill = base()
            rows += [(TEMPLATES[t][0].format(**fill), None, (kind, c)), (NEGATED[t].format(**fill), None, (kind, c))]
            continue
        while True:
            t, fill = base(swappable=("product",) if kind == "long swap" else ("verb", "product"))
            slot = "verb" if fill["verb"] in OPPOSITES and kind == "swap" else "product"
            other = {**fill, slot: OPPOSITES[fill[slot]]}
            if frozenset(other.values()) not in seen:
                seen.add(frozenset(other.values()))
                break
        texts = [TEMPLATES[t][0].format(**f) for f in (fill, other)]
        if kind == "long swap":  # two more content words each: 6 of 8 alike
            more = " ".join(rng.sample(EXTRA, 2))
            texts = [text[:-1] + f" {more}?" for text in texts]
        rows += [(text, None, (kind, c)) for text in texts]
    while len(rows) < n:
        t, fill = base()
        rows.append((TEMPLATES[t][0].format(**fill), None, None))
    rng.shuffle(rows)
    ids = [f"q{i:06d}" for i in range(len(rows))]
    planted: dict[int, list[str]] = {}
    paired: dict[tuple, list[str]] = {}
    for qid, (text, g, c) in zip(ids, rows):
        if g is not None:
            planted.setdefault(g, []).append(qid)
        if c is not None:
            paired.setdefault(c, []).append(qid)
    controls_by_kind = {kind: [tuple(p) for (k, _), p in paired.items() if k == kind] for kind in CONTROLS}
    return [(i, r[0]) for i, r in zip(ids, rows)], list(planted.values()), controls_by_kind


def score(found: dict[str, str], planted: list[list[str]], controls: dict[str, list[tuple[str, str]]]) -> dict:
    """Recall and precision of the found groups (question_id -> group) on the planted pairs; controls merged, by
    kind."""
    truth = [pair for group in planted for pair in itertools.combinations(group, 2)]
    together = sum(a in found and found.get(a) == found.get(b) for a, b in truth)
    predicted = sum(size * (size - 1) // 2 for size in Counter(found.values()).values())
    return {
        "recall": together / len(truth),
        "precision": together / predicted if predicted else 1.0,
        "controls_merged": {
            kind: sum(a in found and found.get(a) == found.get(b) for a, b in pairs) for kind, pairs in controls.items()
        },
        "groups": len(set(found.values())),
    }


def _run_lakesynth(path: str, warehouse: str) -> tuple[float, dict[str, str]]:
    from lakesynth.core import registry
    from lakesynth.quality import dedup, duplicates

    ctx = registry.open_context(ROOT / "conf" / "lakesynth.yml", [f"warehouse={warehouse}", "schema=bench_dedup"])
    ctx.spark.range(1).count()  # the engine is up before the clock starts
    started = time.monotonic()
    found = duplicates.groups(duplicates.near_pairs(ctx, ctx.spark.read.parquet(path), dedup.NearDedup()))
    return time.monotonic() - started, dict(zip(found["question_id"], found["near_group"]))


def _run_datasketch(path: str, bands: int) -> tuple[float, dict[str, str]]:
    import pandas as pd
    from datasketch import MinHash, MinHashLSH

    from lakesynth.quality.dedup import NearDedup
    from lakesynth.quality.duplicates import content_words, groups

    started = time.monotonic()
    frame = pd.read_parquet(path)
    ids = frame["question_id"].tolist()
    signatures = MinHash.bulk(([w.encode() for w in content_words(q)] for q in frame["question"]), num_perm=64)
    lsh = MinHashLSH(threshold=NearDedup().threshold, num_perm=64, params=(bands, 64 // bands) if bands else None)
    for key, signature in zip(ids, signatures):
        lsh.insert(key, signature)
    pairs = [(a, b, 0.0) for a, signature in zip(ids, signatures) for b in lsh.query(signature) if a < b]
    found = groups(pairs)
    return time.monotonic() - started, dict(zip(found["question_id"], found["near_group"]))


def _probe(kind: str, path: Path, warehouse: Path, remote: str = "") -> tuple[float, dict, int]:
    """One measurement in a fresh process: (seconds, question_id -> group, peak RSS of that process in MiB)."""
    from run import PeakRss

    out = warehouse.with_suffix(".json")
    env = {**os.environ, "LAKESYNTH_SPARK_REMOTE": remote} if remote else os.environ
    proc = subprocess.Popen(
        [sys.executable, __file__, "--probe", kind, str(path), str(warehouse), str(out)], cwd=ROOT, env=env
    )
    peak = PeakRss(proc.pid)
    if proc.wait():
        raise SystemExit(f"dedup probe {kind} failed")
    seconds, found = json.loads(out.read_text())
    return seconds, found, peak.stop()


KINDS = {
    "datasketch": "datasketch MinHashLSH, its bands (8 x 8)",
    "datasketch16": "datasketch MinHashLSH, lakesynth's bands (16 x 4)",
    "lakesynth": "lakesynth near dedup, embedded engine",
}


def near_dedup(folder: Path, sizes: list[int], rounds: int = 3) -> list[tuple]:
    """The table rows of benchmarks/run.py's section 5: per size, the median of `rounds` interleaved runs of each."""
    import pandas as pd
    from run import PeakRss, start_engine_server

    rows, memory = [], {}
    for n in sizes:
        data, planted, controls = questions(n)
        path = folder / f"questions_{n}.parquet"
        pd.DataFrame(data, columns=["question_id", "question"]).to_parquet(path)
        size = f"{n // 1000}k"
        kinds = ", ".join(f"{len(pairs)} {kind}" for kind, pairs in controls.items())
        planted_rows = f"{len(planted)} planted groups of {sum(map(len, planted))} rows; control pairs: {kinds}"
        rows.append((f"questions, {size}", f"{n} rows", "", planted_rows))
        times, found = {kind: [] for kind in KINDS}, {}
        for r, kind in itertools.product(range(rounds), KINDS):
            seconds, found[kind], _ = _probe(kind, path, folder / f"{kind}_{n}_{r}")
            times[kind].append(seconds)
        median = {kind: statistics.median(t) for kind, t in times.items()}
        for kind, label in KINDS.items():
            s = score(found[kind], planted, controls)
            ratio = f"{median[kind] / min(median['datasketch'], median['datasketch16']):.2f}x of datasketch's best"
            ratio = ratio + ", goal <= 1x" if kind == "lakesynth" else "reference"
            merged = ", ".join(f"{kind} {count}" for kind, count in s["controls_merged"].items())
            note = f"recall {s['recall']:.3f}, precision {s['precision']:.3f}, controls merged: {merged}"
            spread = f"{min(times[kind]):.2f}-{max(times[kind]):.2f}"
            rows.append((f"{label}, {size}", f"{median[kind]:.2f} s ({spread})", ratio, note))
        server, address = start_engine_server()
        server_peak = PeakRss(server.pid)
        try:
            seconds, _, driver = _probe("lakesynth", path, folder / f"remote_{n}", address)
        finally:
            server.terminate()
            server.wait()
        memory[n] = (driver, server_peak.stop())
        note = f"driver peak {driver} MiB, engine peak {memory[n][1]} MiB"
        rows.append((f"lakesynth near dedup, engine in its own process, {size}", f"{seconds:.2f} s", "", note))
    small, large = sizes[0], sizes[-1]
    for label, i, note in (("driver", 0, "goal: flat"), ("engine (Sail server)", 1, "the join and its words")):
        change = f"{memory[small][i]} -> {memory[large][i]} MiB"
        ratio = f"{memory[large][i] / memory[small][i]:.2f}x"
        rows.append((f"{label} peak RSS, {small // 1000}k -> {large // 1000}k rows", change, ratio, note))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="10000,100000", help="comma-separated sizes, smallest first")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each, interleaved; the median is shown")
    parser.add_argument("--probe", nargs=4, help=argparse.SUPPRESS)  # kind, parquet, warehouse, output
    args = parser.parse_args()
    if args.probe:
        kind, path, warehouse, out = args.probe
        if kind == "lakesynth":
            result = _run_lakesynth(path, warehouse)
        else:
            result = _run_datasketch(path, 16 if kind == "datasketch16" else 0)
        Path(out).write_text(json.dumps(result))
        return
    with tempfile.TemporaryDirectory() as tmp:
        rows = near_dedup(Path(tmp), [int(x) for x in args.rows.split(",")], args.rounds)
    print("| measurement | value | ratio | note |\n|---|---|---|---|")
    print("\n".join(f"| {' | '.join(row)} |" for row in rows))


if __name__ == "__main__":
    main()
