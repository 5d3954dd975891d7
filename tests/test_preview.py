"""`lakesynth preview`, `--compare`, the estimate and the budget, on the stand-in (zero latency, seeded replies)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ROOT, on_standin, sample_config, write

import lakesynth
from lakesynth import cli, pipeline
from lakesynth.config import with_overrides
from lakesynth.core import budget, estimate
from lakesynth.core.runtime import EMULATE_ENV, Runtime

JOBS = pipeline.project_jobs(ROOT)
QUIET = ["mlflow.enabled=false", "quality.judge.enabled=true"]
OFF_TOPIC = "Write questions that are OFF-TOPIC for this use case: about cooking, not banking."


def standin_args(cfg, teacher_server) -> list[str]:
    """The CLI flags that point a command at `cfg`'s warehouse and schema and at the stand-in."""
    flags = ["--warehouse", cfg.warehouse, "--schema", cfg.schema_]
    for item in (
        f"endpoints.teacher.base_url={teacher_server.base_url}",
        "endpoints.teacher.model=standin",
        "endpoints.teacher.max_concurrency=16",
        *QUIET,
    ):
        flags += ["--set", item]
    return flags


def delta_versions(cfg) -> dict[str, int]:
    """Each table of the schema and its latest Delta version, read from the logs."""
    schema = Path(cfg.warehouse) / cfg.catalog / cfg.schema_
    return {
        log.parent.name: max(int(p.stem) for p in log.glob("*.json"))
        for log in sorted(schema.glob("*/_delta_log"))
        if not log.parent.name.startswith("_staging")
    }


def folders(cfg) -> set[str]:
    return {p.name for p in (Path(cfg.warehouse) / cfg.catalog / cfg.schema_).iterdir()}


def seeds_csv(path: Path, n: int) -> str:
    topics = ("cards", "loans", "savings", "fees")
    rows = ["topic,question,in_scope"] + [
        f"{topics[i % 4]},How do I handle case {i} with my {topics[i % 4]} account?,{'true' if i % 5 else 'false'}"
        for i in range(n)
    ]
    return write(path, "\n".join(rows) + "\n")


def config(warehouse, teacher_server, *overrides):
    cfg = on_standin(sample_config(warehouse), teacher_server)
    return with_overrides(cfg, [*QUIET, *overrides])


