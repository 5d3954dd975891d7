"""Fine-tune stage: a real tiny local LoRA run, the exact Databricks requests, and an honest skip."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from conftest import ROOT, context, copy_schema, run_once, where, write
from databricks.bundles.jobs import Job

from lakesynth import cli, pipeline
from lakesynth.errors import ConfigError, StageError, StageSkipped
from lakesynth.llm.standin import StandIn
from lakesynth.qa import format as chat_jsonl
from lakesynth.qa import questions, responses
from lakesynth.qa import seed as seeds
from lakesynth.training import adapters, ai_runtime, finetune, student
from lakesynth.training.backends import ai_runtime as ai_runtime_backend
from lakesynth.training.backends import local


def _one_question_per_seed(cfg):
    """Fewer examples: the fine-tune's val-loss passes cost a forward per val example."""
    return cfg.model_copy(update={"questions": cfg.questions.model_copy(update={"per_seed": 1})})


@pytest.fixture(scope="module")
def formatted(spark, warehouse, teacher_server):
    """The train/val JSONL made on the stand-in teacher, once for the module."""
    return run_once(warehouse, teacher_server, seeds, questions, responses, chat_jsonl, change=_one_question_per_seed)


@pytest.fixture
def jsonl_cfg(spark, formatted, llm_cfg):
    """A config whose train/val JSONL exist (stand-in teacher): a copy of the module's."""
    return copy_schema(spark, formatted, _one_question_per_seed(llm_cfg))


def test_jsonl_loads_with_datasets_and_renders_with_a_real_chat_template(jsonl_cfg):
    from datasets import load_dataset
    from transformers import AutoTokenizer

    files = finetune.split_files(where(jsonl_cfg))
    data = load_dataset("json", data_files=files, split=None)
    assert set(data) == {"train", "val"} and len(data["train"]) > len(data["val"]) > 0
    tokenizer = AutoTokenizer.from_pretrained(student.packaged_student(Path(jsonl_cfg.model_cache).expanduser()))
    text = tokenizer.apply_chat_template(data["train"][0]["messages"], tokenize=False)
    assert "<|im_start|>assistant" in text and data["train"][0]["messages"][-1]["content"] in text


@pytest.mark.slow
def test_local_backend_trains_a_lora_adapter_and_records_val_loss(spark, jsonl_cfg):
    cfg = jsonl_cfg.model_copy(
        update={
            "finetune": jsonl_cfg.finetune.model_copy(
                update={"max_steps": 3, "max_length": 96, "learning_rate": 1e-3, "val_examples": 2}
            )
        }
    )
    result = finetune.run(context(cfg))
    m = result.metrics
    assert m["steps"] == 3 and m["device"] == "cpu"
    assert m["val_examples"] == 2 < len(Path(finetune.split_files(where(cfg))["val"]).read_text().splitlines())
    assert m["val_loss_before"] > 0 and m["val_loss_after"] < m["val_loss_before"]
    assert os.path.isfile(os.path.join(result.files["adapter"], "adapter_config.json"))
    saved = json.loads(Path(result.files["adapter"]).parent.joinpath("metrics.json").read_text())
    assert saved["val_loss_after"] == m["val_loss_after"]


SYSTEM = {"role": "system", "content": "Answer questions about lakes in one short sentence."}
PAIRS = [  # (question, chosen, rejected): the chosen answer is on topic, the rejected one is not
    ("What is the deepest lake on Earth?", "Lake Baikal in Siberia, about 1,642 m deep.", "I like turtles."),
    ("Which lake is the largest by area?", "The Caspian Sea is the largest lake by area.", "Bananas are yellow."),
    ("What feeds a lake?", "Rivers, rain, groundwater and melting snow feed a lake.", "The moon is cheese."),
    ("Why are some lakes salty?", "Lakes with no outflow keep the salt evaporation leaves.", "Cars have wheels."),
    ("What is a crater lake?", "A crater lake fills the crater of a volcano.", "Pizza is tasty."),
    ("Which is the highest navigable lake?", "Lake Titicaca in the Andes.", "I forgot."),
    ("What is an oxbow lake?", "A river meander cut off from its river.", "Blue."),
    ("What is the largest lake in Africa?", "Lake Victoria is the largest lake in Africa.", "Elephants are big."),
    ("What makes a lake freeze?", "Surface water cooling below 0 °C in cold weather.", "Tuesday."),
]


