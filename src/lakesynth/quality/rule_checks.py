"""Rule checks stage: `synthetic_responses` -> `rule_verdicts`, checks of each answer that need no judge.

With any teacher, the embedded 0.5B one included (whose own judge keeps almost everything), an answer can repeat
the prompt it was given, state a customer's balance or data allowance it cannot know, or stop short. Each check
has its own switch (`quality.rules.<check>.enabled`) and drop reason:
- `leak:rules`: the answer copies the answer prompt's instructions (a span of `instructions_words` words), or
  the rules or system prompt at length (a span of `rules_words`, or `rules_share` of its words), by word n-grams.
- `invented:<value>`: a specific figure (an amount, a data allowance, a date, a reference number) that neither
  the question nor the rules state; one the question gave, in any format, is fine.
- `incomplete`: empty, only a preamble ("Sure, here's how I can help:"), a word or two and no sentence ("answer"),
  or cut mid-sentence ("... go to the").
Row by row on the executors (mapInPandas); derived whole each run, so a changed setting applies to every row.
The pair gate (dedup) and every reader of kept answers honour the verdicts.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterator

import pandas as pd
from pydantic import Field, field_validator
from pyspark.sql import functions as F

from lakesynth.config import Section
from lakesynth.core import tables
from lakesynth.core.stage import RunContext, Stage, StageResult
from lakesynth.core.tables import INT, S
from lakesynth.core.templates import render
from lakesynth.quality import rules

D = tables.T.DoubleType()


class LeakCheck(Section):
    enabled: bool = Field(True, description="Drop an answer that repeats the prompt's instructions or the rules.")
    ngram: int = Field(6, ge=3, le=20, description="Words per n-gram; copied spans are runs of shared n-grams.")
    instructions_words: int = Field(
        8, ge=3, description="A span this long copied from the answer prompt's own instructions is a leak."
    )
    rules_words: int = Field(
        25,
        ge=3,
        description="A span this long copied from the rules or the system prompt is a leak (shorter ones, such as "
        "a rule's instruction to block a card in the app, are an answer following the rules).",
    )
    rules_share: float = Field(
        0.8, gt=0, le=1, description="Or this share of the answer's words copied from the rules or system prompt."
    )


class InventedCheck(Section):
    enabled: bool = Field(True, description="Drop an answer stating a figure neither the question nor rules give.")
    kinds: tuple[str, ...] = Field(
        tuple(rules.FIGURES), description=f"The kinds of figure checked, of {', '.join(rules.FIGURES)}."
    )
    extra_patterns: tuple[str, ...] = Field(
        (), description="Your own regular expressions of a specific figure (e.g. an account number format)."
    )

    @field_validator("kinds")
    @classmethod
    def _known(cls, kinds: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(kinds) - set(rules.FIGURES))
        if unknown:
            raise ValueError(f"unknown kind(s) {unknown}; known: {list(rules.FIGURES)}")
        return kinds

    @field_validator("extra_patterns")
    @classmethod
    def _compiles(cls, patterns: tuple[str, ...]) -> tuple[str, ...]:
        for p in patterns:
            try:
                re.compile(p)
            except re.error as exc:
                raise ValueError(f"pattern {p!r} is not a regular expression: {exc}") from exc
        return patterns

    def patterns(self) -> dict[str, str]:
        return {
            **{k: rules.FIGURES[k] for k in self.kinds},
            **{f"extra_{i}": p for i, p in enumerate(self.extra_patterns)},
        }


class IncompleteCheck(Section):
    enabled: bool = Field(True, description="Drop an empty answer, a preamble, a word or two, or one cut mid-sentence.")
    dangling_words: tuple[str, ...] = Field(
        tuple(rules.DANGLING_WORDS), description="Words no sentence ends on (English by default)."
    )


class RuleChecksConfig(Section):
    leak: LeakCheck = Field(default_factory=LeakCheck, description="Rules or instructions repeated in the answer.")
    invented: InventedCheck = Field(default_factory=InventedCheck, description="Figures no input states.")
    incomplete: IncompleteCheck = Field(default_factory=IncompleteCheck, description="Empty, preamble, cut short.")

    def enabled(self) -> list[str]:
        return [name for name in ("incomplete", "leak", "invented") if getattr(self, name).enabled]


TABLE = tables.verdict(
    "rule_verdicts",
    [
        ("question_id", S),
        ("seed_id", S),
        ("topic", S),
        ("score", INT),
        ("leak_words", INT),
        ("leak_share", D),
        ("invented", S),
        ("incomplete", S),
        ("reasoning", S),
        ("model", S),
        ("prompt_version", S),
    ],
    judges="synthetic_responses",
    key="question_id",
)
SCHEMA = ", ".join(f"`{n}` {t.simpleString()}" for n, t in TABLE.columns if n not in tables.LINEAGE_NAMES)


def instructions(template: str) -> str:
    """The answer prompt's own text, without the rules and the question: what an answer must never repeat."""
    return "\n".join(render(template, rules="", question="", topic="", in_scope=s) for s in (True, False))


