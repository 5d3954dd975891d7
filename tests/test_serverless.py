"""Both jobs as Databricks serverless runs them: no UDF reaches the network; model calls go through ai_query (the
built-in, here its local stand-in) or, for an endpoint outside the workspace, the driver."""

from __future__ import annotations

import functools
import uuid

import httpx2 as httpx
import pandas as pd
import pytest
from conftest import ROOT

from lakesynth import pipeline
from lakesynth.core import registry
from lakesynth.core.runtime import EMULATE_ENV, Runtime
from lakesynth.errors import LakesynthError
from lakesynth.llm import serverless


def _settings(warehouse, standin: str, *extra: str):
    """The sample config with every endpoint a workspace one (`databricks`), but for the judges and the semantic
    dedup, which call `standin` as an endpoint outside the workspace (from the driver)."""
    return registry.load_config(
        ROOT / "conf" / "lakesynth.yml",
        [
            f"warehouse={warehouse}",
            f"schema=t_{uuid.uuid4().hex[:10]}",
            "run_id=serverless-run",
            "mlflow.enabled=false",
            "endpoints.teacher.base_url=databricks",
            "endpoints.teacher.model=standin",
            "questions.per_seed=1",
            "endpoints.judge.base_url=" + standin,
            "quality.relevance.enabled=true",
            "endpoints.embeddings.base_url=databricks",
            "endpoints.embeddings.model=embed",
            "quality.dedup.semantic.enabled=true",
            "quality.dedup.semantic.endpoint=outside",
            "endpoints.outside.base_url=" + standin,
            "endpoints.outside.model=embed",
            "finetune.max_steps=1",
            "finetune.max_length=64",
            "finetune.val_examples=2",
            "evaluate.max_examples=2",
            "evaluate.max_new_tokens=8",
            *extra,
        ],
    )


@pytest.mark.parametrize("job", ["lakesynth", "lakesynth_tools"])
def test_both_jobs_run_with_no_network_from_any_udf(warehouse, teacher_server, monkeypatch, job):
    teacher_server.reset()
    monkeypatch.setenv(EMULATE_ENV, teacher_server.base_url)
    # The tools job's fine-tune is the Q&A job's (covered above): here its data is made, checked and split, and
    # tool_evaluate has no student to score.
    tools = [
        "finetune.backend=none",
        "tools.relevance.enabled=true",
        "tools.dedup.enabled=true",
        "tools.semantic.endpoint=semantic",
        "endpoints.semantic.base_url=" + teacher_server.base_url,
        "endpoints.semantic.model=standin",
    ]
    cfg = _settings(warehouse, teacher_server.base_url, *(tools if job == "lakesynth_tools" else []))
    summary = pipeline.run(cfg, job=job, root=ROOT)
    stages = summary["stages"]
    no_student = {"finetune", "tool_evaluate"} if job == "lakesynth_tools" else set()
    failed = {k: s for k, s in stages.items() if s["status"] != "ok" and k not in no_student}
    assert not failed, failed
    assert not serverless.armed()  # the rule held for the run, and ends with it
    calls = {k: s["calls"] for k, s in stages.items() if "calls" in s}
    if job == "lakesynth":
        assert calls["questions"] == calls["responses"] == calls["relevance"] == "ai_query"
        assert calls["evaluate"] == "driver" and stages["evaluate"]["tokens_from"] == "endpoint replies"
        assert stages["questions"]["tokens_from"].startswith("not reported")  # the built-in reports no tokens
    else:
        assert calls["call_generation"] == calls["call_relevance"] == "ai_query"
        assert calls["call_semantic"] == "driver"
    assert teacher_server.stats.requests > 0


def _fetch(batches, *, url: str):
    """A mapInPandas body that calls an endpoint, as no UDF may on serverless."""
    for batch in batches:
        try:
            httpx.get(url, timeout=2)
        except Exception:  # noqa: BLE001 - refused or not, the guard has seen it
            pass
        yield batch


def test_a_udf_that_opens_a_connection_fails_its_task(spark, teacher_server):
    serverless.arm()
    try:
        rows = spark.createDataFrame(pd.DataFrame({"id": [1, 2]}))
        rows.mapInPandas(functools.partial(_fetch, url=teacher_server.base_url), "id long").collect()
        with pytest.raises(LakesynthError, match="network connection.*from a UDF, which Databricks serverless refuses"):
            serverless.check("questions")
        httpx.get(teacher_server.base_url + "/v1/models", timeout=2)  # the driver may
        serverless.check("questions")
    finally:
        serverless.disarm()


def test_the_runtime_follows_serverless_rules_on_databricks_or_when_emulating():
    class Cfg:
        catalog, schema_, volume, warehouse = "c", "s", "v", "/tmp/w"

    assert Runtime.resolve(Cfg, {"DATABRICKS_RUNTIME_VERSION": "17.3"}).serverless
    assert Runtime.resolve(Cfg, {EMULATE_ENV: "http://127.0.0.1:9/v1/"}).serving == "http://127.0.0.1:9/v1"
    assert not Runtime.resolve(Cfg, {}).serverless
