"""The Databricks bundle as data: databricks.yml merged with its included resource files, and the
checks that keep it deployable (schema, job model, entry points, task graph) without a workspace.
"""

from __future__ import annotations

import glob
import graphlib
import itertools
import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from lakesynth.config import YAML_LOADER
from lakesynth.errors import ConfigError


def _merge(into: dict, other: dict) -> dict:
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
    return into


def load(root: Path) -> dict[str, Any]:
    """databricks.yml with every file its `include` globs name merged in, as the CLI merges them."""
    return load_with_sources(root)[0]


def load_with_sources(root: Path) -> tuple[dict[str, Any], dict[str, Path]]:
    """The merged bundle (as `load`), and the file that defines each of its jobs."""
    main_file = root / "databricks.yml"
    sources: dict[str, Path] = {}

    def read(path: Path) -> dict[str, Any]:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=YAML_LOADER) or {}
        sources.update(dict.fromkeys((data.get("resources") or {}).get("jobs") or {}, path))
        return data

    try:
        merged = read(main_file)
        for pattern in merged.get("include", []):
            for path in sorted(glob.glob(str(root / pattern))):
                _merge(merged, read(Path(path)))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{root}: cannot read the bundle: {exc}") from exc
    return merged, sources


DEFAULT_JOB = "lakesynth"  # the job `lakesynth run` runs unless --job names another


def project_root(start: Path) -> Path | None:
    """The nearest folder at or above `start` holding a databricks.yml, or None."""
    for folder in [start, *start.parents]:
        if (folder / "databricks.yml").is_file():
            return folder
    return None


