"""Pydantic models for conf/*.yml; the only place that reads YAML or the environment.

A config is loaded once (file, then --set overrides, then job parameters) and passed down
explicitly. Files it names (rules, prompt templates) are read here, relative to the config
file, so the model that reaches Spark executors is self-contained.
"""

from __future__ import annotations

import difflib
import itertools
import os
import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, ClassVar, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from lakesynth.errors import ConfigError

DEFAULT_CONFIG = Path("conf/lakesynth.yml")
# libyaml's safe loader where PyYAML was built with it: a tenth of the pure-Python one's CPU, and every command
# reads the config and the job files, and reading qna.yaml files is most of the taxonomy stage's time (benchmarks).
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def packaged_config() -> Path:
    """The default config packaged in the installed wheel, with the files it names beside it (the project's
    conf/ at build time; pipeline.py's docstring says how it is packaged)."""
    return Path(str(resources.files("lakesynth") / "bundled" / "conf" / "lakesynth.yml"))


def default_config_file() -> Path | None:
    """The config used without --config: conf/lakesynth.yml in the working folder if it exists (a project
    checkout), else the packaged one (an installed lakesynth run from any folder: the command line takes its
    settings and sources, not its bank use case; core/command.py's `neutral`), else none."""
    if DEFAULT_CONFIG.is_file():
        return DEFAULT_CONFIG
    packaged = packaged_config()
    return packaged if packaged.is_file() else None


class Section(BaseModel):
    """A config section: unknown keys are errors, values never change after loading."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def base_dir(info: ValidationInfo) -> Path:
    """The folder of the config file being validated: relative paths in it are relative to it."""
    return Path((info.context or {}).get("base_dir", "."))


def resolve_path(value: str, info: ValidationInfo) -> str:
    """A path the config names, made absolute against the config file's folder; empty, absolute or a URL as given."""
    if not value or "://" in value or Path(value).is_absolute():
        return value
    return str((base_dir(info) / value).resolve())


def names_a_file(value: str) -> bool:
    """Whether an input's value is a file path: not empty, a table (`table:`), an MCP server (`mcp:`) or a URL. The
    command line's flags and `--set`s resolve only these against the working folder."""
    return bool(value) and not value.startswith(("table:", "mcp:")) and "://" not in value


def read_text(path: str, info: ValidationInfo, key: str) -> str:
    file = Path(path) if Path(path).is_absolute() else base_dir(info) / path
    try:
        return file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read {key} {file}: {exc.strerror}") from exc


def _packaged_prompt(name: str) -> str:
    return resources.files("lakesynth").joinpath("prompts", name).read_text(encoding="utf-8")


def _env_name(value: str) -> str:
    """An environment variable's NAME (ASCII letters, digits, `_`), so a key or token pasted in its place is
    refused before it can reach a config dump or a log."""
    if value and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        raise ValueError("must be the NAME of an environment variable (letters, digits, _), not a key or token")
    return value


EnvName = Annotated[str, AfterValidator(_env_name)]  # the name of the variable holding a secret, "" for none


class UseCaseConfig(Section):
    name: str = Field("default", description="Short name of the use case, recorded with every run.")
    rules_file: str | None = Field(None, description="Markdown file with the domain rules and tone of voice.")
    rules: str = Field("", description="The domain rules text; read from rules_file when that is set.")
    system_prompt: str | None = Field(
        None, description="System message put first in every training example (None: no system message)."
    )

    @model_validator(mode="before")
    @classmethod
    def _load_rules(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, dict) and data.get("rules_file") and not data.get("rules"):
            data = {**data, "rules": read_text(data["rules_file"], info, "use_case.rules_file")}
        return data


