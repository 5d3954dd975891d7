"""The `lakesynth` command: `run` for the whole job, or one stage by name; also the wheel's entry point.

Exit codes: 0 success (stages ok or skipped on purpose), 1 a stage failed, 2 bad command line or config.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path

from lakesynth import pipeline
from lakesynth.config import Config, load_config
from lakesynth.errors import LakesynthError

STAGE_HELP = {
    "seed": "ingest seed questions into seed_questions",
    "questions": "generate new questions from the seeds into synthetic_questions",
    "responses": "answer the questions with ai_query into synthetic_responses",
    "format": "turn answered questions into training_chat and one chat JSONL file per split",
    "finetune": "fine-tune a student on the JSONL (backend local, ai_runtime or foundation_model)",
}


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="pipeline config YAML (default: conf/lakesynth.yml)")
    common.add_argument("--seeds", help="seed file (.csv/.jsonl) or table:<catalog.schema.table>")
    common.add_argument("--warehouse", help="local warehouse directory (default: .lakesynth/warehouse)")
    common.add_argument("--catalog", help="catalog of the pipeline's tables (job parameter)")
    common.add_argument("--schema", help="schema of the pipeline's tables (job parameter)")
    common.add_argument("--run-id", help="id stamped on every row (default: a new one)")
    common.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set teacher.max_concurrency=32 (repeatable)",
    )
    common.add_argument("--summary", help="write the run summary JSON to this file")
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser = argparse.ArgumentParser(prog="lakesynth", description="Synthetic fine-tuning data on the lakehouse.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", parents=[common], help="run every task of the bundle job, in order")
    run.add_argument("--stages", help="comma-separated subset of the job's tasks to run")
    for name, text in STAGE_HELP.items():
        sub.add_parser(name, parents=[common], help=text)
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The CLI's parsing alone (exits 2 on bad flags), for checking the bundle's task parameters."""
    return _parser().parse_args(argv)


def build_config(args: argparse.Namespace) -> Config:
    overrides = list(args.overrides)
    if args.seeds:
        seeds = args.seeds if args.seeds.startswith("table:") else str(Path(args.seeds).resolve())
        overrides.append(f"seeds.path={json.dumps(seeds)}")
    for flag, key in (("warehouse", "warehouse"), ("catalog", "catalog"), ("schema", "schema"), ("run_id", "run_id")):
        if getattr(args, flag):
            overrides.append(f"{key}={json.dumps(getattr(args, flag))}")
    cfg = load_config(args.config, overrides)
    if not cfg.run_id:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        cfg = cfg.model_copy(update={"run_id": f"{stamp}-{uuid.uuid4().hex[:8]}"})
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv if argv is not None else sys.argv[1:])
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        cfg = build_config(args)
        if args.command == "run":
            stages = [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else None
        else:
            stages = [args.command]
        summary = pipeline.run(cfg, stages)
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
    sys.exit(main())
