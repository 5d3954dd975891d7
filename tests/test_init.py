"""Starting from your own domain (issue 27): `lakesynth init` writes a project that runs both jobs, and a run from a
folder with no config of its own applies no domain's rules (the packaged bank sample runs only when asked for)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lakesynth import cli
from lakesynth.core import command, registry, starter
from lakesynth.report import show

ROOT = Path(__file__).resolve().parents[1]
BANK = "Northwind"  # in the sample's rules and system prompt, nowhere else
STARTER_OFF = (
    "quality.critic.enabled is false",
    "quality.judge.enabled is false",
    "quality.relevance.enabled is false",
)


def lakesynth(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [sys.executable, "-m", "lakesynth.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=env,
    )


def on_standin(server, tmp_path: Path) -> tuple[str, ...]:
    return (
        *("--warehouse", str(tmp_path / "wh"), "--set", f"endpoints.teacher.base_url={server.base_url}"),
        *("--set", "endpoints.teacher.model=standin", "--set", "finetune.backend=none"),
        *("--set", "mlflow.enabled=false"),
    )


def prompts(server) -> str:
    return json.dumps(list(server.stats.prompts))


@pytest.mark.slow
def test_init_writes_a_project_of_your_own_that_runs_both_jobs(tmp_path, teacher_server):
    project = tmp_path / "acme"
    made = lakesynth("init", str(project), "--job", "lakesynth_tools", "--name", "acme shop", cwd=tmp_path)
    assert made.returncode == 0, made.stdout + made.stderr
    conf = project / "conf"
    assert sorted(p.name for p in conf.iterdir()) == [
        "functions.py", "lakesynth.yml", "rules.md", "seeds.csv", "tool_seeds.jsonl"
    ]  # fmt: skip
    assert "lakesynth preview --job lakesynth_tools" in made.stdout
    (conf / "rules.md").write_text("Acme sells garden tools. Never promise a delivery date.\n", encoding="utf-8")
    before = {p.name: p.read_bytes() for p in conf.iterdir()}
    again = lakesynth("init", str(project), cwd=tmp_path)  # never overwrites: names the files, writes nothing
    assert again.returncode == 2 and f"{conf / 'rules.md'}" in again.stderr and "nothing was written" in again.stderr
    assert {p.name: p.read_bytes() for p in conf.iterdir()} == before

    teacher_server.reset()
    summary = tmp_path / "qa.json"
    qa = lakesynth("run", *on_standin(teacher_server, tmp_path), "--summary", str(summary), cwd=project)
    assert qa.returncode == 0, qa.stdout + qa.stderr
    assert qa.stderr.splitlines()[0].startswith(f"lakesynth: config {conf / 'lakesynth.yml'};")
    stages = json.loads(summary.read_text())["stages"]
    assert stages["seed"]["rows_out"] == 4  # the template's rows: its comment lines are no seeds
    assert stages["format"]["status"] == "ok" and stages["format"]["rows_out"] > 0
    asked = prompts(teacher_server)
    assert "Never promise a delivery date" in asked and BANK not in asked
    # The starter's checks are off but dedup: `show --dropped` says so (an empty list reads as "all kept").
    shown = lakesynth("show", "pair_verdicts", "--dropped", "--warehouse", str(tmp_path / "wh"), cwd=project)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    said = " ".join(shown.stdout.split())  # wrapped at the terminal's width, 80 columns when piped
    assert said.endswith(f"checks off, which drop nothing: {'; '.join(STARTER_OFF)}")

    teacher_server.reset()
    summary = tmp_path / "tools.json"
    args = ("run", "--job", "lakesynth_tools", *on_standin(teacher_server, tmp_path), "--summary", str(summary))
    tools = lakesynth(*args, cwd=project)
    assert tools.returncode == 0, tools.stdout + tools.stderr
    stages = json.loads(summary.read_text())["stages"]
    assert stages["tools"]["rows_out"] == 2  # the template's two functions, read from its Python module
    assert stages["call_generation"]["rows_out"] > 0 and stages["call_verdicts"]["rows_out"] > 0
    assert "get_order_status" in prompts(teacher_server)


def test_a_run_with_no_config_of_its_own_applies_no_domain(tmp_path, teacher_server):
    """From an empty folder on the user's seeds: no bank rule or system prompt in any request or example; the first
    line says so. The bank sample runs when asked for by name."""
    seeds = tmp_path / "garden.csv"
    seeds.write_text("topic,question,in_scope\nroses,When do I prune roses?,yes\n", encoding="utf-8")
    teacher_server.reset()
    summary = tmp_path / "s.json"
    args = ("run", "--seeds", str(seeds), "--stages", "seed,questions,responses,format", "--summary", str(summary))
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = lakesynth(*args, *on_standin(teacher_server, tmp_path), cwd=empty)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    first = proc.stderr.splitlines()[0]
    assert first.startswith("lakesynth: config: domain-neutral default (no domain rules, a generic system prompt")
    assert "`lakesynth init` writes a project of your own" in first and BANK not in first
    asked = prompts(teacher_server)
    assert "When do I prune roses?" in asked and BANK not in asked and "investment advice" not in asked
    train = Path(json.loads(summary.read_text())["files"]["train_jsonl"]).read_text(encoding="utf-8")
    system = {json.loads(line)["messages"][0]["content"] for line in train.splitlines()}
    assert system == {command.GENERIC_SYSTEM_PROMPT}

    teacher_server.reset()
    bank_args = ("run", "--config", "bank", "--stages", "seed,questions", *on_standin(teacher_server, tmp_path))
    bank = lakesynth(*bank_args, cwd=empty)  # its own seeds (mirror mode), on the same warehouse
    assert bank.returncode == 0, bank.stdout + bank.stderr
    assert "(packaged sample)" in bank.stderr.splitlines()[0] and BANK in prompts(teacher_server)
    # The bank sample's seeds went to its own schema: the user's one seed is still there, and only it.
    shown = lakesynth(
        "show", "seed_questions", "--warehouse", str(tmp_path / "wh"), "--schema", command.NEUTRAL_SCHEMA, cwd=empty
    )
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "seed_questions: 1 of 1 rows" in shown.stdout and "roses" in shown.stdout
    assert f"/{command.NEUTRAL_SCHEMA}/" in json.loads(summary.read_text())["files"]["train_jsonl"]


def test_init_keeps_local_runs_out_of_git_and_says_how_to_deploy(tmp_path, capsys):
    cli.main(["init", str(tmp_path / "fresh")])
    assert (tmp_path / "fresh" / ".gitignore").read_text(encoding="utf-8") == ".lakesynth/\n"
    said = capsys.readouterr().out
    assert said.startswith("wrote conf/lakesynth.yml, conf/rules.md, conf/seeds.csv, .gitignore in ")
    assert said.rstrip().endswith(
        "to deploy to Databricks: copy conf/ over the conf/ of a clone of the lakesynth repository (the bundle), "
        "then `databricks bundle deploy --var catalog=<catalog>` there (README: Deploy to Databricks)"
    )
    (tmp_path / "mine" / ".gitignore").parent.mkdir()
    (tmp_path / "mine" / ".gitignore").write_text("*.pyc", encoding="utf-8")  # the user's own: added to
    cli.main(["init", str(tmp_path / "mine")])
    assert (tmp_path / "mine" / ".gitignore").read_text(encoding="utf-8") == "*.pyc\n.lakesynth/\n"


def test_show_dropped_names_the_checks_that_are_off(tmp_path):
    project = starter.init(tmp_path / "acme", job_stages=["seed"])
    stages = registry.default_stages()
    contracts = registry.contracts(stages)
    cfg = registry.load_config(project.folder / "conf" / "lakesynth.yml")
    assert show.checks_off(cfg, contracts, stages, "pair_verdicts") == list(STARTER_OFF)  # and dedup's, on
    assert show.checks_off(cfg, contracts, stages, "synthetic_responses") == list(STARTER_OFF[1:])
    judged = registry.load_config(project.folder / "conf" / "lakesynth.yml", ["quality.judge.enabled=true"])
    assert show.checks_off(judged, contracts, stages, "pair_verdicts") == [STARTER_OFF[0], STARTER_OFF[2]]


@pytest.mark.parametrize("title", ["Acme: garden tools", "Acme #1 garden shop"])
def test_a_title_with_yaml_syntax_is_written_as_the_title(tmp_path, title):
    project = starter.init(tmp_path / "acme", job_stages=["seed"], title=title)
    cfg = registry.load_config(project.folder / "conf" / "lakesynth.yml")
    assert cfg.use_case.system_prompt == f"You are the assistant of {title}. Be friendly, concise and correct."
    assert (cfg.use_case.name, cfg.schema_) == ("acme", "lakesynth_acme")


def test_a_file_set_on_the_command_line_is_relative_to_the_working_folder(tmp_path, monkeypatch):
    (tmp_path / "mine.md").write_text("Only gardening questions.\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    args = cli.parse_args(["run", "--config", "bank", "--set", "use_case.rules_file=mine.md"])
    cfg, _ = cli.configure(args, ["seed", "questions"])
    assert cfg.use_case.rules == "Only gardening questions.\n"
    assert cfg.use_case.rules_file == str(tmp_path / "mine.md")


def test_an_mcp_server_or_url_given_on_the_command_line_is_no_file(tmp_path, monkeypatch):
    """--tools and --set tools.spec take the same values: an MCP server or a URL as given, a file from here."""
    monkeypatch.chdir(tmp_path)
    server = "mcp:python -m my_tools.server"
    for flags in (["--tools", server], ["--set", f"tools.spec={server}"]):
        cfg, _ = cli.configure(cli.parse_args(["run", "--job", "lakesynth_tools", *flags]), ["tools"])
        assert cfg.tools.spec == server
    url = "mcp:http://127.0.0.1:8000/mcp"
    cfg, _ = cli.configure(cli.parse_args(["run", "--set", f"tools.spec={url}"]), ["tools"])
    assert cfg.tools.spec == url
    cfg, _ = cli.configure(cli.parse_args(["run", "--tools", "mine.json"]), ["tools"])
    assert cfg.tools.spec == str(tmp_path / "mine.json")
