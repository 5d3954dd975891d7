"""lakesynth benchmarks: every figure is a ratio of two things measured side by side in this one run.

    .venv/bin/python benchmarks/run.py [--quick]

1. Endpoint utilisation: the stand-in with 100 ms latency and a hard cap of 64 concurrent requests can
   serve at most 640 req/s. The questions and responses stages run on 1k and 10k rows against it; beside
   each, a bare async OpenAI client and a bare httpx loop sending the same requests (the best a client can
   do on this machine, where the stand-in shares the cores), and the naive driver-side thread pool of 2.
   Goal: stage throughput >= 0.60 of nominal, ahead of the bare AsyncOpenAI loop. benchmarks/client_cpu.py
   isolates the client's CPU. The critic and judge (checks, on the same rows once questions and responses are
   written) are measured the same way, each beside bare loops sending its own requests: goal >= 0.85 of the
   bare AsyncOpenAI loop.
2. Embedded teacher efficiency: the raw xllamacpp server's aggregate generated tokens/s (its own parallel
   slots, a bare client) against the questions stage's on the same model. Goal >= 0.90.
3. Driver memory: peak RSS for 1k vs 100k rows (seeds x 10 questions each) through seed -> questions ->
   responses -> format on the stand-in. Goal <= 1.2x. The driver is measured as on a cluster, with the
   engine in its own process (LAKESYNTH_SPARK_REMOTE, a `sail spark server`); the engine's own peak and
   the embedded default (both in one process) are shown beside it.
4. Engine overhead: embedded engine start, and a whole `lakesynth seed` command on 1k rows, in seconds.
5. Near-duplicate dedup: lakesynth's near path on 10k and 100k planted bank questions against datasketch
   MinHashLSH in one process on the same file and settings (benchmarks/dedup.py), with recall and precision on
   the planted near-duplicates. Goal: wall time <= 1x datasketch's, driver memory flat from 10k to 100k rows.
6. Chunking knowledge documents: the chunker alone and the documents stage on 100, 1k and 10k generated markdown
   documents (benchmarks/chunking.py), in seconds per 1k chunks. Goal: flat (linear in documents).
8. Generation per taxonomy leaf: the taxonomy and leaf_generation stages on 10, 100 and 1k generated InstructLab
   leaves (freeform, grounded and knowledge, each knowledge leaf with its own markdown document) against the
   stand-in (benchmarks/leaves.py), in seconds per leaf and per request. Goal: flat (linear in leaves).

Prints a table and writes benchmarks/RESULTS.md (date, machine, command).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LATENCY_MS, CAP = 100, 64
LIMIT = CAP / (LATENCY_MS / 1000)
SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["reasoning", "questions"],
    "properties": {
        "reasoning": {"type": "string"},
        "questions": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 1},
    },
}


def seeds_file(folder: Path, n: int) -> Path:
    path = folder / f"seeds_{n}.csv"
    topics = ["cards", "transfers", "accounts", "fraud", "investment advice", "tax advice"]
    with path.open("w", encoding="utf-8") as out:
        out.write("topic,question,in_scope\n")
        for i in range(n):
            topic = topics[i % len(topics)]
            out.write(f"{topic},Customer question number {i} about {topic}?,{'no' if 'advice' in topic else 'yes'}\n")
    return path


def start_standin(latency_ms: float, cap: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "lakesynth.llm.standin", "--latency-ms", str(latency_ms), "--max-concurrency", str(cap)],
        stdout=subprocess.PIPE,
        text=True,
    )
    return proc, proc.stdout.readline().strip()


class PeakRss:
    """A process's peak resident memory, read from /proc/<pid>/status (VmHWM) until it exits.

    Not rusage's ru_maxrss: a child started by fork/vfork + exec inherits its parent's peak there, so
    every child of a big benchmark process would report at least the parent's size.
    """

    def __init__(self, pid: int) -> None:
        self.pid, self.mib, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                status = Path(f"/proc/{self.pid}/status").read_text()
            except OSError:
                return
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    self.mib = max(self.mib, int(line.split()[1]) // 1024)
            self._stop.wait(0.1)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.mib


def lakesynth(args: list[str]) -> tuple[dict, float, int]:
    """Run the CLI; returns (summary, wall seconds, peak RSS in MiB of that process)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
        summary_path = tmp.name
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lakesynth.cli", *args, "--summary", summary_path],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "TQDM_DISABLE": "1"},
    )
    peak = PeakRss(proc.pid)
    output = proc.stdout.read()
    status = proc.wait()
    wall = time.monotonic() - started
    if status != 0:
        raise SystemExit(f"lakesynth {' '.join(args)} failed:\n{output}")
    return json.loads(Path(summary_path).read_text()), wall, peak.stop()


