"""The runtime: where lakesynth runs and where its tables, files and journals go, resolved once."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

from conftest import ROOT

from lakesynth.core.runtime import Runtime


def test_local_places_are_under_the_warehouse(cfg):
    rt = Runtime.resolve(cfg, environ={})
    assert not rt.databricks and rt.fqn("t") == f"main.{cfg.schema_}.t"
    base = f"{rt.warehouse}/main/{cfg.schema_}"
    assert rt.table_location("t") == f"{base}/t"
    assert rt.volume_root == f"{base}/lakesynth"  # the volume's folder, named for it as on Databricks
    assert rt.files_dir("training_chat") == f"{base}/lakesynth/training_chat"
    assert rt.journal_dir("questions") == f"{base}/_journal/questions"


def test_databricks_places_are_in_the_volume(cfg):
    rt = Runtime.resolve(cfg, environ={"DATABRICKS_RUNTIME_VERSION": "17.3"})
    assert rt.databricks and rt.volume_root == f"/Volumes/main/{cfg.schema_}/lakesynth"
    assert rt.files_dir("training_chat") == f"/Volumes/main/{cfg.schema_}/lakesynth/training_chat"
    assert rt.journal_dir("responses") == f"/Volumes/main/{cfg.schema_}/lakesynth/_journal/responses"
    assert pickle.loads(pickle.dumps(rt)) == rt  # it travels to executors


def test_a_spark_connect_server_is_part_of_the_runtime(cfg):
    rt = Runtime.resolve(cfg, environ={"LAKESYNTH_SPARK_REMOTE": "sc://127.0.0.1:50051"})
    assert rt.spark_remote == "sc://127.0.0.1:50051" and not rt.databricks


def test_another_volume_moves_the_files(cfg):
    other = cfg.model_copy(update={"volume": "other"})
    assert (
        Runtime.resolve(other, environ={})
        .files_dir("training_chat")
        .endswith(f"/main/{cfg.schema_}/other/training_chat")
    )
    on_databricks = Runtime.resolve(other, environ={"DATABRICKS_RUNTIME_VERSION": "17.3"})
    assert on_databricks.files_dir("training_chat") == f"/Volumes/main/{cfg.schema_}/other/training_chat"


def test_the_embedded_engine_starts_under_a_main_with_no_file(tmp_path):
    """`python -c`, a script piped to python and some launchers run code in a `__main__` with neither a file nor a
    spec, which pyspark's Connect client took for its own doctest run (then asked for SPARK_HOME). From this suite's
    own environment (.venv), in a folder outside the repository, as a user would call it."""
    seeds = (ROOT / "conf" / "bank" / "seeds.csv").read_text().splitlines()[:4]
    (tmp_path / "my.csv").write_text("\n".join(seeds) + "\n")
    call = "import sys; sys.argv=['lakesynth','seed','--seeds','my.csv']; from lakesynth.cli import main; main()"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAKESYNTH_", "SPARK_", "DATABRICKS_"))}
    done = subprocess.run(
        [sys.executable, "-c", call], check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SPARK_HOME" not in done.stderr and "seed: ok, 3 in, 3 out" in done.stdout + done.stderr
    assert list((tmp_path / ".lakesynth" / "warehouse").glob("*/*/seed_questions/_delta_log"))