def check(answer: str, question: str, *, settings: RuleChecksConfig, sources: dict) -> dict:
    """One answer's verdict: every enabled check's finding, `keep`, and the first failed check's drop reason."""
    found: dict = {"leak_words": None, "leak_share": None, "invented": None, "incomplete": None}
    reasons: list[tuple[str, str, str]] = []  # (check, drop_reason, why)
    if settings.incomplete.enabled:
        why = rules.incomplete(answer, settings.incomplete.dangling_words)
        found["incomplete"] = why
        if why:
            reasons.append(("incomplete", "incomplete", f"incomplete: {why}"))
    if settings.leak.enabled:
        leak, n = settings.leak, settings.leak.ngram
        own, _ = rules.copied_span(answer, sources["instructions"], n)
        span, copied = rules.copied_span(answer, sources["rules"], n)
        share = copied / max(1, len(rules.words(answer)))
        found["leak_words"], found["leak_share"] = max(own, span), round(share, 4)
        if own >= leak.instructions_words:
            reasons.append(("leak", "leak:rules", f"copies {own} words of the answer prompt's instructions"))
        elif span >= leak.rules_words or share >= leak.rules_share:
            reasons.append(("leak", "leak:rules", f"copies {span} words in a row, {share:.0%} of it, from the rules"))
    if settings.invented.enabled:
        values = rules.invented(answer, rules.Given(question, sources["rules_text"]), settings.invented.patterns())
        found["invented"] = json.dumps(values, ensure_ascii=False) if values else None
        if values:
            reasons.append(
                ("invented", f"invented:{values[0]}", f"states {', '.join(values)}: not in the question or rules")
            )
    names = "+".join(settings.enabled())
    return {
        **found,
        "score": 0 if reasons else 1,
        "reasoning": "; ".join(r[2] for r in reasons) or f"passed {names.replace('+', ', ')}",
        "model": f"rule:{reasons[0][0]}" if reasons else f"rule:{names}",
        "keep": not reasons,
        "drop_reason": reasons[0][1] if reasons else None,
    }


def _check(batches: Iterator[pd.DataFrame], *, settings: RuleChecksConfig, texts: dict, version: str):
    """mapInPandas body: the n-gram sets are built once per task, then each row is checked."""
    n = settings.leak.ngram
    sources = {
        "instructions": rules.ngrams(texts["instructions"], n),
        "rules": rules.ngrams(texts["rules"], n),
        "rules_text": texts["rules"],
    }
    for batch in batches:
        found = [check(a, q, settings=settings, sources=sources) for a, q in zip(batch["answer"], batch["question"])]
        out = pd.DataFrame(found, columns=[n for n in TABLE.row_names if n not in ("question_id", "seed_id", "topic")])
        out.insert(0, "topic", batch["topic"].values)
        out.insert(0, "seed_id", batch["seed_id"].values)
        out.insert(0, "question_id", batch["question_id"].values)
        out["prompt_version"] = version
        yield out[TABLE.row_names]


def run(ctx: RunContext) -> StageResult:
    cfg = ctx.cfg
    settings = cfg.quality.rules
    texts = {
        "instructions": instructions(cfg.responses.template),
        "rules": "\n".join([cfg.use_case.rules, cfg.use_case.system_prompt or ""]),
    }
    # A changed setting, rule or prompt is a new version of the check: recorded on every row it decided.
    version = hashlib.sha256(json.dumps([settings.model_dump(), texts], sort_keys=True).encode()).hexdigest()[:12]
    if not settings.enabled():  # no verdicts, so none left from an earlier run drops an answer
        tables.overwrite(ctx.spark, ctx.rt, TABLE, ctx.spark.createDataFrame([], SCHEMA), run_id=cfg.run_id)
        return StageResult(tables=[TABLE], metrics={"disabled": "quality.rules.*.enabled are all false"})
    answered = ctx.read("synthetic_responses", kept=False).where(F.col("error").isNull() & F.col("answer").isNotNull())
    checked = answered.select("question_id", "seed_id", "topic", "question", "answer").mapInPandas(
        functools.partial(_check, settings=settings, texts=texts, version=version), SCHEMA
    )
    tables.overwrite(ctx.spark, ctx.rt, TABLE, checked, run_id=cfg.run_id)  # cheap: every row again, every run
    written = tables.read(ctx.spark, ctx.rt, TABLE)
    counts = tables.verdict_counts(written)
    n = written.count()
    return StageResult(
        rows_in=n, rows_out=counts["kept"], tables=[TABLE], metrics={**counts, "checks": settings.enabled()}
    )


STAGE = Stage(
    name="rule_checks",
    help="check each answer without a judge (rules leaked, figures invented, cut short) into rule_verdicts",
    run=run,
    reads=("synthetic_responses",),
    writes=(TABLE,),
    config=RuleChecksConfig,
    section="quality.rules",  # its checks have their own switches; with all off, run clears its verdicts
)