def bare_client(base_url: str, prompts: list[str], schema: dict, max_tokens: int, concurrency: int) -> float:
    """Requests/s of a bare async OpenAI client sending the stage's own requests (same prompts, schema and
    max_tokens): the ceiling for a client on this machine, where the stand-in shares the cores."""
    import openai

    async def main() -> float:
        client = openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0)
        gate = asyncio.Semaphore(concurrency)
        response_format = {"type": "json_schema", "json_schema": {"name": "R", "schema": schema, "strict": True}}

        async def one(prompt: str) -> None:
            async with gate:
                await client.chat.completions.create(
                    model="standin",
                    messages=[{"role": "user", "content": prompt}],
                    max_tokens=max_tokens,
                    response_format=response_format,
                )

        started = time.monotonic()
        await asyncio.gather(*(one(p) for p in prompts))
        await client.close()
        return len(prompts) / (time.monotonic() - started)

    return asyncio.run(main())


def bare_raw_client(base_url: str, prompts: list[str], schema: dict, max_tokens: int, concurrency: int) -> float:
    """Requests/s of a bare httpx loop sending the same requests as `bare_client`: one pooled client, the body
    serialised per request, the reply's JSON parsed. The HTTP path lakesynth's request pool is built on."""
    import httpx2 as httpx

    async def main() -> float:
        client = httpx.AsyncClient(
            headers={"Authorization": "Bearer x", "Content-Type": "application/json"},
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=concurrency),
            timeout=600,
        )
        gate = asyncio.Semaphore(concurrency)
        response_format = {"type": "json_schema", "json_schema": {"name": "R", "schema": schema, "strict": True}}
        url = f"{base_url}/chat/completions"

        async def one(prompt: str) -> None:
            body = {
                "model": "standin",
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": max_tokens,
                "response_format": response_format,
            }
            async with gate:
                response = await client.post(url, content=json.dumps(body).encode())
            response.raise_for_status()
            json.loads(response.content)

        started = time.monotonic()
        await asyncio.gather(*(one(p) for p in prompts))
        await client.aclose()
        return len(prompts) / (time.monotonic() - started)

    return asyncio.run(main())


def stage_prompts(seeds: Path) -> dict[str, tuple[list[str], dict, int]]:
    """What the questions and responses stages send for these seeds (a seed's text stands in for the
    generated question it would answer): prompts, output schema, max_tokens."""
    import csv

    from lakesynth.core.registry import load_config
    from lakesynth.core.templates import render
    from lakesynth.qa import questions, responses

    cfg = load_config(ROOT / "conf" / "lakesynth.yml", ["questions.per_seed=1"])
    rows = list(csv.DictReader(seeds.open(encoding="utf-8")))
    rules = cfg.use_case.rules
    q_prompts = [
        render(
            cfg.questions.template,
            rules=rules,
            topic=r["topic"],
            question=r["question"],
            in_scope=r["in_scope"] == "yes",
            n=2,
        )
        for r in rows
    ]
    r_prompts = [
        render(
            cfg.responses.template,
            rules=rules,
            topic=r["topic"],
            question=r["question"],
            in_scope=r["in_scope"] == "yes",
        )
        for r in rows
    ]
    return {
        "questions": (q_prompts, questions.output_model(2).model_json_schema(), cfg.questions.max_tokens),
        "responses": (
            r_prompts,
            responses.Answer.model_json_schema(),
            cfg.responses.max_tokens,
        ),
    }


CHECKS = ["--set", "quality.critic.enabled=true", "--set", "quality.judge.enabled=true"]
GOALS = {"questions": 0.90, "responses": 0.90, "critic": 0.85, "judge": 0.85}  # of the bare AsyncOpenAI loop


