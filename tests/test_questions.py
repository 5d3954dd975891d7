"""Questions stage: one row per generated question, errors kept, reruns free, text literal."""

from __future__ import annotations

import json

from chispa import assert_df_equality
from conftest import context, where, with_endpoint, write

from lakesynth import llm
from lakesynth.core import llm_stage, tables
from lakesynth.errors import StageError
from lakesynth.qa import questions
from lakesynth.qa import seed as seeds

# What the LLM loop hands the questions stage's rows hook, once the reply's fields are columns.
GENERATED = (
    "seed_id string, topic string, in_scope boolean, seed_question string, prompt_version string, "
    "fingerprint string, model string, reasoning string, questions array<string>, prompt_tokens bigint, "
    "completion_tokens bigint, latency_ms bigint, attempts int, error string, raw_output string"
)


def _with(cfg, **sections):
    return cfg.model_copy(update={k: getattr(cfg, k).model_copy(update=v) for k, v in sections.items()})


def test_every_seed_gets_its_questions_with_lineage_and_accounting(spark, llm_cfg, teacher_server):
    cfg = _with(llm_cfg, questions={"per_seed": 2})
    seeds.run(context(cfg))
    result = questions.run(context(cfg))
    rows = tables.read(spark, where(cfg), questions.TABLE)
    n_seeds = tables.count(spark, where(cfg), seeds.TABLE)
    assert result.rows_in == n_seeds and result.errors == 0
    assert rows.count() == result.rows_out == 2 * n_seeds
    per_seed = {r.seed_id: r["count"] for r in rows.groupBy("seed_id").count().collect()}
    assert set(per_seed.values()) == {2} and len(per_seed) == n_seeds
    joined = rows.join(
        tables.read(spark, where(cfg), seeds.TABLE).select("seed_id", "topic", "in_scope"),
        ["seed_id", "topic", "in_scope"],
    )
    assert joined.count() == rows.count()  # topic and scope inherited from the seed
    assert (
        rows.where("error IS NULL AND reasoning IS NOT NULL AND model = 'standin' AND run_id = 'test-run'").count()
        == rows.count()
    )
    # A request's tokens sit on one row: the column sums to what the endpoint reported.
    assert rows.where("prompt_tokens > 0").count() == n_seeds
    assert result.metrics["prompt_tokens"] > 0 and result.metrics["seeds_short"] == 0
    assert teacher_server.stats.completions == n_seeds + 1  # and the one-token preflight


def test_rerun_makes_no_request_and_changed_prompt_regenerates(spark, llm_cfg, teacher_server):
    seeds.run(context(llm_cfg))
    questions.run(context(llm_cfg))
    before = tables.read(spark, where(llm_cfg), questions.TABLE).select("question_id", "question")
    before = spark.createDataFrame(before.collect(), before.schema)  # the rows now, not the table later
    teacher_server.reset()
    again = questions.run(context(llm_cfg))
    assert teacher_server.stats.requests == 0 and again.rows_out == 0
    assert_df_equality(
        tables.read(spark, where(llm_cfg), questions.TABLE).select("question_id", "question"),
        before,
        ignore_row_order=True,
    )
    changed = _with(llm_cfg, questions={"template": llm_cfg.questions.template + "\nBe brief."})
    questions.run(context(changed))
    n_seeds = tables.count(spark, where(llm_cfg), seeds.TABLE)
    assert teacher_server.stats.completions == n_seeds + 1
    rows = tables.read(spark, where(changed), questions.TABLE)
    assert rows.select("prompt_version").distinct().count() == 1  # old rows replaced, not kept beside
    assert rows.count() == 3 * n_seeds


def test_failed_seeds_keep_an_error_row_then_a_rerun_fills_them(spark, llm_cfg, teacher_server):
    cfg = with_endpoint(llm_cfg, max_retries=0)
    seeds.run(context(cfg))
    teacher_server.reset(fault_rate=0.5, faults=("schema",), seed=11)
    try:
        result = questions.run(context(cfg))
    except StageError as exc:  # more than half failed: the stage says so, rows are still written
        assert "max_failure_rate" in str(exc)
        result = None
    rows = tables.read(spark, where(cfg), questions.TABLE)
    failed = rows.where("error IS NOT NULL")
    n_failed = failed.count()
    assert (
        n_failed > 0
        and failed.where("question IS NULL AND error LIKE 'InvalidOutput%' AND raw_output LIKE '%unexpected%'").count()
        == n_failed
    )
    n_seeds = tables.count(spark, where(cfg), seeds.TABLE)
    assert rows.select("seed_id").distinct().count() == n_seeds  # no seed silently missing
    if result is not None:
        assert result.errors == n_failed
    teacher_server.reset(fault_rate=0.0)
    questions.run(context(cfg))
    assert teacher_server.stats.completions == n_failed + 1  # only the failed seeds again (+ preflight)
    rows = tables.read(spark, where(cfg), questions.TABLE)
    assert rows.where("error IS NOT NULL").count() == 0 and rows.count() == 3 * n_seeds


