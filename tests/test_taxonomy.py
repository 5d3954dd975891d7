"""InstructLab taxonomies and Synthetic Data Studio templates read as leaves and seed examples (no Spark)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from lakesynth.errors import SeedError
from lakesynth.taxonomy.qna import read_taxonomy
from lakesynth.taxonomy.rows import EXAMPLE_COLUMNS, LEAF_COLUMNS
from lakesynth.taxonomy.template import read_template, slug

FIXTURE = Path(__file__).parent / "fixtures" / "taxonomy"
FREEFORM = "compositional_skills/writing/freeform/plain_language"
GROUNDED = "compositional_skills/grounded/tables/bus_timetable"
KNOWLEDGE = "knowledge/science/biology/lichens"


def test_reads_every_leaf_with_its_path_kind_and_examples():
    taxonomy = read_taxonomy(FIXTURE)
    leaves = {row["leaf"]: row for row in taxonomy.leaves}
    assert sorted(leaves) == [GROUNDED, FREEFORM, KNOWLEDGE]
    assert all(tuple(row) == LEAF_COLUMNS for row in taxonomy.leaves)
    assert all(tuple(row) == EXAMPLE_COLUMNS for row in taxonomy.examples)

    freeform, grounded, knowledge = leaves[FREEFORM], leaves[GROUNDED], leaves[KNOWLEDGE]
    assert (freeform["kind"], freeform["grounded"]) == ("skill", False)
    assert (grounded["kind"], grounded["grounded"]) == ("skill", True)
    assert (knowledge["kind"], knowledge["grounded"]) == ("knowledge", True)
    assert freeform["description"].startswith("Rewrite a sentence full of office jargon")
    assert knowledge["description"] == "Biology"
    assert knowledge["document_outline"].startswith("What lichens are")
    assert json.loads(knowledge["patterns"]) == ["lichens.md"]
    assert knowledge["document_commit"] == "4f6c2b1e9d0a7c3b5e8f1a2d4c6b8e0f1a3c5e7d"
    assert knowledge["source"] == f"{KNOWLEDGE}/qna.yaml"
    assert freeform["document_outline"] is None and freeform["patterns"] is None

    by_leaf = {leaf: [e for e in taxonomy.examples if e["leaf"] == leaf] for leaf in leaves}
    assert len(by_leaf[FREEFORM]) == 5 and all(e["context"] is None for e in by_leaf[FREEFORM])
    assert len(by_leaf[GROUNDED]) == 5 and all(e["context"].startswith("| Stop") for e in by_leaf[GROUNDED])
    lichen = by_leaf[KNOWLEDGE]
    assert len(lichen) == 15  # 5 seed examples of 3 questions and answers
    assert [e["index"] for e in lichen] == list(range(15))
    assert [e["seed_index"] for e in lichen] == [i // 3 for i in range(15)]
    assert lichen[0]["question"] == "Is a lichen a single organism?"  # block scalars lose their trailing newline
    assert lichen[0]["context"] == lichen[2]["context"] != lichen[3]["context"]
    assert len({e["example_id"] for e in taxonomy.examples}) == 25
    assert read_taxonomy(FIXTURE).examples == taxonomy.examples  # ids are stable


def test_hidden_folders_are_skipped_and_an_empty_tree_is_an_error(tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "tree")
    (tmp_path / "tree" / ".git" / "x").mkdir(parents=True)
    (tmp_path / "tree" / ".git" / "x" / "qna.yaml").write_text("not: a leaf")
    assert len(read_taxonomy(tmp_path / "tree").leaves) == 3
    (tmp_path / "empty").mkdir()
    with pytest.raises(SeedError, match="no qna.yaml found"):
        read_taxonomy(tmp_path / "empty")
    with pytest.raises(SeedError, match="taxonomy folder not found"):
        read_taxonomy(tmp_path / "missing")


def _edited(tmp_path: Path, leaf: str, edit, tree: Path = FIXTURE) -> Path:
    """A copy of `tree` whose `leaf`'s qna.yaml went through `edit` (a function changing its dict in place)."""
    root = tmp_path / "tree"
    shutil.copytree(tree, root)
    file = root / leaf / "qna.yaml"
    data = yaml.safe_load(file.read_text())
    edit(data)
    file.write_text(yaml.safe_dump(data))
    return root