def check_prompts(warehouse: Path) -> dict[str, tuple[list[str], dict, int]]:
    """What the critic and judge send for the questions and responses written to `warehouse` (read with
    deltalake, no engine): each stage's own `prompts` hook over the rows it would read, its output schema and
    max_tokens."""
    from deltalake import DeltaTable

    from lakesynth.core.registry import load_config
    from lakesynth.quality import critic, judge

    cfg = load_config(ROOT / "conf" / "lakesynth.yml", ["questions.per_seed=1", *CHECKS[1::2]])
    (schema,) = {p.parent for p in warehouse.glob("*/*/synthetic_questions")}
    specs = {}
    for module, table in ((critic, "synthetic_questions"), (judge, "synthetic_responses")):
        step = module.step(cfg)
        rows = DeltaTable(str(schema / table)).to_pandas(columns=list(step.columns) + ["error"])
        rows = rows[rows["error"].isna()].sort_values(step.key)
        prompts = [m[-1]["content"] for m in step.prompts(rows)]
        specs[step.name] = (prompts, step.output.model_json_schema(), step.settings.max_tokens)
    return specs


def naive_thread_pool(base_url: str, n: int) -> float:
    """The approach this product grew from: a driver-side thread pool of 2 over a sync client."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="x", max_retries=0)

    def one(i: int) -> None:
        client.chat.completions.create(model="standin", messages=[{"role": "user", "content": f"q {i}"}], max_tokens=64)

    started = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(one, range(n)))
    return n / (time.monotonic() - started)


def utilisation(folder: Path, sizes: list[int]) -> list[tuple]:
    proc, url = start_standin(LATENCY_MS, CAP)
    rows = []
    try:
        naive = naive_thread_pool(url, 100)
        rows.append(("naive thread pool of 2, 100 req", f"{naive:.1f} req/s", f"{naive / LIMIT:.3f} of limit", ""))
        for n in sizes:
            seeds = seeds_file(folder, n)
            specs = stage_prompts(seeds)
            # Both commands of this size: one warehouse, the stand-in as the teacher, one question per seed.
            on_standin = [
                *("--warehouse", str(folder / f"wh_util_{n}"), "--set", f"endpoints.teacher.base_url={url}"),
                *("--set", "endpoints.teacher.model=standin", "--set", f"endpoints.teacher.max_concurrency={CAP}"),
                *("--set", "questions.per_seed=1", "--set", "mlflow.enabled=false"),
            ]
            bare = {stage: bare_client(url, *spec, CAP) for stage, spec in specs.items()}
            raw = {stage: bare_raw_client(url, *spec, CAP) for stage, spec in specs.items()}
            summary, wall, _ = lakesynth(
                [
                    "run",
                    "--stages",
                    "seed,questions,responses",
                    "--seeds",
                    str(seeds),
                    *on_standin,
                ]
            )
            # The checks on the rows just written, in a second command on the same warehouse: bare loops first
            # with the checks' own requests, then the critic and judge stages.
            checks = check_prompts(folder / f"wh_util_{n}")
            bare |= {stage: bare_client(url, *spec, CAP) for stage, spec in checks.items()}
            raw |= {stage: bare_raw_client(url, *spec, CAP) for stage, spec in checks.items()}
            checked, checked_wall, _ = lakesynth(
                [
                    "run",
                    "--stages",
                    "critic,judge",
                    *on_standin,
                    *CHECKS,
                ]
            )
            for stage in ("questions", "responses", "critic", "judge"):
                s = (summary if stage in summary["stages"] else checked)["stages"][stage]
                rate = s["rows_in"] / s["seconds"]
                rows.append(
                    (
                        f"bare async client, {stage} requests, {n}",
                        f"{bare[stage]:.0f} req/s",
                        f"{bare[stage] / LIMIT:.2f} of limit",
                        "reference: same prompts, schema, max_tokens",
                    )
                )
                rows.append(
                    (
                        f"bare httpx loop, {stage} requests, {n}",
                        f"{raw[stage]:.0f} req/s",
                        f"{raw[stage] / LIMIT:.2f} of limit",
                        "reference: same requests, the HTTP client lakesynth uses",
                    )
                )
                rows.append(
                    (
                        f"{stage} stage, {n} rows",
                        f"{rate:.0f} req/s",
                        f"{rate / LIMIT:.2f} of limit",
                        f"{rate / bare[stage]:.2f} of bare AsyncOpenAI (goal >= {GOALS[stage]:.2f}), "
                        f"{rate / raw[stage]:.2f} of bare httpx",
                    )
                )
            requests = summary["stages"]["questions"]["rows_in"] + summary["stages"]["responses"]["rows_in"]
            rows.append(
                (
                    f"whole command, questions + responses, {n} rows",
                    f"{requests / wall:.0f} req/s",
                    f"{requests / wall / LIMIT:.2f} of limit",
                    "imports, engine start, seeds and writes included",
                )
            )
            requests = checked["stages"]["critic"]["rows_in"] + checked["stages"]["judge"]["rows_in"]
            rows.append(
                (
                    f"whole command, critic + judge, {n} rows",
                    f"{requests / checked_wall:.0f} req/s",
                    f"{requests / checked_wall / LIMIT:.2f} of limit",
                    "imports, engine start and writes included",
                )
            )
    finally:
        proc.terminate()
    return rows


def embedded_efficiency(folder: Path, n_seeds: int) -> list[tuple]:
    """The same prompts, schema and parameters both ways: the raw server with a bare client, then the stage."""
    from lakesynth.core.registry import load_config
    from lakesynth.core.templates import render
    from lakesynth.llm import embedded
    from lakesynth.qa import questions

    cfg = load_config(ROOT / "conf" / "lakesynth.yml", ["questions.per_seed=2", "questions.max_tokens=400"])
    teacher, per_seed = cfg.endpoint("teacher"), cfg.questions.per_seed
    topics = ["cards", "transfers", "accounts", "fraud", "investment advice", "tax advice"]
    prompts = [
        render(
            cfg.questions.template,
            rules=cfg.use_case.rules,
            topic=topics[i % 6],
            question=f"Customer question number {i} about {topics[i % 6]}?",
            in_scope="advice" not in topics[i % 6],
            n=questions.asked(per_seed),
        )
        for i in range(n_seeds)
    ]
    model = questions.output_model(questions.asked(per_seed))
    fmt = {
        "type": "json_schema",
        "json_schema": {"name": model.__name__, "schema": model.model_json_schema(), "strict": True},
    }
    with embedded.serve(teacher) as url:
        import openai

        async def main() -> float:
            client = openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0, timeout=600)
            gate = asyncio.Semaphore(teacher.max_concurrency)

            async def one(p: str) -> int:
                async with gate:
                    reply = await client.chat.completions.create(
                        model="m",
                        messages=[{"role": "user", "content": p}],
                        max_tokens=cfg.questions.max_tokens,
                        temperature=cfg.questions.temperature,
                        response_format=fmt,
                    )
                    return reply.usage.completion_tokens

            started = time.monotonic()
            tokens = sum(await asyncio.gather(*(one(p) for p in prompts)))
            return tokens / (time.monotonic() - started)

        raw = asyncio.run(main())
    summary, _, _ = lakesynth(
        [
            "run",
            "--stages",
            "seed,questions",
            "--seeds",
            str(seeds_file(folder, n_seeds)),
            "--warehouse",
            str(folder / "wh_embedded"),
            "--set",
            "questions.per_seed=2",
            "--set",
            "questions.max_tokens=400",
            "--set",
            "mlflow.enabled=false",
        ]
    )
    q = summary["stages"]["questions"]
    pipeline = q["completion_tokens"] / q["seconds"]
    return [
        (
            "raw xllamacpp server, bare client, same prompts",
            f"{raw:.1f} gen tok/s",
            f"{teacher.embedded_slots} slots",
            "reference",
        ),
        (
            f"questions stage, {n_seeds} seeds",
            f"{pipeline:.1f} gen tok/s",
            f"{pipeline / raw:.2f} of raw",
            "goal >= 0.90",
        ),
    ]


PER_SEED = 10  # rows = seeds x 10: seed files are small by design, the synthetic tables are what grows


def start_engine_server() -> tuple[subprocess.Popen, str]:
    """`sail spark server` from this environment (it imports lakesynth's UDFs), for LAKESYNTH_SPARK_REMOTE."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "RUST_LOG": "error", "SAIL_EXECUTION__BATCH_SIZE": "1024"}  # as the embedded engine
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("sail")), "spark", "server", "--port", str(port)], env=env
    )
    for _ in range(150):
        with socket.socket() as conn:
            if conn.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"sc://127.0.0.1:{port}"
        time.sleep(0.2)
    raise SystemExit("the Sail server did not start")


