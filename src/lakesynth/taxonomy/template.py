"""A Synthetic Data Studio template (seed topics, examples, requirements) read into rows (rows.py) as a taxonomy.

The Synthetic Data Studio form (seed topics, examples, requirements) is read as a one-level taxonomy: one skill
leaf `topics/<slug of the topic>` per topic, every leaf with all the examples (SDS injects each topic with the same
examples) and the requirements as its task description.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from pathlib import Path

from lakesynth.errors import SeedError
from lakesynth.taxonomy.rows import Taxonomy, example_row, leaf_row, listed, value_type

TOPICS = "topics"  # the one level of a template's taxonomy: topics/<slug>
SLUG_CHARS = 60


def slug(topic: str) -> str:
    """A topic's folder name: ASCII letters and digits in lower case, runs of anything else as one `-`, at most 60
    characters; a topic with no such character (e.g. only CJK) gets `topic-<hash>` so it still has a stable name."""
    ascii_text = unicodedata.normalize("NFKD", topic).encode("ascii", "ignore").decode()
    name = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")[:SLUG_CHARS].rstrip("-")
    return name or "topic-" + hashlib.sha256(topic.encode()).hexdigest()[:8]


def read_template(topics_file: str | Path, examples_file: str | Path, requirements_file: str | Path) -> Taxonomy:
    """A Synthetic Data Studio template as a one-level taxonomy: leaf `topics/<slug>` per seed topic (one per line;
    blank lines and `#` comments skipped), each with every example (JSONL, one object of any fields a line) and the
    requirements text as its description. All problems of all three files are raised together."""
    problems: list[str] = []
    topics = _topics(Path(topics_file), problems)
    examples = _template_examples(Path(examples_file), problems)
    requirements = _requirements(Path(requirements_file), problems)
    if problems:
        raise SeedError(listed(f"{len(problems)} problem(s) in the template, nothing was read", problems))
    taxonomy = Taxonomy()
    grounded = any(isinstance(e.get("context"), str) and e["context"].strip() for e in examples)
    for topic in topics:
        leaf = f"{TOPICS}/{slug(topic)}"
        taxonomy.leaves.append(leaf_row(leaf, "skill", grounded, requirements, str(topics_file), topic=topic))
        taxonomy.examples += [example_row(leaf, i, i, example) for i, example in enumerate(examples)]
    return taxonomy


def _topics(file: Path, problems: list[str]) -> list[str]:
    lines = _lines(file, "topics", problems)
    topics, leaves = [], {}
    for number, line in lines:
        topic = line.strip()
        if not topic or topic.startswith("#"):
            continue
        name = slug(topic)
        if name in leaves:
            first = leaves[name]
            problems.append(f"{file}: line {number}: topic {topic!r} has the leaf {TOPICS}/{name} of line {first}")
            continue
        leaves[name] = number
        topics.append(topic)
    if not topics and not any(p.startswith(f"{file}:") for p in problems):
        problems.append(f"{file}: no seed topic (one a line; blank lines and # comments are skipped)")
    return topics


def _template_examples(file: Path, problems: list[str]) -> list[dict]:
    examples, seen, before = [], {}, len(problems)
    lines = _lines(file, "examples", problems)
    for number, line in lines:
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as exc:
            problems.append(f"{file}: line {number}: not valid JSON: {exc}")
            continue
        if not isinstance(value, dict) or not value:
            problems.append(f"{file}: line {number}: expected a JSON object with fields, got {value_type(value)}")
            continue
        key = json.dumps(value, sort_keys=True)
        if key in seen:
            problems.append(f"{file}: line {number}: repeats line {seen[key]}")
            continue
        seen[key] = number
        examples.append(value)
    if not examples and len(problems) == before:
        problems.append(f"{file}: no example (JSONL: one JSON object a line)")
    return examples


def _requirements(file: Path, problems: list[str]) -> str:
    lines = _lines(file, "requirements", problems)
    text = "\n".join(line for _, line in lines).strip()
    if not text and not any(p.startswith(f"{file}:") for p in problems):
        problems.append(f"{file}: the requirements are empty")
    return text


def _lines(file: Path, what: str, problems: list[str]) -> list[tuple[int, str]]:
    try:
        return list(enumerate(file.read_text(encoding="utf-8-sig").splitlines(), start=1))
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{file}: the {what} file cannot be read: {exc}")
        return []
