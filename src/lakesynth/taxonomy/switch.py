"""When the taxonomy's stages after `taxonomy` run: the switch they share (their `Stage.off`)."""

from __future__ import annotations


def no_taxonomy(cfg) -> str:
    return "" if cfg.taxonomy.enabled else "no taxonomy: pass --taxonomy DIR (taxonomy.path) or a template"


def no_pairs(cfg) -> str:
    """Why no pair is generated: no taxonomy, or no pair asked per leaf."""
    return no_taxonomy(cfg) or ("" if cfg.taxonomy.per_leaf else "taxonomy.per_leaf is 0")
