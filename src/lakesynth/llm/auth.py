"""Where requests go: the Endpoint (URL, model, key) and how a configured teacher becomes one."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

from pydantic import SecretStr

from lakesynth.config import TeacherConfig
from lakesynth.errors import ConfigError, EndpointError


@dataclass(frozen=True)
class Endpoint:
    """Where requests go; picklable, so it travels to Spark executors. The key never prints."""

    base_url: str
    model: str
    api_key: SecretStr = dataclasses.field(default_factory=lambda: SecretStr("unused"))

    def redact(self, text: str | None) -> str | None:
        key = self.api_key.get_secret_value()
        return text.replace(key, "[REDACTED]") if text and len(key) >= 4 else text


@contextlib.contextmanager
def open_endpoint(teacher: TeacherConfig) -> Iterator[Endpoint]:
    """The configured endpoint; starts (and finally stops) the embedded teacher when none is set."""
    if teacher.embedded:
        from lakesynth import embedded

        with embedded.serve(teacher) as url:
            yield Endpoint(url, teacher.model)
        return
    if teacher.base_url == "databricks":
        yield _databricks_endpoint(teacher)
        return
    key = teacher.api_key()
    if teacher.api_key_env and not key:
        raise ConfigError(f"teacher.api_key_env: environment variable {teacher.api_key_env} is not set")
    yield Endpoint(teacher.base_url.rstrip("/"), teacher.model, SecretStr(key or "unused"))


def _databricks_endpoint(teacher: TeacherConfig) -> Endpoint:
    """Model Serving through databricks-sdk's unified auth (env vars, profile, notebook or job identity)."""
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.config import Config

    try:
        # The teacher's timeout also bounds the SDK's start-up probing of the host (300 s by default).
        wait = max(1, int(teacher.timeout_s))
        client = WorkspaceClient(config=Config(retry_timeout_seconds=wait, http_timeout_seconds=wait))
        header = client.config.authenticate().get("Authorization", "")
    except Exception as exc:  # noqa: BLE001 - the SDK raises several types; all mean "no usable credentials"
        raise EndpointError(f"teacher.base_url=databricks: cannot authenticate to Databricks: {exc}") from None
    token = header.removeprefix("Bearer ")
    return Endpoint(f"{client.config.host.rstrip('/')}/serving-endpoints", teacher.model, SecretStr(token))
