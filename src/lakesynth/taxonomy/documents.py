"""The `documents` stage: the knowledge documents (document_files.py) read and cut into chunks (chunks.py).

The `documents` stage (`--documents DIR`, `documents.path`: a folder, on Databricks a `/Volumes/...` path) writes
the chunk rows, every document's, whole into `document_chunks`: all documents are read (and any unreadable one named)
before the table is touched, and a document removed from the folder leaves the table with its chunks.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import pandas as pd
from pydantic import Field, ValidationInfo, field_validator, model_validator
from pyspark.sql import types as T

from lakesynth.config import Section, resolve_path
from lakesynth.core import tables
from lakesynth.core.sources import Source
from lakesynth.core.stage import RunContext, Stage, StageResult
from lakesynth.core.tables import INT, L, S
from lakesynth.taxonomy.chunks import BUDGET_TOKENS, CHUNK_COLUMNS, OVERLAP_TOKENS, chunk
from lakesynth.taxonomy.document_files import MARKDOWN, read_documents


class DocumentsConfig(Section):
    """The knowledge documents (`--documents`): a folder of markdown, text and PDF files, and how they are chunked."""

    path: str = Field(
        "",
        description="Folder of markdown, text and PDF documents (relative to the config file; on Databricks a "
        "/Volumes/... path). Knowledge leaves' document.patterns are resolved against it. Empty: no documents.",
    )
    chunk_words: int = Field(
        BUDGET_TOKENS, ge=1, description="Most words in a chunk (about 1.3 subword tokens a word)."
    )
    overlap_words: int = Field(
        OVERLAP_TOKENS, ge=0, description="Words a chunk repeats from the one before it in the same section."
    )

    @field_validator("path")
    @classmethod
    def _resolve(cls, value: str, info: ValidationInfo) -> str:
        return resolve_path(value, info)

    @model_validator(mode="after")
    def _overlap_below_budget(self) -> DocumentsConfig:
        if self.overlap_words >= self.chunk_words:
            raise ValueError(f"overlap_words ({self.overlap_words}) must be less than chunk_words ({self.chunk_words})")
        return self


TYPES = {"position": INT, "char_start": L, "char_end": L, "tokens": INT}
TABLE = tables.contract(
    "document_chunks", [(c, TYPES.get(c, S)) for c in CHUNK_COLUMNS], key="chunk_id", parent="source"
)
CHUNK_SCHEMA = T.StructType([T.StructField(c, TYPES.get(c, S), True) for c in CHUNK_COLUMNS])


def _chunk_batches(batches: Iterator[pd.DataFrame], budget_tokens: int, overlap_tokens: int) -> Iterator[pd.DataFrame]:
    """mapInPandas body: the chunk rows of each (source, text) document."""
    for batch in batches:
        rows = []
        for source, text in zip(batch["source"], batch["text"]):
            markdown = source.lower().endswith(MARKDOWN)
            rows += chunk(text, budget_tokens, overlap_tokens, source=source, markdown=markdown)
        yield pd.DataFrame(rows, columns=list(CHUNK_COLUMNS))


def run(ctx: RunContext) -> StageResult:
    cfg, spark = ctx.cfg, ctx.spark
    d = cfg.documents
    # Read on the driver: every document is checked (an unreadable or empty one is named, all at once) before the
    # table is touched, which reading on the executors could only report as a task failure. The chunking runs on the
    # executors: Spark slices a local relation over its default parallelism, so no repartition (a shuffle of every
    # text) is needed. Here, in-process, that costs about twice chunking on the driver (benchmarks/chunking.py).
    texts = read_documents(d.path)
    docs = spark.createDataFrame(
        pd.DataFrame({"source": list(texts), "text": list(texts.values())}),
        schema=T.StructType([T.StructField("source", S), T.StructField("text", S)]),
    )
    chunk_rows = docs.mapInPandas(
        functools.partial(_chunk_batches, budget_tokens=d.chunk_words, overlap_tokens=d.overlap_words),
        CHUNK_SCHEMA,
    )
    tables.overwrite(spark, ctx.rt, TABLE, chunk_rows, run_id=cfg.run_id)  # the table is the folder, whole
    written = tables.count(spark, ctx.rt, TABLE)
    return StageResult(
        rows_in=len(texts), rows_out=written, tables=[TABLE], metrics={"documents": len(texts), "chunks": written}
    )


STAGE = Stage(
    name="documents",
    help="read the knowledge documents (--documents: markdown, text, PDF) and chunk them by structure into "
    "document_chunks",
    run=run,
    writes=(TABLE,),
    config=DocumentsConfig,
    # A knowledge leaf's documents: replaces no seed source.
    sources=(
        Source(
            "documents",
            ("documents.path",),
            (),
            "folder of markdown, text and PDF knowledge documents (or /Volumes/...)",
            True,
        ),
    ),
    off=lambda cfg: "" if cfg.documents.path else "no documents: pass --documents DIR (documents.path)",
)