def _broken_tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    shutil.copytree(FIXTURE, root)
    freeform = root / FREEFORM / "qna.yaml"
    data = yaml.safe_load(freeform.read_text())
    del data["seed_examples"][2]["answer"]
    freeform.write_text(yaml.safe_dump(data))
    grounded = root / GROUNDED / "qna.yaml"
    grounded.write_text(grounded.read_text().replace("version: 3", "version: 4"))
    knowledge = root / KNOWLEDGE / "qna.yaml"
    knowledge.write_text(knowledge.read_text().replace("domain: Biology", "domain: [Biology\n  bad: :"))
    return root


def test_broken_files_are_all_named_with_their_field_and_nothing_is_read(tmp_path):
    with pytest.raises(SeedError) as caught:
        read_taxonomy(_broken_tree(tmp_path))
    message = str(caught.value)
    assert "3 problem(s)" in message
    assert f"{FREEFORM}/qna.yaml: seed_examples.2.answer: Field required" in message
    assert f"{GROUNDED}/qna.yaml: version: 4 is not a qna.yaml version" in message
    assert f"{KNOWLEDGE}/qna.yaml: not valid YAML at line 3" in message


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda d: d.pop("created_by"), "created_by: Field required"),
        (lambda d: d.update(version=4), "version: 4 is not a qna.yaml version: instructlab-schema has 1, 2 and 3"),
        (lambda d: d.update(version="3"), "version: must be an integer, 1, 2 or 3 (a file without version is"),
        (lambda d: d.update(version=True), "version: must be an integer, 1, 2 or 3"),
        (lambda d: d["seed_examples"].pop(), "seed_examples: List should have at least 5 items"),
        (
            lambda d: d["seed_examples"][1].update(question=42),
            "seed_examples.1.question: Input should be a valid string",
        ),
        (
            lambda d: d["seed_examples"][0].update(answer="  \n"),
            "seed_examples.0.answer: String should have at least 1",
        ),
        (lambda d: d.update(attribution="me"), "attribution: Extra inputs are not permitted"),
        (lambda d: d["seed_examples"].append(dict(d["seed_examples"][0])), "seed_examples.5: repeats seed_examples.0"),
        (
            lambda d: d.update(task_description=None, domain="Office", document={"patterns": ["x.md"]}),
            "task_description: Input should be a valid string",  # fields of both kinds: each is named
        ),
        (
            lambda d: (d.pop("task_description"), d.update(domain="Office")),
            "(root): a knowledge leaf's domain/document in a skill leaf",
        ),
    ],
)
def test_a_broken_skill_names_the_field(tmp_path, edit, expected):
    with pytest.raises(SeedError) as caught:
        read_taxonomy(_edited(tmp_path, FREEFORM, edit))
    assert f"{FREEFORM}/qna.yaml: {expected}" in str(caught.value)


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda d: d["seed_examples"][3]["questions_and_answers"].pop(), "seed_examples.3.questions_and_answers: List"),
        (lambda d: d["seed_examples"][0].pop("context"), "seed_examples.0.context: Field required"),
        (lambda d: d.pop("document_outline"), "document_outline: Field required"),
        (lambda d: d["document"].pop("patterns"), "document.patterns: Field required"),
        (lambda d: d["document"].update(patterns=[]), "document.patterns: List should have at least 1 item"),
        (lambda d: d.update(task_description="x"), "task_description: Extra inputs are not permitted"),
    ],
)
def test_a_broken_knowledge_leaf_names_the_field(tmp_path, edit, expected):
    with pytest.raises(SeedError) as caught:
        read_taxonomy(_edited(tmp_path, KNOWLEDGE, edit))
    assert f"{KNOWLEDGE}/qna.yaml: {expected}" in str(caught.value)


