"""Which inputs a run reads: a flag that names a source of the job replaces the config's sources of that job.
A stage declares the sources it reads (`Stage.sources`); a job's are those of its stages (registry.sources).

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
    """One input of a job, declared by the stage that reads it (`Stage.sources`): the flag that names it, the
    config keys it sets, and those it replaces. The command line's flags are the registered stages' sources."""

    flag: str  # argparse dest: "tools", "seeds", ...
    keys: tuple[str, ...]  # the config keys this source is (the first is the one the flag sets)
    replaces: tuple[str, ...]  # config keys cleared when the flag is given and no flag names them
    help: str = ""  # the flag's help, this source's part of it
    use_case: bool = False  # the data it names is shaped by the config's use case (its rules, its system prompt)


# The Q&A job's seed sources: seed questions, your own pairs, a taxonomy (its documents belong to it). One names
# what the run learns from, so it replaces the others.
QA_SEEDS = ("seed.path", "seed.pairs", "taxonomy.path", "taxonomy.topics", "taxonomy.examples_file",
            "taxonomy.requirements", "documents.path")  # fmt: skip


def flag_keys(sources: tuple[Source, ...]) -> dict[str, str]:
    """flag -> the config key it sets: the first source that declares the flag (a job's own sources first)."""
    keys: dict[str, str] = {}
    for source in sources:
        keys.setdefault(source.flag, source.keys[0])
    return keys


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
        domain = cfg.use_case.rules  # the domain-neutral default has none: nothing of another domain comes along
        if domain and any(s.use_case for s in sources) and not any(k.startswith("use_case") for k in set_keys):
            # The use case is no source, but the config's (the sample's bank rules) would shape the user's data.
            text += (
                f"; use case '{cfg.use_case.name}' of the config: its rules and system prompt shape this data "
                "(--set use_case.rules_file=... --set use_case.system_prompt=... for yours)"
            )
    return text
