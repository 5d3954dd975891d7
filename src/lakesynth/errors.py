"""Every error lakesynth raises on purpose.

LakesynthError
 ├── ConfigError        a config file, --set override or job parameter is wrong
 ├── SeedError          a seed file or table is malformed (names the file and rows)
 ├── TableSchemaError   a table on disk does not match its contract
 ├── EndpointError      the LLM endpoint cannot serve this stage at all (auth, model, unreachable)
 ├── StageError         a stage finished but broke its contract (e.g. too many failed rows)
 ├── SchemaBusy         another run is writing the same schema (names it)
 └── StageSkipped       a stage could not run here and says why (e.g. the training extra is missing)
"""


class LakesynthError(Exception):
    """Root of lakesynth's errors; the CLI prints these without a traceback and exits 2."""


class ConfigError(LakesynthError):
    pass


class SeedError(LakesynthError):
    pass


class TableSchemaError(LakesynthError):
    pass


class EndpointError(LakesynthError):
    pass


class StageError(LakesynthError):
    pass


class StageSkipped(LakesynthError):
    pass


class SchemaBusy(LakesynthError):
    pass
