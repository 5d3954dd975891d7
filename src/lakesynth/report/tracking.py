"""MLflow tracking: one MLflow run per pipeline run, shared by every task of the job (the `run_log` table, the same
record for SQL without MLflow, is core/run_log.py's).

Tasks of a Databricks job run in separate processes; each finds the run by its `lakesynth.run_id`
tag (the job's run id) and logs into it; tasks that start together create the experiment and the run
once between them (`experiment`, `join_run`). Tracking is best-effort: an MLflow failure is a warning in
the summary, never a failed task (`Tracker`). Parameters are the config with long texts replaced by
their hashes; no secret is ever in the config, so none can reach MLflow. A check (critic, judge,
relevance, dedup) logs what it kept and dropped per reason as metrics, and under `quality/` its
drop reasons and a histogram of its scores, each named for its stage or table so that tasks never
overwrite one another's.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from lakesynth.config import Config, EndpointConfig
from lakesynth.core.run_log import params_of
from lakesynth.core.runtime import Runtime
from lakesynth.errors import LakesynthError

log = logging.getLogger(__name__)
RUN_TAG = "lakesynth.run_id"


def tracking_uri(cfg: Config, rt: Runtime) -> str:
    if cfg.mlflow.tracking_uri:
        return cfg.mlflow.tracking_uri
    if rt.databricks:
        return "databricks"
    return f"sqlite:///{Path(rt.warehouse).parent / 'mlflow.db'}"


def params(cfg: Config) -> dict[str, str]:
    """The config flattened to dotted keys, each endpoint as resolved (with what it takes from the teacher); long
    texts (prompts, rules) as short hashes."""
    own = set(EndpointConfig.model_fields)
    endpoints = {name: cfg.endpoint(name).model_dump(include=own) for name in cfg.endpoints}
    return params_of({**cfg.model_dump(by_alias=True), "endpoints": endpoints})


class Tracker:
    """Logs a run's parameters, per-stage metrics and artifacts into the job run's one MLflow run.

    Best-effort: tracking describes a run and must never fail it. Any MLflow failure (a store that cannot be
    reached, a run deleted under it, a missing library) becomes a line on stdout and a `warnings` entry in the
    summary of each stage this process reports (and in the summary's own `warnings`), never a failed task."""

    def __init__(self, cfg: Config, rt: Runtime) -> None:
        self.cfg = cfg
        self.rt = rt
        self.mlflow = None
        self.run_id: str | None = None
        self.warnings: list[str] = []  # every tracking problem of this process, for the summary
        self._untracked: list[str] = []  # why this process logs nothing (start failed): said in each stage's entry
        self._entries: list[dict[str, Any]] = []  # the stage entries this process reported

    def start(self) -> Tracker:
        """Find or create the experiment and the job run's MLflow run; on any failure, track nothing and say so."""
        if not self.cfg.mlflow.enabled:
            return self
        try:
            import mlflow
        except ImportError:
            self._untracked.append(self._warn("mlflow is not installed: this run is not tracked"))
            return self
        try:
            self.run_id = self._join(mlflow)
            self.mlflow = mlflow
        except Exception as exc:  # noqa: BLE001 - tracking must never fail the task it describes
            self._untracked.append(self._warn(f"not tracked in MLflow ({_describe(exc)})"))
        return self

    def _join(self, mlflow) -> str:
        for name in ("mlflow", "alembic"):  # their INFO lines would drown the one line per stage
            logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
        uri = tracking_uri(self.cfg, self.rt)
        if uri.startswith("sqlite:///"):
            _new_sqlite_store(Path(uri.removeprefix("sqlite:///")), Path(self.cfg.model_cache).expanduser())
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)  # otherwise MLflow asks the Spark session for one
        client = mlflow.MlflowClient(uri)
        name = experiment_name(self.cfg.mlflow.pipeline_experiment, self.rt)
        location = None if self.rt.databricks else str(Path(self.rt.warehouse).parent / "mlartifacts")
        run_id, created = join_run(client, experiment(client, name, location), self.cfg.run_id)
        if created:  # only the task that made the run logs the config, so tasks never disagree on a param
            from mlflow.entities import Param

            client.log_batch(run_id, params=[Param(k, v) for k, v in params(self.cfg).items()])
        return run_id

    def stage(self, key: str, entry: dict[str, Any]) -> None:
        """Metrics of one finished stage: rows in/out, errors, tokens, seconds (numbers only). A check's verdict
        counts too: `<stage>.kept`, `<stage>.dropped` (all reasons) and `<stage>.dropped.<reason>` (`judge:scope`
        as `judge_scope`, metric keys allowing no colon). A failure is a warning in `entry`."""
        self._entries.append(entry)
        if self._untracked:
            entry.setdefault("warnings", []).extend(self._untracked)
        if not self.mlflow:
            return
        try:
            from mlflow.entities import Metric

            client = self.mlflow.MlflowClient()
            client.set_tag(self.run_id, f"stage.{key}", entry["status"])
            numbers = {name: value for name, value in entry.items() if _number(value)}
            dropped = entry.get("dropped")
            if isinstance(dropped, dict):
                reasons = {f"dropped.{_safe(reason)}": n for reason, n in dropped.items() if _number(n)}
                numbers.update(reasons, dropped=sum(reasons.values()))
            now = int(time.time() * 1000)
            metrics = [Metric(f"{key}.{name}", float(value), now, 0) for name, value in numbers.items()]
            client.log_batch(self.run_id, metrics=metrics)
        except Exception as exc:  # noqa: BLE001 - see the class docstring
            entry.setdefault("warnings", []).append(self._warn(f"metrics not logged to MLflow ({_describe(exc)})", key))

    def kill(self, task: str | None) -> None:
        """The run was stopped (Ctrl-C) during `task`: its MLflow run KILLED, not left RUNNING as if it went on,
        and the task's stage tag `interrupted`."""
        if self.mlflow:
            client = self.mlflow.MlflowClient()
            if task:
                self._attempt("the stop", lambda: client.set_tag(self.run_id, f"stage.{task}", "interrupted"))
            self._attempt("the stop", lambda: client.set_terminated(self.run_id, "KILLED"))

    def finish(self, summary: dict[str, Any], ctx, stages: dict | None = None) -> None:
        """The run summary, sample rows of each table, the stages' figures (`stages`: task -> its Stage) and the
        checks' verdicts, as artifacts; each part on its own, so that one failing loses only itself. The summary
        gets this process's tracking warnings."""
        if self.mlflow:
            client = self.mlflow.MlflowClient()
            self._attempt(
                "the run summary",
                lambda: client.log_dict(self.run_id, summary, f"summary-{_safe(self.cfg.run_id)}.json"),
            )
            for name in summary.get("tables", {}):
                self._attempt(f"sample rows of {name}", lambda name=name: self._sample(client, ctx, name))
            drawings: dict[str, Any] = {}
            self._attempt("the plots", lambda: drawings.update(self._figures(summary, ctx, stages or {})))
            for what, draw in drawings.items():
                self._attempt(what, lambda draw=draw: self._plot(client, draw))
            self._attempt("the checks' verdicts", lambda: self._quality(client, summary, ctx))
            if summary.get("funnel"):
                self._attempt("the yield funnel", lambda: self._funnel(client, summary["funnel"]))
        if self.warnings:
            summary.setdefault("warnings", []).extend(w for w in self.warnings if w not in summary["warnings"])

    def _attempt(self, what: str, log_it) -> None:
        try:
            log_it()
        except Exception as exc:  # noqa: BLE001 - see the class docstring
            warning = self._warn(f"{what} not logged to MLflow ({_describe(exc)})")
            for entry in self._entries:
                entry.setdefault("warnings", []).append(warning)

    def _sample(self, client, ctx, name: str) -> None:
        sample = ctx.read(name).limit(20).toPandas()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{name}.json"
            sample.to_json(path, orient="records", force_ascii=False, indent=1, date_format="iso")
            client.log_artifact(self.run_id, str(path), "samples")

    def _plot(self, client, draw) -> None:
        import matplotlib.pyplot as plt

        figures = draw()
        try:
            for path, figure in figures.items():
                client.log_figure(self.run_id, figure, path)
        finally:
            for figure in figures.values():
                plt.close(figure)

    def _figures(self, summary: dict[str, Any], ctx, stages: dict) -> dict[str, Any]:
        """What to plot -> a function drawing its figures ({artifact path: figure}): the figures each stage that ran
        here declares (`Stage.figures`), from its summary entry."""
        figures: dict[str, Any] = {}
        for key, entry in summary.get("stages", {}).items():
            stage = stages.get(key)
            if stage is not None and stage.figures and entry.get("status") == "ok" and "disabled" not in entry:
                figures[f"the figures of {key}"] = lambda stage=stage, entry=entry: stage.figures(ctx, entry)
        return figures

    def _warn(self, message: str, task: str = "mlflow") -> str:
        """`message` logged, printed (the task's output is where a job's user looks) and kept for the summary."""
        log.warning("%s: %s", task, message)
        print(f"{task}: warning: {message}", flush=True)
        self.warnings.append(message)
        return message

    def _quality(self, client, summary: dict[str, Any], ctx) -> None:
        """Each check of this process: its drop reasons (`quality/<stage>_drop_reasons.json`, the counts its
        metrics hold) and, for a verdict table it wrote with scores, their histogram (`quality/<table>_scores.png`)."""
        for key, entry in summary.get("stages", {}).items():
            if entry.get("status") == "ok" and isinstance(entry.get("dropped"), dict):
                verdicts = {"kept": entry.get("kept", 0), "dropped": entry["dropped"]}
                client.log_dict(self.run_id, verdicts, f"quality/{_safe(key)}_drop_reasons.json")
        for name in summary.get("tables", {}):
            contract = ctx.contracts.get(name)
            if contract is None or not contract.verdict_of:
                continue
            counts = score_counts(ctx.read(name, kept=False))
            if counts:
                import matplotlib.pyplot as plt

                figure = score_figure(counts, f"{name}: rows per score")
                client.log_figure(self.run_id, figure, f"quality/{name}_scores.png")
                plt.close(figure)

    def _funnel(self, client, found: dict[str, Any]) -> None:
        """The run's yield funnel (core/funnel.py): `funnel/funnel.json`, its plot `funnel/funnel.png`, and metrics
        `funnel.generated`, `funnel.kept`, `funnel.<step>.dropped` and the tokens (cost) per 1,000 kept."""
        import matplotlib.pyplot as plt
        from mlflow.entities import Metric

        from lakesynth.report import funnel

        client.log_dict(self.run_id, found, "funnel/funnel.json")
        figure = funnel.figure(found)
        try:
            client.log_figure(self.run_id, figure, "funnel/funnel.png")
        finally:
            plt.close(figure)
        numbers = {"generated": found["generated"], "kept": found["kept"]}
        numbers.update({f"{s['step']}.dropped": s["dropped"] for s in found["steps"]})
        numbers.update({k: v for k, v in found.get("spend", {}).items() if k.endswith(("_kept", "_usd"))})
        now = int(time.time() * 1000)
        client.log_batch(self.run_id, metrics=[Metric(f"funnel.{k}", float(v), now, 0) for k, v in numbers.items()])


