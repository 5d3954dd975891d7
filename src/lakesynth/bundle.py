"""The Databricks bundle as data: databricks.yml merged with its included resource files, and the
checks that keep it deployable (schema, job model, entry points, task graph) without a workspace.
"""

from __future__ import annotations

import glob
import graphlib
import re
import shlex
from pathlib import Path
from typing import Any

import yaml

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
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
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


def jobs(bundle: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The bundle's jobs: resource key -> job dict (the first is the default job)."""
    found = (bundle.get("resources") or {}).get("jobs") or {}
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


def tasks(spec: dict[str, Any], where: str) -> dict[str, tuple[str, list[str]]]:
    """task_key -> (stage, [task_keys it depends on]); a wheel task's first parameter names its stage."""
    graph = {}
    for task in spec.get("tasks", []):
        params = (task.get("python_wheel_task") or {}).get("parameters") or []
        if not params:
            raise ConfigError(f"{where}: task '{task['task_key']}' has no python_wheel_task parameters naming a stage")
        graph[task["task_key"]] = (params[0], [d["task_key"] for d in task.get("depends_on", [])])
    return graph


def task_settings(spec: dict[str, Any]) -> dict[str, list[str]]:
    """task_key -> the `--set KEY=VALUE` among its parameters that name no job parameter or variable: settings the
    task always runs with (the tools job's fine-tune reads `training_tools`), applied by the local runner too."""
    found = {}
    for task in spec.get("tasks", []):
        params = (task.get("python_wheel_task") or {}).get("parameters") or []
        fixed = [v for flag, v in zip(params, params[1:]) if flag == "--set" and "{{" not in v and "${" not in v]
        if fixed:
            found[task["task_key"]] = fixed
    return found


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
