"""Export stage: the final dataset as a Hugging Face `datasets` folder and Parquet, with its dataset card.

`<volume>/export/<run_id>/`: `dataset/` (`DatasetDict.save_to_disk`, one split per split of `training_chat`),
`parquet/<split>.parquet`, the kept preference pairs (when the preference stage made any) in `preference/` and
`parquet/preference/<split>.parquet`, and `README.md`, a Hugging Face dataset card (YAML metadata with the license
and the splits, then what made it: teacher and judge models, prompt versions, config hash, run id; counts per split
and per topic; drop counts per check). With `export.hub_repo` set and a Hugging Face token in `HF_TOKEN`, the
dataset is pushed to the Hub; otherwise the summary says why not. Off by default.
"""

from __future__ import annotations

from pathlib import Path

from lakesynth.core.stage import RunContext, Stage, StageResult
from lakesynth.errors import StageError
from lakesynth.training import datasets as exporting

# every check's drops: the critic's, then each pair's first, then the screen's (earlier runs, evaluation sets)
CHECKS = ("question_verdicts", "pair_verdicts", "screen_verdicts", "leaf_screen_verdicts")
# The LLM stages whose models the card names (the chat data's, not the function-calling job's).
MADE_BY = ("questions", "critic", "responses", "judge", "relevance", "leaf_generation", "grounding", "preference")


def examples(ctx: RunContext):
    """training_chat as one pandas frame per split: each message as {role, content} (and tool fields when set)."""
    chat = ctx.read("training_chat").orderBy("example_id").toPandas()
    chat["messages"] = [
        [{k: v for k, v in dict(m).items() if v is not None} for m in messages] for messages in chat["messages"]
    ]
    columns = ["example_id", "question_id", "seed_id", "topic", "shape", "messages", "n_tokens"]
    return {split: rows[columns].reset_index(drop=True) for split, rows in chat.groupby("split")}


def preference_pairs(ctx: RunContext) -> dict:
    """The kept preference pairs as one pandas frame per split (the split of their training_chat example):
    `prompt`, `chosen`, `rejected` as message lists, as TRL's DPO trainer reads them, with ratings and models."""
    kept = ctx.read("training_preference").where("keep")
    pairs = kept.join(ctx.read("training_chat").select("question_id", "split"), "question_id")
    frame = pairs.orderBy("example_id").toPandas()
    if frame.empty:
        return {}
    for column in ("messages", "chosen", "rejected"):
        frame[column] = [[{"role": m["role"], "content": m["content"]} for m in ms] for ms in frame[column]]
    frame = frame.rename(columns={"messages": "prompt"})
    columns = ["example_id", "question_id", "topic", "prompt", "chosen", "rejected"]
    columns += ["chosen_rating", "rejected_rating", "chosen_model", "rejected_model"]
    return {split: rows[columns].reset_index(drop=True) for split, rows in frame.groupby("split")}


def provenance(ctx: RunContext) -> dict:
    """What made the dataset (exporting.made_by) and each check's drop counts."""
    # A pair's first failed check (pair_verdicts), and the critic's drops, whose questions were never answered.
    dropped: dict[str, int] = {}
    for table in CHECKS:
        for r in ctx.read(table, kept=False).where("NOT keep").groupBy("drop_reason").count().collect():
            dropped[r.drop_reason] = dropped.get(r.drop_reason, 0) + r["count"]
    return {**exporting.made_by(ctx, MADE_BY), "dropped": dict(sorted(dropped.items()))}


