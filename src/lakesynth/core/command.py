"""The command line's flags and the config they make: shared by the `lakesynth` command (cli.py) and the GPU task
(training/ai_runtime.py), which reads its config as `lakesynth finetune` would.

The input flags (--seeds, --tools, ...) are the sources the registered stages declare (`Stage.sources`); what a
flag sets depends on the job being run (core/sources.py).
"""

from __future__ import annotations

import argparse
import json
import uuid
from collections.abc import Collection
from datetime import datetime, timezone
from pathlib import Path

from lakesynth.config import Config, default_config_file, packaged_config, with_overrides
from lakesynth.core import registry
from lakesynth.core import sources as job_sources
from lakesynth.core.bundle import DEFAULT_JOB


def _parser() -> argparse.ArgumentParser:
    registered = registry.default_stages()
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", help="pipeline config YAML (default: conf/lakesynth.yml here if it exists, else the packaged one)"
    )
    helps: dict[str, list[str]] = {}  # each input's flag, as the stages that read it declare it (Stage.sources)
    for source in registry.sources(registered):
        helps.setdefault(source.flag, []).append(source.help)
    for flag, parts in helps.items():
        common.add_argument(f"--{flag}", help="; ".join(dict.fromkeys(parts)))
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
    run.add_argument("--job", default=DEFAULT_JOB, help="the bundle job to run (default: %(default)s)")
    preview = sub.add_parser(
        "preview", parents=[common], help="run the job's generation and check stages on a few seeds, changing no table"
    )
    preview.add_argument("--job", default=DEFAULT_JOB, help="the bundle job to preview (default: %(default)s)")
    preview.add_argument("-n", type=int, default=3, help="seeds, leaves or tools to preview (default: %(default)s)")
    preview.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="preview the same seeds again with this override too and show both side by side (repeatable)",
    )
    preview.add_argument("--out", help="the preview file, Markdown (default: preview-<job>.md beside the warehouse)")
    estimate = sub.add_parser("estimate", parents=[common], help="print the estimate the last preview saved")
    estimate.add_argument("--job", default=DEFAULT_JOB, help="the bundle job (default: %(default)s)")
    stages = sub.add_parser("stages", help="list each job's stages in order, with the tables they read and write")
    stages.add_argument("--json", action="store_true", help="print JSON for machines instead of a table")
    for name, stage in registered.items():
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


def build_config(args: argparse.Namespace, job_stages: Collection[str] = ()) -> Config:
    """The config file with the flags applied. With `job_stages` (the stages of the job being run), a flag means
    that job's source (--seeds: the function-calling seed pairs in the job that generates calls), and a flag naming
    a source of that job sets aside the config's sources it replaces."""
    return configure(args, job_stages)[0]


def configure(args: argparse.Namespace, job_stages: Collection[str]) -> tuple[Config, str]:
    """The config with the flags applied (job_sources: a flag's source replaces the config's), and the
    sources line the run starts with."""
    stages = registry.default_stages()
    sources = registry.sources(stages, job_stages) if job_stages else ()
    overrides = []
    for flag, key in job_sources.flag_keys((*sources, *registry.sources(stages))).items():
        given = getattr(args, flag, None)
        if given:
            value = given if given.startswith("table:") else str(Path(given).resolve())
            overrides.append(f"{key}={json.dumps(value)}")
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
    set_keys = [item.partition("=")[0].strip() for item in args.overrides]  # a --set of a source is the user's
    clear = job_sources.cleared(args, sources, kept=set_keys)
    set_aside = [key for key in clear if job_sources.value(cfg, key)]
    if set_aside:
        cfg = with_overrides(cfg, job_sources.overrides(set_aside))
    if not cfg.run_id:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        cfg = cfg.model_copy(update={"run_id": f"{stamp}-{uuid.uuid4().hex[:8]}"})
    return cfg, job_sources.describe(cfg, args, sources, set_aside, set_keys) if sources else ""
