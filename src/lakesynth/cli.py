"""The `lakesynth` command: `run` for a whole job, one stage by name, or `stages` for the map of the jobs;
also the wheel's entry point. The stage subcommands are the registered stages (registry.py); the flags and the
config they make are core/command.py's.

Exit codes: 0 success (stages ok or skipped on purpose), 1 a stage failed, 2 bad command line or config.
The entry point raises SystemExit with that code: a Databricks wheel task ignores a returned value.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from lakesynth import pipeline
from lakesynth.core import estimate, registry, starter
from lakesynth.core.command import build_config, config_file, configure, describe_config, neutral, parse_args
from lakesynth.core.runtime import Runtime
from lakesynth.errors import ConfigError, LakesynthError
from lakesynth.llm import stop

INTERRUPTED = "interrupted: finished requests are kept; rerun the same command to resume where it stopped"
PREVIEW_INTERRUPTED = "interrupted: the preview's scratch schema is removed; no table of the job changed"

__all__ = ["build_config", "config_file", "configure", "describe_config", "main", "parse_args"]


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


def look(args) -> int:
    """`show` and `report`: read the tables the last run wrote (notebook.find_warehouse), never write one."""
    from lakesynth.report import notebook, page, show

    folder = notebook.find_warehouse(args.warehouse or "")
    ctx = notebook.open_tables(
        args.catalog or "",
        args.schema or "",
        args.volume or "",
        warehouse=str(folder or ""),
        config=str(config_file(args) or ""),  # as `run` finds it here: its endpoints' prices price the funnel
        overrides=args.overrides,
    )
    with ctx:
        if not any(ctx.exists(name) for name in ctx.contracts):
            raise notebook.NoTables(f"no tables in {ctx.where()}: run `lakesynth run` first, or give --warehouse")
        stages = registry.default_stages()
        if args.command == "show":
            show.show(ctx, stages, args.table, n=args.n, where=args.where, dropped=args.dropped)
            return 0
        out = Path(args.out) if args.out else Path(ctx.rt.warehouse).parent / "report.html"
        run_id = notebook.last_run(Path(ctx.rt.warehouse)).get("run_id", "")
        settled = ctx.with_settings([f"run_id={json.dumps(run_id)}"]) if run_id else ctx
        written = page.render(settled, stages, out.resolve(), run_id)
    print(f"report: {written}")
    return 0


def init(args) -> int:
    """`lakesynth init`: the starting project, and what to do next."""
    graphs = pipeline.locate_jobs(Path.cwd()).graphs()
    if args.job not in graphs:
        raise ConfigError(f"--job {args.job}: no such job (known: {', '.join(graphs)})")
    folder = Path(args.folder)
    project = starter.init(
        folder, job_stages=[stage for stage, _ in graphs[args.job].values()], name=args.name, title=args.title
    )
    print("wrote " + ", ".join(str(p.relative_to(project.folder)) for p in project.files) + f" in {project.folder}")
    job = "" if args.job == pipeline.DEFAULT_JOB else f" --job {args.job}"
    where = "" if folder.resolve() == Path.cwd().resolve() else f"\n  cd {folder}"
    print(
        "next: write your rules in conf/rules.md and your seed questions in conf/seeds.csv"
        + (", your tools in conf/functions.py and example calls in conf/tool_seeds.jsonl" if job else "")
        + f", then:{where}\n  lakesynth preview{job}   # a few seeds through every stage, nothing stored"
        + f"\n  lakesynth run{job}"
        + "\nto deploy to Databricks: copy conf/ over the conf/ of a clone of the lakesynth repository (the bundle), "
        "then `databricks bundle deploy --var catalog=<catalog>` there (README: Deploy to Databricks)"
    )
    return 0


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
        if args.command in ("show", "report"):
            return look(args)
        if args.command == "init":
            return init(args)
        job = getattr(args, "job", pipeline.DEFAULT_JOB)
        if args.command in ("preview", "estimate"):
            return _preview(args, job) if args.command == "preview" else _estimate(args, job)
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
        config = describe_config(config_file(args), neutral_default=neutral(args))
        line = f"lakesynth: {config}; {jobs.describe(job)}; {sources}"
        print(line, file=sys.stderr, flush=True)
        if args.command == "run":
            saved = estimate.load(Runtime.resolve(cfg), job)
            if saved:
                print(estimate.render(saved), file=sys.stderr, flush=True)
        with stop.on_interrupt(INTERRUPTED):
            summary = pipeline.run(cfg, stages, job=job, jobs=jobs)
    except LakesynthError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the teacher and engine are already stopped; finished calls are journaled
        stop.say(INTERRUPTED)
        return stop.EXIT_CODE
    if args.summary:
        Path(args.summary).parent.mkdir(parents=True, exist_ok=True)
        Path(args.summary).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    # A stage skipped on purpose (finetune.backend=none, no training extra) is not a failure.
    return 1 if any(s["status"] == "failed" for s in summary["stages"].values()) else 0


def _preview(args, job: str) -> int:
    """`lakesynth preview`: the examples with their verdicts, the file, the comparison, the estimate."""
    from rich.console import Console

    from lakesynth.report import preview as show

    jobs = pipeline.locate_jobs(Path.cwd())
    job_stages = [stage for stage, _ in jobs.graphs().get(job, {}).values()]
    cfg, sources = configure(args, job_stages)
    print(
        f"lakesynth: preview of {args.n}; {describe_config(config_file(args))}; {jobs.describe(job)}; {sources}",
        file=sys.stderr,
        flush=True,
    )
    console = Console()
    try:
        with stop.on_interrupt(PREVIEW_INTERRUPTED):
            base = pipeline.preview(
                cfg, n=args.n, job=job, jobs=jobs, show=lambda new: show.print_examples(new, console)
            )
            if args.compare:
                other_args = argparse.Namespace(**{**vars(args), "overrides": [*args.overrides, *args.compare]})
                other_cfg, _ = configure(other_args, job_stages)
                other = pipeline.preview(other_cfg, n=args.n, job=job, jobs=jobs, save=False)
    except KeyboardInterrupt:
        stop.say(PREVIEW_INTERRUPTED)
        return stop.EXIT_CODE
    text = estimate.render(base["estimate"])
    title = f"lakesynth preview: job {job}, {base['estimate']['preview_units']} {base['estimate']['unit']}"
    document = show.markdown(base["frame"], title, text)
    if args.compare:
        names = ("as configured", " ".join(args.compare))
        figures = show.comparison(base, other, names)
        pairs = show.side_by_side(base["frame"], other["frame"], names)
        show.print_comparison(figures, pairs, console)
        document += "\n## Comparison\n\n" + show.markdown_table(figures) + "\n\n" + show.markdown_table(pairs) + "\n"
    out = Path(args.out) if args.out else Path(cfg.warehouse).parent / f"preview-{job}.md"
    show.write(out, document)
    print(text)
    failed = [k for k, s in base["summary"]["stages"].items() if s["status"] == "failed"]
    saved = (
        f"not saved ({', '.join(failed)} failed)" if failed else f"saved to {estimate.path(Runtime.resolve(cfg), job)}"
    )
    print(f"preview written to {out}; estimate {saved}")
    return 1 if failed else 0


def _estimate(args, job: str) -> int:
    """`lakesynth estimate`: the estimate the last preview saved, without running anything."""
    cfg = build_config(args)
    saved = estimate.load(Runtime.resolve(cfg), job)
    if saved is None:
        print(
            f"no estimate saved for job {job} in {estimate.path(Runtime.resolve(cfg), job)}: run "
            f"`lakesynth preview --job {job}` first",
            file=sys.stderr,
        )
        return 2
    print(estimate.render(saved))
    return 0


if __name__ == "__main__":
    main()
