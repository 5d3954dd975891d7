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

from lakesynth.config import Config, default_config_file, names_a_file, packaged_config, with_overrides
from lakesynth.core import registry
from lakesynth.core import sources as job_sources
from lakesynth.core.bundle import DEFAULT_JOB

# The packaged samples a --config may name: the bank chatbot (and the toy bank's tools), the taxonomy sample.
SAMPLES = {"bank": "lakesynth.yml", "taxonomy": "taxonomy.yml"}
GENERIC_SYSTEM_PROMPT = "You are a helpful assistant. Answer accurately and concisely; say so when you do not know."
# A run with no config of its own keeps the packaged sample's settings and sources, not its domain: no rules, a
# generic system prompt, no bank customers as the tool requests' personas; and a schema of its own, so that the bank
# sample (`--config bank`, mirror mode) run on the same warehouse never replaces the user's seeds.
NEUTRAL_SCHEMA = "lakesynth_default"
NEUTRAL_USE_CASE = [
    "use_case.name=default",
    f"schema={NEUTRAL_SCHEMA}",
    "use_case.rules_file=''",
    "use_case.rules=''",
    f"use_case.system_prompt={json.dumps(GENERIC_SYSTEM_PROMPT)}",
    "tools.generation.personas.roles=[]",
]


def _parser() -> argparse.ArgumentParser:
    registered = registry.default_stages()
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        help="pipeline config YAML, or a packaged sample by name (" + ", ".join(SAMPLES) + "); default: "
        "conf/lakesynth.yml here if it exists, else a domain-neutral default (no domain rules, a generic system prompt)",
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
        help="override a config key, e.g. --set endpoints.teacher.max_concurrency=32 (repeatable); a relative file "
        "path given here (use_case.rules_file=my_rules.md, seed.path=...) is relative to the working folder",
    )
    common.add_argument("--summary", help="write the run summary JSON to this file")
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser = argparse.ArgumentParser(prog="lakesynth", description="Synthetic fine-tuning data on the lakehouse.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", parents=[common], help="run every task of a bundle job, in order")
    run.add_argument("--stages", help="comma-separated subset of the job's tasks to run")
    run.add_argument("--job", default=DEFAULT_JOB, help="the bundle job to run (default: %(default)s)")
    init = sub.add_parser(
        "init", help="write a starting project of your own domain: config, rules, seeds (and tools) templates"
    )
    init.add_argument("folder", nargs="?", default=".", help="where to write it (default: here); files go in conf/")
    init.add_argument("--job", default=DEFAULT_JOB, help="the job it is for (default: %(default)s); "
                      "the function-calling job's adds a functions template and seed pairs")  # fmt: skip
    init.add_argument("--name", help="the use case's name (default: the folder's name)")
    init.add_argument("--title", help="what the assistant is of, in the prompts (default: from the name)")
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
    show = sub.add_parser("show", parents=[common], help="print a table's rows beside their verdicts and reasons")
    show.add_argument("table", help="a table of the pipeline, e.g. pair_verdicts or synthetic_responses")
    show.add_argument("-n", type=int, default=10, help="rows to print (default: %(default)s)")
    show.add_argument("--where", default="", help="a SQL condition on the table's columns, e.g. \"topic = 'cards'\"")
    show.add_argument("--dropped", action="store_true", help="only the rows a check dropped")
    report = sub.add_parser("report", parents=[common], help="write the dataset report of the last run as HTML")
    report.add_argument("--out", default="", help="the HTML file (default: report.html beside the warehouse)")
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The CLI's parsing alone (exits 2 on bad flags), for checking the bundle's task parameters."""
    return _parser().parse_args(argv)


def config_file(args: argparse.Namespace) -> Path | None:
    """--config (a file, or a packaged sample by name), else conf/lakesynth.yml in the working folder, else the
    config packaged in the wheel (with `neutral`'s overrides)."""
    if args.config:
        sample = SAMPLES.get(args.config)
        return packaged_config().with_name(sample) if sample and not Path(args.config).is_file() else Path(args.config)
    return default_config_file()


def neutral(args: argparse.Namespace) -> bool:
    """Whether this run takes the domain-neutral default: no config of its own (no --config, no conf/lakesynth.yml
    here), so the packaged sample's settings and sources without its use case (NEUTRAL_USE_CASE)."""
    return not args.config and config_file(args) == packaged_config()


def describe_config(file: Path | None, *, neutral_default: bool = False) -> str:
    if file is None:
        return "config none (built-in defaults)"
    if neutral_default:
        return (
            "config: domain-neutral default (no domain rules, a generic system prompt; the settings of "
            f"{file.absolute()}); `lakesynth init` writes a project of your own, `--config bank` runs the bank sample"
        )
    packaged = " (packaged sample)" if file.parent == packaged_config().parent else ""
    return f"config {file.absolute()}{packaged}"


def _from_here(item: str, path_keys: Collection[str]) -> str:
    """A `--set` of a file path, made absolute against the working folder (a path typed on the command line is
    the user's, not the config file's folder's); any other override as given."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    value = raw.strip().strip("'\"")
    is_path = key in path_keys or key.endswith("_file")
    if not sep or not is_path or not names_a_file(value) or Path(value).is_absolute():
        return item
    return f"{key}={json.dumps(str(Path(value).resolve()))}"


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
            value = str(Path(given).resolve()) if names_a_file(given) else given
            overrides.append(f"{key}={json.dumps(value)}")
            if value.startswith("mcp:") and not any(o.startswith("tools.mcp.cwd") for o in args.overrides):
                # A server command typed here runs here, as a path typed here is read from here.
                overrides.append(f"tools.mcp.cwd={json.dumps(str(Path.cwd()))}")
    for flag, key in (
        ("warehouse", "warehouse"),
        ("catalog", "catalog"),
        ("schema", "schema"),
        ("volume", "volume"),
        ("run_id", "run_id"),
    ):
        if getattr(args, flag):
            overrides.append(f"{key}={json.dumps(getattr(args, flag))}")
    path_keys = {key for source in registry.sources(stages) for key in source.keys}
    given = [_from_here(item, path_keys) for item in args.overrides]
    defaults = NEUTRAL_USE_CASE if neutral(args) else []
    cfg = registry.load_config(config_file(args), defaults + overrides + given)
    set_keys = [item.partition("=")[0].strip() for item in args.overrides]  # a --set of a source is the user's
    clear = job_sources.cleared(args, sources, kept=set_keys)
    set_aside = [key for key in clear if job_sources.value(cfg, key)]
    if set_aside:
        cfg = with_overrides(cfg, job_sources.overrides(set_aside))
    if not cfg.run_id:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        cfg = cfg.model_copy(update={"run_id": f"{stamp}-{uuid.uuid4().hex[:8]}"})
    return cfg, job_sources.describe(cfg, args, sources, set_aside, set_keys) if sources else ""