class EndpointConfig(Section):
    """One named endpoint (`endpoints.<name>`): where a stage sends its requests and how hard it may push them.
    Every endpoint but `teacher` takes what it does not set from `teacher`."""

    base_url: str = Field(
        "",
        description="OpenAI-compatible base URL; empty = the embedded teacher; "
        "`databricks` = Databricks Model Serving with databricks-sdk's unified auth.",
    )
    model: str = Field(
        "qwen2.5-coder-0.5b-instruct",
        description="Model name sent with each request (the serving endpoint name on Databricks).",
    )
    api_key_env: EnvName = Field(
        "", description="Name of the environment variable that holds the API key (never the key itself)."
    )
    max_concurrency: int = Field(
        8,
        ge=1,
        description="Most requests in flight for a stage (shared by its llm.partitions); fewer while the endpoint throttles "
        "(adaptive_concurrency).",
    )
    adaptive_concurrency: bool = Field(
        True,
        description="Fewer requests in flight while the endpoint throttles (429, or 503 with Retry-After), and more "
        "again as they succeed (AIMD, between 1 and max_concurrency), per endpoint and process.",
    )
    timeout_s: float = Field(300.0, gt=0, description="Timeout of one HTTP request, in seconds.")
    max_retries: int = Field(
        3, ge=0, description="Retries of one request after 408/409/5xx, timeouts, dropped connections, invalid output."
    )
    max_throttle_retries: int = Field(
        20,
        ge=0,
        description="Retries of one request the endpoint throttled (429, or 503 with Retry-After), after the wait it "
        "asks for: a budget apart from max_retries, so throttling slows a stage rather than failing its rows. A row "
        "throttled past it fails with an error that starts 'throttled: '.",
    )
    throttle_patience_s: float = Field(
        300.0,
        ge=0,
        description="A throttled request is given up only once it has also been throttled for this long: an "
        "endpoint at capacity that asks for short waits would otherwise spend max_throttle_retries in seconds.",
    )
    requests_per_minute: int | None = Field(None, ge=1, description="Client-side request rate limit per stage.")
    tokens_per_minute: int | None = Field(None, ge=1, description="Client-side token rate limit per stage.")
    price_per_million_prompt_tokens: float | None = Field(
        None,
        ge=0,
        description="Price per 1M prompt (input) tokens: the estimated cost in the summary and estimate, "
        "and budget.max_usd.",
    )
    price_per_million_completion_tokens: float | None = Field(
        None, ge=0, description="Price per 1M completion (output) tokens: as price_per_million_prompt_tokens."
    )
    gguf_path: str = Field("", description="Your own GGUF model for the embedded teacher (default: the packaged one).")
    embedded_slots: int = Field(4, ge=1, description="Parallel slots (continuous batching) of the embedded teacher.")
    embedded_context: int = Field(4096, ge=512, description="Context tokens per slot of the embedded teacher.")
    embedded_threads: int = Field(0, ge=0, description="CPU threads of the embedded teacher (0 = all cores).")
    batch_size: int = Field(64, ge=1, le=2048, description="Texts per request, where the endpoint embeds.")

    @field_validator("gguf_path")
    @classmethod
    def _resolve_gguf(cls, value: str, info: ValidationInfo) -> str:
        return str((base_dir(info) / value).resolve()) if value and not Path(value).is_absolute() else value

    @property
    def embedded(self) -> bool:
        return not self.base_url

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        """Estimated cost in the configured currency; None where no price per token is configured."""
        if self.price_per_million_prompt_tokens is None or self.price_per_million_completion_tokens is None:
            return None
        return (
            prompt_tokens * self.price_per_million_prompt_tokens
            + completion_tokens * self.price_per_million_completion_tokens
        ) / 1e6

    def api_key(self) -> str | None:
        """The key from the named variable; read late so it never sits in a config dump."""
        return os.environ.get(self.api_key_env) if self.api_key_env else None


def secret_from_env(name: str) -> str | None:
    """A secret (a token) from the named environment variable, read where it is used, never kept in a config."""
    return os.environ.get(name) if name else None


class EndpointSettings(EndpointConfig):
    """An endpoint as the LLM layer calls it (`Config.endpoint`): its settings, and the run's that its calls need."""

    name: str = Field("teacher", description="Its name under endpoints:, for messages.")
    journal_flush_s: float = Field(2.0, ge=0, description="The run's llm.journal_flush_s.")
    model_cache: str = Field("~/.cache/lakesynth", description="The run's model_cache.")