SETTLE_S = 0.5  # least wait, after creating a run, for the runs a racing task created (see join_run)


def experiment_name(name: str, rt: Runtime) -> str:
    """The experiment a run logs to. On Databricks experiments are named by workspace path, and a bare name gets one
    per deployed target: `/Shared/<name>-<catalog>.<schema>` (a dev deploy's schema carries its user's prefix), so
    dev users and prod never share one. A path is taken as given."""
    if rt.databricks and not name.startswith("/"):
        return f"/Shared/{name}-{rt.catalog}.{rt.schema}"
    return name


def experiment(client, name: str, location: str | None) -> str:
    """The id of experiment `name`, created if missing. Tasks that start together all find it missing and all
    create it: the losers get RESOURCE_ALREADY_EXISTS, and use the winner's."""
    from mlflow.exceptions import MlflowException

    for _ in range(3):
        found = client.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage != "active":
                raise LakesynthError(
                    f"MLflow experiment {name} is deleted: restore it, or set mlflow.pipeline_experiment to another name"
                )
            return found.experiment_id
        try:
            return client.create_experiment(name, artifact_location=location)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
    raise LakesynthError(f"MLflow experiment {name} exists but cannot be read")


def join_run(client, experiment_id: str, run_key: str) -> tuple[str, bool]:
    """The MLflow run of job run `run_key` (found by its RUN_TAG), created if missing: (its id, whether this call
    created it). Every task of a job run, whatever order they start in, logs into this one run.

    Tasks that start together all find none and each create one. Each then waits until every run created in
    that race exists (a racer searched before this run existed, so it created its run at most its own
    search-and-create latency later: the wait is SETTLE_S or three times ours, whichever is longer), lists them,
    and keeps the earliest (start time, then run id: every racer picks the same). A loser deletes its own run,
    never another's, so the kept one is never deleted, and a later task finds it alone."""
    began = time.monotonic()
    found = _tagged(client, experiment_id, run_key)
    if found:
        return found[0].info.run_id, False
    mine = client.create_run(experiment_id, run_name=run_key, tags={RUN_TAG: run_key}).info.run_id
    time.sleep(max(SETTLE_S, 3 * (time.monotonic() - began)))
    runs = _tagged(client, experiment_id, run_key)
    kept = runs[0].info.run_id if runs else mine
    if kept != mine:
        client.delete_run(mine)
    return kept, kept == mine