def test_outside_the_known_folders_the_fields_decide_the_kind(tmp_path):
    root = tmp_path / "tree"
    (root / "custom" / "lichens").mkdir(parents=True)
    shutil.copy(FIXTURE / KNOWLEDGE / "qna.yaml", root / "custom" / "lichens" / "qna.yaml")
    (root / "custom" / "jargon").mkdir(parents=True)
    shutil.copy(FIXTURE / FREEFORM / "qna.yaml", root / "custom" / "jargon" / "qna.yaml")
    kinds = {row["leaf"]: row["kind"] for row in read_taxonomy(root).leaves}
    assert kinds == {"custom/lichens": "knowledge", "custom/jargon": "skill"}


PUBLISHED = Path(__file__).parent / "fixtures" / "taxonomy_published"
COMMON_SENSE = "foundational_skills/reasoning/common_sense_reasoning"
ODD_ONE_OUT = "foundational_skills/reasoning/linguistics_reasoning/odd_one_out"
LOWER_WINS = "foundational_skills/reasoning/unconventional_reasoning/lower_score_wins"
KNOWLEDGE_V3 = "version: knowledge is read as version 3 only"


def test_a_published_tree_is_read_whole_each_file_as_its_own_version():
    """As instructlab/taxonomy holds them: version-less foundational_skills leaves (version 1, as InstructLab's parser
    reads a file without `version`) beside version 3 skills and knowledge, and a version 2 skill."""
    taxonomy = read_taxonomy(PUBLISHED)
    leaves = {row["leaf"]: row for row in taxonomy.leaves}
    assert sorted(leaves) == sorted([COMMON_SENSE, ODD_ONE_OUT, LOWER_WINS, FREEFORM, GROUNDED, KNOWLEDGE])
    common = leaves[COMMON_SENSE]
    assert (common["kind"], common["grounded"], common["description"]) == ("skill", False, "Common sense reasoning")
    assert common["created_by"] == "lakesynth-tests" and common["source"] == f"{COMMON_SENSE}/qna.yaml"
    assert (leaves[LOWER_WINS]["kind"], leaves[LOWER_WINS]["grounded"]) == ("skill", True)
    assert leaves[ODD_ONE_OUT]["description"] == ""  # version 1 lets task_description be empty
    assert (leaves[GROUNDED]["kind"], leaves[KNOWLEDGE]["kind"]) == ("skill", "knowledge")
    by_leaf = {leaf: [e for e in taxonomy.examples if e["leaf"] == leaf] for leaf in leaves}
    assert len(by_leaf[COMMON_SENSE]) == 3  # version 1 needs 1+ seed examples, not 5+
    odd = by_leaf[ODD_ONE_OUT]  # version 1 has no uniqueItems: its repeated fourth example is read once
    assert [(e["index"], e["seed_index"]) for e in odd] == [(0, 0), (1, 1), (2, 2)]
    assert by_leaf[LOWER_WINS][0]["context"].startswith("In golf")
    assert (len(by_leaf[GROUNDED]), len(by_leaf[FREEFORM]), len(by_leaf[KNOWLEDGE])) == (5, 5, 15)
    assert len({e["example_id"] for e in taxonomy.examples}) == len(taxonomy.examples) == 33


@pytest.mark.parametrize(
    "leaf, edit, expected",
    [
        # What version 1 allows, its later versions do not: the same file, declared version 2 or 3.
        (ODD_ONE_OUT, lambda d: d.update(version=3), ["task_description: String should have at least 1 character",
                                                     "seed_examples: List should have at least 5 items"]),
        (COMMON_SENSE, lambda d: d.update(version=2), ["seed_examples: List should have at least 5 items"]),
        # A version 1 file that breaks version 1's own rules.
        (COMMON_SENSE, lambda d: d.pop("created_by"), ["created_by: Field required"]),
        (COMMON_SENSE, lambda d: d.update(seed_examples=[]), ["seed_examples: List should have at least 1 item"]),
        (COMMON_SENSE, lambda d: d["seed_examples"][1].update(answer=" "), ["seed_examples.1.answer: String should"]),
        (COMMON_SENSE, lambda d: d.update(version=1, attribution="x"), ["attribution: Extra inputs are not permitted"]),
        (LOWER_WINS, lambda d: d.pop("task_description"), ["task_description: Field required"]),
        (LOWER_WINS, lambda d: d["seed_examples"][0].update(context=""), ["seed_examples.0.context: String should"]),
        # Knowledge is version 3 only; the schema deprecates versions 1 and 2 of it.
        (KNOWLEDGE, lambda d: d.pop("version"), [KNOWLEDGE_V3 + " (instructlab-schema deprecates knowledge of "
                                                 "versions 1 and 2); this file has no version, so version 1"]),
        (KNOWLEDGE, lambda d: d.update(version=2), [KNOWLEDGE_V3 + " (instructlab-schema deprecates knowledge of "
                                                    "versions 1 and 2); this file has version 2"]),
    ],
)  # fmt: skip
def test_each_file_is_checked_against_its_own_version(tmp_path, leaf, edit, expected):
    with pytest.raises(SeedError) as caught:
        read_taxonomy(_edited(tmp_path, leaf, edit, PUBLISHED))
    message = str(caught.value)
    assert "nothing was read" in message
    assert all(f"{leaf}/qna.yaml: {e}" in message for e in expected), message