def test_to_question_rows_drops_empty_copies_and_duplicates(spark):
    generated = spark.createDataFrame(
        [
            (
                "s1",
                "cards",
                True,
                "How do I block my card?",
                "v",
                "fp1",
                "m",
                "r",
                ["How do I block my card?!", " ", "New card?", "new card", "PIN reset?"],
                10,
                5,
                7,
                1,
                None,
                None,
            ),
            ("s2", "tax", False, "Tax?", "v", "fp2", "m", "r", ["tax?", ""], 3, 2, 1, 1, None, None),
            ("s3", "tax", False, "VAT?", "v", "fp3", "m", None, None, 3, 0, 1, 4, "InvalidOutput: x", "{bad"),
        ],
        GENERATED,
    )
    rows = questions.to_question_rows(generated, keep=5)
    assert_df_equality(
        rows.selectExpr("seed_id", "question", "error IS NOT NULL AS failed", "prompt_tokens"),
        spark.createDataFrame(
            [
                ("s1", "New card?", False, 10),
                ("s1", "PIN reset?", False, 0),
                ("s2", None, True, 3),
                ("s3", None, True, 3),
            ],
            "seed_id string, question string, failed boolean, prompt_tokens bigint",
        ),
        ignore_row_order=True,
        ignore_nullable=True,
    )
    errors = {r.seed_id: r.error for r in rows.where("error IS NOT NULL").collect()}
    assert errors["s2"].startswith("NoUsableQuestions: the teacher returned 2 question(s)")
    assert errors["s3"] == "InvalidOutput: x"
    assert rows.select("question_id").distinct().count() == 4


def test_seed_text_with_template_syntax_stays_literal(spark, llm_cfg, tmp_path):
    tricky = "What is {{ rules }} and {% if x %}this{% endif %}?"
    path = write(
        tmp_path / "t.jsonl", json.dumps({"topic": "odd {{ topic }}", "question": tricky, "in_scope": 1}) + "\n"
    )
    cfg = llm_cfg.model_copy(update={"seed": llm_cfg.seed.model_copy(update={"path": path})})
    seeds.run(context(cfg))
    call = llm.Call(llm.endpoint(context(cfg)), cfg.endpoint("teacher"), questions.output_model(3), 0.5, 64)
    source = tables.read(spark, where(cfg), seeds.TABLE).withColumnRenamed("question", "seed_question")
    (req,) = llm_stage.requests(source, questions.step(cfg), call).collect()
    prompt = req.request
    assert tricky in prompt and "odd {{ topic }}" in prompt and "investment advice" in prompt


def test_output_schema_bounds_the_number_of_questions():
    schema = questions.output_model(questions.asked(3)).model_json_schema()
    assert schema["properties"]["questions"]["maxItems"] == schema["properties"]["questions"]["minItems"] == 4
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["reasoning", "questions"]


def test_at_most_per_seed_questions_are_kept(spark):
    generated = spark.createDataFrame(
        [("s1", "cards", True, "Seed?", "v", "fp1", "m", "r", ["A?", "B?", "C?", "D?"], 10, 5, 7, 1, None, None)],
        GENERATED,
    )
    got = [r.question for r in questions.to_question_rows(generated, keep=2).orderBy("question").collect()]
    assert got == ["A?", "B?"]


def test_a_rerun_that_asks_one_failed_row_again_fails_the_stage_only_by_its_share_of_all_rows(
    spark, llm_cfg, teacher_server
):
    """The failure rate is over the stage's rows, not over the rows a rerun asked again: one seed's request failing
    twice is 1 of n, under max_failure_rate, though it is all the rerun asked."""
    from pyspark.sql import functions as F

    cfg = with_endpoint(llm_cfg, max_retries=0)
    seeds.run(context(cfg))
    teacher_server.reset()
    questions.run(context(cfg))
    rt = where(cfg)
    rows = tables.read(spark, rt, questions.TABLE)
    one = rows.select("seed_id").distinct().orderBy("seed_id").limit(1)
    failed = (
        rows.join(one, "seed_id", "left_semi").withColumn("error", F.lit("planted")).withColumn("question", F.lit(None))
    )
    tables.upsert(spark, rt, questions.TABLE, failed, run_id="planted")
    teacher_server.reset(fault_rate=1.0, faults=("schema",))  # the one row asked again fails again
    result = questions.run(context(cfg))
    n_seeds = rows.select("seed_id").distinct().count()
    assert result.errors == 1 and result.metrics["skipped"] == n_seeds - 1 and n_seeds > 2
