"""The taxonomy and documents stages: a taxonomy (InstructLab tree or template) and its knowledge documents in Delta
tables, written whole and only when everything is valid."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import deltalake
import pytest
from conftest import ROOT, context, where, write

from lakesynth.core import registry, tables
from lakesynth.errors import ConfigError, SeedError
from lakesynth.taxonomy import documents, qna, taxonomy
from lakesynth.taxonomy.chunks import CHUNK_COLUMNS, chunk_documents
from lakesynth.taxonomy.rows import EXAMPLE_COLUMNS

FIXTURE = ROOT / "tests" / "fixtures" / "taxonomy"
DOCS = ROOT / "tests" / "fixtures" / "taxonomy_docs"
LEAVES = {
    "compositional_skills/grounded/tables/bus_timetable": ("skill", True),
    "compositional_skills/writing/freeform/plain_language": ("skill", False),
    "knowledge/science/biology/lichens": ("knowledge", True),
}
PLAIN = "compositional_skills/writing/freeform/plain_language/qna.yaml"


def _with(cfg, taxonomy_changes=None, documents_changes=None, **top):
    update = dict(top)
    if taxonomy_changes is not None:
        update["taxonomy"] = cfg.taxonomy.model_copy(update=taxonomy_changes)
    if documents_changes is not None:
        update["documents"] = cfg.documents.model_copy(update=documents_changes)
    return cfg.model_copy(update=update)


def _pdf(path: Path, paragraphs: list[str]) -> Path:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("Helvetica", size=11)
    for paragraph in paragraphs:
        pdf.add_page()
        pdf.multi_cell(0, 6, paragraph)
    path.parent.mkdir(parents=True, exist_ok=True)
    pdf.output(str(path))
    return path


@pytest.fixture
def docs(tmp_path) -> Path:
    """The fixture's markdown document and a two-page PDF beside it."""
    folder = tmp_path / "docs"
    folder.mkdir()
    shutil.copy(DOCS / "lichens.md", folder / "lichens.md")
    _pdf(
        folder / "field" / "notes.pdf",
        [
            "Reindeer lichen forms pale, branching mats on the tundra floor. " * 30,
            "Lichens grow slowly, often a millimetre a year, so a wide patch can be centuries old. " * 30,
        ],
    )
    return folder


def _rows(spark, cfg, table) -> list[dict]:
    """A table's rows without the time they were written, sorted by key."""
    rows = [r.asDict() for r in tables.read(spark, where(cfg), table).collect()]
    return sorted(({k: v for k, v in r.items() if k != "created_at"} for r in rows), key=lambda r: r[table.key])


def test_taxonomy_and_documents_become_tables_and_a_rerun_changes_nothing(spark, cfg, docs):
    cfg = _with(cfg, {"path": str(FIXTURE)}, {"path": str(docs), "chunk_words": 120, "overlap_words": 10})
    ctx = context(cfg)
    made = documents.run(ctx)
    assert made.metrics == {"documents": 2, "chunks": made.rows_out} and made.rows_in == 2
    read = taxonomy.run(ctx)
    assert read.metrics == {"leaves": 3, "skills": 2, "knowledge": 1}

    leaves = {r["leaf"]: r for r in _rows(spark, cfg, taxonomy.LEAVES)}
    assert {leaf: (r["kind"], r["grounded"]) for leaf, r in leaves.items()} == LEAVES  # relative to the root
    lichens = leaves["knowledge/science/biology/lichens"]
    assert json.loads(lichens["documents"]) == ["lichens.md"] and json.loads(lichens["patterns"]) == ["lichens.md"]
    assert lichens["description"] == "Biology" and lichens["document_outline"]
    assert lichens["source"] == "knowledge/science/biology/lichens/qna.yaml" and lichens["run_id"] == "test-run"
    assert leaves["compositional_skills/writing/freeform/plain_language"]["documents"] is None

    examples = _rows(spark, cfg, taxonomy.EXAMPLES)
    expected = qna.read_taxonomy(FIXTURE).examples
    assert read.rows_out == len(examples) == len(expected)
    assert [{k: r[k] for k in EXAMPLE_COLUMNS} for r in examples] == sorted(expected, key=lambda r: r["example_id"])
    knowledge = [r for r in examples if r["leaf"] == "knowledge/science/biology/lichens"]
    assert len(knowledge) >= 15 and all(r["context"] and r["question"] and r["answer"] for r in knowledge)

    # The PDF and the markdown document are both chunked, exactly as the chunker cuts them.
    chunks = _rows(spark, cfg, documents.TABLE)
    assert {r["source"] for r in chunks} == {"lichens.md", "field/notes.pdf"}
    assert sum(r["source"] == "field/notes.pdf" for r in chunks) >= 4
    expected = sorted(chunk_documents(docs, 120, 10), key=lambda r: r["chunk_id"])
    assert [{k: r[k] for k in CHUNK_COLUMNS} for r in chunks] == expected
    assert all(r["tokens"] <= 120 for r in chunks)

    # A rerun writes the same rows (the tables are the inputs, whole), and a removed document leaves the table.
    before = [_rows(spark, cfg, t) for t in (taxonomy.LEAVES, taxonomy.EXAMPLES, documents.TABLE)]
    documents.run(ctx)
    taxonomy.run(ctx)
    assert [_rows(spark, cfg, t) for t in (taxonomy.LEAVES, taxonomy.EXAMPLES, documents.TABLE)] == before
    (docs / "field" / "notes.pdf").unlink()
    documents.run(ctx)
    assert {r["source"] for r in _rows(spark, cfg, documents.TABLE)} == {"lichens.md"}