def _tagged(client, experiment_id: str, run_key: str) -> list:
    """The active runs tagged with `run_key`, earliest first (start time, then run id)."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{RUN_TAG}` = '{run_key}'",
        max_results=100,
        order_by=["attributes.start_time ASC"],
    )
    return sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))


def _describe(exc: Exception) -> str:
    """An exception in one line, a URL's user and password masked (a tracking URI may carry them)."""
    import re

    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    text = re.sub(r"(\w+://)[^/@\s]+@", r"\1***@", text)
    return text[:400] + ("..." if len(text) > 400 else "")


SCORE_BUCKET = 0.05  # width of a bar of a continuous score's histogram (a cosine, say)


def score_counts(verdicts) -> dict[str, dict[float, int]]:
    """Rows per score of a verdict table, from a small Spark aggregate: its `score` column (as `score`; a
    continuous one in buckets of SCORE_BUCKET, keyed by their lower edge), or each criterion of its `scores` JSON
    (the judge's `{criterion: {reasoning, score}}`). Empty for a table with neither or without a score yet."""
    from pyspark.sql import functions as F

    types = dict(verdicts.dtypes)
    if "score" in types:
        score = F.col("score")
        if types["score"] in ("double", "float"):
            score = F.round(F.floor(score / SCORE_BUCKET) * SCORE_BUCKET, 4)
        each = verdicts.select(F.lit("score").alias("name"), score.alias("score"))
    elif "scores" in types:
        parsed = F.from_json("scores", "map<string, struct<score: int>>")
        each = verdicts.select(F.explode(parsed).alias("name", "verdict")).select("name", "verdict.score")
    else:
        return {}
    counts: dict[str, dict[float, int]] = {}
    for r in each.where("score IS NOT NULL").groupBy("name", "score").count().collect():
        counts.setdefault(r["name"], {})[r["score"]] = r["count"]
    return {name: dict(sorted(hist.items())) for name, hist in sorted(counts.items())}


