"""Prompt templates: Jinja rendered in a sandbox, each template compiled once per process."""

from __future__ import annotations

import functools
import hashlib

from jinja2 import StrictUndefined
from jinja2.sandbox import SandboxedEnvironment


def render(template: str, **values) -> str:
    """Render in a sandbox: seed text is data, so braces or template syntax inside it stay literal."""
    return _compiled(template).render(**values)


@functools.lru_cache(maxsize=32)
def _compiled(template: str):
    # Compiling costs far more than rendering: once per template and process, not once per row.
    return SandboxedEnvironment(undefined=StrictUndefined, autoescape=False).from_string(template)


def prompt_version(template: str) -> str:
    """A short hash of a prompt template: recorded on every row, so a row says which prompt made it."""
    return hashlib.sha256(template.encode()).hexdigest()[:12]
