"""Export: the final dataset as a Hugging Face datasets folder and Parquet, read back as those tools read it,
with a dataset card that says what made it."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import datasets
import pandas as pd
import yaml
from conftest import ROOT, write

from lakesynth import pipeline
from lakesynth.core import registry
from lakesynth.core.runtime import Runtime

STAGES = ["seed", "questions", "responses", "judge", "dedup", "format", "preference", "export"]


def test_export_writes_a_datasets_folder_parquet_and_a_card(warehouse, teacher_server, tmp_path):
    teacher_server.reset()
    seeds = write(tmp_path / "s.csv", "topic,question,in_scope\n" + "".join(
        f"{t},How do I do thing {i} with my {t}?,yes\n" for i, t in enumerate(["cards", "loans"] * 4)))  # fmt: skip
    cfg = registry.load_config(
        ROOT / "conf" / "lakesynth.yml",
        [
            f"warehouse={warehouse}",
            f"schema=t_{uuid.uuid4().hex[:10]}",
            f"seed.path={seeds}",
            f"endpoints.teacher.base_url={teacher_server.base_url}",
            "endpoints.teacher.model=standin",
            "mlflow.enabled=false",
            "quality.judge.enabled=true",
            "run_id=export-test",
            "export.enabled=true",
            "preference.enabled=true",
            "export.license=cc-by-4.0",
            "export.hub_repo=me/bank-chat",
            "export.token_env=LAKESYNTH_TEST_NO_SUCH_TOKEN",
        ],
    )
    summary = pipeline.run(cfg, STAGES, root=ROOT)
    stage = summary["stages"]["export"]
    assert stage["status"] == "ok" and stage["hub"] == "not pushed: LAKESYNTH_TEST_NO_SUCH_TOKEN is not set"
    folder = summary["files"]["export"]
    assert folder == f"{Runtime.resolve(cfg).files_dir('export')}/{cfg.run_id}"
    chat = pd.read_json(summary["files"]["train_jsonl"], lines=True)
    # Read back as the datasets library and a Parquet reader read them.
    dataset = datasets.load_from_disk(f"{folder}/dataset")
    assert set(dataset) == {"train", "val"} and dataset["train"].num_rows == len(chat) == stage["train_examples"]
    first = dataset["train"][0]["messages"]
    assert [m["role"] for m in first] == ["system", "user", "assistant"] and first[2]["content"]
    parquet = pd.read_parquet(f"{folder}/parquet/val.parquet")
    assert len(parquet) == dataset["val"].num_rows and set(parquet.topic) <= {"cards", "loans"}
    # The card: metadata the Hub reads, then what made the data.
    text = open(f"{folder}/README.md", encoding="utf-8").read()
    meta = yaml.safe_load(text.split("---")[1])
    assert meta["license"] == "cc-by-4.0"
    assert {f["split"] for f in meta["configs"][0]["data_files"]} == {"train", "val"}
    made = json.loads(open(f"{folder}/provenance.json", encoding="utf-8").read())
    assert made["run_id"] == cfg.run_id and made["made_by"]["questions"]["models"] == ["standin"]
    assert made["made_by"]["judge"]["models"] == ["standin"] and len(made["config_sha256"]) == 16
    dropped = summary["stages"]["judge"]["dropped"]
    assert made["dropped"] == summary["stages"]["dedup"]["dropped"] and set(dropped) <= set(made["dropped"])
    assert "| questions | standin |" in text and f"`{cfg.run_id}`" in text
    # The yield funnel, as the run's summary has it: generated, each check, kept per split.
    assert made["funnel"]["generated"] == summary["funnel"]["generated"] > 0
    assert (
        made["funnel"]["splits"] == summary["funnel"]["splits"] == {"train": len(chat), "val": dataset["val"].num_rows}
    )
    judge = next(s for s in made["funnel"]["steps"] if s["step"] == "judge")
    assert judge["dropped"] == sum(dropped.values()) and "## Yield funnel" in text
    assert f"| judge | {judge['in']} | {judge['dropped']} | {judge['kept']} |" in text
    # The kept preference pairs, as their own config of the dataset, in the shape TRL's DPO trainer reads.
    pairs = datasets.load_from_disk(f"{folder}/preference")
    kept = sum(1 for line in open(summary["files"]["dpo_jsonl"], encoding="utf-8")) + sum(
        1 for line in open(summary["files"]["dpo_val_jsonl"], encoding="utf-8")
    )
    assert sum(d.num_rows for d in pairs.values()) == kept == summary["stages"]["preference"]["kept"] > 0
    pair = pairs["train"][0]
    assert [m["role"] for m in pair["prompt"]] == ["system", "user"] and pair["chosen"][0]["role"] == "assistant"
    assert pair["chosen_rating"] > pair["rejected_rating"]
    preference = next(c for c in meta["configs"] if c["config_name"] == "preference")
    assert {f["path"] for f in preference["data_files"]} == {f"parquet/preference/{s}.parquet" for s in pairs}
    # A funnel that cannot be computed (the questions' files gone) leaves the export whole, its card without it.
    for part in Path(Runtime.resolve(cfg).table_location("synthetic_questions")).glob("*.parquet"):
        part.unlink()
    again = pipeline.run(cfg, ["export"], root=ROOT)
    assert again["stages"]["export"]["status"] == "ok", again["stages"]["export"]
    made = json.loads(Path(f"{folder}/provenance.json").read_text(encoding="utf-8"))
    assert "funnel" not in made and made["funnel_error"].startswith("no yield funnel: "), made.get("funnel_error")
    assert "## Yield funnel" not in Path(f"{folder}/README.md").read_text(encoding="utf-8")


def test_tool_export_writes_the_kept_pairs_in_the_xlam_layout(spark, llm_cfg):
    """The function-calling job's export: query, answers and tools as JSON text, as xlam-function-calling-60k."""
    from lakesynth.core import tables
    from lakesynth.core.runtime import Runtime as R
    from lakesynth.tools import spec as toolspec
    from lakesynth.tools import tool_format

    tools = llm_cfg.tools.model_copy(
        update={"seeds": "", "semantic": llm_cfg.tools.semantic.model_copy(update={"enabled": False})}
    )
    export = llm_cfg.export.model_copy(
        update={"enabled": True, "hub_repo": "me/bank-tools", "token_env": "LAKESYNTH_TEST_NO_SUCH_TOKEN"}
    )
    cfg = llm_cfg.model_copy(update={"tools": tools, "export": export})
    stages = ["tools", "call_generation", "calls", "call_format", "call_execution", "call_semantic"]
    stages += ["call_relevance", "call_verdicts", "tool_format", "tool_export"]
    summary = pipeline.run(cfg, stages, job="lakesynth_tools", root=ROOT)
    stage = summary["stages"]["tool_export"]
    assert stage["status"] == "ok" and stage["hub"] == "not pushed: LAKESYNTH_TEST_NO_SUCH_TOKEN is not set"
    folder = summary["files"]["export"]
    dataset = datasets.load_from_disk(f"{folder}/tools")
    examples = tables.read(spark, R.resolve(cfg), tool_format.TABLE)
    assert {s: d.num_rows for s, d in dataset.items()} == {
        r.split: r["count"] for r in examples.groupBy("split").count().collect()
    }
    specs = {t["function"]["name"]: t["function"]["parameters"] for t in toolspec.read_spec(cfg.tools.spec)}
    checks = toolspec.validators(specs)
    for row in (r for d in dataset.values() for r in d):
        assert [t["name"] for t in json.loads(row["tools"])] == sorted(specs)
        answers = json.loads(row["answers"])
        assert toolspec.call_issues(answers, None, checks) == [] and row["query"]
        assert row["function"] == (answers[0]["name"] if answers else "none")
    parquet = pd.read_parquet(f"{folder}/parquet/tools/train.parquet")
    assert len(parquet) == dataset["train"].num_rows
    card = Path(folder, "README.md").read_text(encoding="utf-8")
    meta = yaml.safe_load(card.split("---")[1])
    assert [c["config_name"] for c in meta["configs"]] == ["tools"]
    # The funnel per tool and category, in the card too; a tool or category with none kept is a warning (here the
    # planted calls of three tools all fail a check).
    f = summary["funnel"]
    assert "## Yield funnel" in card and f"{f['generated']} generated, {f['kept']} kept" in card
    assert sum(g["generated"] for g in f["by"]["function"].values()) == f["generated"]  # every pair has one
    assert 0 < sum(g["generated"] for g in f["by"]["category"].values()) <= f["generated"]  # where a line gives one
    for group in ("function", "category"):
        for value, g in f["by"][group].items():
            warned = any(w.startswith(f"{group} '{value}': 0 kept") for w in summary["warnings"])
            assert (not g["kept"]) == warned, (group, value)
    assert f["by"]["function"]["list_transactions"]["kept"] == 0