def test_the_template_form_is_a_one_level_taxonomy(spark, cfg, tmp_path):
    topics = write(tmp_path / "topics.txt", "Tidal pools\nCloud formation\n")
    examples = write(tmp_path / "examples.jsonl", '{"question": "What lives in a rock pool?", "answer": "Crabs."}\n')
    requirements = write(tmp_path / "requirements.txt", "Questions a curious 10-year-old would ask.\n")
    cfg = _with(cfg, {"topics": topics, "examples_file": examples, "requirements": requirements})
    result = taxonomy.run(context(cfg))
    assert result.metrics == {"leaves": 2, "skills": 2, "knowledge": 0} and result.rows_out == 2
    leaves = _rows(spark, cfg, taxonomy.LEAVES)
    assert [(r["leaf"], r["topic"]) for r in leaves] == [
        ("topics/cloud-formation", "Cloud formation"),
        ("topics/tidal-pools", "Tidal pools"),
    ]
    assert {r["description"] for r in leaves} == {"Questions a curious 10-year-old would ask."}
    assert {r["leaf"] for r in _rows(spark, cfg, taxonomy.EXAMPLES)} == {r["leaf"] for r in leaves}


def test_a_broken_qna_yaml_is_named_and_changes_no_table(spark, cfg, tmp_path):
    tree = tmp_path / "taxonomy"
    shutil.copytree(FIXTURE, tree)
    cfg = _with(cfg, {"path": str(tree)}, {"path": str(DOCS)})
    taxonomy.run(context(cfg))  # an earlier good run
    before = [_rows(spark, cfg, t) for t in (taxonomy.LEAVES, taxonomy.EXAMPLES)]
    plain = tree / PLAIN
    plain.write_text(plain.read_text().replace("task_description:", "task_descripton:"))
    (tree / "compositional_skills" / "new_leaf").mkdir()
    write(tree / "compositional_skills" / "new_leaf" / "qna.yaml", "version: 3\ntask_description: [unclosed\n")
    with pytest.raises(SeedError) as caught:
        taxonomy.run(context(_with(cfg, run_id="bad-run")))
    message = str(caught.value)
    assert f"{PLAIN}: task_description: Field required" in message
    assert "compositional_skills/new_leaf/qna.yaml: not valid YAML" in message
    assert [_rows(spark, cfg, t) for t in (taxonomy.LEAVES, taxonomy.EXAMPLES)] == before


def test_a_knowledge_pattern_that_matches_nothing_names_the_leaf_and_the_pattern(spark, cfg, tmp_path):
    tree = tmp_path / "taxonomy"
    shutil.copytree(FIXTURE, tree)
    leaf = tree / "knowledge" / "science" / "biology" / "lichens" / "qna.yaml"
    leaf.write_text(leaf.read_text().replace("- lichens.md", "- lichens.md\n    - mosses/*.md"))
    cfg = _with(cfg, {"path": str(tree)}, {"path": str(DOCS)})
    with pytest.raises(SeedError, match=r"knowledge/science/biology/lichens: document pattern 'mosses/\*\.md' matches"):
        taxonomy.run(context(cfg))
    with pytest.raises(SeedError, match=r"knowledge/science/biology/lichens\) but no documents folder is set: pass "):
        taxonomy.run(context(_with(cfg, documents_changes={"path": ""})))
    assert not spark.catalog.tableExists(where(cfg).fqn(taxonomy.LEAVES.name))


def test_nothing_configured_is_disabled_and_bad_settings_are_config_errors(spark, cfg, tmp_path):
    for stage in (taxonomy, documents):
        result = stage.STAGE.execute(context(cfg))
        assert "disabled" in result.metrics and result.tables == []
    assert not spark.catalog.tableExists(where(cfg).fqn(documents.TABLE.name))
    config = write(tmp_path / "c.yml", "taxonomy:\n  topics: topics.txt\n")
    with pytest.raises(ConfigError, match="examples_file, requirements unset"):
        registry.load_config(config)
    with pytest.raises(ConfigError, match=r"overlap_words \(50\) must be less than chunk_words \(50\)"):
        registry.load_config(None, ["documents.chunk_words=50", "documents.overlap_words=50"])
    loaded = registry.load_config(write(tmp_path / "d.yml", "taxonomy:\n  path: tree\ndocuments:\n  path: docs\n"))
    assert loaded.taxonomy.path == str(tmp_path / "tree") and loaded.documents.path == str(tmp_path / "docs")


def test_the_command_takes_taxonomy_and_documents_and_fails_a_broken_tree(tmp_path):
    """As a user runs it: --taxonomy and --documents, then a broken tree: exit 1, the file and field named."""
    tree = tmp_path / "taxonomy"
    shutil.copytree(FIXTURE, tree)
    warehouse = tmp_path / "wh"

    def lakesynth(*args):
        command = [sys.executable, "-m", "lakesynth.cli", "run", "--stages", "documents,taxonomy", *args]
        command += ["--taxonomy", str(tree), "--documents", str(DOCS), "--warehouse", str(warehouse)]
        command += ["--set", "mlflow.enabled=false"]
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)

    good = lakesynth()
    assert good.returncode == 0, good.stdout + good.stderr
    assert "documents: ok, 1 in" in good.stdout and "taxonomy: ok" in good.stdout and "leaves 3" in good.stdout
    location = warehouse / "main" / "lakesynth_dev" / "taxonomy_leaves"
    assert len(deltalake.DeltaTable(str(location)).to_pandas()) == 3
    (tree / PLAIN).write_text((tree / PLAIN).read_text().replace("version: 3", "version: 4"))
    bad = lakesynth()
    assert bad.returncode == 1
    assert f"{PLAIN}: version: 4 is not a qna.yaml version" in bad.stdout
    assert len(deltalake.DeltaTable(str(location)).to_pandas()) == 3
