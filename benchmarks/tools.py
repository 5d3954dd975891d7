"""Tool calls: the format check in the engine against a single-process loop, and the execution sandbox against one
process per call, side by side in one run.

    .venv/bin/python benchmarks/tools.py [--rows 20000,200000] [--rounds 3] [--calls 500] [--timeout 1] [--workers 2]

Each size gets its own deterministic rows of generated calls against the sample spec conf/tools/tools.json (the
seed is the size), in the shape of `tool_calls` (call_id, source_id, calls as the JSON text of
`[{"name", "arguments"}]`, problem, category) and the BFCL category mix: about 55% valid (every tool, optional
arguments, nested `period` objects, arrays, scheduled transfers with their date) and 45% with one planted
violation each: an enum, an integer or number bound, a pattern, a missing `date` under `if`/`then`, a bad date
format, a nested object's missing or extra key, array sizes and uniqueness, wrong types (a boolean as an integer),
a missing or unexpected argument, an unknown function, arguments that are not an object, a category with the
wrong number of calls, an unreadable line.

1. Format check, each side `--rounds` times interleaved (median, with its spread). Engine: what the `call_format`
   stage runs (call_format.py), `call_format._check` through `mapInPandas` with `toolspec.validators` /
   `toolspec.call_issues`, over `spark.read.parquet`, written to Parquet so every column is computed (the stage
   writes Delta); on the embedded engine, started before the clocks. Once over the Parquet file, once over the
   same rows in two files (two partitions). Loop: one Python process, `pd.read_parquet`, the same validators and
   `call_issues` row by row, the same columns, `to_parquet`. CPU is this process's (the embedded engine and its
   Python UDFs run in it). The verdicts must be the same on every side, row for row, and each planted violation
   named first by its rule. Goal: the engine >= 1.2x faster than the loop.
2. Execution. Sandbox: `sandbox.Sandbox` (a pebble pool, forkserver, `--workers` processes that import the module
   once, a timeout per call, an address-space limit per worker), called as call_execution.py calls it, over
   `--calls` well-formed calls (the valid calls of generated rows) to the sample implementations
   conf/tools/functions.py; the clock includes starting the pool. One process per call: a fresh `python -c` per
   call (`subprocess.run` with the same timeout; the child sets the same address-space limit, imports the module
   from its file and calls the function with the JSON arguments), `--workers` at a time. Every call must have
   the same outcome on both sides (its JSON result, or its error's text). Goal: the sandbox >= 20x faster. Then,
   on each side, a call past its timeout (`stall`, added to a copy of the module, sleeps ten timeouts) and
   `2 * --workers` more calls: a Timeout on both, and the calls after it answered (the pool replaced the worker).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "conf" / "tools" / "tools.json"
FUNCTIONS = ROOT / "conf" / "tools" / "functions.py"
COLUMNS = ["call_id", "source_id", "calls", "problem", "category"]
VERDICT = "call_id string, source_id string, issues string, keep boolean, drop_reason string"

ACCOUNTS, SOURCES = ["checking", "savings", "credit_card"], ["checking", "savings"]
CATEGORY_WORDS = ["groceries", "rent", "travel", "salary", "dining", "fuel", "utilities", "health"]
REASONS = ["lost", "stolen", "damaged", "other"]


def _date(rng: random.Random) -> str:
    return f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def _valid(rng: random.Random, name: str) -> dict:
    """Valid arguments of one tool, with a random choice of its optional ones."""
    if name == "get_balance":
        return {"account": rng.choice(ACCOUNTS)}
    if name == "transfer_money":
        args = {"from_account": rng.choice(SOURCES), "to_account": rng.choice(ACCOUNTS)}
        args["amount"] = rng.choice([rng.randint(1, 1500), round(rng.uniform(0.01, 1500), 2)])
        if rng.random() < 0.4:
            args |= {"when": "scheduled", "date": _date(rng)} if rng.random() < 0.6 else {"when": "now"}
        return args
    if name == "block_card":
        args = {"card_last_digits": f"{rng.randint(0, 9999):04d}", "reason": rng.choice(REASONS)}
        return args | ({"order_replacement": rng.random() < 0.5} if rng.random() < 0.5 else {})
    args = {"account": rng.choice(ACCOUNTS)}
    if rng.random() < 0.5:
        args["limit"] = rng.randint(1, 50)
    if rng.random() < 0.4:
        args["categories"] = rng.sample(CATEGORY_WORDS, rng.randint(1, 5))
    if rng.random() < 0.3:
        args["period"] = {"from": _date(rng)} | ({"to": _date(rng)} if rng.random() < 0.5 else {})
    return args


# A planted violation: (the tool it breaks, how, the rule call_issues must name first).
PLANTED = {
    "enum": ("get_balance", lambda a, r: a | {"account": "loan"}, "enum"),
    "number_maximum": ("transfer_money", lambda a, r: a | {"amount": r.randint(10001, 50000)}, "maximum"),
    "number_exclusive_minimum": ("transfer_money", lambda a, r: a | {"amount": 0}, "exclusiveMinimum"),
    "integer_minimum": ("list_transactions", lambda a, r: a | {"limit": r.randint(-5, 0)}, "minimum"),
    "integer_maximum": ("list_transactions", lambda a, r: a | {"limit": r.randint(51, 500)}, "maximum"),
    "integer_as_string": ("list_transactions", lambda a, r: a | {"limit": str(r.randint(1, 50))}, "wrong_type"),
    "boolean_as_integer": ("list_transactions", lambda a, r: a | {"limit": True}, "wrong_type"),
    "float_as_integer": ("list_transactions", lambda a, r: a | {"limit": 2.5}, "wrong_type"),
    "number_as_string": ("transfer_money", lambda a, r: a | {"amount": "50"}, "wrong_type"),
    "pattern": ("block_card", lambda a, r: a | {"card_last_digits": r.choice(["12a4", "123", "12345", ""])}, "pattern"),
    "if_then": (
        "transfer_money",
        lambda a, r: {k: v for k, v in a.items() if k != "date"} | {"when": "scheduled"},
        "missing_required",
    ),
    "date_format": ("transfer_money", lambda a, r: a | {"when": "scheduled", "date": "2026-13-45"}, "format"),
    "nested_missing": ("list_transactions", lambda a, r: a | {"period": {"to": _date(r)}}, "missing_required"),
    "nested_extra": (
        "list_transactions",
        lambda a, r: a | {"period": {"from": _date(r), "till": _date(r)}},
        "unexpected_argument",
    ),
    "nested_format": ("list_transactions", lambda a, r: a | {"period": {"from": "yesterday"}}, "format"),
    "array_empty": ("list_transactions", lambda a, r: a | {"categories": []}, "minItems"),
    "array_long": ("list_transactions", lambda a, r: a | {"categories": r.sample(CATEGORY_WORDS, 6)}, "maxItems"),
    "array_repeated": ("list_transactions", lambda a, r: a | {"categories": ["rent", "fuel", "rent"]}, "uniqueItems"),
    "array_item_short": ("list_transactions", lambda a, r: a | {"categories": ["rent", "x"]}, "minLength"),
    "missing_required": ("block_card", lambda a, r: {k: v for k, v in a.items() if k != "reason"}, "missing_required"),
    "unexpected_argument": ("get_balance", lambda a, r: a | {"currency": "EUR"}, "unexpected_argument"),
    "boolean_as_string": ("block_card", lambda a, r: a | {"order_replacement": "yes"}, "wrong_type"),
}
TOOLS = ["get_balance", "transfer_money", "block_card", "list_transactions"]
CATEGORY_MIX = [("simple", 30), ("multiple", 25), ("parallel", 20), ("parallel_multiple", 15), ("irrelevance", 10)]


def _row_calls(rng: random.Random, category: str) -> list[dict]:
    """Valid calls in the number and kind the category allows."""
    if category == "irrelevance":
        return []
    if category in ("simple", "multiple"):
        names = [rng.choice(TOOLS)]
    elif category == "parallel":
        names = [rng.choice(TOOLS)] * rng.randint(2, 3)
    else:
        names = rng.sample(TOOLS, rng.randint(2, 3))
    return [{"name": n, "arguments": _valid(rng, n)} for n in names]


def generate(n: int) -> tuple[list[dict], list[str | None]]:
    """`n` rows of tool_calls and, for each, the rule its verdict must name first (None: valid)."""
    rng = random.Random(n)
    categories, weights = zip(*CATEGORY_MIX)
    rows, expected = [], []
    for i in range(n):
        category = rng.choices(categories, weights)[0]
        calls, problem, rule = _row_calls(rng, category), None, None
        roll = rng.random()
        if roll < 0.35:  # one call with a planted schema violation
            kind = rng.choice(sorted(PLANTED))
            tool, plant, rule = PLANTED[kind]
            if category == "irrelevance":
                category = "simple"
            if category in ("simple", "multiple"):
                calls = [{"name": tool, "arguments": plant(_valid(rng, tool), rng)}]
            else:  # beside valid calls of the same tool (parallel) or of others (parallel_multiple)
                planted = {"name": tool, "arguments": plant(_valid(rng, tool), rng)}
                others = [tool] * rng.randint(1, 2) if category == "parallel" else [t for t in TOOLS if t != tool]
                others = others if category == "parallel" else rng.sample(others, rng.randint(1, 2))
                calls = [{"name": t, "arguments": _valid(rng, t)} for t in others]
                calls.insert(rng.randint(0, len(calls)), planted)
        elif roll < 0.39:
            calls = [{"name": rng.choice(["get_loan", "transfer", "Block_card"]), "arguments": {}}]
            rule, category = "unknown_function", rng.choice(["simple", "multiple"])
        elif roll < 0.41:
            name = rng.choice(TOOLS)
            calls = [{"name": name, "arguments": rng.choice(["account=checking", ["checking"], 7])}]
            rule, category = "arguments_not_json", "simple"
        elif roll < 0.44:  # a category with the wrong number of calls
            if category in ("simple", "multiple", "irrelevance"):
                calls = _row_calls(rng, "parallel") if category != "irrelevance" else _row_calls(rng, "simple")
            else:
                calls = _row_calls(rng, "simple")
            rule = "category_mismatch"
        elif roll < 0.45:
            calls, problem, rule = None, "not JSON: Expecting ',' delimiter: line 1 column 42 (char 41)", "malformed"
        rows.append(
            {
                "call_id": f"c{i:07d}",
                "source_id": str(i + 1),
                "calls": None if calls is None else json.dumps(calls, sort_keys=True),
                "problem": problem,
                "category": category,
            }
        )
        expected.append(rule)
    return rows, expected
    return rows, expected


def _tools() -> dict[str, str]:
    """Tool name -> its parameters as JSON text, as the `tools` table holds them."""
    from lakesynth.tools import spec as toolspec

    return {t["function"]["name"]: json.dumps(t["function"]["parameters"]) for t in toolspec.read_spec(str(SPEC))}


def format_loop(path: Path, out: Path) -> tuple[float, float]:
    """One Python process: read the Parquet file, check each row with the same validators, write the verdicts.
    (wall seconds, CPU seconds of this process)."""
    import pandas as pd

    from lakesynth.tools import spec as toolspec

    cpu, started = time.process_time(), time.monotonic()
    frame = pd.read_parquet(path, columns=COLUMNS)
    checks = toolspec.validators(_tools())
    found = [
        toolspec.call_issues(json.loads(c) if c else None, p, checks, k)
        for c, p, k in zip(frame["calls"], frame["problem"], frame["category"])
    ]
    verdicts = pd.DataFrame(
        {
            "call_id": frame["call_id"],
            "source_id": frame["source_id"],
            "issues": [json.dumps(f, ensure_ascii=False) if f else None for f in found],
            "keep": [not f for f in found],
            "drop_reason": [f"format:{f[0]['rule']}" if f else None for f in found],
        }
    )
    verdicts.to_parquet(out)
    return time.monotonic() - started, time.process_time() - cpu


def format_engine(spark, path: Path, out: Path) -> tuple[float, float]:
    """The call_format stage's query: `_check` through mapInPandas, every column written to Parquet. (wall
    seconds, CPU seconds of this process: the embedded engine and its Python UDFs run in it)."""
    from lakesynth.tools import call_format

    cpu, started = time.process_time(), time.monotonic()
    tools = _tools()
    calls = spark.read.parquet(str(path)).select(*COLUMNS)
    with call_format.checking_pool(tools, os.cpu_count() or 1) as pool:  # as the stage opens it on this engine
        checked = calls.mapInPandas(functools.partial(call_format._check, tools=tools, pool=pool), VERDICT)
        checked.write.mode("overwrite").parquet(str(out))
    return time.monotonic() - started, time.process_time() - cpu


SIDES = {
    "loop": "format check, single-process loop",
    "engine": "format check, engine (mapInPandas), one file",
    "engine2": "format check, engine, the same rows in two files",
}


def format_check(folder: Path, sizes: list[int], rounds: int) -> list[tuple]:
    """The table rows of the format check: per size, the median of `rounds` interleaved runs of each side."""
    import pandas as pd

    from lakesynth.core import registry

    ctx = registry.open_context(ROOT / "conf" / "lakesynth.yml", [f"warehouse={folder / 'warehouse'}"])
    started = time.monotonic()
    ctx.spark.range(1).count()  # the engine is up before any clock starts
    rows = [("embedded engine start", f"{time.monotonic() - started:.2f} s", "", "before the clocks below")]
    for n in sizes:
        data, expected = generate(n)
        frame = pd.DataFrame(data, columns=COLUMNS)
        path, split = folder / f"tool_calls_{n}.parquet", folder / f"tool_calls_{n}_split"
        frame.to_parquet(path)
        split.mkdir()
        frame.iloc[: n // 2].to_parquet(split / "part-0.parquet")
        frame.iloc[n // 2 :].to_parquet(split / "part-1.parquet")
        size = f"{n // 1000}k"
        planted = Counter(r for r in expected if r)
        note = f"{n - sum(planted.values())} valid, {sum(planted.values())} with one planted violation"
        rows.append((f"tool_calls, {size}", f"{n} rows", "", f"{note} ({len(planted)} rules)"))
        times: dict[str, list[tuple[float, float]]] = {side: [] for side in SIDES}
        for r in range(rounds):
            times["loop"].append(format_loop(path, folder / f"loop_{n}_{r}.parquet"))
            times["engine"].append(format_engine(ctx.spark, path, folder / f"engine_{n}_{r}"))
            times["engine2"].append(format_engine(ctx.spark, split, folder / f"engine2_{n}_{r}"))
        last = {
            "loop": folder / f"loop_{n}_{rounds - 1}.parquet",
            "engine": folder / f"engine_{n}_{rounds - 1}",
            "engine2": folder / f"engine2_{n}_{rounds - 1}",
        }
        verdicts = {k: pd.read_parquet(v).sort_values("call_id", ignore_index=True) for k, v in last.items()}
        loop = verdicts["loop"].astype(object)
        same = all(len(v) == n and loop.equals(v[loop.columns].astype(object)) for v in verdicts.values())
        first = [r.split(":", 1)[1] if r else None for r in verdicts["engine"]["drop_reason"]]
        named = sum(a == b for a, b in zip(first, expected))
        wall = {side: statistics.median(w for w, _ in t) for side, t in times.items()}
        for side, label in SIDES.items():
            spread = f" ({min(w for w, _ in times[side]):.2f}-{max(w for w, _ in times[side]):.2f})"
            ratio = "reference" if side == "loop" else f"{wall['loop'] / wall[side]:.2f}x speed-up, goal >= 1.2x"
            cpu = statistics.median(c for _, c in times[side])
            note = f"{n / wall[side]:,.0f} rows/s, CPU {cpu:.2f} s"
            rows.append((f"{label}, {size}", f"{wall[side]:.2f} s{spread if rounds > 1 else ''}", ratio, note))
        rows.append(
            (
                f"format verdicts, {size}",
                f"{int((~verdicts['engine']['keep']).sum())} dropped",
                "",
                f"same on every side: {_yes(same)}; planted rule named first: {named}/{n}",
            )
        )
    return rows


STALL = '''

def stall(seconds: float) -> dict:
    """Sleep, then answer: the benchmark's call past its timeout."""
    import time

    time.sleep(seconds)
    return {"slept": seconds}
