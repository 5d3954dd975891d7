"""The `taxonomy` stage: seed sources shaped as a tree of leaves, an InstructLab taxonomy (qna.py) or a Synthetic
Data Studio template (template.py), read into rows (rows.py) and written whole into tables.

The `taxonomy` stage (`--taxonomy DIR`, `taxonomy.path`; or `taxonomy.topics`, `examples` and `requirements` for the
template form) writes the rows whole into `taxonomy_leaves` (with `documents`: the JSON list of the documents a
knowledge leaf's patterns name, relative to `documents.path`) and `taxonomy_examples`. Everything is read and every
knowledge leaf's patterns resolved before either table is touched: a malformed file or a pattern that names no
document is an error, and both tables stay as they were.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field, ValidationInfo, field_validator, model_validator

from lakesynth.config import Section, resolve_path
from lakesynth.core import tables
from lakesynth.core.sources import QA_SEEDS, Source
from lakesynth.core.stage import RunContext, Stage, StageResult
from lakesynth.core.tables import INT, B, S
from lakesynth.errors import SeedError
from lakesynth.taxonomy.document_files import resolve
from lakesynth.taxonomy.qna import read_taxonomy
from lakesynth.taxonomy.rows import EXAMPLE_COLUMNS, LEAF_COLUMNS, listed
from lakesynth.taxonomy.template import read_template


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
        raise SeedError(listed(f"{len(problems)} knowledge document pattern(s) cannot be resolved", problems))
    return rows


def run(ctx: RunContext) -> StageResult:
    cfg, spark = ctx.cfg, ctx.spark
    t = cfg.taxonomy
    # Everything is read, checked and resolved before either table is touched.
    found = read_taxonomy(t.path) if t.path else read_template(t.topics, t.examples_file, t.requirements)
    leaves = with_documents(found.leaves, cfg.documents.path)
    frames = [
        (table, spark.createDataFrame(rows, schema=table.row_schema))
        for table, rows in ((LEAVES, leaves), (EXAMPLES, found.examples))
    ]
    for table, frame in frames:
        tables.overwrite(spark, ctx.rt, table, frame, run_id=cfg.run_id)  # each table is the taxonomy, whole
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
    sources=(
        Source(
            "taxonomy",
            ("taxonomy.path",),
            QA_SEEDS,
            "InstructLab taxonomy folder (qna.yaml leaves, versions 1-3) to generate from",
            True,
        ),
    ),
    off=lambda cfg: (
        ""
        if cfg.taxonomy.enabled
        else "no taxonomy: pass --taxonomy DIR, or set taxonomy.topics, examples and requirements"
    ),
    after=("documents",),  # its knowledge leaves' patterns name files of the documents folder (not rows of a table)
)