EMBEDDINGS = {"base_url": "", "model": "all-MiniLM-L6-v2", "api_key_env": "", "gguf_path": ""}  # packaged, here


class LLMLoopConfig(Section):
    """How an LLM stage spreads, batches and journals its calls, whatever endpoint it calls."""

    partitions: int = Field(1, ge=1, description="Spark partitions a stage spreads its LLM calls over.")
    chunk_rows: int = Field(
        5000,
        ge=1,
        description="Pending rows an LLM stage calls, stages and merges at a time: bounds memory and what a crash "
        "can cost.",
    )
    journal_flush_s: float = Field(
        2.0,
        ge=0,
        description="Seconds a worker buffers finished requests before writing them as a new journal file "
        "(journal files are written once: Volumes cannot append). A crash loses at most the requests in flight "
        "and the last interval's results; 0 writes one file per request.",
    )
    progress_s: float = Field(
        30.0,
        gt=0,
        description="Seconds between the plain progress lines (done/total, errors, rate, ETA) an LLM stage prints "
        "where no terminal shows its progress bar: a task or CI log, output piped to a file.",
    )


class LLMStageConfig(Section):
    """The settings every LLM stage shares; a stage subclasses it and names its packaged template."""

    DEFAULT_TEMPLATE: ClassVar[str] = ""

    temperature: float = Field(0.7, ge=0, le=2, description="Sampling temperature.")
    max_tokens: int = Field(768, ge=16, description="Completion token limit (a structured reply cut by it is invalid).")
    template_file: str | None = Field(None, description="Jinja prompt template replacing the packaged one.")
    template: str = Field("", description="The prompt template text; read from template_file or the package.")
    max_failure_rate: float = Field(
        0.5, ge=0, le=1, description="The stage fails (after writing its rows) when more rows than this failed."
    )
    endpoint: str = Field("teacher", description="The endpoint (a name under endpoints:) this stage calls.")

    def calls_with(self, cfg: Config) -> EndpointSettings:
        """The endpoint settings this stage's requests go out with."""
        return cfg.endpoint(self.endpoint)

    @model_validator(mode="before")
    @classmethod
    def _load_template(cls, data: Any, info: ValidationInfo) -> Any:
        data = dict(data or {})
        if data.get("template_file") and not data.get("template"):
            data["template"] = read_text(data["template_file"], info, "template_file")
        elif not data.get("template") and cls.DEFAULT_TEMPLATE:
            data["template"] = _packaged_prompt(cls.DEFAULT_TEMPLATE)
        return data


class Persona(BaseModel):
    """A simulated user: who they are and how they write (the tools job's requests, the conversations' user)."""

    model_config = ConfigDict(extra="forbid")
    role: str = Field(description="Who the user is, e.g. 'a retired teacher'.")
    tone: str = Field(description="How they write, e.g. 'terse'.")


class Personas(Section):
    """Users to write as: every role with every tone, taken in turn by the requests."""

    roles: list[str] = Field(default_factory=list, description="User roles, e.g. 'a small-business owner'.")
    tones: list[str] = Field(default_factory=list, description="Tones, e.g. 'formal', 'hurried'.")

    def all(self) -> list[Persona]:
        return [Persona(role=r, tone=t) for r, t in itertools.product(self.roles, self.tones or ["plain"])]


class MlflowConfig(Section):
    enabled: bool = Field(True, description="Track each pipeline run as one MLflow run.")
    tracking_uri: str = Field("", description="Empty: `databricks` on Databricks, else sqlite beside the warehouse.")
    pipeline_experiment: str = Field(
        "lakesynth",
        description="MLflow experiment of the pipeline runs; on Databricks a bare name becomes "
        "/Shared/<name>-<catalog>.<schema> (one per deployed target), a workspace path is taken as given.",
    )


