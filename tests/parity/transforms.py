"""Run lakesynth's pure transforms on one engine and dump each result (schema + rows) as JSON.

    python tests/parity/transforms.py --engine sail|classic --standin URL --out results.json

The parity suite (tests/test_parity.py) runs this under the embedded engine (Sail, .venv) and under
classic JVM Spark (.venv-classic: pyspark and pyspark-client cannot share an environment), then
compares the two with chispa. LLM calls go to the stand-in server at URL.
"""

from __future__ import annotations

import argparse
import datetime
import decimal
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from pyspark.sql import functions as F
from pyspark.sql import types as T

from lakesynth import llm
from lakesynth.core import llm_stage
from lakesynth.core.registry import load_config
from lakesynth.llm import ai_query
from lakesynth.qa import format as chat_jsonl
from lakesynth.qa import questions, responses
from lakesynth.qa import seed as seeds

# What the LLM loop hands the questions stage's rows hook, once the reply's fields are columns.
GENERATED = (
    "seed_id string, topic string, in_scope boolean, seed_question string, prompt_version string, "
    "fingerprint string, model string, reasoning string, questions array<string>, prompt_tokens bigint, "
    "completion_tokens bigint, latency_ms bigint, attempts int, error string, raw_output string"
)

VOLATILE = ("created_at", "latency_ms")  # clock-dependent, not engine-dependent


