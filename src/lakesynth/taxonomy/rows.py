"""The rows a taxonomy reader gives (qna.py for an InstructLab tree, template.py for the Synthetic Data Studio
form): a `Taxonomy` of plain rows, ready for a DataFrame:
- `leaves`, one per leaf (LEAF_COLUMNS): `leaf` str (the leaf's folder relative to the root, POSIX, e.g.
  `knowledge/science/animals/birds/black_capped_chickadee`), `kind` str (`skill` | `knowledge`), `grounded` bool
  (a knowledge leaf, or a skill with a context in any example), `description` str (a skill's `task_description`,
  a knowledge leaf's `domain`, a template's requirements), `document_outline` str|None, `patterns` str|None (the
  JSON list of `document.patterns`), `document_repo` str|None, `document_commit` str|None, `created_by` str|None,
  `topic` str|None (a template's seed topic), `source` str (the file read, relative to the taxonomy root);
- `examples`, one per question and answer (EXAMPLE_COLUMNS): `example_id` str (hash of leaf and content),
  `leaf` str, `index` int (0-based, in file order within the leaf), `seed_index` int (the `seed_examples` item it
  comes from: a knowledge item gives 3+ rows), `question` str|None, `answer` str|None, `context` str|None,
  `fields` str (the example as JSON: a template's examples may have any fields, and only `question`, `answer`
  and `context` are lifted into columns).
Text is stripped of the surrounding whitespace YAML block scalars (`|`) leave.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

MAX_LISTED = 50  # problems listed in one error; the rest are counted

LEAF_COLUMNS = (
    "leaf",
    "kind",
    "grounded",
    "description",
    "document_outline",
    "patterns",
    "document_repo",
    "document_commit",
    "created_by",
    "topic",
    "source",
)
EXAMPLE_COLUMNS = ("example_id", "leaf", "index", "seed_index", "question", "answer", "context", "fields")


@dataclass
class Taxonomy:
    """Plain rows: one per leaf and one per seed question and answer (the module docstring lists the columns)."""

    leaves: list[dict] = field(default_factory=list)
    examples: list[dict] = field(default_factory=list)


def leaf_row(leaf: str, kind: str, grounded: bool, description: str, source: str, **values: Any) -> dict:
    row = dict.fromkeys(LEAF_COLUMNS)
    row.update(leaf=leaf, kind=kind, grounded=grounded, description=description, source=source, **values)
    return row


def example_row(leaf: str, index: int, seed_index: int, content: dict) -> dict:
    """An example row; its id hashes the leaf and the content, so the same seed gets the same id on every run."""
    canonical = json.dumps(content, sort_keys=True, ensure_ascii=False)
    digest = hashlib.sha256(f"{leaf}\x00{canonical}".encode()).hexdigest()[:16]

    def text(name: str) -> str | None:
        value = content.get(name)
        return value if isinstance(value, str) else None

    return {
        "example_id": digest,
        "leaf": leaf,
        "index": index,
        "seed_index": seed_index,
        "question": text("question"),
        "answer": text("answer"),
        "context": text("context"),
        "fields": json.dumps(content, ensure_ascii=False),
    }


def value_type(value: Any) -> str:
    return "an empty file" if value is None else type(value).__name__


def listed(head: str, problems: list[str]) -> str:
    shown = problems[:MAX_LISTED]
    more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    return head + ":\n  " + "\n  ".join(shown) + more