def test_a_file_that_says_version_1_reads_as_one_that_says_none(tmp_path):
    declared = read_taxonomy(_edited(tmp_path, COMMON_SENSE, lambda d: d.update(version=1), PUBLISHED))
    published = read_taxonomy(PUBLISHED)
    assert (declared.leaves, declared.examples) == (published.leaves, published.examples)


def _template(tmp_path: Path, topics: str, examples: str, requirements: str) -> tuple[Path, Path, Path]:
    files = tmp_path / "topics.txt", tmp_path / "examples.jsonl", tmp_path / "requirements.txt"
    for file, text in zip(files, (topics, examples, requirements)):
        file.write_text(text)
    return files


def test_a_template_is_a_one_level_taxonomy(tmp_path):
    topics = "# seed topics\nTidal pools\n\nCloud formation\n  Ocean currents & tides  \n"
    examples = (
        '{"question": "What lives in a rock pool?", "answer": "Anemones and crabs.", "level": 2}\n\n{"prompt": "x"}\n'
    )
    files = _template(tmp_path, topics, examples, "Write questions a curious 10-year-old would ask.\n")
    taxonomy = read_template(*files)
    assert [row["leaf"] for row in taxonomy.leaves] == [
        "topics/tidal-pools",
        "topics/cloud-formation",
        "topics/ocean-currents-tides",
    ]
    assert [row["topic"] for row in taxonomy.leaves] == ["Tidal pools", "Cloud formation", "Ocean currents & tides"]
    assert {row["description"] for row in taxonomy.leaves} == {"Write questions a curious 10-year-old would ask."}
    assert {(row["kind"], row["grounded"]) for row in taxonomy.leaves} == {("skill", False)}
    assert len(taxonomy.examples) == 6  # every topic gets both examples
    first, second = taxonomy.examples[:2]
    assert (first["question"], first["answer"], first["context"]) == (
        "What lives in a rock pool?",
        "Anemones and crabs.",
        None,
    )
    assert json.loads(first["fields"])["level"] == 2
    assert second["question"] is None and json.loads(second["fields"]) == {"prompt": "x"}
    assert len({e["example_id"] for e in taxonomy.examples}) == 6


def test_a_broken_template_names_the_file_and_line(tmp_path):
    files = _template(tmp_path, "Tides\ntides\n", '{"question": "q"}\nnot json\n[1, 2]\n', "  \n")
    with pytest.raises(SeedError) as caught:
        read_template(*files)
    message = str(caught.value)
    assert "topics.txt: line 2: topic 'tides' has the leaf topics/tides of line 1" in message
    assert "examples.jsonl: line 2: not valid JSON" in message
    assert "examples.jsonl: line 3: expected a JSON object with fields, got list" in message
    assert "requirements.txt: the requirements are empty" in message
    files = _template(tmp_path, "# nothing\n\n", "", "ok")
    with pytest.raises(SeedError) as caught:
        read_template(*files)
    assert "topics.txt: no seed topic" in str(caught.value) and "examples.jsonl: no example" in str(caught.value)


def test_slug():
    assert slug("Crème brûlée: a history!") == "creme-brulee-a-history"
    assert slug("天气") == slug("天气") and slug("天气").startswith("topic-")
    assert len(slug("word " * 40)) <= 60 and not slug("word " * 40).endswith("-")
