"""Config: defaults, overrides, and errors that name the key and the file."""

from __future__ import annotations

import re

import pytest
from conftest import ROOT, write

from lakesynth.core.registry import load_config
from lakesynth.errors import ConfigError

SAMPLE = ROOT / "conf" / "lakesynth.yml"


def test_sample_config_loads_rules_and_templates():
    cfg = load_config(SAMPLE)
    assert "investment advice" in cfg.use_case.rules
    assert "{{ question }}" in cfg.questions.template and "{{ question }}" in cfg.responses.template
    assert cfg.seed.path.endswith("conf/bank/seeds.csv")
    assert cfg.fqn("seed_questions") == "main.lakesynth_dev.seed_questions"


def test_overrides_are_typed():
    overrides = ["endpoints.teacher.max_concurrency=32", "endpoints.teacher.base_url=", "schema=other"]
    cfg = load_config(SAMPLE, [*overrides, "questions.per_seed=5"])
    teacher = cfg.endpoint("teacher")
    assert teacher.max_concurrency == 32 and teacher.base_url == "" and teacher.embedded
    assert cfg.schema_ == "other" and cfg.questions.per_seed == 5


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    path = write(tmp_path / "bad.yml", "endpoints:\n  teacher:\n    max_concurency: 4\n")
    with pytest.raises(ConfigError, match=r"bad.yml: endpoints.teacher.max_concurency: unknown key"):
        load_config(path)


def test_bad_value_names_key_and_value(tmp_path):
    path = write(tmp_path / "bad.yml", "questions:\n  per_seed: 0\n")
    with pytest.raises(ConfigError, match=r"bad.yml: questions.per_seed: .*greater than or equal to 1 \(got 0\)"):
        load_config(path)


def test_bad_override_names_the_flag():
    with pytest.raises(ConfigError, match=r"--set endpoints.teacher.timeout_s: .*\(got 'soon'\)"):
        load_config(SAMPLE, ["endpoints.teacher.timeout_s=soon"])
    with pytest.raises(ConfigError, match=r"--set endpoints.teacher.nope: unknown key"):
        load_config(SAMPLE, ["endpoints.teacher.nope=1"])
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        load_config(SAMPLE, ["endpoints.teacher.model"])


def test_identifiers_are_checked():
    with pytest.raises(ConfigError, match=r"--set schema: .*must be a plain identifier"):
        load_config(SAMPLE, ["schema=x; DROP TABLE y"])


@pytest.mark.parametrize("name", ["dev_josé_lakesynth_dev", "données", "名前_2", "_x", "main"])
def test_identifiers_may_have_letters_of_any_script(name):
    """Development mode prefixes the schema with dev_<short user name>_, and a user name may be josé."""
    cfg = load_config(SAMPLE, [f"schema={name}", f"catalog={name}", f"volume={name}"])
    assert cfg.schema_ == cfg.catalog == cfg.volume == name


@pytest.mark.parametrize("name", ["a b", "a.b", "a`b", "a'b", 'a"b', "a-b", "1abc", ""])
def test_identifiers_refuse_what_would_need_quoting(name):
    with pytest.raises(ConfigError, match=r"--set schema: .*must be a plain identifier"):
        load_config(SAMPLE, [f"schema={name}"])


def test_key_itself_is_refused_as_env_name():
    with pytest.raises(ConfigError, match="endpoints.teacher.api_key_env: .*NAME of an environment variable"):
        load_config(SAMPLE, ["endpoints.teacher.api_key_env=sk-abc123-secret"])


@pytest.mark.parametrize("key", ["endpoints.teacher.api_key_env", "tools.mcp.token_env", "export.token_env"])
@pytest.mark.parametrize("value", ["sk-abc123-secret", "TOKÉN", "Bearer abc.def"])
def test_every_env_name_is_checked_alike(key, value):
    """One rule for every key naming a secret's variable: ASCII letters, digits and _ (str.isalnum took É)."""
    with pytest.raises(ConfigError, match=rf"{re.escape(key)}: .*NAME of an environment variable \(letters"):
        load_config(SAMPLE, [f"{key}={value}"])
    value = load_config(SAMPLE, [f"{key}=MY_TOKEN_2"])
    for part in key.split("."):
        value = value[part] if isinstance(value, dict) else getattr(value, part)
    assert value == "MY_TOKEN_2"


def test_not_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="bad.yml: not valid YAML"):
        load_config(write(tmp_path / "bad.yml", "a: [1,\n"))
    with pytest.raises(ConfigError, match="nope.yml: cannot read config"):
        load_config(tmp_path / "nope.yml")
    with pytest.raises(ConfigError, match="the top level must be a mapping"):
        load_config(write(tmp_path / "list.yml", "- 1\n"))


def test_missing_rules_file_is_named(tmp_path):
    path = write(tmp_path / "c.yml", "use_case:\n  rules_file: nowhere.md\n")
    with pytest.raises(ConfigError, match=r"c.yml: use_case: .*cannot read use_case.rules_file .*nowhere.md"):
        load_config(path)


