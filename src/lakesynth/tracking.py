"""Run metadata: the `run_log` Delta table (one row per stage run, for SQL without MLflow) and MLflow tracking,
one MLflow run per pipeline run, shared by every task of the job.

Tasks of a Databricks job run in separate processes; each finds the run by its `lakesynth.run_id`
tag (the job's run id) and logs into it. Parameters are the config with long texts replaced by
their hashes; no secret is ever in the config, so none can reach MLflow. A check (critic, judge,
relevance, dedup) logs what it kept and dropped per reason as metrics, and under `quality/` its
drop reasons and a histogram of its scores, each named for its stage or table so that tasks never
overwrite one another's.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from lakesynth import tables
from lakesynth.config import Config
from lakesynth.runtime import Runtime
from lakesynth.tables import L, S

log = logging.getLogger(__name__)
RUN_TAG = "lakesynth.run_id"
LONG_TEXT = ("template", "rules", "system_prompt")


def tracking_uri(cfg: Config, rt: Runtime) -> str:
    if cfg.mlflow.tracking_uri:
        return cfg.mlflow.tracking_uri
    if rt.databricks:
        return "databricks"
    return f"sqlite:///{Path(rt.warehouse).parent / 'mlflow.db'}"


def params(cfg: Config) -> dict[str, str]:
    """The config flattened to dotted keys; long texts (prompts, rules) as short hashes."""
    return params_of(cfg.model_dump(by_alias=True))


class Tracker:
    """Logs a run's parameters, per-stage metrics and artifacts; a no-op when disabled or unavailable."""

    def __init__(self, cfg: Config, rt: Runtime) -> None:
        self.cfg = cfg
        self.rt = rt
        self.mlflow = None
        self.run_id: str | None = None

    def start(self) -> Tracker:
        if not self.cfg.mlflow.enabled:
            return self
        try:
            import mlflow
        except ImportError:
            log.warning("mlflow is not installed: this run is not tracked (pip install 'lakesynth[local]')")
            return self
        for name in ("mlflow", "alembic"):  # their INFO lines would drown the one line per stage
            logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
        uri = tracking_uri(self.cfg, self.rt)
        if uri.startswith("sqlite:///"):
            _new_sqlite_store(Path(uri.removeprefix("sqlite:///")), Path(self.cfg.teacher.model_cache).expanduser())
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)  # otherwise MLflow asks the Spark session for one
        name = self.cfg.mlflow.experiment
        if self.rt.databricks and not name.startswith("/"):
            name = f"/Shared/{name}"  # workspace experiments are named by path
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is None:
            location = None if self.rt.databricks else str(Path(self.rt.warehouse).parent / "mlartifacts")
            experiment_id = mlflow.create_experiment(name, artifact_location=location)
        else:
            experiment_id = experiment.experiment_id
        found = mlflow.search_runs(
            [experiment_id],
            filter_string=f"tags.`{RUN_TAG}` = '{self.cfg.run_id}'",
            output_format="list",
            max_results=1,
        )
        client = mlflow.MlflowClient()
        if found:
            self.run_id = found[0].info.run_id
        else:
            run = client.create_run(experiment_id, run_name=self.cfg.run_id, tags={RUN_TAG: self.cfg.run_id})
            self.run_id = run.info.run_id
            from mlflow.entities import Param

            client.log_batch(self.run_id, params=[Param(k, v) for k, v in params(self.cfg).items()])
        self.mlflow = mlflow
        return self

    def stage(self, key: str, entry: dict[str, Any]) -> None:
        """Metrics of one finished stage: rows in/out, errors, tokens, seconds (numbers only). A check's verdict
        counts too: `<stage>.kept`, `<stage>.dropped` (all reasons) and `<stage>.dropped.<reason>` (`judge:scope`
        as `judge_scope`, metric keys allowing no colon)."""
        if not self.mlflow:
            return
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

    def finish(self, summary: dict[str, Any], ctx) -> None:
        """The run summary, sample rows of each table, the report's plots and the checks' verdicts, as artifacts."""
        if not self.mlflow:
            return
        client = self.mlflow.MlflowClient()
        client.log_dict(self.run_id, summary, f"summary-{_safe(self.cfg.run_id)}.json")
        from lakesynth import insights

        for name in summary.get("tables", {}):
            sample = ctx.read(name).limit(20).toPandas()
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / f"{name}.json"
                sample.to_json(path, orient="records", force_ascii=False, indent=1, date_format="iso")
                client.log_artifact(self.run_id, str(path), "samples")
        if "training_chat" in summary.get("tables", {}):
            import matplotlib.pyplot as plt

            for fig_name, figure in insights.dataset_figures(ctx.spark, ctx.rt).items():
                client.log_figure(self.run_id, figure, f"report/{fig_name}.png")
                plt.close(figure)
        self._quality(client, summary, ctx)
        evaluated = summary.get("stages", {}).get("evaluate", {})
        if evaluated.get("status") == "ok" and "base_score" in evaluated:
            import matplotlib.pyplot as plt

            from lakesynth import evaluate

            figure = evaluate.figure(evaluated)
            client.log_figure(self.run_id, figure, "evaluate/base_vs_tuned.png")
            plt.close(figure)
        balanced = summary.get("stages", {}).get("leaf_topup", {})
        if balanced.get("status") == "ok" and balanced.get("kept_per_leaf_after"):
            import matplotlib.pyplot as plt

            counts = {"before": balanced.get("kept_per_leaf_before", {}), "after": balanced["kept_per_leaf_after"]}
            figure = insights.leaf_figure(counts, ctx.cfg.taxonomy.per_leaf)
            client.log_figure(self.run_id, figure, "taxonomy/kept_per_leaf.png")
            plt.close(figure)
        scored = summary.get("stages", {}).get("tool_evaluate", {})
        if scored.get("status") == "ok" and scored.get("examples"):
            import matplotlib.pyplot as plt

            from lakesynth import tool_evaluate

            figure = tool_evaluate.figure(scored)
            client.log_figure(self.run_id, figure, "tool_evaluate/accuracy_by_category.png")
            plt.close(figure)

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
    shutil.copyfile(template, path)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


