"""Tools stage: the function-calling job's tool specs -> `tools`, one validated row per function.

`tools.spec` is an OpenAI tools file (JSON), a Python module whose typed, documented functions give the spec
(toolspec.py), or `mcp:<command or URL>`, an MCP server whose listed tools are the spec and which runs the calls
(mcp_server.py); `tools.functions` is a module of implementations for a JSON spec, so the execution check can run
the calls. Every spec is checked before anything is written: an invalid JSON Schema, a parameter without a type
hint or a spec'd function the module lacks is an error naming it, and the table is left as it was. The table is
the spec, whole: a function removed from the file leaves it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import Field, ValidationInfo, field_validator

from lakesynth.config import Section, resolve_path
from lakesynth.core import tables
from lakesynth.core.sources import Source
from lakesynth.core.stage import RunContext, Stage, StageResult
from lakesynth.core.tables import B, S
from lakesynth.errors import SeedError, StageSkipped
from lakesynth.tools import mcp_server
from lakesynth.tools import spec as toolspec
from lakesynth.tools.mcp_server import McpConfig


class ToolsConfig(Section):
    """Where the function-calling job's inputs are (`--tools`, `--functions`, `--calls`, `--seeds`)."""

    spec: str = Field(
        "",
        description="OpenAI tools file (.json), a Python module of typed, documented functions, or an MCP server: "
        "`mcp:<command>` (stdio, run in the config file's folder: tools.mcp.cwd) or `mcp:<http(s) URL>` "
        "(Streamable HTTP).",
    )
    functions: str = Field("", description="Python module implementing a JSON spec's functions (execution check).")
    calls: str = Field("", description="JSONL of query + function_calls (or tool_calls) pairs to verify.")
    seeds: str = Field("", description="JSONL of seed pairs (same format) to generate new pairs from.")
    mcp: McpConfig = Field(default_factory=McpConfig, description="How to reach an `mcp:` spec's server.")

    @field_validator("spec", "functions", "calls", "seeds")
    @classmethod
    def _resolve(cls, value: str, info: ValidationInfo) -> str:
        if mcp_server.is_mcp(value) and info.field_name != "spec":
            # A server runs only what it lists: a spec from a file could name a function it lacks, unchecked.
            raise ValueError(
                f"an MCP server runs the tools it lists: give it as tools.spec (--tools {value}), not as "
                f"tools.{info.field_name}, which takes a file"
            )
        return value if mcp_server.is_mcp(value) else resolve_path(value, info)


TABLE = tables.contract(
    "tools",
    [
        ("name", S),
        ("description", S),
        ("parameters", S),
        ("spec", S),
        ("implemented", B),
        ("module", S),
        ("module_sha", S),
        ("source", S),
    ],
    key="name",
    parent="source",
)


def implementations(cfg) -> str:
    """What runs the calls: `tools.functions`, else the spec itself when it is a module or an MCP server."""
    t = cfg.tools
    return t.functions or (t.spec if t.spec.endswith(".py") or mcp_server.is_mcp(t.spec) else "")


def read(cfg) -> list[dict]:
    """The tools, validated, each with whether the implementations define it."""
    t = cfg.tools
    if mcp_server.is_mcp(t.spec):
        specs = toolspec.list_spec(t.spec, t.mcp)
    else:
        specs = toolspec.derive_spec(t.spec) if t.spec.endswith(".py") else toolspec.read_spec(t.spec)
    names = [s["function"]["name"] for s in specs]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise SeedError(f"{t.spec}: functions named more than once: {', '.join(duplicated)}")
    module = implementations(cfg)
    if mcp_server.is_mcp(module):
        # The server runs what it lists; its listing is the version a rerun of the execution check compares.
        defined, sha = set(names), mcp_server.specs_sha([s["function"] for s in specs])
    else:
        defined = set(toolspec.functions(toolspec.load_module(module))) if module else set()
        sha = hashlib.sha256(Path(module).read_bytes()).hexdigest()[:16] if module else None
    missing = [n for n in names if module and n not in defined]
    if missing and t.functions:
        raise SeedError(f"{t.functions}: does not define {', '.join(missing)} (named in {t.spec})")
    return [
        {
            "name": s["function"]["name"],
            "description": s["function"]["description"],
            "parameters": json.dumps(s["function"]["parameters"], sort_keys=True),
            "spec": json.dumps(s, sort_keys=True),
            "implemented": s["function"]["name"] in defined,
            "module": module or None,
            "module_sha": sha,
            "source": t.spec,
        }
        for s in specs
    ]


def run(ctx: RunContext) -> StageResult:
    cfg = ctx.cfg
    if not cfg.tools.spec:
        raise StageSkipped("no tools spec: pass --tools FILE (a JSON tools file or a Python module) or mcp:SERVER")
    rows = read(cfg)  # everything is checked before the table is touched
    frame = ctx.spark.createDataFrame(rows, schema=TABLE.row_schema)
    tables.overwrite(ctx.spark, ctx.rt, TABLE, frame, run_id=cfg.run_id)  # the table is the spec, whole
    return StageResult(
        rows_in=len(rows),
        rows_out=len(rows),
        tables=[TABLE],
        metrics={"implemented": sum(r["implemented"] for r in rows)},
    )


STAGE = Stage(
    name="tools",
    help="read the tools spec (OpenAI JSON, a typed Python module or an MCP server) into tools, validated",
    run=run,
    writes=(TABLE,),
    config=ToolsConfig,
    # Another spec makes the sample's implementations, pairs and seeds meaningless.
    sources=(
        Source(
            "tools",
            ("tools.spec",),
            ("tools.functions", "tools.calls", "tools.seeds"),
            "function-calling job: OpenAI tools file (.json), a typed Python module, or mcp:<command or URL>",
        ),
        Source(
            "functions",
            ("tools.functions",),
            (),
            "function-calling job: Python module implementing a JSON spec's tools",
        ),
    ),
)
