"""Issue 27: a run you can watch and stop. Without a terminal an LLM stage prints plain progress lines; Ctrl-C ends
the run within seconds, and the rerun pays only for what was not finished."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^questions: (\d+)/(\d+) done, (\d+) errors, [\d.]+ req/s")


def run_args(server, tmp_path: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "lakesynth.cli", "run", "--stages", "seed,questions",
        "--warehouse", str(tmp_path / "wh"), "--set", f"endpoints.teacher.base_url={server.base_url}",
        "--set", "endpoints.teacher.model=standin", "--set", "mlflow.enabled=false", *extra,
    ]  # fmt: skip


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def test_a_stage_with_its_output_piped_prints_progress_lines(tmp_path, teacher_server):
    # 24 requests, two at a time, 0.25 s each: about 3 s of requests, a line every 0.4 s.
    teacher_server.reset(latency_ms=250)
    args = run_args(teacher_server, tmp_path, "--set", "endpoints.teacher.max_concurrency=2")
    args += ["--set", "llm.progress_s=0.4"]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env(), check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [m for m in map(LINE.match, proc.stderr.splitlines()) if m]
    assert len(lines) >= 4, proc.stderr
    done = [int(m[1]) for m in lines]
    assert done == sorted(done) and all(int(m[2]) == 24 for m in lines)
    assert (lines[-1][1], lines[-1][3]) == ("24", "0")  # the last: done = total, no errors
    assert "ETA" in " ".join(m.string for m in lines if 0 < int(m[1]) < 24)
