"""Responses stage: the ai_query SQL, answers or errors for every question, reruns fill only the gaps."""

from __future__ import annotations

from chispa import assert_df_equality
from conftest import context, where, with_endpoint
from pyspark.sql import types as T

from lakesynth import llm
from lakesynth.core import llm_stage, tables
from lakesynth.llm import ai_query
from lakesynth.qa import questions, responses
from lakesynth.qa import seed as seeds


def _prepare(spark, cfg):
    seeds.run(context(cfg))
    questions.run(context(cfg))
    return tables.read(spark, where(cfg), questions.TABLE).where("error IS NULL").count()


def test_sql_has_the_batch_inference_shape(cfg):
    cfg = cfg.model_copy(update={"responses": cfg.responses.model_copy(update={"max_tokens": 300, "temperature": 0.2})})
    step = responses.step(cfg)
    call = llm.Call(llm.Endpoint("databricks", "my-endpoint"), cfg.endpoint("teacher"), step.output, 0.2, 300)
    sql = ai_query.chat_sql("pending", ["question_id"], endpoint="my-endpoint", call=call)
    assert "ai_query(\n    'my-endpoint',\n    request," in sql
    assert "modelParameters => named_struct('max_tokens', 300, 'temperature', 0.2)" in sql
    response_format = "STRUCT<response: STRUCT<reasoning: STRING, answer: STRING>>"
    assert llm.response_format(responses.Answer) == response_format
    assert f"responseFormat => '{response_format}'" in sql and "failOnError => false" in sql


def test_every_question_gets_an_answer_with_reasoning_kept_apart(spark, llm_cfg, teacher_server):
    n_questions = _prepare(spark, llm_cfg)
    teacher_server.reset()
    result = responses.run(context(llm_cfg))
    rows = tables.read(spark, where(llm_cfg), responses.TABLE)
    assert result.rows_in == result.rows_out == rows.count() == n_questions
    assert (
        rows.where("error IS NULL AND answer <> '' AND reasoning <> '' AND answer <> reasoning").count() == n_questions
    )
    assert teacher_server.stats.completions == n_questions + 1  # each once, plus the one-token preflight
    assert rows.where("prompt_tokens > 0 AND completion_tokens > 0 AND attempts = 1").count() == n_questions
    joined = rows.join(tables.read(spark, where(llm_cfg), questions.TABLE), ["question_id", "seed_id", "question"])
    assert joined.count() == n_questions


def test_requests_carry_rules_scope_and_question(spark, llm_cfg):
    _prepare(spark, llm_cfg)
    call = llm.Call(llm.endpoint(context(llm_cfg)), llm_cfg.endpoint("teacher"), responses.Answer, 0.3, 100)
    reqs = llm_stage.requests(tables.read(spark, where(llm_cfg), questions.TABLE), responses.step(llm_cfg), call)
    out = reqs.where("NOT in_scope").limit(1).collect()[0]
    inside = reqs.where("in_scope").limit(1).collect()[0]
    assert "never give investment advice" in out.request.lower() and out.question in out.request
    assert "OUT OF SCOPE" in out.request and "IN SCOPE" in inside.request


def test_failed_answers_keep_their_error_and_a_rerun_fills_only_them(spark, llm_cfg, teacher_server):
    cfg = with_endpoint(llm_cfg, max_retries=0)
    n_questions = _prepare(spark, cfg)
    teacher_server.reset(fault_rate=0.3, faults=("malformed", "500"), seed=5)
    responses.run(context(cfg))
    rows = tables.read(spark, where(cfg), responses.TABLE)
    failed = rows.where("error IS NOT NULL").count()
    assert rows.count() == n_questions and failed > 0
    assert rows.where("error IS NOT NULL AND answer IS NULL").count() == failed
    teacher_server.reset(fault_rate=0.0)
    again = responses.run(context(cfg))
    assert again.rows_out == failed and teacher_server.stats.completions == failed + 1
    assert tables.read(spark, where(cfg), responses.TABLE).where("error IS NULL").count() == n_questions
    teacher_server.reset()
    responses.run(context(cfg))
    assert teacher_server.stats.requests == 0


def test_parse_reads_struct_field_names_from_the_schema(spark):
    struct = T.StructType([T.StructField("response", T.StringType()), T.StructField("error", T.StringType())])
    schema = T.StructType(
        [
            T.StructField(n, t)
            for n, t in [
                ("question_id", T.StringType()),
                ("seed_id", T.StringType()),
                ("topic", T.StringType()),
                ("in_scope", T.BooleanType()),
                ("question", T.StringType()),
                ("prompt_version", T.StringType()),
                ("fingerprint", T.StringType()),
                ("response", struct),
            ]
        ]
    )
    answered = spark.createDataFrame(
        [
            ("q1", "s", "t", True, "Q?", "v", "f1", ('{"reasoning": "r", "answer": "A."}', None)),
            ("q2", "s", "t", True, "Q?", "v", "f2", (None, "RateLimitError: slow down")),
            ("q3", "s", "t", True, "Q?", "v", "f3", ('{"reasoning": "r", "answer": "  "}', None)),
        ],
        schema,
    )
    assert_df_equality(
        responses.to_response_rows(llm_stage.ai_query_replies(answered, model="m")).select(
            "question_id", "answer", "error"
        ),
        spark.createDataFrame(
            [
                ("q1", "A.", None),
                ("q2", None, "RateLimitError: slow down"),
                ("q3", None, "EmptyAnswer: the reply had no answer"),
            ],
            "question_id string, answer string, error string",
        ),
        ignore_row_order=True,
        ignore_nullable=True,
    )


def test_small_chunks_write_the_same_rows_and_pay_each_request_once(spark, llm_cfg, teacher_server):
    """llm.chunk_rows bounds memory: many chunks, each merged before the next, same result."""
    cfg = llm_cfg.model_copy(update={"llm": llm_cfg.llm.model_copy(update={"chunk_rows": 7})})
    seeds.run(context(cfg))
    teacher_server.reset()
    q = questions.run(context(cfg))
    r = responses.run(context(cfg))
    n_seeds = tables.count(spark, where(cfg), seeds.TABLE)
    n_questions = tables.count(spark, where(cfg), questions.TABLE)
    rows = tables.read(spark, where(cfg), responses.TABLE)
    assert n_questions == q.rows_out == 3 * n_seeds  # 7 rows a chunk = 2 seeds of 3: 12 chunks
    assert rows.count() == rows.select("question_id").distinct().count() == r.rows_out == n_questions
    assert rows.where("error IS NULL AND prompt_tokens > 0").count() == n_questions
    assert r.metrics["prompt_tokens"] == rows.agg({"prompt_tokens": "sum"}).collect()[0][0]
    assert teacher_server.stats.completions == n_seeds + n_questions + 2  # once each, plus two preflights