def session(engine: str, warehouse: str):
    if engine == "classic":
        import os

        from pyspark.sql import SparkSession

        os.environ["PYSPARK_PYTHON"] = sys.executable  # workers must use this venv, where lakesynth is

        return (
            SparkSession.builder.master("local[2]")
            .appName("lakesynth-parity")
            .config("spark.sql.session.timeZone", "UTC")
            .config("spark.ui.enabled", "false")
            .config("spark.sql.shuffle.partitions", "2")
            # A short run: C2's compilations and the parallel collector's threads cost more CPU than they save
            # (the JVM took 47 s of CPU for this script, 25 s with C1 only and the serial collector).
            .config("spark.driver.extraJavaOptions", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC")
            .getOrCreate()
        )
    from lakesynth.core.engine import get_spark
    from lakesynth.core.runtime import Runtime

    return get_spark(Runtime(False, "main", "parity", "lakesynth", warehouse))


def cases(spark, standin: str) -> dict:
    cfg = load_config(
        ROOT / "conf" / "lakesynth.yml",
        [
            f"endpoints.teacher.base_url={standin}",
            "endpoints.teacher.model=standin",
            "run_id=parity",
            "questions.per_seed=2",
        ],
    )
    endpoint = llm.Endpoint(standin, "standin")
    qcall = llm.Call(endpoint, cfg.endpoint("teacher"), questions.output_model(2), 0.5, 128, label="parity")
    rcall = llm.Call(endpoint, cfg.endpoint("teacher"), responses.Answer, 0.3, 128)
    raw = spark.createDataFrame(
        [
            (1, "cards", "Lost my card {{ x }}?", "yes", None, '{"k": 1}'),
            (2, "cards", "", "no", "c", None),
            (3, "tax", "Tax on interest?", "maybe", None, None),
            (4, "cards", "Lost my card {{ x }}?", "Y", None, None),
            (5, "fraud", "Odd payment\nwhat now?", "1", "sec", None),
        ],
        seeds.RAW_SCHEMA,
    )
    valid = raw.where(F.col("_row").isin(1, 5))
    normalized = seeds.normalize(valid, source="seeds.csv")
    seed_rows = normalized.select("seed_id", "topic", F.col("question").alias("seed_question"), "in_scope")
    requests = llm_stage.requests(seed_rows, questions.step(cfg), qcall)
    # The calls as every LLM stage makes them: one ai_query statement, the local UDF standing in for the built-in.
    spark.udf.register("ai_query", llm.ai_query_udf(qcall, workers=1))
    requests.createOrReplaceTempView("parity_pending")
    carried = [c for c in requests.columns if c != "request"]
    statement = ai_query.chat_sql("parity_pending", carried, endpoint="standin", call=qcall)
    generated = llm_stage.ai_query_replies(spark.sql(statement), model="standin")
    fixed_generated = spark.createDataFrame(
        [
            (
                "s1",
                "cards",
                True,
                "Block my card?",
                "v",
                "fp1",
                "m",
                "r",
                ["block my card", "New PIN?", "new pin?", " "],
                10,
                5,
                7,
                1,
                None,
                None,
            ),
            ("s2", "tax", False, "VAT?", "v", "fp2", "m", None, None, 3, 0, 1, 4, "InvalidOutput: x", "{bad"),
        ],
        GENERATED,
    )
    question_rows = questions.to_question_rows(fixed_generated, keep=2)
    answered_schema = T.StructType(
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
                (
                    "response",
                    T.StructType(
                        [T.StructField("result", T.StringType()), T.StructField("errorMessage", T.StringType())]
                    ),
                ),
            ]
        ]
    )
    answered = spark.createDataFrame(
        [
            ("q1", "s1", "cards", True, "New PIN?", "v", "f1", ('{"reasoning": "r", "answer": "Use the app."}', None)),
            ("q2", "s1", "cards", True, "Block?", "v", "f2", (None, "RateLimitError: slow")),
            ("q3", "s2", "tax", False, "VAT?", "v", "f3", ('{"reasoning": "r", "answer": ""}', None)),
            ("q4", "s2", "tax", False, "Tax?", "v", "f4", ('{"reasoning": "r", "answer": "Ask an adviser."}', None)),
        ],
        answered_schema,
    )
    parsed = responses.to_response_rows(llm_stage.ai_query_replies(answered, model="standin"))
    chat = chat_jsonl.to_chat_rows(parsed, system_prompt="Be kind.")
    many = spark.createDataFrame(
        [(f"e{i}", f"q{i}", "s", ["cards", "tax", "fraud"][i % 3], f"Question {i % 20}?") for i in range(30)],
        "example_id string, question_id string, seed_id string, topic string, question string",
    )
    return {
        "seeds.find_problems": seeds.find_problems(raw),
        "seeds.normalize": normalized,
        "llm_stage.requests (questions)": requests,
        "ai_query (stand-in)": generated,
        "questions.replies_to_rows (stand-in)": questions.replies_to_rows(generated, keep=2),
        "questions.to_question_rows": question_rows,
        "llm_stage.requests (responses)": llm_stage.requests(
            question_rows.where("error IS NULL"), responses.step(cfg), rcall
        ),
        "responses.to_response_rows": parsed,
        "chat_jsonl.to_chat_rows": chat,
        "chat_jsonl.check_examples": chat_jsonl.check_examples(chat, max_tokens=30),
        "chat_jsonl.assign_split": chat_jsonl.assign_split(
            many, by="question", val_fraction=0.2, test_fraction=0.1, seed=7
        ),
        # Deliberately engine-specific: a CASE WHEN whose branches are all literals is NOT NULL on classic
        # Spark but nullable on Sail. The suite must flag it (lakesynth's own transforms avoid it).
        "demo.engine_specific": spark.range(3).select(F.when(F.col("id") > 0, "pos").otherwise("zero").alias("c")),
    }


def _plain(value):
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engine", choices=["sail", "classic"], required=True)
    parser.add_argument("--standin", required=True)
    parser.add_argument("--warehouse", default="/tmp/lakesynth-parity-wh")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    spark = session(args.engine, args.warehouse)
    results = {}
    for name, df in cases(spark, args.standin).items():
        df = df.drop(*[c for c in VOLATILE if c in df.columns])
        rows = [_plain(r.asDict(recursive=True)) for r in df.collect()]
        results[name] = {
            "schema": df.schema.jsonValue(),
            "rows": sorted(rows, key=lambda r: json.dumps(r, sort_keys=True, default=str)),
        }
    Path(args.out).write_text(json.dumps(results, indent=1, sort_keys=True, default=str), encoding="utf-8")


if __name__ == "__main__":
    main()