'''

# One call in a fresh interpreter, as the sandbox's worker runs it (sandbox._init_worker and _call): the same
# address-space limit, the module imported from its file, the function called with the JSON arguments.
CHILD = """
import importlib.util, json, resource, sys
path, name, memory_mb, arguments = sys.argv[1:]
limit = int(memory_mb) * 1024 * 1024
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
spec = importlib.util.spec_from_file_location("_lakesynth_user_functions", path)
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
try:
    value = getattr(module, name)(**json.loads(arguments))
    out = [True, json.dumps(value, ensure_ascii=False, allow_nan=False)]
except BaseException as error:
    text = str(error)
    out = [False, f"{type(error).__name__}: {text}" if text else type(error).__name__]
print(json.dumps(out))
"""


def _one_process(module: Path, memory_mb: int, timeout_s: float, call: tuple[str, dict]) -> tuple:
    """(ok, result, error) of one call in its own `python -c`."""
    name, arguments = call
    command = [sys.executable, "-c", CHILD, str(module), name, str(memory_mb), json.dumps(arguments)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return False, None, f"Timeout: no result within {timeout_s:g} s"
    if done.returncode:
        return False, None, f"Crash: the process exited with code {done.returncode}"
    ok, text = json.loads(done.stdout.splitlines()[-1])
    return (True, text, None) if ok else (False, None, text)


def execution(folder: Path, n_calls: int, workers: int, timeout_s: float, memory_mb: int) -> list[tuple]:
    """The table rows of the execution check: the sandbox and one process per call over the same calls, then a
    call past its timeout followed by more calls (the pool must have replaced the worker)."""
    from lakesynth.tools import sandbox

    module = folder / "functions.py"
    module.write_text(FUNCTIONS.read_text(encoding="utf-8") + STALL, encoding="utf-8")
    data, expected = generate(max(2 * n_calls, 1000))
    valid = [c for row, rule in zip(data, expected) if rule is None for c in json.loads(row["calls"] or "[]")]
    calls = [(c["name"], c["arguments"]) for c in valid[:n_calls]]
    after = [(c["name"], c["arguments"]) for c in valid[n_calls : n_calls + 2 * workers]]
    stalled = [("stall", {"seconds": timeout_s * 10})]

    started = time.monotonic()
    with sandbox.Sandbox(module, workers=workers, timeout_s=timeout_s, memory_mb=memory_mb) as box:
        ready = time.monotonic()
        outcomes = box.run(calls)
        boxed_s, run_s = time.monotonic() - started, time.monotonic() - ready
        started = time.monotonic()
        outcomes += box.run(stalled) + box.run(after)
        boxed_timeout_s = time.monotonic() - started
    boxed = [(o.ok, o.result, o.error) for o in outcomes]

    one = functools.partial(_one_process, module, memory_mb, timeout_s)
    started = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        fresh = list(pool.map(one, calls))
    fresh_s = time.monotonic() - started
    started = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        fresh += list(pool.map(one, stalled)) + list(pool.map(one, after))
    fresh_timeout_s = time.monotonic() - started

    def summary(results: list[tuple]) -> str:
        errors = Counter((e or "").split(":", 1)[0] for ok, _, e in results if not ok)
        return f"{sum(ok for ok, _, _ in results)} ok" + "".join(f", {v} {k}" for k, v in sorted(errors.items()))

    n, kinds = len(calls), Counter(name for name, _ in calls)
    then = f"stall({timeout_s * 10:g} s) with a {timeout_s:g} s timeout, then {len(after)} calls"
    return [
        (
            f"well-formed calls, {n}",
            f"{n} calls",
            "",
            ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())) + f"; {workers} at a time on both sides",
        ),
        (f"execution, one process per call, {n}", f"{fresh_s:.2f} s", "reference", f"{n / fresh_s:,.0f} calls/s"),
        (
            f"execution, sandbox (pebble pool), {n}",
            f"{boxed_s:.2f} s",
            f"{fresh_s / boxed_s:.1f}x speed-up, goal >= 20x",
            f"{n / boxed_s:,.0f} calls/s, pool start included (calls alone {run_s:.2f} s)",
        ),
        (f"execution outcomes, {n}", summary(boxed[:n]), "", f"same on both sides: {_yes(boxed[:n] == fresh[:n])}"),
        (f"past its timeout, one process per call: {then}", f"{fresh_timeout_s:.2f} s", "", summary(fresh[n:])),
        (
            f"past its timeout, sandbox: {then}",
            f"{boxed_timeout_s:.2f} s",
            "",
            f"{summary(boxed[n:])}; same on both sides: {_yes(boxed[n:] == fresh[n:])}",
        ),
    ]


def _yes(same: bool) -> str:
    return "yes" if same else "NO"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="20000,200000", help="comma-separated sizes of the format check")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each side per size; the median is shown")
    parser.add_argument("--calls", type=int, default=500, help="well-formed calls run by both execution sides")
    parser.add_argument("--timeout", type=float, default=1.0, help="seconds a call may run, on both sides")
    parser.add_argument("--workers", type=int, default=2, help="sandbox workers, and processes at a time")
    parser.add_argument("--memory-mb", type=int, default=512, help="address-space limit of each worker or process")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = execution(Path(tmp), args.calls, args.workers, args.timeout, args.memory_mb)
        rows = format_check(Path(tmp), [int(x) for x in args.rows.split(",")], args.rounds) + rows
    print("| measurement | value | ratio | note |\n|---|---|---|---|")
    print("\n".join(f"| {' | '.join(row)} |" for row in rows))


if __name__ == "__main__":
    main()