class BudgetConfig(Section):
    """A cap on what one run spends on LLM requests, measured as it goes (core/budget.py)."""

    max_usd: float | None = Field(
        None,
        gt=0,
        description="Stop sending requests before the run's estimated cost (at the endpoints' price_per_million_* "
        "keys) would pass this; the stages finish with what they have and the summary says `stopped: budget`. "
        "A rerun continues where it stopped.",
    )
    max_tokens: int | None = Field(
        None, gt=0, description="As max_usd, in prompt plus completion tokens of the run's requests."
    )

    @property
    def capped(self) -> bool:
        return self.max_usd is not None or self.max_tokens is not None


class Config(Section):
    """The sections every run has; `registry.config_model()` adds one section per registered stage."""

    catalog: str = Field("main", description="Unity Catalog catalog (locally: the first warehouse folder level).")
    schema_: str = Field("lakesynth_dev", alias="schema", description="Schema that holds the pipeline's tables.")
    volume: str = Field("lakesynth", description="Unity Catalog volume for JSONL files and LLM journals.")
    warehouse: str = Field(
        ".lakesynth/warehouse",
        validate_default=True,
        description="Local warehouse directory (made absolute against the working dir).",
    )
    run_id: str = Field("", description="Run id stamped on every row; set per pipeline run (job run id on Databricks).")
    model_cache: str = Field(
        "~/.cache/lakesynth",
        description="Where the packaged models (teacher, embeddings, student) are joined and verified.",
    )
    use_case: UseCaseConfig = Field(default_factory=UseCaseConfig, description="The use case the data is for.")
    endpoints: dict[str, EndpointConfig] = Field(
        default_factory=dict,
        validate_default=True,  # the validator below adds the endpoints every config has
        description="The endpoints stages call, by name (a stage's `endpoint` key). `teacher` is the default; every "
        "other takes what it does not set from it. `judge` (the checks' default: the teacher's settings) and "
        "`embeddings` (the embedding checks': the packaged all-MiniLM-L6-v2, here) always exist; add your own.",
    )
    llm: LLMLoopConfig = Field(default_factory=LLMLoopConfig, description="The LLM stages' loop.")
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig, description="MLflow tracking of pipeline runs.")
    budget: BudgetConfig = Field(default_factory=BudgetConfig, description="A cap on one run's LLM spend.")

    @field_validator("endpoints", mode="before")
    @classmethod
    def _default_endpoints(cls, value: Any) -> Any:
        """`judge` and `embeddings` exist unless set; a set `embeddings` still defaults to the packaged model."""
        if not isinstance(value, dict):
            return value
        embeddings = value.get("embeddings", {})
        if isinstance(embeddings, dict):
            embeddings = {**EMBEDDINGS, **embeddings}
        return {
            "teacher": {},
            "judge": {},
            "embeddings": embeddings,
            **{k: v for k, v in value.items() if k != "embeddings"},
        }

    def endpoint(self, name: str) -> EndpointSettings:
        """The settings of endpoint `name`: what it sets, the rest from `teacher`, with the run's loop settings."""
        if name not in self.endpoints:
            raise ConfigError(f"unknown endpoint '{name}' (known: {', '.join(self.endpoints)})")
        own = self.endpoints[name]
        merged = {**self.endpoints["teacher"].model_dump(), **own.model_dump(include=own.model_fields_set)}
        return EndpointSettings.model_construct(
            **merged, name=name, journal_flush_s=self.llm.journal_flush_s, model_cache=self.model_cache
        )

    @field_validator("catalog", "schema_", "volume")
    @classmethod
    def _identifier(cls, value: str) -> str:
        """Unity Catalog names as the SQL here writes them unquoted: letters (any script: development mode's
        `dev_<user>_` prefix carries a user name such as josé), digits, underscore; no leading digit. Spaces,
        dots, backticks, quotes and hyphens are refused: they would need quoting or split the name."""
        if not re.fullmatch(r"[^\W\d]\w*", value):
            raise ValueError("must be a plain identifier (letters, digits, underscore)")
        return value

    @field_validator("warehouse")
    @classmethod
    def _absolute(cls, value: str) -> str:
        return value if "://" in value else str(Path(value).expanduser().resolve())

    def fqn(self, table: str) -> str:
        return f"{self.catalog}.{self.schema_}.{table}"


