"""Conversations: the `conversations` stage against a bare async loop making the same dialogs, side by side in one run.

    .venv/bin/python benchmarks/conversations.py [--conversations 1000] [--turns 3] [--latency-ms 1000] [--cap 64]

The teacher is the stand-in (lakesynth.llm.standin in its own process: `--latency-ms` a request, at most `--cap` at
a time, so at most cap / latency requests a second: the endpoint's nominal throughput). `--conversations` pairs
(seeds of a generated file, one question each, answered on a second stand-in with no latency, before any clock) are
each continued for `--turns` turns: a simulated user's message, then the assistant's reply, each request carrying
the whole dialog, so 2 x turns requests a conversation, sequential within it.

- Stage: `conversations.run` on the embedded engine (started before the clock) with
  `endpoints.teacher.max_concurrency` = cap: 2 x turns rounds, each the next message of every conversation sent
  through the LLM loop, staged and merged into `conversation_turns` before the next.
- Bare loop: one asyncio loop and one `openai.AsyncOpenAI` client, `cap` requests at a time, every conversation a
  task sending its 2 x turns requests in order (the same prompts, rendered from the stage's templates with the
  dialog so far, the same response formats and max_tokens), no tables, no journal, no rounds: the ceiling.
Throughput is messages a second (the stage's one-token preflight per round not counted); its ratio to the nominal
throughput is the figure. Goal: the stage >= 0.7 of nominal.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from urllib.request import urlopen

from run import seeds_file, start_standin  # the suite's own helpers, beside this script

ROOT = Path(__file__).resolve().parents[1]


def stats(url: str) -> dict:
    with urlopen(f"{url}/stats") as reply:
        return json.loads(reply.read())


def bare_loop(url: str, pairs: list[dict], cfg, cap: int) -> tuple[int, float]:
    """(messages, seconds) of the bare loop making every conversation's `turns` turns."""
    import openai

    from lakesynth.core.templates import render
    from lakesynth.qa import conversations, dialogs
    from lakesynth.qa.answers import Answer

    c = cfg.conversations
    formats = {
        role: {
            "type": "json_schema",
            "json_schema": {"name": m.__name__, "schema": m.model_json_schema(), "strict": True},
        }
        for role, m in (("user", conversations.UserMessage), ("assistant", Answer))
    }
    settings = {"user": c.user, "assistant": c.assistant}
    personas = c.personas.all()

    async def main() -> tuple[int, float]:
        client = openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0)
        gate, sent = asyncio.Semaphore(cap), 0

        async def conversation(pair: dict) -> None:
            nonlocal sent
            cid, dialog = pair["question_id"], dialogs.messages(pair["question"], pair["answer"], [])
            scope = bool(pair["in_scope"])
            who = dialogs.persona(cid, c.seed, personas)
            for turn in range(2, 2 + c.turns[1]):
                kind = dialogs.next_kind(cid, turn, c.seed, c.mix, refused=not scope)
                scope = kind not in dialogs.OUT_OF_SCOPE and bool(pair["in_scope"])
                for role, field in (("user", "message"), ("assistant", "answer")):
                    prompt = render(
                        settings[role].template,
                        rules=cfg.use_case.rules,
                        transcript=dialogs.transcript(dialog),
                        kind=dialogs.KINDS[kind],
                        persona=who.model_dump() if who else None,
                        in_scope=scope,
                        turn=turn,
                    )
                    async with gate:
                        reply = await client.chat.completions.create(
                            model="standin",
                            messages=[{"role": "user", "content": prompt}],
                            max_tokens=settings[role].max_tokens,
                            temperature=settings[role].temperature,
                            response_format=formats[role],
                        )
                    sent += 1
                    dialog.append({"role": role, "content": json.loads(reply.choices[0].message.content)[field]})

        started = time.monotonic()
        await asyncio.gather(*(conversation(p) for p in pairs))
        await client.close()
        return sent, time.monotonic() - started

    return asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=1000)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=1000.0)
    parser.add_argument("--cap", type=int, default=64)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from lakesynth.core import registry
    from lakesynth.qa import conversations, questions, responses
    from lakesynth.qa import seed as seeds

    nominal = args.cap / (args.latency_ms / 1000)
    fast, fast_url = start_standin(0, 256)
    slow, slow_url = start_standin(args.latency_ms, args.cap)
    try:
        with tempfile.TemporaryDirectory(prefix="lakesynth-conv-") as tmp:
            folder = Path(tmp)
            settings = [
                f"warehouse={folder / 'warehouse'}",
                f"seed.path={seeds_file(folder, args.conversations)}",
                "questions.per_seed=1",
                "conversations.enabled=true",
                f"conversations.turns=[{args.turns}, {args.turns}]",
                "endpoints.teacher.model=standin",
                f"endpoints.teacher.max_concurrency={args.cap}",
                "mlflow.enabled=false",
            ]
            ctx = registry.open_context(
                ROOT / "conf" / "lakesynth.yml", [*settings, f"endpoints.teacher.base_url={fast_url}"]
            )
            for stage in (seeds, questions, responses):
                stage.run(ctx)
            pairs = ctx.read("synthetic_responses").where("error IS NULL").toPandas().to_dict("records")
            ctx = registry.open_context(
                ROOT / "conf" / "lakesynth.yml", [*settings, f"endpoints.teacher.base_url={slow_url}"]
            )
            ctx.spark.range(1).count()  # the engine is up before the clock starts
            before = stats(slow_url)
            started = time.monotonic()
            result = conversations.run(ctx)
            stage_s = time.monotonic() - started
            after = stats(slow_url)
            stage_msgs = (after["requests"] - before["requests"]) - (after["probes"] - before["probes"])
            assert result.rows_out == stage_msgs == len(pairs) * 2 * args.turns and result.errors == 0, result
            bare_msgs, bare_s = bare_loop(slow_url, pairs, ctx.cfg, args.cap)
    finally:
        for proc in (fast, slow):
            proc.terminate()
    rows = [
        ("conversations stage", stage_msgs, stage_s, stage_msgs / stage_s),
        ("bare async loop", bare_msgs, bare_s, bare_msgs / bare_s),
    ]
    print(
        f"{len(pairs)} conversations x {args.turns} turns ({2 * args.turns} requests each, sequential within one); "
        f"stand-in {args.latency_ms:.0f} ms, cap {args.cap}: nominal {nominal:.1f} msg/s; "
        f"{platform.processor() or platform.machine()}, {time.strftime('%Y-%m-%d', time.gmtime())}"
    )
    print(f"| {'side':<20} | {'messages':>8} | {'seconds':>7} | {'msg/s':>6} | {'of nominal':>10} |")
    print(f"|{'-' * 22}|{'-' * 10}|{'-' * 9}|{'-' * 8}|{'-' * 12}|")
    for name, msgs, seconds, rate in rows:
        print(f"| {name:<20} | {msgs:>8} | {seconds:>7.1f} | {rate:>6.1f} | {rate / nominal:>10.2f} |")
    print(f"stage / bare loop: {rows[0][3] / rows[1][3]:.2f}; goal: stage >= 0.70 of nominal")


if __name__ == "__main__":
    main()