def memory_run(folder: Path, url: str, rows: int, remote: str | None) -> tuple[int, int | None, float]:
    """Peak RSS (MiB) of the lakesynth process and, when the engine runs apart, of the engine's; wall seconds."""
    server = None
    if remote:
        server, address = start_engine_server()
        server_peak = PeakRss(server.pid)
    tag = "remote" if remote else "embedded"
    args = [
        "run",
        "--stages",
        "seed,questions,responses,format",
        "--seeds",
        str(seeds_file(folder, rows // PER_SEED)),
        "--warehouse",
        str(folder / f"wh_mem_{tag}_{rows}"),
        "--set",
        f"endpoints.teacher.base_url={url}",
        "--set",
        "endpoints.teacher.model=standin",
        "--set",
        "endpoints.teacher.max_concurrency=256",
        "--set",
        f"questions.per_seed={PER_SEED}",
        "--set",
        "mlflow.enabled=false",
    ]
    try:
        if remote:
            os.environ["LAKESYNTH_SPARK_REMOTE"] = address
        summary, wall, driver = lakesynth(args)
    finally:
        os.environ.pop("LAKESYNTH_SPARK_REMOTE", None)
        engine = None
        if server:
            engine = server_peak.stop()
            server.terminate()
            server.wait()
    written = summary["tables"]["training_chat"]["rows"]
    if written < rows * 0.99:
        raise SystemExit(f"memory run wrote {written} chat rows for {rows} asked")
    return driver, engine, wall


def driver_memory(folder: Path, small: int, large: int) -> list[tuple]:
    proc, url = start_standin(0, 1024)
    try:
        embedded = {n: memory_run(folder, url, n, None) for n in (small, large)}
        remote = {n: memory_run(folder, url, n, "sail") for n in (small, large)}
    finally:
        proc.terminate()

    def row(label: str, n: int, value: int, ref: int | None, note: str) -> tuple:
        return (label.format(n=f"{n // 1000}k"), f"{value} MiB", f"{value / ref:.2f}x" if ref else "", note)

    seeds = f"{large // PER_SEED} seeds x {PER_SEED}"
    return [
        row("driver, engine in its own process, {n} rows", small, remote[small][0], None, "reference"),
        row(
            "driver, engine in its own process, {n} rows",
            large,
            remote[large][0],
            remote[small][0],
            f"goal <= 1.2x ({seeds})",
        ),
        row("engine process (Sail server), {n} rows", small, remote[small][1], None, "reference"),
        row(
            "engine process (Sail server), {n} rows",
            large,
            remote[large][1],
            remote[small][1],
            "where UDFs, joins and writes run",
        ),
        row("embedded default, one process, {n} rows", small, embedded[small][0], None, "reference"),
        row(
            "embedded default, one process, {n} rows",
            large,
            embedded[large][0],
            embedded[small][0],
            "driver + engine together",
        ),
    ]


def engine_overhead(folder: Path) -> list[tuple]:
    script = folder / "engine_start.py"  # a file, not -c: pyspark's Connect client misreads `python -c` as doctests
    script.write_text(
        "import time\nt = time.monotonic()\nfrom lakesynth.core.engine import get_spark\n"
        "from lakesynth.core.runtime import Runtime\n"
        f"get_spark(Runtime(False, 'main', 'b', 'v', {str(folder / 'wh_engine')!r})).range(1).count()\n"
        "print(time.monotonic() - t)\n"
    )
    start = float(
        subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    )
    summary, wall, _ = lakesynth(
        [
            "seed",
            "--seeds",
            str(seeds_file(folder, 1000)),
            "--warehouse",
            str(folder / "wh_engine"),
            "--set",
            "mlflow.enabled=false",
        ]
    )
    return [
        ("embedded engine start (import + server + first query)", f"{start:.2f} s", "", ""),
        (
            "`lakesynth seed`, 1k rows, whole command",
            f"{wall:.2f} s",
            f"stage itself {summary['stages']['seed']['seconds']:.2f} s",
            "",
        ),
    ]


TITLES = (
    "1. Endpoint utilisation (stand-in: 100 ms, cap 64 = 640 req/s)",
    "2. Embedded teacher efficiency (Qwen2.5-Coder-0.5B Q4_K_M)",
    "3. Driver memory (seed -> questions -> responses -> format, stand-in)",
    "4. Engine overhead",
    "5. Near-duplicate dedup (planted bank questions, datasketch MinHashLSH beside)",
    "6. Chunking knowledge documents (generated markdown, seconds per 1k chunks)",
    "7. Function calling: format check in the engine, execution in the sandbox",
    "8. Generation per taxonomy leaf (generated InstructLab taxonomies, stand-in teacher, seconds per leaf)",
    "9. Throttling (stand-in answering 429 with Retry-After; max_concurrency 16 over 2 workers)",
)


def _previous_sections(results: Path) -> dict[int, tuple[str, str]]:
    """Section number -> (the date of its figures, its markdown block) from an earlier RESULTS.md, so a run of
    some sections (`--only`) keeps the others, marked as not rerun."""
    import re

    if not results.exists():
        return {}
    text = results.read_text(encoding="utf-8")
    dated = re.search(r"^Date: (.+?)\s*$", text, re.M)
    run_date = dated.group(1) if dated else "an earlier run"
    found = {}
    for match in re.finditer(r"(?ms)^### (\d)\..*?(?=^### |^## |\Z)", text):
        block = match.group(0)
        prior = re.search(r"\n_Not rerun: figures of (.+?)\._\n\n", block)  # with its blank line
        if prior:
            block = block.replace(prior.group(0), "\n", 1)
        found[int(match.group(1))] = (prior.group(1) if prior else run_date, "\n" + block)
    return found


def near_dedup_section(folder: Path, sizes: list[int]) -> list[tuple]:
    import dedup  # benchmarks/dedup.py, beside this file

    return dedup.near_dedup(folder, sizes)


def chunking_section(folder: Path, sizes: list[int]) -> list[tuple]:
    import chunking  # benchmarks/chunking.py, beside this file

    return chunking.chunking(folder, sizes)


def leaves_section(folder: Path, sizes: list[int]) -> list[tuple]:
    import leaves  # benchmarks/leaves.py, beside this file

    return leaves.leaf_generation(folder, sizes)


def throttling_section(requests: int) -> list[tuple]:
    import throttling  # benchmarks/throttling.py, beside this file

    return throttling.section(requests, latency_ms=50.0) + throttling.section(requests, latency_ms=200.0)


def tools_section(folder: Path, sizes: list[int]) -> list[tuple]:
    import tools  # benchmarks/tools.py, beside this file

    rows = tools.format_check(folder, sizes, rounds=3)
    return rows + tools.execution(folder, n_calls=500, workers=2, timeout_s=1.0, memory_mb=512)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (1k/2k util, 1k/10k memory and dedup)")
    parser.add_argument("--only", default="1,2,3,4,5,6,7,8,9", help="comma-separated sections to run, e.g. 3,4")
    parser.add_argument("--memory-rows", type=int, help="the large size of the driver-memory comparison")
    args = parser.parse_args()
    sizes = [1000, 2000] if args.quick else [1000, 10000]
    mem = (1000, args.memory_rows or (10000 if args.quick else 100000))
    only = {int(x) for x in args.only.split(",")}
    sections = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for number, (title, measure) in enumerate(
            (
                (TITLES[0], lambda: utilisation(folder, sizes)),
                (TITLES[1], lambda: embedded_efficiency(folder, 12)),
                (TITLES[2], lambda: driver_memory(folder, *mem)),
                (TITLES[3], lambda: engine_overhead(folder)),
                (TITLES[4], lambda: near_dedup_section(folder, [1000, 10000] if args.quick else [10000, 100000])),
                (TITLES[5], lambda: chunking_section(folder, [100, 1000] if args.quick else [100, 1000, 10000])),
                (TITLES[6], lambda: tools_section(folder, [20000] if args.quick else [20000, 200000])),
                (TITLES[7], lambda: leaves_section(folder, [10, 100] if args.quick else [10, 100, 1000])),
                (TITLES[8], lambda: throttling_section(300 if args.quick else 600)),
            ),
            start=1,
        ):
            if number not in only:
                continue
            sections[title] = measure()
            print(title, *sections[title], sep="\n  ", flush=True)
    lines = []
    kept = _previous_sections(ROOT / "benchmarks" / "RESULTS.md")
    for number, title in enumerate(TITLES, start=1):
        if title in sections:
            lines += [f"\n### {title}\n", "| measurement | value | ratio | note |", "|---|---|---|---|"]
            lines += [f"| {' | '.join(row)} |" for row in sections[title]]
        elif number in kept:  # not rerun this time: the last run's figures, said to be so
            previous_date, block = kept[number]
            lines += [block.rstrip("\n").replace("\n\n", f"\n\n_Not rerun: figures of {previous_date}._\n\n", 1)]
    table = "\n".join(lines)
    print(table)
    header = (
        f"# Benchmark results\n\nDate: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC  \n"
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.platform()}  \nCommand: `.venv/bin/python {' '.join(sys.argv)}`\n"
    )
    notes = (
        (ROOT / "benchmarks" / "NOTES.md").read_text(encoding="utf-8")
        if (ROOT / "benchmarks" / "NOTES.md").exists()
        else ""
    )
    (ROOT / "benchmarks" / "RESULTS.md").write_text(header + table + "\n\n" + notes, encoding="utf-8")


if __name__ == "__main__":
    main()
