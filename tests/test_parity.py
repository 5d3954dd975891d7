"""Spark parity: the pure transforms give the same rows and schema (nullability included) on the
embedded engine (Sail) and on classic JVM Apache Spark, with LLM calls served by the stand-in.

Classic pyspark lives in .venv-classic (pyspark and pyspark-client cannot share an environment);
`make test` builds it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from chispa import assert_df_equality
from chispa.schema_comparer import SchemasNotEqualError, assert_schema_equality
from conftest import ROOT
from pyspark.sql import types as T

CLASSIC_PYTHON = ROOT / ".venv-classic" / "bin" / "python"
SCRIPT = ROOT / "tests" / "parity" / "transforms.py"
DEMO = "demo.engine_specific"


@pytest.fixture(scope="module")
def results(tmp_path_factory, teacher_server):
    if not CLASSIC_PYTHON.exists():
        pytest.fail(f"{CLASSIC_PYTHON} is missing: run `make test`, which builds the classic Spark environment")
    teacher_server.reset()
    tmp = tmp_path_factory.mktemp("parity")
    out = {}
    # The Spark Connect client marks the environment (SPARK_CONNECT_MODE_ENABLED, SPARK_REMOTE); classic
    # pyspark would then try to be a Connect client too.
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("SPARK_CONNECT", "SPARK_REMOTE", "SPARK_LOCAL_REMOTE"))
    }
    for engine, python in (("sail", sys.executable), ("classic", str(CLASSIC_PYTHON))):
        log = tmp / f"{engine}.log"
        with log.open("w") as sink:
            proc = subprocess.run(  # noqa: PLW1510 - the return code is asserted below, with the output
                [python, str(SCRIPT), "--engine", engine, "--standin", teacher_server.base_url]
                + ["--warehouse", str(tmp / "wh"), "--out", str(tmp / f"{engine}.json")],
                stdout=sink,
                stderr=subprocess.STDOUT,
                timeout=600,
                env=env,
            )
        assert proc.returncode == 0, log.read_text()[-3000:]
        out[engine] = json.loads((tmp / f"{engine}.json").read_text())
    return out


def _rows(spark, case: dict):
    """The rows as canonical JSON text, one per row: comparable on any engine whatever their types."""
    return spark.createDataFrame([(json.dumps(r, sort_keys=True),) for r in case["rows"]], "row string")


CASES = [
    "seeds.find_problems",
    "seeds.normalize",
    "llm_stage.requests (questions)",
    "ai_query (stand-in)",
    "questions.replies_to_rows (stand-in)",
    "questions.to_question_rows",
    "llm_stage.requests (responses)",
    "responses.to_response_rows",
    "chat_jsonl.to_chat_rows",
    "chat_jsonl.check_examples",
    "chat_jsonl.assign_split",
]


@pytest.mark.parametrize("case", CASES)
def test_transform_is_the_same_on_both_engines(results, spark, case):
    sail, classic = results["sail"][case], results["classic"][case]
    assert sail["rows"], f"{case} produced no rows to compare"
    assert_schema_equality(
        T.StructType.fromJson(sail["schema"]), T.StructType.fromJson(classic["schema"]), ignore_nullable=False
    )
    assert_df_equality(_rows(spark, sail), _rows(spark, classic), ignore_row_order=True)


def test_every_case_is_compared(results):
    assert set(results["sail"]) == set(results["classic"]) == {*CASES, DEMO}


def test_an_engine_specific_construct_is_caught(results):
    """An all-literal CASE WHEN is NOT NULL on classic Spark, nullable on Sail: the comparison must fail."""
    with pytest.raises(SchemasNotEqualError):
        assert_schema_equality(
            T.StructType.fromJson(results["sail"][DEMO]["schema"]),
            T.StructType.fromJson(results["classic"][DEMO]["schema"]),
            ignore_nullable=False,
        )