def _dpo_line(question: str, chosen: str, rejected: str) -> str:
    """One line of TRL's conversational preference format."""
    return json.dumps(
        {
            "prompt": [SYSTEM, {"role": "user", "content": question}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
        }
    )


def _dpo(cfg, **settings):
    return cfg.model_copy(update={"finetune": cfg.finetune.model_copy(update={"method": "dpo", **settings})})


@pytest.mark.slow
def test_local_dpo_trains_a_lora_adapter_and_records_the_rewards(cfg, capsys):
    files = finetune.split_files(where(cfg), "dpo")
    assert files["train"].endswith("/training_preference/dpo/train.jsonl")
    write(Path(files["train"]), "\n".join(_dpo_line(*pair) for pair in PAIRS[:6]) + "\n")
    write(Path(files["val"]), "\n".join(_dpo_line(*pair) for pair in PAIRS[6:]) + "\n")
    result = finetune.run(context(_dpo(cfg, max_steps=2, max_length=64, learning_rate=1e-3)))
    m = result.metrics
    assert m["method"] == "dpo" and m["steps"] == 2 and result.rows_in == 6
    # Before training the policy is the reference (the adapter starts as a no-op): no reward, no margin.
    assert m["reward_accuracy_before"] == 0 and m["reward_margin_before"] == 0
    assert m["reward_margin_after"] > m["reward_margin_before"] and 0 <= m["reward_accuracy_after"] <= 1
    assert m["val_loss_after"] < m["val_loss_before"]
    assert os.path.isfile(os.path.join(result.files["adapter"], "adapter_config.json"))
    saved = json.loads(Path(result.files["adapter"]).parent.joinpath("metrics.json").read_text())
    assert saved["method"] == "dpo" and saved["reward_margin_after"] == m["reward_margin_after"]
    # No terminal here (pytest captures stderr): plain progress lines, the last at the last step.
    assert re.findall(r"^finetune: step (\d+)/2", capsys.readouterr().err, re.MULTILINE)[-1] == "2"


def test_dpo_without_the_preference_files_says_which_stage_to_run(cfg):
    with pytest.raises(StageError, match="run the preference stage first"):
        finetune.run(context(_dpo(cfg)))


def test_the_removed_foundation_model_backend_is_refused_with_what_to_use(cfg):
    with pytest.raises(
        ConfigError,
        match=r"--set finetune.backend: .*removed the Foundation Model Fine-tuning "
        r"API .*on 2026-08-14; use ai_runtime \(serverless GPU.*ai_runtime_task\) or local",
    ):
        cli.build_config(
            cli.parse_args(
                [
                    "finetune",
                    "--config",
                    str(ROOT / "conf" / "lakesynth.yml"),
                    "--set",
                    "finetune.backend=foundation_model",
                ]
            )
        )


def test_ai_runtime_command_for_dpo_passes_the_method_and_beta(cfg):
    os.environ["DATABRICKS_RUNTIME_VERSION"] = "17.3"
    cfg = _dpo(cfg, beta=0.25)
    files = finetune.split_files(where(cfg), "dpo")
    assert files["val"] == f"/Volumes/main/{cfg.schema_}/lakesynth/training_preference/dpo/val.jsonl"
    line = ai_runtime_backend.ai_runtime_command(cfg, where(cfg), files, "/Workspace/x").splitlines()[3]
    assert line.startswith(f"python /Workspace/x/train.py --method dpo --train {files['train']} ")
    assert line.endswith("--mlflow --beta 0.25")
    assert ai_runtime_backend.ai_runtime_submission(cfg, "/Workspace/x/run.sh")["run_name"] == "lakesynth-dpo-test-run"


def test_missing_training_extra_is_a_skip_that_says_how_to_install(spark, jsonl_cfg, monkeypatch):
    monkeypatch.setattr(local, "TRAINING_LIBS", ("torch", "no_such_training_lib"))
    with pytest.raises(StageSkipped, match=r"missing no_such_training_lib.*pip install"):
        finetune.run(context(jsonl_cfg))


def test_ai_runtime_task_is_exact_and_valid_for_the_jobs_api(cfg):
    os.environ["DATABRICKS_RUNTIME_VERSION"] = "17.3"
    cfg = cfg.model_copy(update={"finetune": cfg.finetune.model_copy(update={"base_model": "org/student"})})
    files = finetune.split_files(where(cfg))
    script = ai_runtime_backend.ai_runtime_command(cfg, where(cfg), files, "/Workspace/Users/me/.lakesynth/test-run")
    assert script.splitlines()[2] == (
        "pip install --quiet transformers==5.23.0 peft==0.21.2 trl==1.16.0 datasets==5.2.0 accelerate==1.16.0"
    )
    assert script.splitlines()[3] == (
        f"python /Workspace/Users/me/.lakesynth/test-run/train.py --method sft --train {files['train']} "
        f"--val {files['val']} "
        f"--out /Volumes/main/{cfg.schema_}/lakesynth/finetune/test-run --max-steps 20 --learning-rate 0.0002 "
        "--lora-r 16 --batch-size 2 --max-length 256 --val-examples 200 --mlflow --model org/student"
    )
    submission = ai_runtime_backend.ai_runtime_submission(cfg, "/Workspace/Users/me/.lakesynth/test-run/run.sh")
    assert submission == {
        "run_name": "lakesynth-sft-test-run",
        "tasks": [
            {
                "task_key": "sft",
                "ai_runtime_task": {
                    "experiment": "lakesynth",
                    "mlflow_run": "lakesynth-sft-test-run",
                    "deployments": [
                        {
                            "name": "trainer",
                            "command_path": "/Workspace/Users/me/.lakesynth/test-run/run.sh",
                            "compute": {"accelerator_type": "GPU_1xA10", "accelerator_count": 1},
                        }
                    ],
                },
            }
        ],
    }
    Job.from_dict({"name": "sft", "tasks": submission["tasks"]})  # the Jobs API model accepts the task


def test_finetune_comes_after_format_and_export_does_not_wait_for_it():
    graph = pipeline.job_graph(finetune.Path(__file__).resolve().parents[1])
    order = pipeline.order(graph)
    assert order.index("finetune") > order.index("format")
    upstream, todo = set(), list(graph["export"][1])
    while todo:  # everything export waits for, directly or not
        task = todo.pop()
        if task not in upstream:
            upstream.add(task)
            todo += graph[task][1]
    assert "finetune" not in upstream  # the dataset is exported without waiting for a GPU run


@pytest.fixture
def workspace(monkeypatch, cfg):
    """The stand-in as a Databricks workspace (Jobs API over real HTTP through databricks-sdk), and the split
    files the format stage would have written."""
    server = StandIn().start()
    monkeypatch.setenv("DATABRICKS_HOST", server.base_url.removesuffix("/v1"))
    monkeypatch.setenv("DATABRICKS_TOKEN", "dapi-test-token")
    for split, path in finetune.split_files(where(cfg)).items():
        write(Path(path), json.dumps({"messages": [{"role": "user", "content": split}]}) + "\n")
    yield server
    server.stop()


def _remote(cfg, **settings):
    update = {"backend": "ai_runtime", "poll_seconds": 0.05, **settings}
    return cfg.model_copy(update={"finetune": cfg.finetune.model_copy(update=update)})


def test_a_remote_fine_tune_on_unchanged_inputs_submits_nothing(cfg, workspace):
    first = finetune.run(context(_remote(cfg)))
    assert first.rows_out == 1 and len(workspace.stats.runs) == 1
    run = workspace.stats.runs[1]["body"]
    assert run["tasks"][0]["ai_runtime_task"]["deployments"][0]["command_path"].endswith("/run.sh")
    # A task retry, or next week's scheduled run, on the same files and settings: the finished run is reused.
    again = finetune.run(context(_remote(cfg.model_copy(update={"run_id": "next-week"}))))
    assert len(workspace.stats.runs) == 1 and again.rows_out == 0
    assert again.metrics == {"databricks_run": 1, "reused": "test-run"} and again.files == first.files
    # Another setting is another fine-tune.
    finetune.run(context(_remote(cfg, max_steps=40)))
    assert len(workspace.stats.runs) == 2


def test_a_remote_fine_tune_past_its_timeout_is_cancelled_then_resubmitted(cfg, workspace):
    workspace.options.run_polls = 0  # never finishes on its own
    with pytest.raises(StageError, match="did not finish within 0.001 minutes and was cancelled"):
        finetune.run(context(_remote(cfg, timeout_minutes=0.001)))
    assert workspace.stats.cancelled == [1]
    # The rerun finds a cancelled run for these inputs: it submits a new one and waits for it.
    workspace.options.run_polls = 2
    assert finetune.run(context(_remote(cfg))).rows_out == 1 and len(workspace.stats.runs) == 2
    # A run that is still going when the task is retried is waited for, not submitted twice.
    workspace.options.run_polls = 0
    with pytest.raises(StageError):
        finetune.run(context(_remote(cfg, max_steps=7, timeout_minutes=0.001)))
    workspace.stats.runs[3]["state"] = {"life_cycle_state": "RUNNING"}  # as if the cancel had not landed
    workspace.options.run_polls = workspace.stats.runs[3]["polls"] + 2
    assert finetune.run(context(_remote(cfg, max_steps=7))).rows_out == 1 and len(workspace.stats.runs) == 3


def _ns(**kw):
    from types import SimpleNamespace

    return SimpleNamespace(**kw)


class _Jobs:
    """databricks-sdk's `jobs.list(expand_tasks=True)`, over given jobs."""

    def __init__(self, *jobs):
        self.jobs = jobs

    def list(self, expand_tasks=False):
        assert expand_tasks
        return iter(self.jobs)

    def list_runs(self, job_id, active_only=False):
        """The active runs of `job_id`: the runs given to a job built by `_job`."""
        assert active_only
        return iter(next((j.runs for j in self.jobs if j.job_id == job_id), []))


def _job(job_id, command, runs=(), **params):
    deployment = _ns(command_path=command)
    tasks = [
        _ns(task_key="seed", ai_runtime_task=None),
        _ns(task_key="finetune", ai_runtime_task=_ns(deployments=[deployment])),
    ]
    parameters = [_ns(name=k, default=v) for k, v in params.items()]
    return _ns(job_id=job_id, settings=_ns(tasks=tasks, parameters=parameters), runs=list(runs))


PARAMS = {
    "catalog": "cat",
    "schema": "dev_josé_lakesynth_dev",
    "volume": "lakesynth",
    "finetune_backend": "ai_runtime",
    "base_model": "org/student",
}


def test_the_gpu_task_finds_its_jobs_parameters_through_its_script():
    mine = "/Workspace/Users/a@x.com/.bundle/lakesynth/dev/files/resources/finetune.lakesynth_tools.sh"
    other = _job(2, "/Users/b@x.com/.bundle/lakesynth/dev/files/resources/finetune.lakesynth_tools.sh", **PARAMS)
    found = ai_runtime.job_parameters(_Jobs(other, _job(1, mine.removeprefix("/Workspace"), **PARAMS)), mine)
    assert found == PARAMS
    # A run started with other values (`bundle run --params`): the task trains with that run's, not the defaults.
    run = _ns(
        run_id=77, job_parameters=[_ns(name="schema", value="other", default="x"), _ns(name="x", value="1", default="")]
    )
    started = _job(1, mine, runs=[run], **PARAMS)
    assert ai_runtime.job_parameters(_Jobs(started), mine) == {**PARAMS, "schema": "other", "run_id": "77"}
    with pytest.raises(ConfigError, match=r"expected one job whose ai_runtime_task runs this script, found 0"):
        ai_runtime.job_parameters(_Jobs(other), mine)
    script = ROOT / "resources" / "finetune.lakesynth_tools.sh"  # as synced: ${workspace.file_path}/resources/
    argv = ai_runtime.task_argv(str(script), PARAMS, ["finetune.dataset=training_tools"], "ai_runtime-1")
    assert argv == [
        "finetune", "--config", str(ROOT / "conf" / "lakesynth.yml"),
        "--catalog", "cat", "--schema", "dev_josé_lakesynth_dev", "--volume", "lakesynth", "--run-id", "ai_runtime-1",
        "--set", "finetune.base_model=org/student", "--set", "finetune.dataset=training_tools",
    ]  # fmt: skip
    assert cli.build_config(cli.parse_args(argv)).schema_ == "dev_josé_lakesynth_dev"  # a non-ASCII user name


def test_the_gpu_task_reuses_the_adapter_of_the_same_data_and_settings(cfg, tmp_path):
    """An unchanged rerun trains nothing: it finds the adapter, and records it where evaluate (backend ai_runtime)
    looks (the Volume: a folder beside the tables here, /Volumes on the node)."""
    rt = where(cfg)
    files = finetune.split_files(rt)
    for split, path in files.items():
        write(Path(path), json.dumps({"messages": [{"role": "user", "content": split}]}) + "\n")
    inputs = adapters.input_fingerprint(cfg, files)
    earlier = Path(rt.files_dir("finetune")) / "earlier"
    write(earlier / "adapter" / "adapter_config.json", "{}")
    metrics = {"train_examples": 1, "adapter": str(earlier / "adapter"), "inputs": inputs, "method": "sft"}
    write(earlier / "metrics.json", json.dumps(metrics))
    got = ai_runtime.train(cfg, rt)
    assert got["reused"] == str(earlier) and got["rows_out"] == 0
    remote = cfg.model_copy(update={"finetune": cfg.finetune.model_copy(update={"backend": "ai_runtime"})})
    assert adapters.trained(remote, rt)["adapter"] == str(earlier / "adapter")


def test_a_conversation_teaches_every_assistant_turn_on_the_dialog_before_it(tmp_path):
    from lakesynth.training import train

    def turn(role, text):
        return {"role": role, "content": text}

    single = [turn("system", "s"), turn("user", "q"), turn("assistant", "a")]
    dialog = single + [turn("user", "q2"), turn("assistant", "a2"), turn("user", "q3"), turn("assistant", "a3")]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in (single, dialog)), encoding="utf-8")
    pairs = train.load_split(str(path))
    assert [p["completion"][0]["content"] for p in pairs] == ["a", "a", "a2", "a3"]
    assert [len(p["prompt"]) for p in pairs] == [2, 2, 4, 6]
    assert pairs[3]["prompt"] == dialog[:6]
