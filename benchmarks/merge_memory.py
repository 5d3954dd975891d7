"""Why the embedded engine's memory creeps: resident memory kept per statement, in isolation.

    .venv/bin/python benchmarks/merge_memory.py [--repeat 20]

Each kind of statement lakesynth's stages issue runs `--repeat` times on a 200-row Delta table in a fresh
embedded engine (one process per kind), and the growth of resident memory after the first run is printed
per statement. A MERGE keeps several MB each time on Sail 0.7.2; an append or a query keeps little.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

KINDS = ("append", "merge_new_keys", "merge_same_keys", "query", "map_in_pandas")

PROBE = """
import os, sys
from pyspark.sql import functions as F
from lakesynth.core.engine import get_spark
from lakesynth.core.runtime import Runtime

def rss():
    for line in open(f"/proc/{os.getpid()}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

kind, repeat, wh = sys.argv[1], int(sys.argv[2]), sys.argv[3]
spark = get_spark(Runtime(False, "main", "bench", "v", str(wh)))
spark.sql("CREATE SCHEMA IF NOT EXISTS main.probe")
spark.sql(f"CREATE TABLE main.probe.t (k string, v string) USING DELTA LOCATION '{wh}/t'")
rows = spark.range(200).select(F.col("id").cast("string").alias("k"), F.repeat(F.lit("x"), 500).alias("v"))
merge = ("MERGE INTO main.probe.t t USING src s ON t.k = s.k WHEN MATCHED THEN UPDATE SET t.v = s.v "
         "WHEN NOT MATCHED THEN INSERT (k, v) VALUES (s.k, s.v)")

def same(it):
    yield from it

def once(i):
    if kind == "append":
        rows.write.mode("append").insertInto("main.probe.t")
    elif kind == "merge_new_keys":
        rows.select(F.concat("k", F.lit(f"-{i}")).alias("k"), "v").createOrReplaceTempView("src")
        spark.sql(merge).collect()
    elif kind == "merge_same_keys":
        rows.createOrReplaceTempView("src")
        spark.sql(merge).collect()
    elif kind == "query":
        spark.table("main.probe.t").where("k > '5'").count()
    elif kind == "map_in_pandas":
        rows.mapInPandas(same, rows.schema).count()

once(0)
start = rss()
for i in range(1, repeat + 1):
    once(i)
print(f"{(rss() - start) / repeat:.1f}")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    print(f"| statement (200 rows, {args.repeat} times) | resident memory kept per statement |\n|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "probe.py"  # a file, not -c: pyspark's Connect client misreads `python -c`
        script.write_text(PROBE)
        for kind in KINDS:
            out = subprocess.run(
                [sys.executable, str(script), kind, str(args.repeat), str(Path(tmp) / kind)],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "RUST_LOG": "error"},
            ).stdout.strip()
            print(f"| {kind} | {out} MiB |", flush=True)


if __name__ == "__main__":
    main()
