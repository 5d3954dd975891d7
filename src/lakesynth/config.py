"""Pydantic models for conf/*.yml; the only place that reads YAML or the environment.

A config is loaded once (file, then --set overrides, then job parameters) and passed down
explicitly. Files it names (rules, prompt templates) are read here, relative to the config
file, so the model that reaches Spark executors is self-contained.
"""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from lakesynth.errors import ConfigError

DEFAULT_CONFIG = Path("conf/lakesynth.yml")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _base_dir(info: ValidationInfo) -> Path:
    return Path((info.context or {}).get("base_dir", "."))


def _read_text(path: str, info: ValidationInfo, key: str) -> str:
    file = Path(path) if Path(path).is_absolute() else _base_dir(info) / path
    try:
        return file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read {key} {file}: {exc.strerror}") from exc


def _packaged_prompt(name: str) -> str:
    return resources.files("lakesynth").joinpath("prompts", name).read_text(encoding="utf-8")


class SeedsConfig(_Model):
    path: str = Field(
        "bank/seeds.csv",
        validate_default=True,
        description="CSV or JSONL seed file (relative to the config file), or `table:<catalog.schema.table>`.",
    )

    @field_validator("path")
    @classmethod
    def _resolve(cls, value: str, info: ValidationInfo) -> str:
        if value.startswith("table:") or "://" in value or Path(value).is_absolute():
            return value
        return str((_base_dir(info) / value).resolve())


class UseCaseConfig(_Model):
    name: str = Field("bank", description="Short name of the use case, recorded with every run.")
    rules_file: str | None = Field(None, description="Markdown file with the domain rules and tone of voice.")
    rules: str = Field("", description="The domain rules text; read from rules_file when that is set.")
    system_prompt: str | None = Field(
        None, description="System message put first in every training example (None: no system message)."
    )

    @model_validator(mode="before")
    @classmethod
    def _load_rules(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, dict) and data.get("rules_file") and not data.get("rules"):
            data = {**data, "rules": _read_text(data["rules_file"], info, "use_case.rules_file")}
        return data


class TeacherConfig(_Model):
    base_url: str = Field(
        "",
        description="OpenAI-compatible base URL; empty = the embedded teacher; "
        "`databricks` = Databricks Model Serving with databricks-sdk's unified auth.",
    )
    model: str = Field(
        "qwen2.5-coder-0.5b-instruct",
        description="Model name sent with each request (the serving endpoint name on Databricks).",
    )
    api_key_env: str = Field(
        "", description="Name of the environment variable that holds the API key (never the key itself)."
    )
    max_concurrency: int = Field(8, ge=1, description="Total requests in flight for a stage (workers x per worker).")
    workers: int = Field(1, ge=1, description="Spark partitions a stage spreads its LLM calls over.")
    chunk_rows: int = Field(
        5000,
        ge=1,
        description="Pending rows an LLM stage calls, stages and merges at a time: bounds memory and what a crash "
        "can cost.",
    )
    timeout_s: float = Field(300.0, gt=0, description="Timeout of one HTTP request, in seconds.")
    max_retries: int = Field(3, ge=0, description="Retries of one request after 429/5xx/timeouts/invalid output.")
    requests_per_minute: int | None = Field(None, ge=1, description="Client-side request rate limit per stage.")
    tokens_per_minute: int | None = Field(None, ge=1, description="Client-side token rate limit per stage.")
    price_per_million_prompt_tokens: float | None = Field(None, ge=0, description="For the cost estimate.")
    price_per_million_completion_tokens: float | None = Field(None, ge=0, description="For the cost estimate.")
    gguf_path: str = Field("", description="Your own GGUF model for the embedded teacher (default: the packaged one).")
    embedded_slots: int = Field(4, ge=1, description="Parallel slots (continuous batching) of the embedded teacher.")
    embedded_context: int = Field(4096, ge=512, description="Context tokens per slot of the embedded teacher.")
    embedded_threads: int = Field(0, ge=0, description="CPU threads of the embedded teacher (0 = all cores).")
    model_cache: str = Field("~/.cache/lakesynth", description="Where the packaged model is joined and verified.")

    @field_validator("api_key_env")
    @classmethod
    def _env_name_not_key(cls, value: str) -> str:
        if value and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError("must be the NAME of an environment variable, not a key")
        return value

    @field_validator("gguf_path")
    @classmethod
    def _resolve_gguf(cls, value: str, info: ValidationInfo) -> str:
        return str((_base_dir(info) / value).resolve()) if value and not Path(value).is_absolute() else value

    @property
    def embedded(self) -> bool:
        return not self.base_url

    def api_key(self) -> str | None:
        """The key from the named variable; read late so it never sits in a config dump."""
        return os.environ.get(self.api_key_env) if self.api_key_env else None


class _StageLLMConfig(_Model):
    temperature: float = Field(0.7, ge=0, le=2, description="Sampling temperature.")
    max_tokens: int = Field(768, ge=16, description="Completion token limit (a structured reply cut by it is invalid).")
    template_file: str | None = Field(None, description="Jinja prompt template replacing the packaged one.")
    template: str = Field("", description="The prompt template text; read from template_file or the package.")
    max_failure_rate: float = Field(
        0.5, ge=0, le=1, description="The stage fails (after writing its rows) when more rows than this failed."
    )

    @model_validator(mode="before")
    @classmethod
    def _load_template(cls, data: Any, info: ValidationInfo) -> Any:
        data = dict(data or {})
        if data.get("template_file") and not data.get("template"):
            data["template"] = _read_text(data["template_file"], info, "template_file")
        elif not data.get("template"):
            data["template"] = _packaged_prompt(cls.DEFAULT_TEMPLATE)
        return data