def diversity_section(ctx: RunContext) -> str:
    """The card's diversity figures (format's `example_diversity`) and the evaluation items its examples were found
    to repeat (`contamination_report`), as Markdown."""
    rows = ctx.read("example_diversity").orderBy("group").collect()
    if not rows:
        return ""
    lines = [
        "## Diversity",
        "",
        "| group | texts | distinct texts | distinct-n | mean pairwise similarity |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        similar = "" if r.mean_similarity is None else f"{r.mean_similarity:.3f}"
        distinct_n = "" if r.distinct_n is None else f"{r.distinct_n:.3f} (n={r.n})"
        lines.append(f"| {r.group} | {r.texts} | {r.distinct_texts:.3f} | {distinct_n} | {similar} |")
    coverage = [r.coverage for r in rows if r.coverage]
    if coverage:
        lines += ["", f"Topics (and leaves) with an example: {coverage[0]}."]
    hits = ctx.read("contamination_report").groupBy("set").count().collect()
    if hits:
        sets = ", ".join(f"{r.set}: {r['count']} item(s)" for r in sorted(hits, key=lambda r: r.set))
        lines += ["", f"Evaluation items that generated examples repeated (those examples were dropped): {sets}."]
    return "\n".join(lines) + "\n"


def card(ctx: RunContext, splits: dict, made: dict, pairs: dict) -> str:
    """A Hugging Face dataset card: YAML metadata the Hub reads, then what the dataset is and what made it."""
    cfg = ctx.cfg
    configs = exporting.config_metadata("default", splits, "")
    if pairs:
        configs += "\n" + exporting.config_metadata("preference", pairs, "preference")
    topics = {}
    for split, rows in splits.items():
        for topic, n in rows["topic"].value_counts().items():
            topics.setdefault(topic, {})[split] = int(n)
    topic_rows = "\n".join(
        f"| {t} | " + " | ".join(str(c.get(s, 0)) for s in sorted(splits)) + " |" for t, c in sorted(topics.items())
    )
    return f"""---
license: {ctx.cfg.export.license}
task_categories:
- text-generation
language:
- en
tags:
- synthetic
- lakesynth
configs:
{configs}
---

# {cfg.use_case.name}: synthetic chat data made by lakesynth

Chat examples (`messages`: system, user, assistant) for fine-tuning, generated by a teacher model from seed
questions and the use case's rules, then checked and deduplicated.

- Run: `{made["run_id"]}`; config sha256 `{made["config_sha256"]}`
- Examples per split: {", ".join(f"{s} {len(r)}" for s, r in sorted(splits.items()))}
- Preference pairs per split (config `preference`: prompt, chosen, rejected): {
        ", ".join(f"{s} {len(r)}" for s, r in sorted(pairs.items())) or "none"
    }

## Examples per topic and split

| topic | {" | ".join(sorted(splits))} |
|---|{"---|" * len(splits)}
{topic_rows}

{diversity_section(ctx)}
{exporting.provenance_sections(made)}
"""


def run(ctx: RunContext) -> StageResult:
    export = ctx.cfg.export
    exporting.datasets_module()
    splits = examples(ctx)
    if not splits:
        raise StageError("export: training_chat has no examples; run the format stage first")
    folder = Path(ctx.rt.files_dir(f"export/{ctx.cfg.run_id}"))
    configs = {"default": exporting.write_config(folder, "dataset", splits, "")}
    pairs = preference_pairs(ctx)
    if pairs:
        configs["preference"] = exporting.write_config(folder, "preference", pairs, "preference")
    made = provenance(ctx)
    exporting.write_card(folder, card(ctx, splits, made, pairs), made)
    metrics = {f"{s}_examples": len(r) for s, r in sorted(splits.items())}
    metrics.update({f"{s}_preference_pairs": len(r) for s, r in sorted(pairs.items())})
    metrics["hub"] = exporting.push(export, configs)
    rows = sum(len(r) for r in splits.values())
    return StageResult(rows_in=rows, rows_out=rows, files={"export": str(folder)}, metrics=metrics)


STAGE = Stage(
    name="export",
    help="write the final dataset as a Hugging Face datasets folder and Parquet with its dataset card",
    run=run,
    reads=("training_chat", "training_preference", *CHECKS, "example_diversity", "contamination_report"),
    config=exporting.ExportConfig,
)
