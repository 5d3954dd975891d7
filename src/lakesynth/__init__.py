"""lakesynth: synthetic fine-tuning data for LLMs as Spark/Delta batch jobs."""

__version__ = "0.1.0"


def preview(
    config: str | None = None,
    *,
    n: int = 3,
    job: str = "lakesynth",
    overrides: tuple[str, ...] | list[str] = (),
    compare: tuple[str, ...] | list[str] = (),
    display: bool = True,
):
    """`lakesynth preview` in a notebook: the examples of a preview of `n` seeds (leaves, tools) with their verdicts,
    as a pandas DataFrame (shown when IPython is there). With `compare` (KEY=VALUE overrides), both previews' examples,
    a `config` column telling them apart. The job's tables are never touched; the estimate is saved as the CLI's."""
    import pandas as pd

    from lakesynth import pipeline
    from lakesynth.core.command import configure, parse_args

    argv = ["preview", "-n", str(n), "--job", job, *(["--config", config] if config else [])]
    args = parse_args([*argv, *[f"--set={o}" for o in overrides]])
    jobs = pipeline.locate_jobs()
    job_stages = [stage for stage, _ in jobs.graphs().get(job, {}).values()]
    frames = [
        pipeline.preview(configure(args, job_stages)[0], n=n, job=job, jobs=jobs)["frame"].assign(
            config="as configured"
        )
    ]
    if compare:
        other = parse_args([*argv, *[f"--set={o}" for o in [*overrides, *compare]]])
        made = pipeline.preview(configure(other, job_stages)[0], n=n, job=job, jobs=jobs, save=False)
        frames.append(made["frame"].assign(config=" ".join(compare)))
    frame = pd.concat(frames, ignore_index=True)
    if display:
        try:
            from IPython.display import display as show

            show(frame)
        except ImportError:
            pass
    return frame