D = tables.T.DoubleType()
RUN_LOG = tables.contract(
    "run_log",
    [
        ("entry_id", S),
        ("task", S),
        ("stage", S),
        ("status", S),
        ("reason", S),
        ("model", S),
        ("prompt_version", S),
        ("parameters", S),
        ("rows_in", L),
        ("rows_out", L),
        ("errors", L),
        ("prompt_tokens", L),
        ("completion_tokens", L),
        ("cost_usd", D),
        ("seconds", D),
        ("files", S),
        ("metrics", S),
    ],
    key="entry_id",
    parent="run_id",
)


def record(ctx, task: str, stage, entry: dict[str, Any], files: dict[str, str]) -> None:
    """One `run_log` row for a stage run (ok, skipped or failed): which run, stage, model, parameters and prompt
    made what, how many rows, tokens, cost and seconds, and the files it wrote. A rerun of the task in the same
    run replaces its row. The parameters are the stage's config section with long texts hashed; no secret is in
    the config. A failure to write it is a warning, never the stage's failure."""
    import json

    from pyspark.sql import functions as F

    section = _section(ctx.cfg, stage.config_key) if stage is not None and stage.config is not None else {}
    row = {
        "entry_id": f"{ctx.cfg.run_id}|{task}",
        "task": task,
        "stage": stage.name if stage is not None else task,
        "status": entry["status"],
        "reason": entry.get("error") or entry.get("reason"),
        "model": entry.get("model"),  # as the LLM loop called it and recorded it on the rows
        "prompt_version": entry.get("prompt_version"),
        "parameters": json.dumps(params_of(section), sort_keys=True),
        **{k: entry.get(k) for k in ("rows_in", "rows_out", "errors", "prompt_tokens", "completion_tokens")},
        "cost_usd": entry.get("cost_usd"),
        "seconds": entry.get("seconds"),
        "files": json.dumps(files, sort_keys=True) if files else None,
        "run_id": ctx.cfg.run_id,
    }
    # The stage's own figures (a check's kept and dropped, the evaluation's scores ...), as in the summary.
    own = {k: v for k, v in entry.items() if k not in row and k not in ("error", "cost_usd")}
    row["metrics"] = json.dumps(own, sort_keys=True, default=str) if own else None
    try:
        frame = ctx.spark.createDataFrame(
            [row], schema=tables.T.StructType([f for f in RUN_LOG.schema.fields if f.name != "created_at"])
        ).withColumn("created_at", F.current_timestamp())
        tables.upsert(ctx.spark, ctx.rt, RUN_LOG, frame)
    except Exception as exc:  # noqa: BLE001 - the run log must never fail the stage it describes
        log.warning("run_log: could not record %s: %s", task, exc)
        print(f"{task}: warning: run_log not written ({type(exc).__name__}: {exc})", flush=True)


def _section(cfg: Config, dotted: str) -> dict:
    value: Any = cfg
    for part in dotted.split("."):
        value = getattr(value, part, None)
    return value.model_dump() if hasattr(value, "model_dump") else {}


def params_of(section: dict) -> dict[str, str]:
    """A config section as `params` flattens the whole config: long texts as short hashes."""
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, child in value.items():
                walk(f"{prefix}.{key}" if prefix else key, child)
        elif prefix.rsplit(".", 1)[-1] in LONG_TEXT and value:
            flat[f"{prefix}_sha"] = hashlib.sha256(str(value).encode()).hexdigest()[:12]
        else:
            flat[prefix] = str(value)[:500]

    walk("", section)
    return flat
