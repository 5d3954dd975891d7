"""The `lakesynth` command: `run` for a whole job, one stage by name, or `stages` for the map of the jobs;
also the wheel's entry point. The stage subcommands are the registered stages (registry.py).

Exit codes: 0 success (stages ok or skipped on purpose), 1 a stage failed, 2 bad command line or config.
The entry point raises SystemExit with that code: a Databricks wheel task ignores a returned value.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import uuid
from collections.abc import Collection
from datetime import datetime, timezone
from pathlib import Path

from lakesynth.core import sources as job_sources
from lakesynth import pipeline
from lakesynth.core import registry
from lakesynth.config import Config, default_config_file, packaged_config, with_overrides
from lakesynth.errors import LakesynthError


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", help="pipeline config YAML (default: conf/lakesynth.yml here if it exists, else the packaged one)"
    )
    common.add_argument(
        "--seeds",
        help="seed file (.csv/.jsonl) or table:<catalog.schema.table>; in the function-calling job, a JSONL of "
        "seed query/function_calls pairs to generate from",
    )
    common.add_argument(
        "--pairs", help="your own question/answer pairs (.csv/.jsonl or table:<name>) to run the quality gate on"
    )
    common.add_argument("--tools", help="function-calling job: OpenAI tools file (.json) or a typed Python module")
    common.add_argument("--functions", help="function-calling job: Python module implementing a JSON spec's tools")
    common.add_argument("--calls", help="function-calling job: JSONL of query/function_calls pairs to verify")
    common.add_argument(
        "--taxonomy", help="InstructLab taxonomy folder (qna.yaml leaves, versions 1-3) to generate from"
    )
    common.add_argument("--documents", help="folder of markdown, text and PDF knowledge documents (or /Volumes/...)")
    common.add_argument("--warehouse", help="local warehouse directory (default: .lakesynth/warehouse)")
    common.add_argument("--catalog", help="catalog of the pipeline's tables (job parameter)")
    common.add_argument("--schema", help="schema of the pipeline's tables (job parameter)")
    common.add_argument("--volume", help="volume for files and journals (job parameter; locally a folder)")
    common.add_argument("--run-id", help="id stamped on every row (default: a new one)")
    common.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set endpoints.teacher.max_concurrency=32 (repeatable)",
    )
    common.add_argument("--summary", help="write the run summary JSON to this file")
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser = argparse.ArgumentParser(prog="lakesynth", description="Synthetic fine-tuning data on the lakehouse.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", parents=[common], help="run every task of a bundle job, in order")
    run.add_argument("--stages", help="comma-separated subset of the job's tasks to run")
    run.add_argument("--job", default=pipeline.DEFAULT_JOB, help="the bundle job to run (default: %(default)s)")
    stages = sub.add_parser("stages", help="list each job's stages in order, with the tables they read and write")
    stages.add_argument("--json", action="store_true", help="print JSON for machines instead of a table")
    for name, stage in registry.default_stages().items():
        sub.add_parser(name, parents=[common], help=stage.help)
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The CLI's parsing alone (exits 2 on bad flags), for checking the bundle's task parameters."""
    return _parser().parse_args(argv)


def config_file(args: argparse.Namespace) -> Path | None:
    """--config, else conf/lakesynth.yml in the working folder, else the config packaged in the wheel."""
    return Path(args.config) if args.config else default_config_file()


def describe_config(file: Path | None) -> str:
    if file is None:
        return "config none (built-in defaults)"
    packaged = " (packaged default)" if file == packaged_config() else ""
    return f"config {file.absolute()}{packaged}"


def build_config(args: argparse.Namespace, tools_seeds: bool = False, job_stages: Collection[str] = ()) -> Config:
    """The config file with the flags applied. With `tools_seeds` (a job that generates calls), --seeds is
    the function-calling seed pairs (tools.seeds), not the Q&A seed questions. With `job_stages` (the stages of
    the job being run), a flag naming a source of that job sets aside the config's sources it replaces."""
    return configure(args, job_stages, tools_seeds=tools_seeds)[0]


