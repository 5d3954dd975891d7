"""Text as duplicates are compared, by the dedup stages and by the training split (a question in one split only)."""

from __future__ import annotations

from pyspark.sql import functions as F


def normalized_text(column: str) -> F.Column:
    """Text as duplicates are compared: lower case, whitespace runs as one space, no punctuation at the ends.
    "How do I block my card?" and "how do I  block my card" are the same question."""
    text = F.regexp_replace(F.lower(F.col(column)), r"\s+", " ")
    return F.regexp_replace(text, r"^[\s\p{P}\p{S}]+|[\s\p{P}\p{S}]+$", "")