@pytest.mark.parametrize(
    ("job", "first"), [("lakesynth", ["seed", "questions"]), ("lakesynth_tools", ["tools", "call_generation"])]
)
def test_preview_prints_examples_with_verdicts_writes_the_file_and_changes_no_table(
    warehouse, teacher_server, tmp_path, capsys, job, first
):
    cfg = config(warehouse, teacher_server)
    teacher_server.reset()
    pipeline.run(cfg, first, job=job, jobs=JOBS)  # the job's schema has tables a preview must leave alone
    before, files = delta_versions(cfg), folders(cfg)
    out = tmp_path / "preview.md"
    code = cli._main(
        [
            "preview",
            "--job",
            job,
            "-n",
            "2",
            "--config",
            str(ROOT / "conf/lakesynth.yml"),
            "--out",
            str(out),
            *standin_args(cfg, teacher_server),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    assert delta_versions(cfg) == before  # no table of the job's schema changed, none was added
    assert folders(cfg) - files <= {cfg.volume}  # the saved estimate's folder, in the volume, no table
    assert not [p for p in Path(cfg.warehouse, cfg.catalog).iterdir() if "_preview_" in p.name]  # scratch dropped
    verdicts = "answer_verdicts" if job == "lakesynth" else "call_format_verdicts"
    assert verdicts in printed and ("kept" in printed or "dropped" in printed)
    assert "estimate for job" in printed and "kept examples expected" in printed
    document = out.read_text()
    assert document.count("\n## ") >= 3 and f"| {verdicts} | keep |" in document and "## Estimate" in document
    saved = estimate.load(Runtime.resolve(cfg), job)
    assert saved["preview_units"] == 2 and saved["stages"]
    assert cli._main(["estimate", "--job", job, "--warehouse", cfg.warehouse, "--schema", cfg.schema_]) == 0
    assert "kept examples expected" in capsys.readouterr().out


@pytest.mark.slow
def test_compare_shows_the_planted_template_yielding_less_side_by_side(
    warehouse, teacher_server, tmp_path, capsys, monkeypatch
):
    """A template that asks for off-topic questions; the scripted stand-in writes them as such, and its judge
    scores every pair about them 1: the judge's yield is 0 beside the configured template's."""
    monkeypatch.setenv("COLUMNS", "400")  # the terminal's width: no example text wrapped
    cfg = config(warehouse, teacher_server)
    teacher_server.reset(
        rewrite=(("OFF-TOPIC", "questions", "Off topic, a pancake recipe: {}"), ("pancake recipe", "score", 1))
    )
    planted = write(tmp_path / "planted.j2", cfg.questions.template + "\n" + OFF_TOPIC + "\n")
    out = tmp_path / "compare.md"
    code = cli._main(
        [
            "preview",
            "-n",
            "3",
            "--config",
            str(ROOT / "conf/lakesynth.yml"),
            "--out",
            str(out),
            "--compare",
            f"questions.template_file={planted}",
            *standin_args(cfg, teacher_server),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0 and "side by side" in printed and "pancake recipe" in printed
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:4]]
        for line in out.read_text().splitlines()
        if line.startswith(("| yield ", "| tokens per kept", "| examples kept"))
    }
    configured, off_topic = rows["yield judge"]
    assert float(configured) > 0 and float(off_topic) == 0.0
    assert int(rows["examples kept"][0]) > 0 and rows["examples kept"][1] == "0"
    assert float(rows["tokens per kept example"][0]) > 0 and rows["tokens per kept example"][1] == ""


def test_estimate_from_five_seeds_is_within_bounds_of_a_hundred_seed_run(warehouse, teacher_server, tmp_path):
    cfg = config(warehouse, teacher_server, f"seed.path={seeds_csv(tmp_path / 'seeds.csv', 100)}")
    teacher_server.reset()
    made = pipeline.preview(cfg, n=5, jobs=JOBS)["estimate"]
    assert made["units"] == 100 and made["preview_units"] == 5
    tasks = [k for k, (stage, _) in JOBS.graph().items() if stage not in pipeline.PREVIEW_SKIPS]
    summary = pipeline.run(cfg, tasks, jobs=JOBS)
    actual, expected = summary["usage"], made["stages"]
    assert set(actual) == set(expected)
    for stage, used in actual.items():
        assert used["requests"] == pytest.approx(expected[stage]["requests"], rel=0.10), stage
        tokens = used["prompt_tokens"] + used["completion_tokens"]
        assert tokens == pytest.approx(
            expected[stage]["prompt_tokens"] + expected[stage]["completion_tokens"], rel=0.10
        )
    kept = summary["stages"]["format"]["rows_out"]
    assert kept == pytest.approx(made["kept"]["expected"], rel=0.20)
    assert made["kept"]["low"] <= kept <= made["kept"]["high"]


@pytest.mark.slow
def test_budget_stops_at_the_cap_and_a_rerun_finishes_paying_nothing_twice(warehouse, teacher_server, tmp_path):
    prices = [
        "endpoints.teacher.price_per_million_prompt_tokens=2",
        "endpoints.teacher.price_per_million_completion_tokens=8",
    ]
    seeds = f"seed.path={seeds_csv(tmp_path / 'seeds.csv', 20)}"
    cfg = config(warehouse, teacher_server, seeds, "llm.chunk_rows=15", *prices)
    teacher_server.reset()
    made = pipeline.preview(cfg, n=5, jobs=JOBS)["estimate"]
    cap = made["total"]["estimated_cost_usd"] / 2
    tasks = [k for k, (stage, _) in JOBS.graph().items() if stage not in pipeline.PREVIEW_SKIPS]

    capped = pipeline.run(with_overrides(cfg, [f"budget.max_usd={cap}"]), tasks, jobs=JOBS)
    spent = sum(u["cost_usd"] or 0 for u in capped["usage"].values())
    chunk = max(s["estimated_cost_usd"] / s["requests"] for s in made["stages"].values()) * 15 * 1.1
    assert capped["stopped"] == "budget"
    assert spent <= cap + chunk
    assert any(s.get("budget") == "stopped" for s in capped["stages"].values())
    assert all(s["status"] == "ok" for s in capped["stages"].values()), capped["stages"]

    rerun = pipeline.run(cfg, tasks, jobs=JOBS)  # no cap: it sends what the capped run did not
    assert "stopped" not in rerun
    other = with_overrides(cfg, [f"schema={cfg.schema_}_uncapped"])
    uncapped = pipeline.run(other, tasks, jobs=JOBS)
    for stage, used in uncapped["usage"].items():
        paid = capped["usage"].get(stage, {}).get("requests", 0) + rerun["usage"].get(stage, {}).get("requests", 0)
        assert paid == used["requests"], stage
    rows = {name: entry["rows"] for name, entry in rerun["tables"].items() if name != "run_log"}
    assert rows == {name: entry["rows"] for name, entry in uncapped["tables"].items() if name != "run_log"}


def test_preview_in_a_notebook_returns_the_examples_as_a_dataframe(warehouse, teacher_server):
    cfg = config(warehouse, teacher_server)
    teacher_server.reset()
    flags = standin_args(cfg, teacher_server)
    overrides = [flags[i + 1] for i, f in enumerate(flags) if f == "--set"]
    frame = lakesynth.preview(
        str(ROOT / "conf/lakesynth.yml"),
        n=1,
        overrides=[f"warehouse={cfg.warehouse}", f"schema={cfg.schema_}", *overrides],
        display=False,
    )
    assert len(frame) == cfg.questions.per_seed and frame["unit"].nunique() == 1
    assert {"question", "answer", "answer_verdicts.scores", "answer_verdicts.keep", "kept", "config"} <= set(frame)
    assert frame["kept"].tolist() == [bool(r) for r in frame["answer_verdicts.keep"]]


def test_budget_on_the_builtin_ai_query_counts_each_chunk_statement_from_the_prediction(
    warehouse, teacher_server, monkeypatch
):
    """Databricks' ai_query reports no tokens per row: the cap holds per chunk statement, on the predicted cost."""
    monkeypatch.setenv(EMULATE_ENV, teacher_server.base_url)
    teacher_server.reset()
    cfg = config(
        warehouse,
        teacher_server,
        "endpoints.teacher.base_url=databricks",
        "quality.judge.enabled=false",
        "budget.max_tokens=3000",
    )
    summary = pipeline.run(cfg, ["seed", "questions", "responses"], jobs=JOBS)
    questions = summary["stages"]["questions"]
    assert summary["stopped"] == "budget" and questions["budget"] == "stopped"
    assert questions["budget_from"] == budget.FROM_ESTIMATE and questions["not_requested"] > 0
    used = summary["usage"]["questions"]
    assert 0 < used["requests"] < 24 and used["prompt_tokens"] + used["completion_tokens"] <= 3000
    assert summary["stages"]["responses"]["not_requested"] == used["requests"] * cfg.questions.per_seed


def test_a_preview_whose_stage_fails_stops_after_its_first_seed_exits_1_and_saves_no_estimate(
    warehouse, teacher_server, tmp_path, capsys
):
    cfg = config(warehouse, teacher_server)
    teacher_server.reset(fault_rate=1.0, faults=("500",))
    flags = [*standin_args(cfg, teacher_server), "--set", "endpoints.teacher.max_retries=0"]
    code = cli._main(["preview", "--config", str(ROOT / "conf/lakesynth.yml"), "--out", str(tmp_path / "p.md"), *flags])
    printed = capsys.readouterr().out
    assert code == 1 and printed.count("questions: failed") == 1  # one pass: the first seed's
    assert "estimate not saved (questions failed)" in printed
    assert estimate.load(Runtime.resolve(cfg), "lakesynth") is None


@pytest.mark.slow
@pytest.mark.parametrize(("job", "made_by"), [("lakesynth", "responses"), ("lakesynth_tools", "call_generation")])
def test_a_shown_preview_carries_one_generated_row_first_and_pays_for_nothing_twice(
    warehouse, teacher_server, tmp_path, job, made_by
):
    """The first pass shows one example (one question of the first seed, or one call, through every stage); the
    second makes the rest from what the first held aside, so the preview sends the requests one without `show`
    sends, no more, and estimates the same."""
    seeds = f"seed.path={seeds_csv(tmp_path / 'seeds.csv', 6)}"
    paid, figures, frames = [], [], []
    for show in (frames.append, None):
        cfg = config(warehouse, teacher_server, seeds, f"schema=t_show_{bool(show)}_{tmp_path.name[-6:]}")
        teacher_server.reset()
        made = pipeline.preview(cfg, n=2, job=job, jobs=JOBS, save=False, show=show)
        paid.append(teacher_server.stats.requests - teacher_server.stats.probes)  # a pass's preflights: 1 token
        figures.append(
            {
                stage: (s["requests"], s["prompt_tokens"], s["completion_tokens"])
                for stage, s in made["estimate"]["stages"].items()
            }
        )
        if show:
            whole = made
    first, rest = frames
    assert len(first) == 1 and len(rest) > 1 and "kept" in first  # one example through every stage, then the others
    assert len(first) + len(rest) == len(whole["frame"]) and set(first["key"]).isdisjoint(rest["key"])
    assert paid[0] == paid[1] > 0
    assert figures[0] == figures[1] and made_by in figures[0]  # the estimate measures both passes, as one
    assert whole["estimate"]["preview_units"] == 2


@pytest.mark.slow
def test_a_first_answer_longer_than_the_first_look_is_asked_in_full_later_and_the_next_question_shown_first(
    warehouse, teacher_server, tmp_path
):
    """The first pass asks its answer with at most FIRST_LOOK tokens: the first question's long answer is cut there
    (not retried), the second question's example is shown first, and the long one is asked in full in the second
    pass. The cut request is the one more the shown preview sends, and it is no part of the estimate's measure."""
    import json

    seeds = f"seed.path={seeds_csv(tmp_path / 'seeds.csv', 3)}"
    frames: list = []
    cfg = config(warehouse, teacher_server, seeds, f"schema=t_look_a_{tmp_path.name[-6:]}")
    teacher_server.reset()
    pipeline.preview(cfg, n=1, save=False, show=frames.append)
    first_question = frames[0]["question"].iloc[0]  # the stand-in is deterministic: the same first question again
    words = pipeline.FIRST_LOOK["synthetic_responses"] * 4 // 5  # about 300 tokens: past the look, within 640
    long = json.dumps({"reasoning": "scripted", "answer": " ".join(["word"] * words) + "."})
    paid, figures, frames = [], [], []
    for show in (frames.append, None):
        cfg = config(warehouse, teacher_server, seeds, f"schema=t_look_{bool(show)}_{tmp_path.name[-6:]}")
        teacher_server.reset(replies=((first_question, long),))
        made = pipeline.preview(cfg, n=1, save=False, show=show)
        paid.append(teacher_server.stats.requests - teacher_server.stats.probes)
        figures.append({k: (s["requests"], s["prompt_tokens"]) for k, s in made["estimate"]["stages"].items()})
        if show:
            whole = made["frame"].set_index("question")
    first, rest = frames
    assert list(first["question"]) != [first_question] and len(first) == 1 and first["error"].isna().all()
    assert first_question in set(rest["question"]) and whole.loc[first_question, "answer"].startswith("word word")
    assert whole["error"].isna().all()
    assert paid[0] == paid[1] + 1  # the cut first look, and nothing else, asked twice
    assert figures[0] == figures[1]
