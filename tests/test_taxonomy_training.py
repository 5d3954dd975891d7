"""The taxonomy sample (conf/taxonomy.yml) through the whole Q&A job on the stand-in teacher: every leaf reaches
`per_leaf` kept examples in training_chat, knowledge examples carry text of their document in the user turn, and
the split is stratified by leaf."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from conftest import ROOT
from test_notebooks_and_tracking import _execute, _images, _text

from lakesynth import pipeline
from lakesynth.core import registry, tables
from lakesynth.core.runtime import Runtime
from lakesynth.qa import format as chat_jsonl
from lakesynth.qa import insights


@pytest.mark.slow
def test_the_taxonomy_sample_trains_on_every_leaf(spark, warehouse, teacher_server):
    teacher_server.reset()
    cfg = registry.load_config(
        ROOT / "conf" / "taxonomy.yml",
        [
            f"warehouse={warehouse}",
            f"schema=t_{uuid.uuid4().hex[:10]}",
            f"endpoints.teacher.base_url={teacher_server.base_url}",
            "endpoints.teacher.model=standin",
            "mlflow.enabled=false",
            "finetune.backend=none",
            "taxonomy.max_rounds=10",  # the stand-in's verdicts are random: a leaf may need several rounds
            "run_id=taxonomy-test",
        ],
    )
    summary = pipeline.run(cfg, root=ROOT)
    assert all(s["status"] in ("ok", "skipped") for s in summary["stages"].values()), summary["stages"]
    assert summary["stages"]["seed"]["disabled"].startswith("seed.path is empty")
    spark_rows = tables.read(spark, Runtime.resolve(cfg), chat_jsonl.TABLE).collect()
    per_leaf = {}
    for r in spark_rows:
        per_leaf[r.leaf] = per_leaf.get(r.leaf, 0) + 1
    leaves = {
        "compositional_skills/writing/freeform/plain_language",
        "compositional_skills/grounded/tables/bus_timetable",
        "knowledge/science/biology/lichens",
    }
    assert set(per_leaf) == leaves and all(n >= cfg.taxonomy.per_leaf for n in per_leaf.values()), per_leaf
    assert summary["stages"]["format"]["examples_per_leaf"] == per_leaf
    document = (ROOT / "conf" / "taxonomy_docs" / "lichens.md").read_text(encoding="utf-8")
    for r in spark_rows:
        user = r.messages[-2].content
        if r.leaf.startswith("knowledge/"):  # the chunk, from the document, then the question
            context, _, question = user.rpartition(chat_jsonl.CONTEXT_SEPARATOR)
            assert r.chunk_id and context and context in document and question
        else:
            assert r.chunk_id is None
        assert r.messages[0].role == "system" and r.messages[-1].role == "assistant" and r.messages[-1].content
    # Stratified by leaf: each leaf gets its share of the validation split, within one example.
    for leaf, n in per_leaf.items():
        val = sum(1 for r in spark_rows if r.leaf == leaf and r.split == "val")
        assert abs(val - n * cfg.format.val_fraction) < 1, (leaf, val, n)
    lines = [json.loads(x) for x in Path(summary["files"]["train_jsonl"]).read_text(encoding="utf-8").splitlines()]
    assert len(lines) == sum(1 for r in spark_rows if r.split == "train")
    # Kept per leaf before and after the top-up, in the summary and as the report's plot.
    counts = insights.leaf_counts(spark, Runtime.resolve(cfg))
    assert counts["after"] == per_leaf == summary["stages"]["leaf_topup"]["kept_per_leaf_after"]
    assert counts["before"] == summary["stages"]["leaf_topup"]["kept_per_leaf_before"]
    outputs = _execute("03_dataset_report", warehouse, f"schema={cfg.schema_}", "taxonomy.per_leaf=4")
    text = _text(outputs)
    assert "No taxonomy" not in text and "knowledge/science/biology/lichens" in text and len(_images(outputs)) >= 1
