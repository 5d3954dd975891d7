"""Which inputs a run reads: a flag that names a source of the job replaces the config's sources of that job.

The packaged config names the samples' sources (the bank seeds, the toy bank's tools, seed pairs and calls). A
user's `--tools` must not be checked against the sample's seed pairs, nor a `--taxonomy` mixed with the sample's
bank seeds: where a flag names a source of the job being run, every source of that job it replaces is cleared,
unless a flag names that one too. `describe` says on the run's first line which sources are used, and which of the
config's were set aside.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Collection
from dataclasses import dataclass

from lakesynth.config import Config


@dataclass(frozen=True)
class Source:
    """One input of a job: the flag that names it, the config keys it sets, and those it replaces."""

    flag: str  # argparse dest: "tools", "seeds", ...
    keys: tuple[str, ...]  # the config keys this source is (the first is the one the flag sets)
    replaces: tuple[str, ...]  # config keys cleared when the flag is given and no flag names them


# The Q&A job's seed sources: seed questions, your own pairs, a taxonomy (its documents belong to it). One names
# what the run learns from, so it replaces the others.
_QA_SEEDS = ("seed.path", "seed.pairs", "taxonomy.path", "taxonomy.topics", "taxonomy.examples_file",
             "taxonomy.requirements", "documents.path")  # fmt: skip
QA = (
    Source("seeds", ("seed.path",), _QA_SEEDS),
    Source("pairs", ("seed.pairs",), _QA_SEEDS),
    Source("taxonomy", ("taxonomy.path",), _QA_SEEDS),
    Source("documents", ("documents.path",), ()),  # a knowledge leaf's documents: replaces no seed source
)
# The function-calling job: another spec makes the sample's implementations, pairs and seeds meaningless; pairs
# to verify and seeds to generate from are each what the run is about, so either replaces the other.
TOOLS = (
    Source("tools", ("tools.spec",), ("tools.functions", "tools.calls", "tools.seeds")),
    Source("functions", ("tools.functions",), ()),
    Source("calls", ("tools.calls",), ("tools.seeds",)),
    Source("seeds", ("tools.seeds",), ("tools.calls",)),
)


def of_job(stages: Collection[str]) -> tuple[Source, ...]:
    """The sources of the job that runs these stages: the function-calling job's, else the Q&A job's."""
    return TOOLS if "tools" in stages or "call_generation" in stages else QA


def _given(args: argparse.Namespace, sources: tuple[Source, ...]) -> list[Source]:
    return [s for s in sources if getattr(args, s.flag, None)]


def cleared(args: argparse.Namespace, sources: tuple[Source, ...], kept: Collection[str] = ()) -> list[str]:
    """The config keys to empty: those a given flag replaces that no given flag names, nor `kept` (the keys the
    user set with --set), in a stable order."""
    given = _given(args, sources)
    named = {k for s in given for k in s.keys} | set(kept)
    return [k for k in dict.fromkeys(k for s in given for k in s.replaces) if k not in named]


def overrides(keys: list[str]) -> list[str]:
    """`--set` overrides that empty `keys`."""
    return [f"{key}={json.dumps('')}" for key in keys]


def value(cfg: Config, key: str) -> str:
    """A source key's value in `cfg` ("" when unset)."""
    section, _, name = key.partition(".")
    return str(getattr(getattr(cfg, section, None), name, "") or "")


def describe(
    cfg: Config,
    args: argparse.Namespace,
    sources: tuple[Source, ...],
    set_aside: Collection[str] = (),
    set_keys: Collection[str] = (),
) -> str:
    """`sources --tools /x/t.json, tools.seeds /…/seeds.jsonl (config); not used: the config's tools.calls`, for
    the run's first line: each source the run reads, by the flag or config key that names it, then the config's
    sources the flags `set_aside` (keys that had a value before they were cleared). `set_keys` were given by --set."""
    flagged = {s.keys[0]: s.flag for s in _given(args, sources)}
    keys = dict.fromkeys(k for s in sources for k in (*s.keys, *s.replaces))
    used = []
    for key in keys:
        given = value(cfg, key)
        if given:
            used.append(
                f"--{flagged[key]} {given}"
                if key in flagged
                else f"{key} {given} ({'--set' if key in set_keys else 'config'})"
            )
    text = "sources " + (", ".join(used) if used else "none")
    if set_aside:
        text += "; not used: the config's " + ", ".join(set_aside)
        if sources is QA and not any(k.startswith("use_case") for k in set_keys):
            # The use case is no source, but the config's (the sample's bank rules) would shape the user's data.
            text += (
                f"; use case '{cfg.use_case.name}' of the config: its rules and system prompt shape this data "
                "(--set use_case.rules_file=... --set use_case.system_prompt=... for yours)"
            )
    return text
