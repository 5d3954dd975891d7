"""Seed sources shaped as a tree of leaves: an InstructLab taxonomy, or a Synthetic Data Studio template.

An InstructLab taxonomy is a folder tree whose leaves are `qna.yaml` files (the format of instructlab/taxonomy and
its JSON Schemas in instructlab/schema, which the models below follow field for field). Each file is read as the
version it declares, and checked against that version's schema, as InstructLab's own parser does
(`TaxonomyParser(schema_version=0)`, which InstructLab SDG uses): a file without `version` is version 1, as every
leaf of instructlab/taxonomy's `foundational_skills/` is.
- a *skill* (under `compositional_skills/` or `foundational_skills/`), versions 2 and 3: `task_description`,
  `created_by` and 5+ distinct `seed_examples` of `question` / `answer`, each with an optional `context` (a
  *grounded* skill has them); version 1: the same keys, but 1+ `seed_examples` that may repeat (a repeat is read
  once) and a `task_description` that may be empty;
- a *knowledge* leaf (under `knowledge/`), version 3 only (the schema deprecates knowledge of versions 1 and 2):
  `domain`, `created_by`, `document_outline`, 5+ `seed_examples` each with a `context` and 3+
  `questions_and_answers`, and a `document` (`repo`, `commit`, `patterns`; the schema also allows a local `folder`).
Any other key is an error, as in the schema (`attribution.txt` is a file beside `qna.yaml`, not a key), and so is a
repeated seed example where the version's schema says `uniqueItems`. A leaf under another top folder is a skill or knowledge by its
fields (a `document` makes it knowledge), as InstructLab decides. Reading is all-or-nothing: every problem in every
file is collected and raised once, as a SeedError naming the file and the field path (list items from 0, as in the
YAML paths InstructLab prints): `compositional_skills/x/qna.yaml: seed_examples.2.answer: Field required`.

The Synthetic Data Studio form (seed topics, examples, requirements) is read as a one-level taxonomy: one skill
leaf `topics/<slug of the topic>` per topic, every leaf with all the examples (SDS injects each topic with the same
examples) and the requirements as its task description.

Both give a `Taxonomy` of plain rows, ready for a DataFrame:
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

The `taxonomy` stage (`--taxonomy DIR`, `taxonomy.path`; or `taxonomy.topics`, `examples` and `requirements` for the
template form) writes these rows whole into `taxonomy_leaves` (with `documents`: the JSON list of the documents a
knowledge leaf's patterns name, relative to `documents.path`) and `taxonomy_examples`. Everything is read and every
knowledge leaf's patterns resolved before either table is touched: a malformed file or a pattern that names no
document is an error, and both tables stay as they were.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lakesynth.core import tables
from lakesynth.config import Section, resolve_path
from lakesynth.taxonomy.document_paths import resolve
from lakesynth.errors import SeedError
from lakesynth.core.stage import RunContext, Stage, StageResult
from lakesynth.core.tables import INT, B, S

VERSIONS = (1, 2, 3)  # instructlab-schema's versions; a file without `version` is version 1
KNOWLEDGE_VERSION = 3  # the schema deprecates knowledge of versions 1 and 2
SKILL_FOLDERS = ("compositional_skills", "foundational_skills")
KNOWLEDGE_FOLDERS = ("knowledge",)
LEAF_FILE = "qna.yaml"
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

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class _Strict(BaseModel):
    """The schema's `unevaluatedProperties: false` and its types as written (no 42 for a string)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class SkillExample(_Strict):
    question: Text
    answer: Text
    context: Text | None = None


class SkillLeafV1(_Strict):
    """Version 1 (a file with no `version`): 1+ seed examples, repeats allowed, `task_description` may be empty."""

    version: Literal[1] = 1
    task_description: Annotated[str, StringConstraints(strip_whitespace=True)]
    created_by: Text
    seed_examples: list[SkillExample] = Field(min_length=1)


class SkillLeaf(_Strict):
    """Versions 2 and 3, whose skill schemas are the same."""

    version: Literal[2, 3]
    task_description: Text
    created_by: Text
    seed_examples: list[SkillExample] = Field(min_length=5)


class QuestionAnswer(_Strict):
    model_config = ConfigDict(extra="ignore")  # the schema leaves a Q&A item open to other keys
    question: Text
    answer: Text


class KnowledgeExample(_Strict):
    context: Text
    questions_and_answers: list[QuestionAnswer] = Field(min_length=3)


class Document(_Strict):
    repo: str | None = None
    commit: str | None = None
    folder: Text | None = None  # a local folder in the schema; lakesynth resolves patterns against --documents
    patterns: list[Text] = Field(min_length=1)