def score_figure(panels: dict[str, dict[float, int]], title: str = ""):
    """A bar chart of rows per score for each panel (a check's score, or one criterion of it): whole scores as
    one bar each from the lowest to the highest, a continuous score as bars of SCORE_BUCKET."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels) + 1, 3), squeeze=False)
    for ax, (name, hist) in zip(axes[0], panels.items()):
        if all(isinstance(s, int) for s in hist):
            scores = range(min(hist), max(hist) + 1)
            ax.bar([str(s) for s in scores], [hist.get(s, 0) for s in scores])
        else:
            ax.bar(list(hist), list(hist.values()), width=SCORE_BUCKET, align="edge", edgecolor="white")
        ax.set_title(name)
        ax.set_xlabel("score")
    axes[0][0].set_ylabel("rows")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _new_sqlite_store(path: Path, cache_dir: Path) -> None:
    """A new sqlite tracking store, copied from an empty migrated one kept in the cache: MLflow would otherwise
    run its ~50 schema migrations on every new store, which takes seconds (once per machine and MLflow version
    now)."""
    if path.exists():
        return
    import os
    import shutil

    import mlflow
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    template = cache_dir / f"mlflow-empty-{mlflow.__version__}.db"
    if not template.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        scratch = template.with_name(f".{template.name}.{os.getpid()}")
        SqlAlchemyStore(f"sqlite:///{scratch}", str(cache_dir / "mlartifacts-unused")).engine.dispose()
        os.replace(scratch, template)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Tasks that start together all find no store: each copies the template beside it, and the first to link
    # its copy into place wins. A plain copy onto `path` could truncate a store another task already writes to.
    scratch = path.with_name(f".{path.name}.{os.getpid()}")
    shutil.copyfile(template, scratch)
    try:
        os.link(scratch, path)
    except FileExistsError:
        pass
    finally:
        scratch.unlink()


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)