def jobs(bundle: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The bundle's pipeline jobs: resource key -> job dict (the first is the default job). A job of notebook tasks
    only (the dataset report) runs on Databricks alone: it is no pipeline of stages."""
    found = {
        key: spec
        for key, spec in ((bundle.get("resources") or {}).get("jobs") or {}).items()
        if not all("notebook_task" in t for t in spec.get("tasks") or [{}])
    }
    if not found:
        raise ConfigError("the bundle defines no job under resources.jobs")
    return found


def job(bundle: dict[str, Any], name: str | None = None) -> tuple[str, dict[str, Any]]:
    """One job of the bundle, by resource key (default: the first): (key, job dict)."""
    found = jobs(bundle)
    key = name or next(iter(found))
    if key not in found:
        raise ConfigError(f"the bundle has no job '{key}'; it defines: {', '.join(found)}")
    return key, found[key]


# The stage an `ai_runtime_task` (serverless GPU) runs: the fine-tune, the one GPU task of the jobs. Locally the
# runner runs this stage with the config's backend (local by default).
AI_RUNTIME_STAGE = "finetune"
COMMAND_PREFIX = "${workspace.file_path}/resources/"


def tasks(spec: dict[str, Any], where: str) -> dict[str, tuple[str, list[str]]]:
    """task_key -> (stage, [task_keys it depends on]); a wheel task's first parameter names its stage, an
    ai_runtime_task runs the fine-tune (AI_RUNTIME_STAGE)."""
    graph = {}
    for task in spec.get("tasks", []):
        params = (task.get("python_wheel_task") or {}).get("parameters") or []
        if task.get("ai_runtime_task"):
            stage = AI_RUNTIME_STAGE
        elif params:
            stage = params[0]
        else:
            raise ConfigError(
                f"{where}: task '{task['task_key']}' has neither python_wheel_task parameters naming a stage "
                "nor an ai_runtime_task"
            )
        graph[task["task_key"]] = (stage, [d["task_key"] for d in task.get("depends_on", [])])
    return graph


def command_script(task: dict[str, Any]) -> str | None:
    """The file name (in resources/) of the script an ai_runtime_task runs, or None for another task."""
    deployments = (task.get("ai_runtime_task") or {}).get("deployments") or []
    path = deployments[0].get("command_path", "") if deployments else ""
    if not path:
        return None
    if not path.startswith(COMMAND_PREFIX) or "/" in path.removeprefix(COMMAND_PREFIX):
        raise ConfigError(
            f"task '{task.get('task_key')}': ai_runtime_task command_path must be {COMMAND_PREFIX}<script>.sh "
            f"(got {path!r}): the local runner reads the script's fixed settings from resources/"
        )
    return path.removeprefix(COMMAND_PREFIX)


def _script_text(name: str) -> str:
    """A script of resources/: the project's around the working folder (whose jobs the runner reads), else the copy
    packaged in the wheel."""
    from importlib import resources

    root = project_root(Path.cwd())
    if root is not None and (root / "resources" / name).is_file():
        return (root / "resources" / name).read_text(encoding="utf-8")
    packaged = resources.files("lakesynth") / "bundled" / "resources" / name
    try:
        return packaged.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"resources/{name}: the ai_runtime_task's script is missing: {exc}") from exc


def _fixed(params: list[str]) -> list[str]:
    return [v for flag, v in itertools.pairwise(params) if flag == "--set" and "{{" not in v and "${" not in v]


def task_settings(spec: dict[str, Any]) -> dict[str, list[str]]:
    """task_key -> the `--set KEY=VALUE` among its parameters that name no job parameter or variable: settings the
    task always runs with (the tools job's fine-tune reads `training_tools`), applied by the local runner too. An
    ai_runtime_task's are the `--set` lines of its script (resources/<script>.sh)."""
    found = {}
    for task in spec.get("tasks", []):
        script = command_script(task)
        if script:
            fixed = _fixed(shlex.split(_script_text(script), comments=True))
        else:
            fixed = _fixed((task.get("python_wheel_task") or {}).get("parameters") or [])
        if fixed:
            found[task["task_key"]] = fixed
    return found


# What a target changes of the bundle's top level when the CLI merges it (`databricks bundle validate -t T`).
_TARGET_KEYS = ("resources", "run_as", "workspace", "permissions", "presets", "artifacts", "sync", "git")
_VAR = re.compile(r"\$\{var\.([\w-]+)\}")


def for_target(bundle: dict[str, Any], target: str, variables: dict[str, str] | None = None) -> dict[str, Any]:
    """The bundle as the CLI resolves it for `target`: the target's settings merged over the top level, and every
    `${var.NAME}` replaced by its value (`variables` as --var gives them, the target's, the defaults). A variable
    with no value is an error naming it and how to set it, as the CLI's."""
    import copy

    if target not in (bundle.get("targets") or {}):
        raise ConfigError(f"the bundle has no target '{target}'; it defines: {', '.join(bundle.get('targets') or {})}")
    spec = bundle["targets"][target]
    merged = {k: copy.deepcopy(v) for k, v in bundle.items() if k != "targets"}
    for key in _TARGET_KEYS:
        if isinstance(spec.get(key), dict):
            merged[key] = _merge(merged.get(key) or {}, copy.deepcopy(spec[key]))
        elif key in spec:
            merged[key] = copy.deepcopy(spec[key])
    values = {k: v.get("default") for k, v in (bundle.get("variables") or {}).items()}
    values |= spec.get("variables") or {}
    values |= variables or {}

    def sub(node):
        if isinstance(node, dict):
            return {k: sub(v) for k, v in node.items()}
        if isinstance(node, list):
            return [sub(v) for v in node]
        if isinstance(node, str):
            return _VAR.sub(lambda m: _value(m.group(1)), node)
        return node

    def _value(name: str) -> str:
        if values.get(name) is None:
            raise ConfigError(
                f"target '{target}': no value for the bundle variable '{name}'; set it with --var {name}=<value>, "
                f"BUNDLE_VAR_{name}, or .databricks/bundle/{target}/variable-overrides.json"
            )
        return str(values[name])

    merged = sub(merged)
    merged["variables"] = {
        k: {**{kk: vv for kk, vv in v.items() if kk != "default"}, "default": str(values[k])}
        for k, v in (bundle.get("variables") or {}).items()
        if values.get(k) is not None
    }
    return merged


def schema_problems(bundle: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """Violations of the official bundle JSON schema, each as 'path: message'."""
    import json

    import jsonschema

    # Python's re lacks \p{..}; the schema uses them only in identifier patterns.
    text = json.dumps(schema).replace("\\\\p{L}", "[^\\\\W\\\\d_]").replace("\\\\p{N}", "\\\\d")
    validator = jsonschema.Draft202012Validator(json.loads(text))
    problems = []
    for error in validator.iter_errors(bundle):
        # oneOf/anyOf (a value, or a ${var} string) hide the real cause: follow the deepest sub-error down.
        while error.context:
            error = max(error.context, key=lambda e: (len(e.absolute_path), e.validator != "type"))
        where = "/".join(map(str, error.absolute_path)) or "(top)"
        problems.append(f"{where}: {error.message}")
    return problems


def task_problems(bundle: dict[str, Any], scripts: dict[str, str], parse_args) -> list[str]:
    """Entry points that do not exist or reject their parameters, dangling depends_on, cycles."""
    problems = []
    for name, spec in jobs(bundle).items():
        problems += _job_task_problems(name, spec, scripts, parse_args)
    return problems


def _job_task_problems(name: str, spec: dict[str, Any], scripts: dict[str, str], parse_args) -> list[str]:
    tasks = {t["task_key"]: t for t in spec.get("tasks", [])}
    problems = []
    for key, task in tasks.items():
        for dep in task.get("depends_on", []):
            if dep.get("task_key") not in tasks:
                problems.append(f"job '{name}': task '{key}': depends_on names no task '{dep.get('task_key')}'")
        wheel = task.get("python_wheel_task")
        if not wheel:
            continue
        if wheel.get("entry_point") not in scripts:
            problems.append(
                f"job '{name}': task '{key}': entry_point '{wheel.get('entry_point')}' is not in [project.scripts] "
                f"(has: {', '.join(scripts)})"
            )
            continue
        params = [re.sub(r"\{\{[^}]+\}\}|\$\{[^}]+\}", "x", p) for p in wheel.get("parameters", [])]
        try:
            parse_args(params)
        except SystemExit:
            problems.append(
                f"job '{name}': task '{key}': `{wheel['entry_point']} {shlex.join(params)}` is rejected by the CLI"
            )
    try:
        graphlib.TopologicalSorter(
            {k: [d["task_key"] for d in t.get("depends_on", [])] for k, t in tasks.items()}
        ).prepare()
    except graphlib.CycleError as exc:
        problems.append(f"job '{name}': the tasks' depends_on form a cycle: {' -> '.join(exc.args[1])}")
    return problems