class KnowledgeLeaf(_Strict):
    version: Literal[3]
    domain: Text
    created_by: Text
    document_outline: Text
    seed_examples: list[KnowledgeExample] = Field(min_length=5)
    document: Document


@dataclass
class Taxonomy:
    """Plain rows: one per leaf and one per seed question and answer (the module docstring lists the columns)."""

    leaves: list[dict] = field(default_factory=list)
    examples: list[dict] = field(default_factory=list)


def read_taxonomy(root: str | Path) -> Taxonomy:
    """Every `qna.yaml` under `root` (hidden folders skipped), validated all together: one error lists them all."""
    base = Path(root)
    if not base.is_dir():
        raise SeedError(f"{root}: taxonomy folder not found")
    files = _leaf_files(base)
    if not files:
        raise SeedError(f"{root}: no {LEAF_FILE} found in the taxonomy (a leaf is a folder holding a {LEAF_FILE})")
    taxonomy, problems = Taxonomy(), []
    for file in files:
        source = file.relative_to(base).as_posix()
        found = _read_leaf(file, source)
        if isinstance(found, list):
            problems += found
        else:
            leaf, examples = found
            taxonomy.leaves.append(leaf)
            taxonomy.examples += examples
    if problems:
        raise SeedError(_listed(f"{root}: {len(problems)} problem(s) in the taxonomy, nothing was read", problems))
    return taxonomy


def _leaf_files(base: Path) -> list[Path]:
    found = []
    for folder, dirs, names in os.walk(base):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if LEAF_FILE in names:
            found.append(Path(folder) / LEAF_FILE)
    return found


