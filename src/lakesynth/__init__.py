"""lakesynth: synthetic fine-tuning data for LLMs as Spark/Delta batch jobs."""

__version__ = "0.1.0"