class QuestionsConfig(_StageLLMConfig):
    DEFAULT_TEMPLATE: ClassVar[str] = "questions.j2"
    per_seed: int = Field(3, ge=1, le=50, description="New questions the teacher writes per seed.")
    temperature: float = Field(0.9, ge=0, le=2, description="Sampling temperature.")


class ResponsesConfig(_StageLLMConfig):
    DEFAULT_TEMPLATE: ClassVar[str] = "responses.j2"
    temperature: float = Field(0.3, ge=0, le=2, description="Sampling temperature.")


class FormatConfig(_Model):
    val_fraction: float = Field(0.2, ge=0, lt=1, description="Share of each topic's examples in the validation split.")
    test_fraction: float = Field(
        0.0, ge=0, lt=1, description="Share of each topic's examples in a test split (0: none)."
    )
    seed: int = Field(42, description="Seed of the split; the same seed and data always split the same way.")
    max_tokens: int = Field(2048, ge=16, description="Longest example kept, in tokens (estimated at 4 chars/token).")

    @model_validator(mode="after")
    def _fractions(self) -> FormatConfig:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must leave examples for training")
        return self


class FinetuneConfig(_Model):
    backend: Literal["local", "ai_runtime", "foundation_model", "none"] = Field(
        "local", description="local: LoRA SFT here; ai_runtime: serverless GPU task; foundation_model: FM API."
    )
    base_model: str = Field(
        "",
        description="Student: a Hugging Face model (folder or name); empty = the packaged "
        "SmolLM2-135M-Instruct locally, Llama-3.2-1B-Instruct for foundation_model.",
    )
    max_steps: int = Field(20, ge=1, description="Training steps (local and ai_runtime).")
    learning_rate: float = Field(2e-4, gt=0, description="Learning rate.")
    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    batch_size: int = Field(2, ge=1, description="Examples per step.")
    max_length: int = Field(256, ge=16, description="Tokens per example seen in training.")
    training_duration: str = Field("1ep", description="foundation_model: how long to train, e.g. 1ep.")
    context_length: int = Field(4096, ge=512, description="foundation_model: context length.")
    experiment: str = Field("/Shared/lakesynth", description="ai_runtime: MLflow experiment of the training run.")
    accelerator_type: Literal["GPU_1xA10", "GPU_1xH100", "GPU_8xH100"] = Field(
        "GPU_1xA10", description="ai_runtime GPU."
    )
    accelerator_count: int = Field(1, ge=1, description="ai_runtime: total GPUs.")
    script_dir: str = Field("", description="ai_runtime: workspace folder for the training script (default: yours).")
    poll_seconds: int = Field(30, ge=1, description="How often a Databricks run is polled.")
    timeout_minutes: int = Field(240, ge=1, description="How long to wait for a Databricks run.")


class MlflowConfig(_Model):
    enabled: bool = Field(True, description="Track each pipeline run as one MLflow run.")
    tracking_uri: str = Field("", description="Empty: `databricks` on Databricks, else sqlite beside the warehouse.")
    experiment: str = Field(
        "lakesynth", description="Experiment name (a workspace path on Databricks, e.g. /Shared/lakesynth)."
    )


class Config(_Model):
    catalog: str = Field("main", description="Unity Catalog catalog (locally: the first warehouse folder level).")
    schema_: str = Field("lakesynth_dev", alias="schema", description="Schema that holds the pipeline's tables.")
    volume: str = Field("lakesynth", description="Unity Catalog volume for JSONL files and LLM journals.")
    warehouse: str = Field(
        ".lakesynth/warehouse",
        validate_default=True,
        description="Local warehouse directory (made absolute against the working dir).",
    )
    run_id: str = Field("", description="Run id stamped on every row; set per pipeline run (job run id on Databricks).")
    use_case: UseCaseConfig = Field(default_factory=UseCaseConfig)
    seeds: SeedsConfig = Field(default_factory=SeedsConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    questions: QuestionsConfig = Field(default_factory=QuestionsConfig)
    responses: ResponsesConfig = Field(default_factory=ResponsesConfig)
    format: FormatConfig = Field(default_factory=FormatConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)

    @field_validator("catalog", "schema_", "volume")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not _IDENTIFIER.match(value):
            raise ValueError("must be a plain identifier (letters, digits, underscore)")
        return value

    @field_validator("warehouse")
    @classmethod
    def _absolute(cls, value: str) -> str:
        return value if "://" in value else str(Path(value).expanduser().resolve())

    def fqn(self, table: str) -> str:
        return f"{self.catalog}.{self.schema_}.{table}"


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


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read the YAML file (default conf/lakesynth.yml if present), apply overrides, validate."""
    file = Path(path) if path else (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    data: dict[str, Any] = {}
    if file is not None:
        try:
            loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{file}: cannot read config: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file}: not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{file}: the top level must be a mapping of keys, got {type(loaded).__name__}")
        data = loaded or {}
    overridden: set[str] = set()
    for item in overrides or []:
        key, value = parse_override(item)
        _set_dotted(data, key, value)
        overridden.add(key)
    base_dir = file.resolve().parent if file else Path.cwd()
    try:
        return Config.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(_describe(exc, file, overridden)) from None


def _describe(exc: ValidationError, file: Path | None, overridden: set[str]) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join("schema" if p == "schema_" else str(p) for p in err["loc"])
        source = "--set " if any(key == o or key.startswith(o + ".") for o in overridden) else f"{file or 'config'}: "
        got = f" (got {err['input']!r})" if err["type"] != "missing" and not isinstance(err["input"], dict) else ""
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"{source}{key}: {msg}{got}")
    return "\n".join(lines)
