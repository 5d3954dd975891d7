"""The core: what a stage is, the registry, the tables, the engine and the runtime; imports no job's package."""