# libyaml's safe loader where PyYAML was built with it: reading is most of this stage's time (benchmarks, section 8).
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _read_leaf(file: Path, source: str) -> tuple[dict, list[dict]] | list[str]:
    """A leaf's row and example rows, or the problems that keep it from being read."""
    leaf = Path(source).parent.as_posix()
    if leaf == ".":
        return [f"{source}: a leaf is a folder under the taxonomy root, not the root itself"]
    try:
        data = yaml.load(file.read_text(encoding="utf-8"), Loader=LOADER)
    except (OSError, UnicodeDecodeError) as exc:
        return [f"{source}: cannot be read: {exc}"]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        return [f"{source}: not valid YAML{at}: {problem}"]
    if not isinstance(data, dict):
        return [f"{source}: (root): expected a mapping of fields, got {_type(data)}"]
    version, problem = _version(data)
    if problem:
        return [f"{source}: version: {problem}"]
    kind, mismatch = _kind(leaf, data)
    if mismatch:
        return [f"{source}: (root): {mismatch}"]
    if kind == "knowledge" and version != KNOWLEDGE_VERSION:
        has = f"version {version}" if "version" in data else "no version, so version 1"
        deprecated = "instructlab-schema deprecates knowledge of versions 1 and 2"
        return [
            f"{source}: version: knowledge is read as version {KNOWLEDGE_VERSION} only ({deprecated}); this file has {has}"
        ]
    model = KnowledgeLeaf if kind == "knowledge" else SkillLeafV1 if version == 1 else SkillLeaf
    try:
        parsed = model.model_validate(data)
    except ValidationError as exc:
        return [f"{source}: {_loc(e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False)]
    return _rows(parsed, leaf, source)


def _version(data: dict) -> tuple[int, str | None]:
    """The version whose schema the file is checked against, as InstructLab's parser reads it (none is 1), or the
    problem with the one it declares."""
    if "version" not in data:
        return 1, None
    value = data["version"]
    if isinstance(value, bool) or not isinstance(value, int):
        return 0, f"must be an integer, 1, 2 or 3 (a file without version is version 1), got {value!r}"
    if value not in VERSIONS:
        return 0, f"{value} is not a qna.yaml version: instructlab-schema has 1, 2 and 3 (none means 1)"
    return value, None


def _kind(leaf: str, data: dict) -> tuple[str, str | None]:
    """`skill` or `knowledge`, from the top folder and the fields; a problem when they plainly disagree (a file
    with fields of both kinds is left to the model, which names each field that does not belong)."""
    top = leaf.split("/")[0]
    skill_fields = "task_description" in data
    knowledge_fields = "document" in data or "domain" in data
    if top in KNOWLEDGE_FOLDERS:
        if skill_fields and not knowledge_fields:
            return "knowledge", f"a skill's task_description in a knowledge leaf (under {top}/): move it or fix it"
        return "knowledge", None
    if top in SKILL_FOLDERS:
        if knowledge_fields and not skill_fields:
            return "skill", f"a knowledge leaf's domain/document in a skill leaf (under {top}/): move it or fix it"
        return "skill", None
    return ("knowledge" if knowledge_fields else "skill"), None  # as InstructLab decides outside its folders


def _rows(
    parsed: SkillLeafV1 | SkillLeaf | KnowledgeLeaf, leaf: str, source: str
) -> tuple[dict, list[dict]] | list[str]:
    problems, seen, repeats = [], {}, set()
    for i, item in enumerate(parsed.seed_examples):
        key = item.model_dump_json()
        if key in seen and isinstance(parsed, SkillLeafV1):
            repeats.add(i)  # version 1 has no uniqueItems: InstructLab reads the file, and the example counts once
        elif key in seen:
            problems.append(f"{source}: seed_examples.{i}: repeats seed_examples.{seen[key]}")
        seen.setdefault(key, i)
        for j, qa in enumerate(getattr(item, "questions_and_answers", [])):
            if (qa.question, qa.answer) in [(o.question, o.answer) for o in item.questions_and_answers[:j]]:
                problems.append(f"{source}: seed_examples.{i}.questions_and_answers.{j}: repeats an earlier one")
    if problems:
        return problems
    examples: list[dict] = []
    if isinstance(parsed, KnowledgeLeaf):
        for i, item in enumerate(parsed.seed_examples):
            for qa in item.questions_and_answers:
                content = {"context": item.context, "question": qa.question, "answer": qa.answer}
                examples.append(_example(leaf, len(examples), i, content))
        document = parsed.document
        row = _leaf_row(leaf, "knowledge", True, parsed.domain, source, created_by=parsed.created_by)
        row.update(
            document_outline=parsed.document_outline,
            patterns=json.dumps(document.patterns),
            document_repo=document.repo,
            document_commit=document.commit,
        )
    else:
        for i, item in enumerate(parsed.seed_examples):
            if i not in repeats:
                examples.append(_example(leaf, len(examples), i, item.model_dump(exclude_none=True)))
        grounded = any(item.context for item in parsed.seed_examples)
        row = _leaf_row(leaf, "skill", grounded, parsed.task_description, source, created_by=parsed.created_by)
    ids = [e["example_id"] for e in examples]
    if len(set(ids)) != len(ids):  # two items of one context repeat a Q&A: the same example twice
        return [f"{source}: seed_examples: the same question, answer and context appear twice"]
    return row, examples


def _leaf_row(leaf: str, kind: str, grounded: bool, description: str, source: str, **values: Any) -> dict:
    row = dict.fromkeys(LEAF_COLUMNS)
    row.update(leaf=leaf, kind=kind, grounded=grounded, description=description, source=source, **values)
    return row


def _example(leaf: str, index: int, seed_index: int, content: dict) -> dict:
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


def _loc(loc: tuple) -> str:
    return ".".join(str(part) for part in loc) or "(root)"


def _type(value: Any) -> str:
    return "an empty file" if value is None else type(value).__name__


def _listed(head: str, problems: list[str]) -> str:
    shown = problems[:MAX_LISTED]
    more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    return head + ":\n  " + "\n  ".join(shown) + more


# --- the Synthetic Data Studio form -------------------------------------------------------------------------------

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
        raise SeedError(_listed(f"{len(problems)} problem(s) in the template, nothing was read", problems))
    taxonomy = Taxonomy()
    grounded = any(isinstance(e.get("context"), str) and e["context"].strip() for e in examples)
    for topic in topics:
        leaf = f"{TOPICS}/{slug(topic)}"
        taxonomy.leaves.append(_leaf_row(leaf, "skill", grounded, requirements, str(topics_file), topic=topic))
        taxonomy.examples += [_example(leaf, i, i, example) for i, example in enumerate(examples)]
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
            problems.append(f"{file}: line {number}: expected a JSON object with fields, got {_type(value)}")
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


# --- the stage ----------------------------------------------------------------------------------------------------


class TaxonomyConfig(Section):
    """The taxonomy (`--taxonomy`): an InstructLab tree, or the Synthetic Data Studio template form."""

    path: str = Field(
        "", description="InstructLab taxonomy folder (qna.yaml leaves, versions 1-3), relative to the config."
    )
    topics: str = Field("", description="Template form: seed topics file, one a line (each becomes a leaf).")
    examples_file: str = Field("", description="Template form: examples file, JSONL of any fields.")
    requirements: str = Field("", description="Template form: requirements text file (every leaf's description).")
    per_leaf: int = Field(10, ge=0, description="Kept examples each leaf must reach (0: no per-leaf top-up).")
    max_rounds: int = Field(
        3, ge=0, le=20, description="Top-up rounds (generation and grounding) for leaves short of per_leaf, at most."
    )
    context_in_prompt: bool = Field(
        True, description="Training data: a grounded example's context in the user turn, before its question."
    )

    @field_validator("path", "topics", "examples_file", "requirements")
    @classmethod
    def _resolve(cls, value: str, info: ValidationInfo) -> str:
        return resolve_path(value, info)

    @model_validator(mode="after")
    def _one_form(self) -> TaxonomyConfig:
        template = {"topics": self.topics, "examples_file": self.examples_file, "requirements": self.requirements}
        missing = [k for k, v in template.items() if not v]
        if len(missing) not in (0, 3):
            raise ValueError(
                f"the template form needs topics, examples_file and requirements; {', '.join(missing)} unset"
            )
        if self.path and not missing:
            raise ValueError(
                "set path (an InstructLab tree) or topics/examples_file/requirements (a template), not both"
            )
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.path or self.topics)


