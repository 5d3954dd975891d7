"""Data follows its sources: every derived row's source still exists, removed seeds leave nothing behind,
splits never move, and two runs on one schema never damage each other."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import ROOT, write

from lakesynth import pipeline
from lakesynth.core import registry, tables
from lakesynth.core.runtime import Runtime
from lakesynth.quality.normalize import normalized_text

TOPICS = ("cards", "loans", "fraud", "savings")
DERIVED = (
    "synthetic_questions",
    "question_verdicts",
    "synthetic_responses",
    "answer_verdicts",
    "relevance_verdicts",
    "pair_verdicts",
    "training_chat",
)
STAGES = ["seed", "questions", "critic", "responses", "judge", "relevance", "dedup", "format"]


def _seeds(path: Path, numbers) -> str:
    lines = ["topic,question,in_scope"] + [
        f"{TOPICS[n % 4]},How do I do thing number {n} with my account?,{'no' if n % 5 == 0 else 'yes'}"
        for n in numbers
    ]
    return write(path, "\n".join(lines) + "\n")


def _config(warehouse, schema, server, seeds: str, *overrides: str):
    return registry.load_config(
        ROOT / "conf" / "lakesynth.yml",
        [
            f"warehouse={warehouse}",
            f"schema={schema}",
            f"seed.path={seeds}",
            f"endpoints.teacher.base_url={server.base_url}",
            "endpoints.teacher.model=standin",
            "quality.critic.enabled=true",
            "quality.judge.enabled=true",
            "quality.relevance.enabled=true",
            f"endpoints.embeddings.base_url={server.base_url}",
            "quality.relevance.threshold=-1",
            "mlflow.enabled=false",
            *overrides,
        ],
    )


def _run(cfg) -> dict:
    summary = pipeline.run(cfg, STAGES, root=ROOT)
    assert all(s["status"] == "ok" for s in summary["stages"].values()), summary["stages"]
    return summary


def _rows(spark, rt: Runtime, name: str):
    return spark.table(rt.fqn(name)).toPandas()


def _check_follows_sources(spark, rt: Runtime) -> None:
    """No derived row without its parent row; the JSONL files hold exactly the table's examples; no question
    (normalised) in two splits."""
    contracts = registry.contracts(registry.default_stages())
    for name in DERIVED:
        table = contracts[name]
        parent = contracts[table.parent_table]
        ids = set(_rows(spark, rt, parent.name)[parent.key])
        orphans = set(_rows(spark, rt, name)[table.parent]) - ids
        assert not orphans, f"{name}: {len(orphans)} row(s) whose {parent.name} row is gone"
    chat = _rows(spark, rt, "training_chat")
    for split in ("train", "val"):
        path = Path(rt.files_dir("training_chat")) / f"{split}.jsonl"
        in_file = sorted(json.dumps(json.loads(line)["messages"]) for line in path.read_text().splitlines())
        in_table = sorted(
            json.dumps([{"role": m["role"], "content": m["content"]} for m in messages])
            for messages in chat[chat.split == split].messages
        )
        assert in_file == in_table, f"{split}.jsonl does not match training_chat"
    questions = spark.table(rt.fqn("training_chat")).selectExpr("split", "messages[1].content AS q")
    normalised = questions.select("split", normalized_text("q").alias("q")).distinct()
    assert normalised.groupBy("q").count().where("count > 1").count() == 0
    verdicts = _rows(spark, rt, "pair_verdicts")  # a generated pair's source is its seed
    assert len(verdicts) and (verdicts.source_id == verdicts.seed_id).all()


@pytest.mark.slow
def test_derived_rows_follow_their_sources(spark, warehouse, teacher_server, tmp_path):
    teacher_server.reset()
    schema = f"t_{uuid.uuid4().hex[:10]}"
    seeds = _seeds(tmp_path / "seeds.csv", range(12))
    cfg = _config(warehouse, schema, teacher_server, seeds, "questions.per_seed=2")
    rt = Runtime.resolve(cfg)
    _run(cfg)
    _check_follows_sources(spark, rt)

    # More questions per seed: each seed's questions are regenerated, and their old answers go with them.
    before = set(_rows(spark, rt, "synthetic_questions").question_id)
    summary = _run(cfg.model_copy(update={"questions": cfg.questions.model_copy(update={"per_seed": 3})}))
    assert set(_rows(spark, rt, "synthetic_questions").question_id) != before
    assert summary["stages"]["responses"]["pruned"] > 0
    _check_follows_sources(spark, rt)
    cfg = cfg.model_copy(update={"questions": cfg.questions.model_copy(update={"per_seed": 3})})

    # Two seeds removed from the file (mirror, the default): nothing derived from them remains anywhere.
    removed = _rows(spark, rt, "seed_questions")
    removed = removed[removed.question.str.contains("number 3 |number 6 ")]
    assert len(removed) == 2
    removed_questions = set(_rows(spark, rt, "synthetic_questions").query("seed_id in @removed.seed_id").question)
    kept = [n for n in range(12) if n not in (3, 6)]
    seeds = _seeds(tmp_path / "seeds.csv", kept)
    summary = _run(cfg)
    assert summary["stages"]["seed"]["removed"] == 2
    for name in ("seed_questions", *DERIVED):
        assert not set(_rows(spark, rt, name).seed_id) & set(removed.seed_id), name
    files = "".join(p.read_text() for p in Path(rt.files_dir("training_chat")).glob("*.jsonl"))
    assert removed_questions and not any(json.dumps(q)[1:-1] in files for q in removed_questions)
    _check_follows_sources(spark, rt)


def test_adding_seeds_moves_no_example_to_another_split(spark, warehouse, teacher_server, tmp_path):
    schema = f"t_{uuid.uuid4().hex[:10]}"
    checks_off = ("quality.critic.enabled=false", "quality.judge.enabled=false", "quality.relevance.enabled=false")
    cfg = _config(warehouse, schema, teacher_server, _seeds(tmp_path / "seeds.csv", range(10)), *checks_off)
    rt = Runtime.resolve(cfg)
    _run(cfg)
    splits = dict(zip(*_rows(spark, rt, "training_chat")[["example_id", "split"]].T.values))
    assert {"train", "val"} <= set(splits.values())  # each drew its own (no split was filled in)
    _seeds(tmp_path / "seeds.csv", range(15))  # half as many seeds again
    _run(cfg)
    after = dict(zip(*_rows(spark, rt, "training_chat")[["example_id", "split"]].T.values))
    assert set(splits) < set(after) and all(after[e] == s for e, s in splits.items())
    _check_follows_sources(spark, rt)


def test_append_mode_keeps_removed_seeds(spark, warehouse, teacher_server, tmp_path):
    schema = f"t_{uuid.uuid4().hex[:10]}"
    cfg = _config(warehouse, schema, teacher_server, _seeds(tmp_path / "a.csv", range(4)), "seed.mode=append")
    rt = Runtime.resolve(cfg)
    pipeline.run(cfg, ["seed"], root=ROOT)
    cfg = cfg.model_copy(update={"seed": cfg.seed.model_copy(update={"path": _seeds(tmp_path / "b.csv", [9])})})
    summary = pipeline.run(cfg, ["seed"], root=ROOT)
    assert (
        summary["stages"]["seed"]["removed"] == 0
        and tables.count(spark, rt, registry.contracts(registry.default_stages())["seed_questions"]) == 5
    )


def test_a_second_run_on_the_same_schema_stops_at_once_and_names_the_first(tmp_path, teacher_server):
    """Two CLI runs started together on one warehouse and schema: the second stops with a clear message, or
    (if the first was already done) runs after it; both leave correct tables."""
    teacher_server.reset(latency_ms=20)
    seeds = _seeds(tmp_path / "seeds.csv", range(6))
    args = [
        *("run", "--stages", "seed,questions,responses,format", "--warehouse", str(tmp_path / "wh"), "--schema", "s1"),
        *(
            "--seeds",
            seeds,
            "--set",
            f"endpoints.teacher.base_url={teacher_server.base_url}",
            "--set",
            "endpoints.teacher.model=standin",
        ),
        *("--set", "mlflow.enabled=false"),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "lakesynth.cli", *args, "--run-id", f"run-{i}"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in (1, 2)
    ]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes in ([0, 0], [0, 2]), results
    if codes == [0, 2]:
        (_, _, err) = next(r for r in results if r[0] == 2)
        assert "SchemaBusy: schema main.s1 is in use by run run-" in err and "--schema" in err
    # Whatever happened, the tables are whole: one answer per question, every question answered once.
    rt = Runtime(False, "main", "s1", "lakesynth", str(tmp_path / "wh"))
    import deltalake

    questions = deltalake.DeltaTable(rt.table_location("synthetic_questions")).to_pandas()
    answers = deltalake.DeltaTable(rt.table_location("synthetic_responses")).to_pandas()
    assert len(questions) == 6 * 3 and questions.question_id.is_unique
    assert set(answers.question_id) == set(questions.question_id) and answers.question_id.is_unique
