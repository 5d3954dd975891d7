"""Preference stage: candidates answer every training question, pairs follow the judge's scores exactly, ties and
thin margins are kept as rows with their reason, and the DPO/KTO files are what TRL reads."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from conftest import context, copy_schema, run_once, where

from lakesynth.core import tables
from lakesynth.qa import format as chat_jsonl
from lakesynth.qa import preference, questions, responses
from lakesynth.qa import seed as seeds


def _on(cfg, **changes):
    return cfg.model_copy(update={"preference": cfg.preference.model_copy(update={"enabled": True, **changes})})


@pytest.fixture(scope="module")
def training_set(spark, warehouse, teacher_server):
    """The training set made on the stand-in, once for the module."""
    return run_once(warehouse, teacher_server, seeds, questions, responses, chat_jsonl)


@pytest.fixture
def pref_cfg(spark, training_set, llm_cfg):
    """A copy of the training set, preference on, a margin between the judge's steps."""
    return copy_schema(spark, training_set, _on(llm_cfg, min_margin=0.75))


def _ratings(scores: str, n: int) -> list[float]:
    verdicts = json.loads(scores)
    return [sum(s["score"] for s in verdicts[f"answer_{i}"].values()) / 2 for i in range(1, n + 1)]


def test_pairs_follow_the_judges_scores_and_ties_keep_their_reason(spark, pref_cfg, teacher_server):
    rt = where(pref_cfg)
    teacher_server.reset()
    result = preference.run(context(pref_cfg))
    training = {r.question_id: r for r in tables.read(spark, rt, chat_jsonl.TABLE).collect()}
    names = [c.name for c in pref_cfg.preference.candidates]
    answers = {(r.question_id, r.candidate): r for r in tables.read(spark, rt, preference.CANDIDATES).collect()}
    assert len(answers) == 2 * len(training) and all(a.answer and a.model == "standin" for a in answers.values())
    pairs = tables.read(spark, rt, preference.TABLE).collect()
    assert {p.question_id for p in pairs} == set(training) and result.rows_out == len(pairs)
    reasons = {}
    for p in pairs:
        ratings = _ratings(p.scores, 2)
        best, worst = ratings.index(max(ratings)), len(ratings) - 1 - ratings[::-1].index(min(ratings))
        assert (p.chosen_rating, p.rejected_rating, p.margin) == (
            max(ratings),
            min(ratings),
            max(ratings) - min(ratings),
        )
        assert (p.chosen_candidate, p.rejected_candidate) == (names[best], names[worst])
        assert p.chosen[0].content == answers[(p.question_id, names[best])].answer
        assert p.rejected[0].content == answers[(p.question_id, names[worst])].answer
        assert [m.role for m in p.messages] == ["system", "user"] and p.messages[1].content == training[
            p.question_id
        ].messages[1].content
        expected = None if p.margin >= 0.75 else "preference:tie" if p.margin == 0 else "preference:margin_below_min"
        assert (p.keep, p.drop_reason) == (expected is None, expected) and p.model == "standin"
        reasons[expected] = reasons.get(expected, 0) + 1
    assert reasons.get(None) and reasons.get("preference:tie"), f"the stand-in gives kept pairs and ties: {reasons}"
    assert result.metrics["kept"] == reasons[None]
    assert result.metrics["dropped"] == {k: v for k, v in reasons.items() if k}

    # DPO: exactly the kept pairs, in their training_chat split; KTO: each judged answer off the scale's middle.
    kept = {p.question_id: p for p in pairs if p.keep}
    dpo = {split: _lines(result.files, "dpo", split) for split in ("train", "val")}
    assert sum(len(v) for v in dpo.values()) == len(kept)
    for split, lines in dpo.items():
        for line in lines:
            qid = next(q for q, p in kept.items() if p.chosen[0].content == line["chosen"][0]["content"])
            assert training[qid].split == split
            assert line["rejected"] == [{"role": "assistant", "content": kept[qid].rejected[0].content}]
    kto = _lines(result.files, "kto", "train") + _lines(result.files, "kto", "val")
    expected_kto = sum((p.chosen_rating != 2) + (p.rejected_rating != 2) for p in pairs)
    assert len(kto) == expected_kto and {line["label"] for line in kto} == {True, False}

    # A rerun pays for nothing.
    teacher_server.reset()
    again = preference.run(context(pref_cfg))
    assert teacher_server.stats.completions == 0 and again.metrics["kept"] == reasons[None]