# Keys that moved or were renamed, refused with where they went (old dotted key, as a pattern -> what to do).
MOVED: tuple[tuple[str, str], ...] = (
    (r"teacher\.workers", "moved to llm.partitions"),
    (r"teacher\.(chunk_rows|journal_flush_s)", r"moved to llm.\1"),
    (r"teacher\.model_cache", "moved to model_cache"),
    (r"teacher\.(.+)", r"moved to endpoints.teacher.\1"),
    (r"seeds\.(.+)", r"moved to seed.\1 (the section is named after its stage)"),
    (r"mlflow\.experiment", "renamed mlflow.pipeline_experiment"),
    (r"finetune\.experiment", "renamed finetune.training_experiment"),
    (r"format\.max_tokens", "renamed format.max_example_tokens (the longest example kept, not a completion limit)"),
    (r"taxonomy\.examples", "renamed taxonomy.examples_file"),
    (r"documents\.budget_tokens", "renamed documents.chunk_words (it counts words)"),
    (r"documents\.overlap_tokens", "renamed documents.overlap_words (it counts words)"),
    (
        r"tools\.(execution|format)\.workers",
        r"renamed tools.\1.processes (worker processes; llm.partitions are Spark's)",
    ),
    (
        r"quality\.relevance\.embeddings\..+",
        "set quality.relevance.embeddings_endpoint to a name under endpoints: (batch_size is the endpoint's)",
    ),
    (r"quality\.dedup\.semantic\.batch_size", "moved to endpoints.embeddings.batch_size (or the endpoint it names)"),
    (r"(?!endpoints\.)(.+)\.(base_url|model|api_key_env)", r"set \1.endpoint to a name under endpoints:"),
)


def moved(key: str) -> str | None:
    """What became of an old dotted key (None: it did not move)."""
    for pattern, new in MOVED:
        if match := re.fullmatch(pattern, key):
            return match.expand(new)
    return None


def _leaves(data: Any, prefix: str = "") -> list[str]:
    """The dotted keys of a config's leaves (a list's items by index)."""
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    found = [k for key, value in items for k in _leaves(value, f"{prefix}{key}.")]
    return found or ([prefix[:-1]] if prefix else [])


def _refuse_moved(keys: list[str], source: str) -> list[str]:
    return [f"{source}{key}: {new}" for key in keys if (new := moved(key))]


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{part}' is not a section")
        node = child
    node[leaf] = value