_TYPES = {"grounded": B, "index": INT, "seed_index": INT}
LEAVES = tables.contract(
    "taxonomy_leaves", [(c, _TYPES.get(c, S)) for c in (*LEAF_COLUMNS, "documents")], key="leaf", parent="source"
)
EXAMPLES = tables.contract(
    "taxonomy_examples", [(c, _TYPES.get(c, S)) for c in EXAMPLE_COLUMNS], key="example_id", parent="leaf"
)


def with_documents(leaves: list[dict], documents_root: str) -> list[dict]:
    """The leaf rows, each knowledge leaf with `documents`: what its patterns name under `documents_root`. Every
    pattern of every leaf is resolved before one error names all that match nothing; documents are never fetched
    (a leaf's `repo` and `commit` are kept, as lineage)."""
    knowledge = [leaf for leaf in leaves if leaf["patterns"] is not None]
    if knowledge and not documents_root:
        names = ", ".join(leaf["leaf"] for leaf in knowledge[:5]) + (" ..." if len(knowledge) > 5 else "")
        raise SeedError(
            f"{len(knowledge)} knowledge leaf(s) name documents ({names}) but no documents folder is set: pass "
            "--documents DIR (documents.path), the folder that holds the files their document.patterns name"
        )
    if knowledge and not Path(documents_root).is_dir():
        raise SeedError(f"{documents_root}: documents folder not found (documents.path, --documents)")
    rows, problems = [], []
    for leaf in leaves:
        row = {**leaf, "documents": None}
        if leaf["patterns"] is not None:
            try:
                row["documents"] = json.dumps(resolve(json.loads(leaf["patterns"]), documents_root, leaf["leaf"]))
            except SeedError as exc:
                problems += str(exc).splitlines()
        rows.append(row)
    if problems:
        raise SeedError(_listed(f"{len(problems)} knowledge document pattern(s) cannot be resolved", problems))
    return rows


def run(ctx: RunContext) -> StageResult:
    cfg, spark = ctx.cfg, ctx.spark
    t = cfg.taxonomy
    if not t.enabled:
        return StageResult(
            metrics={"disabled": "no taxonomy: pass --taxonomy DIR, or set taxonomy.topics, examples and requirements"}
        )
    # Everything is read, checked and resolved before either table is touched.
    found = read_taxonomy(t.path) if t.path else read_template(t.topics, t.examples_file, t.requirements)
    leaves = with_documents(found.leaves, cfg.documents.path)
    frames = []
    for table, rows in ((LEAVES, leaves), (EXAMPLES, found.examples)):
        frame = spark.createDataFrame(rows, schema=T.StructType(table.schema.fields[:-2]))
        frame = frame.withColumn("run_id", F.lit(cfg.run_id)).withColumn("created_at", F.current_timestamp())
        frames.append((tables.ensure(spark, ctx.rt, table), tables.conform(frame, table)))
    for fqn, frame in frames:
        frame.write.mode("overwrite").insertInto(fqn)  # each table is the taxonomy, whole
    knowledge = sum(leaf["kind"] == "knowledge" for leaf in leaves)
    return StageResult(
        rows_in=len(found.examples),
        rows_out=len(found.examples),
        tables=[LEAVES, EXAMPLES],
        metrics={"leaves": len(leaves), "skills": len(leaves) - knowledge, "knowledge": knowledge},
    )


STAGE = Stage(
    name="taxonomy",
    help="read the taxonomy (--taxonomy: InstructLab qna.yaml tree, or a topics/examples/requirements template) "
    "into taxonomy_leaves and taxonomy_examples, knowledge leaves' documents resolved",
    run=run,
    writes=(LEAVES, EXAMPLES),
    config=TaxonomyConfig,
    after=("documents",),  # its knowledge leaves' patterns name files of the documents folder (not rows of a table)
)
