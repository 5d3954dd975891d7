"""Client CPU per request: a bare AsyncOpenAI loop, a bare httpx loop and `llm.Call.run`, side by side.

    .venv/bin/python benchmarks/client_cpu.py [--requests 4000] [--rounds 2]

The stand-in runs in a subprocess with 100 ms latency and 64 slots, so it serves at most 640 req/s (nominal);
on a small machine it shares the cores with the client, and the client's CPU per request decides how close
to nominal a client gets. Every client sends the same requests: a questions-stage prompt (the packaged
template and the bank rules), the GeneratedQuestions-like JSON schema, max_tokens 768, 64 in flight. The bare
loops only parse the reply's JSON; `llm.Call.run` also validates the output, journals and keeps accounts.
Rounds are interleaved and the median of each client is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jinja2 import Template
from pydantic import BaseModel, ConfigDict, Field

ROOT = Path(__file__).resolve().parents[1]
LATENCY_MS, SLOTS, MAX_TOKENS = 100, 64, 768
NOMINAL = SLOTS / (LATENCY_MS / 1000)


class GeneratedQuestions(BaseModel):
    """As the questions stage asks for them, with per_seed 3 (4 asked)."""

    model_config = ConfigDict(extra="forbid")
    reasoning: str = Field(description="Analysis of the seed's topic and intent, and the subtopics to cover")
    questions: list[str] = Field(min_length=4, max_length=4, description="The new customer questions")


def prompts(n: int) -> list[str]:
    template = Template((ROOT / "src" / "lakesynth" / "prompts" / "questions.j2").read_text(encoding="utf-8"))
    rules = (ROOT / "conf" / "bank" / "rules.md").read_text(encoding="utf-8")
    topics = ["cards", "transfers", "accounts", "fraud", "investment advice", "tax advice"]
    return [
        template.render(
            rules=rules,
            topic=topics[i % 6],
            question=f"Customer question number {i} about {topics[i % 6]}?",
            in_scope="advice" not in topics[i % 6],
            n=4,
        )
        for i in range(n)
    ]


def start_standin() -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "lakesynth.llm.standin", "--latency-ms", str(LATENCY_MS), "--max-concurrency", str(SLOTS)],
        stdout=subprocess.PIPE,
        text=True,
    )
    return proc, proc.stdout.readline().strip()


def response_format() -> dict:
    schema = GeneratedQuestions.model_json_schema()
    return {"type": "json_schema", "json_schema": {"name": "GeneratedQuestions", "schema": schema, "strict": True}}


async def bare_openai(url: str, texts: list[str]) -> None:
    """The SDK's async client, one request per prompt, 64 at a time."""
    import openai

    client = openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0)
    gate, fmt = asyncio.Semaphore(SLOTS), response_format()

    async def one(text: str) -> None:
        async with gate:
            await client.chat.completions.create(
                model="standin",
                messages=[{"role": "user", "content": text}],
                max_tokens=MAX_TOKENS,
                temperature=0.9,
                response_format=fmt,
            )

    await asyncio.gather(*(one(t) for t in texts))
    await client.close()


async def bare_httpx(url: str, texts: list[str]) -> None:
    """One pooled httpx client, the whole body serialised per request, the reply's JSON parsed."""
    import httpx2 as httpx

    client = httpx.AsyncClient(
        headers={"Authorization": "Bearer x", "Content-Type": "application/json"},
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=SLOTS),
        timeout=60,
    )
    gate, fmt, target = asyncio.Semaphore(SLOTS), response_format(), f"{url}/chat/completions"

    async def one(text: str) -> None:
        body = {
            "model": "standin",
            "messages": [{"role": "user", "content": text}],
            "max_tokens": MAX_TOKENS,
            "temperature": 0.9,
            "response_format": fmt,
        }
        async with gate:
            response = await client.post(target, content=json.dumps(body).encode())
        response.raise_for_status()
        json.loads(response.content)

    await asyncio.gather(*(one(t) for t in texts))
    await client.aclose()


def call_run(url: str, texts: list[str]) -> None:
    """The stages' path: `llm.Call.run` with 64 in flight, a journal, validated outputs."""
    from lakesynth import llm
    from lakesynth.config import EndpointSettings

    teacher = EndpointSettings(base_url=url, model="standin", max_concurrency=SLOTS, timeout_s=60)
    with tempfile.TemporaryDirectory() as journal:
        call = llm.Call(llm.Endpoint(url, "standin"), teacher, GeneratedQuestions, 0.9, MAX_TOKENS, journal)
        results = call.run([(str(i), [{"role": "user", "content": t}]) for i, t in enumerate(texts)])
    failed = [r.error for r in results if r.error]
    if failed:
        raise SystemExit(f"llm.Call.run: {len(failed)} failed, e.g. {failed[0]}")


CLIENTS = {
    "bare AsyncOpenAI loop": lambda url, texts: asyncio.run(bare_openai(url, texts)),
    "bare httpx loop": lambda url, texts: asyncio.run(bare_httpx(url, texts)),
    "llm.Call.run": call_run,
}


def measure(client, url: str, texts: list[str]) -> tuple[float, float]:
    """(requests per second, client CPU seconds per request)."""
    wall, cpu = time.monotonic(), time.process_time()
    client(url, texts)
    wall, cpu = time.monotonic() - wall, time.process_time() - cpu
    return len(texts) / wall, cpu / len(texts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    proc, url = start_standin()
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in CLIENTS}
    try:
        measure(CLIENTS["bare httpx loop"], url, prompts(200))  # warm up the stand-in and the imports
        for round_ in range(args.rounds):
            # Fresh prompts every round and client, so no reply is ever served twice.
            for number, (name, client) in enumerate(CLIENTS.items()):
                texts = [f"{t}\n(round {round_}, client {number})" for t in prompts(args.requests)]
                runs[name].append(measure(client, url, texts))
                print(f"round {round_ + 1} {name}: {runs[name][-1][0]:.0f} req/s", file=sys.stderr, flush=True)
    finally:
        proc.terminate()
        proc.wait()
    rate = {name: statistics.median(r for r, _ in rs) for name, rs in runs.items()}
    cpu = {name: statistics.median(c for _, c in rs) for name, rs in runs.items()}
    openai_rate, httpx_rate = rate["bare AsyncOpenAI loop"], rate["bare httpx loop"]
    print(
        f"{args.requests} requests x {args.rounds} rounds (median), stand-in {LATENCY_MS} ms x {SLOTS} slots = "
        f"{NOMINAL:.0f} req/s nominal\n"
    )
    print("| client | req/s | of nominal | of bare AsyncOpenAI | of bare httpx | client CPU ms/request |")
    print("|---|---|---|---|---|---|")
    for name in CLIENTS:
        print(
            f"| {name} | {rate[name]:.0f} | {rate[name] / NOMINAL:.2f} | {rate[name] / openai_rate:.2f} | "
            f"{rate[name] / httpx_rate:.2f} | {cpu[name] * 1000:.2f} |"
        )


if __name__ == "__main__":
    main()