def parse_override(item: str) -> tuple[str, Any]:
    """`a.b=value` -> ("a.b", value), with the value read as YAML (so 3 is an int, '' stays '')."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected dotted.key=value")
    try:
        value = "" if raw == "" else yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: value is not valid YAML: {exc}") from exc
    return key.strip(), value


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, *, model: type[Config] = Config
) -> Config:
    """Read the YAML file (default: `default_config_file()`), apply overrides, validate as `model`
    (the full model with every stage's section comes from `registry.config_model()`)."""
    file = Path(path) if path else default_config_file()
    data: dict[str, Any] = {}
    if file is not None:
        try:
            loaded = yaml.load(file.read_text(encoding="utf-8"), Loader=YAML_LOADER)
        except OSError as exc:
            raise ConfigError(f"{file.absolute()}: cannot read config: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file.absolute()}: not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{file}: the top level must be a mapping of keys, got {type(loaded).__name__}")
        data = loaded or {}
    refused = _refuse_moved(_leaves(data), f"{file}: ")
    overridden = _apply(data, overrides or [], refused)
    base_dir = file.resolve().parent if file else Path.cwd()
    return _validated(model, data, base_dir, file, overridden)


def with_overrides(cfg: Config, overrides: list[str]) -> Config:
    """`cfg` with `KEY=VALUE` overrides applied and validated again (its paths are already resolved)."""
    data = cfg.model_dump(by_alias=True)
    data["endpoints"] = {name: e.model_dump(exclude_unset=True) for name, e in cfg.endpoints.items()}
    return _validated(type(cfg), data, Path.cwd(), None, _apply(data, overrides, []))


def _apply(data: dict, overrides: list[str], refused: list[str]) -> set[str]:
    """`--set` overrides applied to `data`, the keys they set; a ConfigError naming every old key (with `refused`,
    those of the file) and where it went."""
    overridden = set()
    for item in overrides:
        key, value = parse_override(item)
        refused += _refuse_moved(_leaves({key: value}), "--set ")
        _set_dotted(data, key, value)
        overridden.add(key)
    if refused:
        raise ConfigError("\n".join(refused))
    return overridden


def _validated(model: type[Config], data: dict, base_dir: Path, file: Path | None, overridden: set[str]) -> Config:
    """`data` as `model`, or a ConfigError naming each wrong key, where it was set, and the keys meant."""
    try:
        cfg = model.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(_describe(exc, file, overridden, model)) from None
    unknown = [
        f"{_source(key, file, overridden)}{key}: unknown endpoint '{name}' (known: {', '.join(cfg.endpoints)})"
        for key, name in _endpoint_names(cfg)
        if name not in cfg.endpoints
    ]
    if unknown:
        raise ConfigError("\n".join(unknown))
    return cfg


def _endpoint_names(section: BaseModel, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, endpoint name) of every key that names an endpoint (`endpoint`, `*_endpoint`)."""
    found = []
    for name in type(section).model_fields:
        value = getattr(section, name)
        if isinstance(value, str) and (name == "endpoint" or name.endswith("_endpoint")):
            found.append((prefix + name, value))
        for i, item in enumerate(value if isinstance(value, tuple) else [value]):
            if isinstance(item, BaseModel):
                found += _endpoint_names(
                    item, f"{prefix}{name}.{i}." if isinstance(value, tuple) else f"{prefix}{name}."
                )
    return found


def keys(model: type[BaseModel], prefix: str = "") -> dict[str, tuple[Any, FieldInfo]]:
    """Every dotted key of a config model -> (its type, its field), sections first then their keys; `*` stands
    for any name of a map (`endpoints.*.model`) or index of a list (`preference.candidates.*.name`)."""
    found: dict[str, tuple[Any, FieldInfo]] = {}
    for name, field in model.model_fields.items():
        key = prefix + (field.alias or name)
        found[key] = (field.annotation, field)
        inner = _section_of(field.annotation)
        if inner is not None:
            found.update(keys(inner[0], f"{key}{inner[1]}."))
    return found


def _section_of(annotation: Any) -> tuple[type[BaseModel], str] | None:
    """The section model a field holds, directly or as the values of a map or the items of a list."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, ""
    args = [a for a in get_args(annotation) if a is not Ellipsis]
    if get_origin(annotation) in (dict, tuple, list) and args:
        item = args[-1]
        if isinstance(item, type) and issubclass(item, BaseModel):
            return item, ".*"
    return None


def _suggest(key: str, model: type[BaseModel]) -> str:
    """ "; did you mean X?" for the known keys closest to a misspelt one."""
    parts = key.split(".")
    known = {
        ".".join(parts[i] if p == "*" and i < len(parts) else p for i, p in enumerate(k.split(".")))
        for k in keys(model)
    }
    close = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.8)
    return f"; did you mean {' or '.join(close)}?" if close else ""


def _source(key: str, file: Path | None, overridden: set[str]) -> str:
    return "--set " if any(key == o or key.startswith(o + ".") for o in overridden) else f"{file or 'config'}: "


def _describe(exc: ValidationError, file: Path | None, overridden: set[str], model: type[BaseModel]) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join("schema" if p == "schema_" else str(p) for p in err["loc"])
        got = f" (got {err['input']!r})" if err["type"] != "missing" and not isinstance(err["input"], dict) else ""
        msg = "unknown key" + _suggest(key, model) if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"{_source(key, file, overridden)}{key}: {msg}{got}")
    return "\n".join(lines)