def configure(
    args: argparse.Namespace, job_stages: Collection[str], *, tools_seeds: bool | None = None
) -> tuple[Config, str]:
    """The config with the flags applied (job_sources: a flag's source replaces the config's), and the
    sources line the run starts with."""
    if tools_seeds is None:
        tools_seeds = "call_generation" in job_stages
    overrides = []
    if tools_seeds and args.seeds:
        overrides.append(f"tools.seeds={json.dumps(str(Path(args.seeds).resolve()))}")
    for flag in ("seeds", "pairs"):
        given = getattr(args, flag)
        if given and not (tools_seeds and flag == "seeds"):
            value = given if given.startswith("table:") else str(Path(given).resolve())
            overrides.append(f"seed.{'path' if flag == 'seeds' else 'pairs'}={json.dumps(value)}")
    for flag, key in (
        ("tools", "tools.spec"),
        ("functions", "tools.functions"),
        ("calls", "tools.calls"),
        ("taxonomy", "taxonomy.path"),
        ("documents", "documents.path"),
    ):
        if getattr(args, flag):
            overrides.append(f"{key}={json.dumps(str(Path(getattr(args, flag)).resolve()))}")
    for flag, key in (
        ("warehouse", "warehouse"),
        ("catalog", "catalog"),
        ("schema", "schema"),
        ("volume", "volume"),
        ("run_id", "run_id"),
    ):
        if getattr(args, flag):
            overrides.append(f"{key}={json.dumps(getattr(args, flag))}")
    cfg = registry.load_config(config_file(args), overrides + list(args.overrides))
    sources = job_sources.of_job(job_stages) if job_stages else ()
    set_keys = [item.partition("=")[0].strip() for item in args.overrides]  # a --set of a source is the user's
    clear = job_sources.cleared(args, sources, kept=set_keys)
    set_aside = [key for key in clear if job_sources.value(cfg, key)]
    if set_aside:
        cfg = with_overrides(cfg, job_sources.overrides(set_aside))
    if not cfg.run_id:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        cfg = cfg.model_copy(update={"run_id": f"{stamp}-{uuid.uuid4().hex[:8]}"})
    return cfg, job_sources.describe(cfg, args, sources, set_aside, set_keys) if sources else ""


def stage_map(jobs: pipeline.Jobs, stages: dict) -> list[dict]:
    """Each job's tasks in run order: task, stage, what it reads and what it writes."""
    rows = []
    for job, graph in jobs.graphs().items():
        for key in pipeline.order(graph):
            name, deps = graph[key]
            stage = stages.get(name)
            rows.append(
                {
                    "job": job,
                    "task": key,
                    "stage": name,
                    "depends_on": deps,
                    "reads": list(stage.reads) if stage else [],
                    "writes": [t.name for t in stage.writes] if stage else [],
                    "help": stage.help if stage else "unknown stage",
                }
            )
    return rows


def print_stage_map(rows: list[dict], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    for job in dict.fromkeys(r["job"] for r in rows):
        print(f"job {job}")
        entries = [r for r in rows if r["job"] == job]
        header = ("task", "stage", "reads", "writes")
        cells = [[r["task"], r["stage"], ", ".join(r["reads"]) or "-", ", ".join(r["writes"]) or "-"] for r in entries]
        widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
        print("  " + "  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
        for c in cells:
            print("  " + "  ".join(v.ljust(w) for v, w in zip(c, widths)).rstrip())


def main(argv: list[str] | None = None) -> None:
    """The entry point: exits with the run's code (SystemExit), never returns one."""
    code = _main(argv)
    if code:
        raise SystemExit(code)


def _main(argv: list[str] | None = None) -> int:
    args = parse_args(argv if argv is not None else sys.argv[1:])
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "stages":
            jobs = pipeline.locate_jobs(Path.cwd())  # the project's, else the packaged ones
            stages = registry.default_stages()
            print_stage_map(stage_map(jobs, stages), args.json)
            problems = [
                p
                for job, graph in jobs.graphs().items()
                for p in registry.graph_problems(graph, stages, f"job '{job}'")
            ]
            if problems:
                print("\n".join(problems), file=sys.stderr)
                return 2
            return 0
        job = getattr(args, "job", pipeline.DEFAULT_JOB)
        if args.command == "run":
            stages = [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else None
        else:
            stages = [args.command]
        jobs = pipeline.locate_jobs(Path.cwd())  # the project's, else the packaged ones
        graphs = jobs.graphs()
        if args.command != "run":  # one stage: it runs as a task of the job that has it (as a wheel task does)
            job = next((name for name, graph in graphs.items() if args.command in graph), job)
        cfg, sources = configure(args, [stage for stage, _ in graphs.get(job, {}).values()])
        # One line on stderr (stdout carries the stages' lines): what this run was read from.
        line = f"lakesynth: {describe_config(config_file(args))}; {jobs.describe(job)}; {sources}"
        print(line, file=sys.stderr, flush=True)
        summary = pipeline.run(cfg, stages, job=job, jobs=jobs)
    except LakesynthError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the teacher and engine are already stopped; finished calls are journaled
        print("interrupted: rerun the same command to resume where it stopped", file=sys.stderr)
        return 130
    if args.summary:
        Path(args.summary).parent.mkdir(parents=True, exist_ok=True)
        Path(args.summary).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    # A stage skipped on purpose (finetune.backend=none, no training extra) is not a failure.
    return 1 if any(s["status"] == "failed" for s in summary["stages"].values()) else 0


if __name__ == "__main__":
    main()
