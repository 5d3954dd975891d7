"""Config: defaults, overrides, and errors that name the key and the file."""

from __future__ import annotations

import pytest
from conftest import ROOT, write

from lakesynth.errors import ConfigError
from lakesynth.core.registry import load_config

SAMPLE = ROOT / "conf" / "lakesynth.yml"


def test_sample_config_loads_rules_and_templates():
    cfg = load_config(SAMPLE)
    assert "investment advice" in cfg.use_case.rules
    assert "{{ question }}" in cfg.questions.template and "{{ question }}" in cfg.responses.template
    assert cfg.seeds.path.endswith("conf/bank/seeds.csv")
    assert cfg.fqn("seed_questions") == "main.lakesynth_dev.seed_questions"


def test_overrides_are_typed():
    cfg = load_config(
        SAMPLE, ["teacher.max_concurrency=32", "teacher.base_url=", "schema=other", "questions.per_seed=5"]
    )
    assert cfg.teacher.max_concurrency == 32 and cfg.teacher.base_url == "" and cfg.teacher.embedded
    assert cfg.schema_ == "other" and cfg.questions.per_seed == 5


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    path = write(tmp_path / "bad.yml", "teacher:\n  max_concurency: 4\n")
    with pytest.raises(ConfigError, match=r"bad.yml: teacher.max_concurency: unknown key"):
        load_config(path)


def test_bad_value_names_key_and_value(tmp_path):
    path = write(tmp_path / "bad.yml", "questions:\n  per_seed: 0\n")
    with pytest.raises(ConfigError, match=r"bad.yml: questions.per_seed: .*greater than or equal to 1 \(got 0\)"):
        load_config(path)


def test_bad_override_names_the_flag():
    with pytest.raises(ConfigError, match=r"--set teacher.timeout_s: .*\(got 'soon'\)"):
        load_config(SAMPLE, ["teacher.timeout_s=soon"])
    with pytest.raises(ConfigError, match=r"--set teacher.nope: unknown key"):
        load_config(SAMPLE, ["teacher.nope=1"])
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        load_config(SAMPLE, ["teacher.model"])


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
    with pytest.raises(ConfigError, match="teacher.api_key_env: .*NAME of an environment variable"):
        load_config(SAMPLE, ["teacher.api_key_env=sk-abc123-secret"])


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
