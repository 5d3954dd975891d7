"""Throttling: wall time of `llm.Call.run` with no 429s, with a share of 429s (Retry-After), and at capacity.

    .venv/bin/python benchmarks/throttling.py [--requests 600] [--latency-ms 50] [--workers 2]

The stand-in runs in this process. Each worker's share goes through its own pool on a thread, as the embedded
engine runs a stage's partitions; max_concurrency 16 over the workers. Scenarios: no faults; 30% 429s asking
for 50-200 ms (random, not load-related), with adaptive concurrency and with a fixed cap; and an endpoint that
throttles beyond 4 requests in flight. The acceptance line is the 30% row's wall time against no faults (< 2x).
"""

from __future__ import annotations

import argparse
import threading
import time

from pydantic import BaseModel, ConfigDict

from lakesynth import llm
from lakesynth.config import EndpointSettings
from lakesynth.llm.standin import StandIn, StandInOptions
from lakesynth.llm.throttle import concurrency_trace, reset_concurrency

RANDOM_429 = {"fault_rate": 0.3, "faults": ("429",), "retry_after_ms": (50, 200), "seed": 1}
AT_CAPACITY = {"throttle_above": 4, "retry_after_ms": (50, 200)}


class Questions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reasoning: str
    questions: list[str]


def run(server: StandIn, n: int, workers: int, latency_ms: float, adaptive: bool, **faults) -> dict:
    server.reset(latency_ms=latency_ms, **faults)
    reset_concurrency()
    endpoint = llm.Endpoint(server.base_url, "standin")
    teacher = EndpointSettings(
        base_url=server.base_url, model="standin", max_concurrency=16, timeout_s=10, adaptive_concurrency=adaptive
    )
    call = llm.Call(endpoint, teacher, Questions, temperature=0.5, max_tokens=256)
    requests = [(f"row-{i}", [{"role": "user", "content": f"Write questions about topic {i}"}]) for i in range(n)]
    results: list = []
    threads = [
        threading.Thread(target=lambda part=requests[w::workers]: results.extend(call.run(part, workers=workers)))
        for w in range(workers)
    ]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    trace = concurrency_trace(endpoint) or {}
    return {
        "wall": wall,
        "errors": sum(r.error is not None for r in results),
        "requests": server.stats.requests,
        "throttles": server.stats.faults["429"],
        "limits": f"{trace['min']}/{trace['max']}/{trace['final']}" if trace else "fixed",
        "decreases": trace.get("decreases", 0),
    }


SCENARIOS = [
    ("no 429s", True, {}),
    ("30% 429s, adaptive", True, RANDOM_429),
    ("30% 429s, fixed cap", False, RANDOM_429),
    ("capacity 4, adaptive", True, AT_CAPACITY),
    ("capacity 4, fixed cap", False, AT_CAPACITY),
]


def measure(n: int, latency_ms: float, workers: int) -> list[tuple[str, dict]]:
    """Each scenario's figures (`run`), in SCENARIOS' order, on one stand-in: the first is the run with no 429s."""
    server = StandIn(StandInOptions()).start()
    try:
        return [(name, run(server, n, workers, latency_ms, adaptive, **f)) for name, adaptive, f in SCENARIOS]
    finally:
        server.stop()


def section(n: int = 600, latency_ms: float = 50.0, workers: int = 2) -> list[tuple]:
    """Section 9 of run.py: each scenario's wall time beside the run with no 429s, its row errors and limits."""
    rows = measure(n, latency_ms, workers)
    base = rows[0][1]["wall"]
    return [
        (
            f"{name}, {n} requests ({latency_ms:g} ms)",
            f"{r['wall']:.2f} s",
            f"{r['wall'] / base:.2f}x no 429s",
            f"{r['errors']} row errors; {r['requests']} sent, {r['throttles']} 429s, {r['decreases']} decreases; "
            f"limits {r['limits']}",
        )
        for name, r in rows
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    rows = measure(args.requests, args.latency_ms, args.workers)
    base = rows[0][1]["wall"]
    print(
        f"\n{args.requests} requests, stand-in latency {args.latency_ms:g} ms, max_concurrency 16 over "
        f"{args.workers} workers; limits = min/max/final per worker"
    )
    print(f"{'scenario':<24}{'wall s':>8}{'x none':>8}{'errors':>8}{'sent':>7}{'429s':>7}{'decr.':>7}  limits")
    for name, r in rows:
        print(
            f"{name:<24}{r['wall']:>8.2f}{r['wall'] / base:>8.2f}{r['errors']:>8}{r['requests']:>7}"
            f"{r['throttles']:>7}{r['decreases']:>7}  {r['limits']}"
        )


if __name__ == "__main__":
    main()
