"""The package tree's layers, read from the source: imports run one way, and no stage imports another.

errors/config -> llm -> core -> the jobs' packages (qa, quality, taxonomy, tools, training) -> report -> pipeline, cli.
Every import counts, a function's own included: an import deferred into a function is still a dependency.
"""

from __future__ import annotations

import ast
import graphlib
import os
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "lakesynth"
JOBS = ("qa", "quality", "taxonomy", "tools", "training")
ABOVE = {  # a layer -> the layers above it, which it must never import
    "llm": ("core", *JOBS, "report", "pipeline", "cli"),
    "core": (*JOBS, "report", "pipeline", "cli"),
    **{job: ("report", "pipeline", "cli") for job in JOBS},
    "report": ("pipeline", "cli"),
}


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(module: str) -> set[str]:
    """The lakesynth modules `module` imports, wherever in it the import is."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "lakesynth":
            for alias in node.names:  # `from lakesynth.qa import seed` imports the module lakesynth.qa.seed
                name = f"{node.module}.{alias.name}"
                found.add(name if name in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "lakesynth"}
    return {m for m in found if m in MODULES and m != module}


GRAPH = {module: _imports(module) for module in MODULES}
STAGES = {m for m, p in MODULES.items() if re.search(r"^STAGE = Stage\(", p.read_text(encoding="utf-8"), re.M)}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "root"


def test_the_tree_has_one_package_per_layer_and_job():
    assert {_layer(m) for m in MODULES} >= {"core", "llm", "report", *JOBS}
    flat = sorted(m for m in MODULES if m.count(".") == 1 and _layer(m) not in ABOVE)
    assert flat == ["lakesynth.cli", "lakesynth.config", "lakesynth.errors", "lakesynth.pipeline"]
    assert STAGES and all(_layer(m) in JOBS for m in STAGES), sorted(STAGES)


def test_imports_form_no_cycle():
    try:
        graphlib.TopologicalSorter(GRAPH).prepare()
    except graphlib.CycleError as exc:
        pytest.fail("import cycle: " + " -> ".join(exc.args[1]))


@pytest.mark.parametrize("layer", sorted(ABOVE))
def test_a_layer_imports_nothing_above_it(layer):
    wrong = {
        f"{m} imports {d}" for m, deps in GRAPH.items() if _layer(m) == layer for d in deps if _layer(d) in ABOVE[layer]
    }
    assert not wrong, sorted(wrong)


def test_no_stage_module_imports_another():
    wrong = {f"{m} imports {d}" for m in STAGES for d in GRAPH[m] if d in STAGES}
    assert not wrong, sorted(wrong)


def test_the_tests_runs_record_themselves_in_pytests_temporary_folder(tmp_path_factory):
    """conftest's state_dir: a test's run never records itself in the user's ~/.cache/lakesynth, nor leaves a
    folder behind that pytest would not prune."""
    state = Path(os.environ["LAKESYNTH_STATE_DIR"])
    assert state.parent == tmp_path_factory.getbasetemp() and state.name.startswith("state")