def _lines(files: dict, name: str, split: str) -> list[dict]:
    key = f"{name}_jsonl" if split == "train" else f"{name}_{split}_jsonl"
    text = Path(files[key]).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def test_dpo_and_kto_files_load_with_datasets_and_pass_trls_format_checks(spark, pref_cfg):
    from datasets import load_dataset
    from transformers import AutoTokenizer
    from trl.data_utils import is_conversational, maybe_apply_chat_template, maybe_unpair_preference_dataset

    from lakesynth.training import student

    result = preference.run(context(pref_cfg))
    tokenizer = AutoTokenizer.from_pretrained(student.packaged_student(Path(pref_cfg.model_cache).expanduser()))
    dpo = load_dataset("json", data_files=result.files["dpo_jsonl"], split="train")
    assert set(dpo.column_names) == {"prompt", "chosen", "rejected"} and len(dpo) > 0
    example = dpo[0]
    assert is_conversational(example)
    text = maybe_apply_chat_template(example, tokenizer)
    assert text["prompt"].endswith("<|im_start|>assistant\n") and example["chosen"][0]["content"] in text["chosen"]
    kto = load_dataset("json", data_files=result.files["kto_jsonl"], split="train")
    assert set(kto.column_names) == {"prompt", "completion", "label"} and kto.features["label"].dtype == "bool"
    assert is_conversational(kto[0]) and maybe_apply_chat_template(kto[0], tokenizer)["completion"]
    # TRL's own conversion of paired data to KTO's unpaired form reads the DPO file too.
    assert len(maybe_unpair_preference_dataset(dpo)) == 2 * len(dpo)


def test_preference_is_off_by_default_and_candidates_are_checked(llm_cfg):
    from pydantic import ValidationError

    assert preference.STAGE.execute(context(llm_cfg)).metrics == {"disabled": "preference.enabled is false"}
    with pytest.raises(ValidationError, match="unique"):
        preference.PreferenceConfig(candidates=[{"name": "a"}, {"name": "a"}])
    with pytest.raises(ValidationError, match="at least 2"):
        preference.PreferenceConfig(candidates=[{"name": "a"}])


def test_the_base_student_answers_as_a_candidate_on_the_embedded_engine(spark, llm_cfg, tmp_path, monkeypatch):
    """`gguf_path: student`: the packaged SmolLM2 GGUF, served by the embedded engine beside the stand-in teacher.
    The engine's server is a second stand-in that knows only the student's name (the engine serving a real GGUF is
    tests/test_llm.py's): here, which file is served, under which name, and that the student's rows come from it."""
    from conftest import write

    from lakesynth.llm import embedded
    from lakesynth.llm.standin import StandIn, StandInOptions
    from lakesynth.training.student import packaged_student_gguf

    name = "SmolLM2-135M-Instruct.Q4_1"
    served = []

    @contextlib.contextmanager
    def serve(teacher):
        served.append((teacher.gguf_path, teacher.model))
        yield student_server.base_url

    student_server = StandIn(StandInOptions(models=(name,))).start()
    monkeypatch.setattr(embedded, "serve", serve)
    seeds_file = write(tmp_path / "s.csv", "topic,question,in_scope\ncards,How do I block my card?,yes\n")
    cfg = llm_cfg.model_copy(
        update={
            "seed": llm_cfg.seed.model_copy(update={"path": str(seeds_file)}),
            "questions": llm_cfg.questions.model_copy(update={"per_seed": 1}),
            "format": llm_cfg.format.model_copy(update={"val_fraction": 0.0}),
        }
    )
    student = preference.Candidate(
        name="student", gguf_path="student", temperature=0.0, max_tokens=300, max_failure_rate=1.0
    )
    cfg = _on(cfg, candidates=(preference.Candidate(name="teacher"), student))
    for stage in (seeds, questions, responses, chat_jsonl):
        stage.run(context(cfg))
    try:
        with context(cfg) as ctx:
            result = preference.run(ctx)
    finally:
        student_server.stop()
    assert served == [(str(packaged_student_gguf()), name)]
    rows = tables.read(spark, where(cfg), preference.CANDIDATES).where("candidate = 'student'").collect()
    assert rows and result.metrics["student_answered"] == len(rows)
    assert all(r.model == name and r.answer and r.error is None for r in rows)
    assert student_server.stats.completions == len(rows) + 1  # and its one-token preflight
