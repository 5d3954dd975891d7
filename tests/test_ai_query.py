"""Databricks' ai_query result, in each shape it is documented or was seen in, read into replies and errors."""

from __future__ import annotations

import json

import pytest
from pyspark.sql import types as T

from lakesynth.core import llm_stage
from lakesynth.llm import ai_query
from lakesynth.llm.ai_query import NO_REPLY
from lakesynth.qa import responses

S = T.StringType()
REPLY = '{"reasoning": "r", "answer": "A."}'
PARSED = T.StructType([T.StructField("reasoning", S), T.StructField("answer", S)])


def _struct(result: T.DataType, error: str, result_name: str = "result") -> T.StructType:
    return T.StructType([T.StructField(result_name, result), T.StructField(error, S)])


def _replies(spark, response_type: T.DataType, rows: list[tuple]) -> dict[str, tuple]:
    schema = T.StructType([T.StructField("key", S), T.StructField("response", response_type)])
    replies = llm_stage.ai_query_replies(spark.createDataFrame(rows, schema), model="m").collect()
    return {r.key: (r.output and json.loads(r.output), r.error, r.raw_output) for r in replies}


ANSWER = {"reasoning": "r", "answer": "A."}
FAILED = (None, "429: REQUEST_LIMIT_EXCEEDED", None)


@pytest.mark.parametrize(
    "response_type",
    [
        pytest.param(_struct(S, "errorMessage"), id="documented-result-errorMessage"),
        pytest.param(_struct(S, "error_message"), id="snake-case-error_message"),
        pytest.param(_struct(S, "errorStatus"), id="errorStatus"),
        pytest.param(_struct(S, "error", result_name="response"), id="response-error"),
    ],
)
def test_a_struct_of_json_text_and_error_under_any_of_their_names(spark, response_type):
    got = _replies(spark, response_type, [("ok", (REPLY, None)), ("failed", (None, "429: REQUEST_LIMIT_EXCEEDED"))])
    assert got == {"ok": (ANSWER, None, None), "failed": FAILED}


def test_a_result_already_parsed_into_a_struct_is_read_as_its_json(spark):
    got = _replies(
        spark,
        _struct(PARSED, "errorMessage"),
        [("ok", (("r", "A."), None)), ("failed", (None, "429: REQUEST_LIMIT_EXCEEDED"))],
    )
    assert got == {"ok": (ANSWER, None, None), "failed": FAILED}


def test_a_bare_result_without_the_error_struct_is_a_reply(spark):
    """failOnError not applied: the column is the result itself, as JSON text or parsed."""
    assert _replies(spark, S, [("ok", REPLY)]) == {"ok": (ANSWER, None, None)}
    assert _replies(spark, PARSED, [("ok", ("r", "A."))]) == {"ok": (ANSWER, None, None)}


def test_an_error_beside_a_result_keeps_the_result_as_raw_output(spark):
    got = _replies(spark, _struct(S, "errorMessage"), [("bad", ("not json", "ParseError: not JSON"))])
    assert got == {"bad": (None, "ParseError: not JSON", "not json")}


def test_a_blank_error_is_none_and_a_row_with_neither_gets_an_error(spark):
    got = _replies(spark, _struct(S, "errorMessage"), [("ok", (REPLY, "")), ("neither", (None, None))])
    assert got == {"ok": (ANSWER, None, None), "neither": (None, NO_REPLY, None)}


def test_a_parsed_reply_becomes_a_response_row(spark):
    """The parsed shape goes all the way through the responses stage's `rows` hook."""
    cols = ["question_id", "seed_id", "topic", "question", "prompt_version", "fingerprint"]
    schema = T.StructType(
        [T.StructField(c, S) for c in cols]
        + [T.StructField("in_scope", T.BooleanType()), T.StructField("response", _struct(PARSED, "errorMessage"))]
    )
    answered = spark.createDataFrame([("q1", "s", "t", "Q?", "v", "f1", True, (("r", "A."), None))], schema)
    (row,) = responses.to_response_rows(llm_stage.ai_query_replies(answered, model="m")).collect()
    assert (row.answer, row.reasoning, row.error) == ("A.", "r", None)


ERROR_SHAPES = {
    "string": (S, "429: REQUEST_LIMIT_EXCEEDED", "429: REQUEST_LIMIT_EXCEEDED"),
    "struct": (
        T.StructType([T.StructField("code", S), T.StructField("message", S)]),
        ("REQUEST_LIMIT_EXCEEDED", "slow down"),
        '{"code":"REQUEST_LIMIT_EXCEEDED","message":"slow down"}',
    ),
    "null": (T.NullType(), None, NO_REPLY),
    "number": (T.IntegerType(), 429, "429"),
}


@pytest.fixture
def ansi(spark):
    """The session under ANSI mode, serverless' default, for one test."""
    before = spark.conf.get("spark.sql.ansi.enabled", "false")
    spark.conf.set("spark.sql.ansi.enabled", "true")
    yield spark
    spark.conf.set("spark.sql.ansi.enabled", before)


@pytest.mark.parametrize("shape", list(ERROR_SHAPES))
def test_each_documented_error_shape_is_read_under_ansi_mode(ansi, shape):
    """The error field as a string, a struct, null or a number: made text by its type, never trimmed as it is
    (F.trim of a struct or number is an analysis error under ANSI)."""
    error_type, failed_error, expected = ERROR_SHAPES[shape]
    response = T.StructType([T.StructField("result", S), T.StructField("errorMessage", error_type)])
    got = _replies(ansi, response, [("ok", (REPLY, None)), ("failed", (None, failed_error))])
    assert got["ok"] == (ANSWER, None, None)
    assert got["failed"] == (None, expected, None)


def test_the_builtins_replies_are_checked_against_the_output_model(spark):
    """Databricks' ai_query does not validate a reply as lakesynth's pool does: one that breaks the output model is
    its row's error (asked again on the next run), never an answer read as nulls."""
    rows = [("ok", (REPLY, None)), ("short", ('{"reasoning": "r"}', None)), ("failed", (None, "429: slow"))]
    schema = T.StructType([T.StructField("key", S), T.StructField("response", _struct(S, "errorMessage"))])
    replies = llm_stage.ai_query_replies(spark.createDataFrame(rows, schema), model="m")
    got = {r.key: r for r in ai_query.validated(replies, responses.Answer).collect()}
    assert json.loads(got["ok"].output) == ANSWER and got["ok"].error is None
    assert got["short"].output is None and got["short"].raw_output == '{"reasoning": "r"}'
    assert got["short"].error == "InvalidOutput: output did not match Answer: answer: Field required"
    assert got["failed"].error == "429: slow"