@pytest.mark.parametrize(
    ("key", "new"),  # the old keys as parts: /work/tools/rekey.py rewrites old keys written whole
    [
        (("teacher", "base_url"), "moved to endpoints.teacher.base_url"),
        (("teacher", "workers"), "moved to llm.partitions"),
        (("quality", "judge", "base_url"), "set quality.judge.endpoint to a name under endpoints:"),
        (("seeds", "path"), "moved to seed.path"),
        (("format", "max_tokens"), "renamed format.max_example_tokens"),
        (("documents", "budget_tokens"), "renamed documents.chunk_words"),
        (("mlflow", "experiment"), "renamed mlflow.pipeline_experiment"),
        (("tools", "execution", "workers"), "renamed tools.execution.processes"),
    ],
)
def test_an_old_key_is_refused_naming_the_new_one(tmp_path, key, new):
    key, value = ".".join(key), 2
    with pytest.raises(ConfigError, match=rf"^--set {key}: {new}"):
        load_config(SAMPLE, [f"{key}={value}"])
    *parents, leaf = key.split(".")
    text = "".join(f"{'  ' * i}{p}:\n" for i, p in enumerate(parents)) + f"{'  ' * len(parents)}{leaf}: {value}\n"
    with pytest.raises(ConfigError, match=rf"old.yml: {key}: {new}"):
        load_config(write(tmp_path / "old.yml", text))


def test_an_unknown_key_names_the_closest_known_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"--set questions.per_sed: unknown key; did you mean questions.per_seed\?"):
        load_config(SAMPLE, ["questions.per_sed=1"])
    path = write(tmp_path / "c.yml", "quality:\n  dedup:\n    near:\n      treshold: 0.5\n")  # misspelt
    with pytest.raises(
        ConfigError, match=r"quality.dedup.near.treshold: unknown key; did you mean quality.dedup.near.threshold"
    ):
        load_config(path)


def test_an_unreadable_config_is_named_by_its_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=rf"^{tmp_path / 'nope.yml'}: cannot read config"):
        load_config("nope.yml")


def test_an_unknown_endpoint_name_is_refused_naming_the_known_ones():
    with pytest.raises(
        ConfigError, match=r"--set quality.judge.endpoint: unknown endpoint 'big' \(known: teacher, judge"
    ):
        load_config(SAMPLE, ["quality.judge.endpoint=big"])
    with pytest.raises(ConfigError, match=r"preference.candidates.0.endpoint: unknown endpoint 'big'"):
        load_config(SAMPLE, ["preference.candidates=[{name: a, endpoint: big}, {name: b}]"])


def test_a_named_endpoint_takes_what_it_does_not_set_from_the_teacher():
    cfg = load_config(
        SAMPLE,
        [
            "endpoints.teacher.max_concurrency=32",
            "endpoints.teacher.requests_per_minute=600",
            "endpoints.big.model=big-model",
            "endpoints.judge.timeout_s=9",
            "quality.judge.endpoint=big",
        ],
    )
    big, judge, teacher = cfg.endpoint("big"), cfg.endpoint("judge"), cfg.endpoint("teacher")
    assert big.model == "big-model" and big.max_concurrency == 32 and big.requests_per_minute == 600
    assert judge.model == teacher.model and judge.max_concurrency == 32 and judge.timeout_s == 9
    assert cfg.endpoint("embeddings").model == "all-MiniLM-L6-v2" and cfg.endpoint("embeddings").max_concurrency == 32
    assert cfg.quality.judge.calls_with(cfg) == big and cfg.evaluate.calls_with(cfg) == judge
    assert cfg.questions.calls_with(cfg) == teacher
    with pytest.raises(ConfigError, match=r"unknown endpoint 'nope' \(known: teacher, judge, embeddings, big\)"):
        cfg.endpoint("nope")


def test_every_config_model_forbids_unknown_keys_and_every_key_is_described():
    from pydantic import BaseModel

    from lakesynth.config import Section, keys
    from lakesynth.core import config_reference, registry

    sections = {
        model
        for _, (annotation, _) in keys(registry.config_model()).items()
        for model in [annotation, *getattr(annotation, "__args__", ())]
        if isinstance(model, type) and issubclass(model, BaseModel)
    }
    assert sections and all(issubclass(m, Section) for m in sections), sorted(m.__name__ for m in sections)
    assert config_reference.missing_descriptions() == []


def test_the_config_reference_is_up_to_date():
    from lakesynth.core import config_reference

    assert config_reference.DOC.is_file(), f"docs/config.md is missing: run `{config_reference.COMMAND}`"
    if config_reference.DOC.read_text(encoding="utf-8") != config_reference.render():
        pytest.fail(f"docs/config.md is out of date with the config models: run `{config_reference.COMMAND}`")
