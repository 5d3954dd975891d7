"""Where requests go: the Endpoint (URL, model, key), how a configured teacher becomes one, and the Auth
that signs each request."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import ssl
from collections.abc import Iterator
from dataclasses import dataclass

import httpx2 as httpx
from pydantic import SecretStr

from lakesynth.config import EndpointSettings
from lakesynth.errors import ConfigError, EndpointError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Endpoint:
    """Where requests go; picklable, so it travels to Spark executors. The key never prints. With
    `databricks_auth` the key is only the driver's token, a fallback: see Auth."""

    base_url: str
    model: str
    api_key: SecretStr = dataclasses.field(default_factory=lambda: SecretStr("unused"))
    databricks_auth: bool = False

    def redact(self, text: str | None) -> str | None:
        key = self.api_key.get_secret_value()
        return text.replace(key, "[REDACTED]") if text and len(key) >= 4 else text


class Auth:
    """The auth headers of one pool of requests, built where they are sent (a Spark executor).

    For Databricks they come from a databricks-sdk Config per request: the SDK caches the token and renews
    the OAuth token of a job's identity, which expires within the hour, where the driver's token copied into
    the Endpoint would not. Where no Config can be built (no credentials on the executor), the driver's token
    is used. `redact` hides every token sent, renewed ones included."""

    def __init__(self, endpoint: Endpoint, timeout_s: float) -> None:
        self.endpoint, self.timeout_s = endpoint, timeout_s
        self._fallback = {"Authorization": f"Bearer {endpoint.api_key.get_secret_value()}"}
        self._tokens = {endpoint.api_key.get_secret_value()}
        self._config = self._databricks() if endpoint.databricks_auth else None

    @property
    def refreshable(self) -> bool:
        return self.endpoint.databricks_auth

    def header(self) -> dict[str, str]:
        """Cheap per request: the SDK returns its cached header until the token is due for renewal."""
        if self._config is None:
            return self._fallback
        header = self._config.authenticate()
        self._tokens.update(value.removeprefix("Bearer ") for value in header.values())
        return header

    def refresh(self, refused: dict[str, str]) -> None:
        """After a 401: a fresh Config fetches a new token, unless another request already did."""
        if self.header() == refused:
            self._config = self._databricks()

    def redact(self, text: str | None) -> str | None:
        for token in self._tokens:
            text = text.replace(token, "[REDACTED]") if text and len(token) >= 4 else text
        return text

    def _databricks(self):
        host = self.endpoint.base_url.removesuffix("/serving-endpoints")
        try:
            return _databricks_config(self.timeout_s, host=host)
        except Exception as exc:  # noqa: BLE001 - the SDK raises several types; all mean "no usable credentials"
            log.warning("No Databricks credentials here (%s); using the driver's token", self.redact(str(exc)))
            return None


@contextlib.contextmanager
def open_endpoint(teacher: EndpointSettings, *, embeddings: bool = False) -> Iterator[Endpoint]:
    """The configured endpoint; starts (and finally stops) the embedded teacher, or with `embeddings` the
    embedded embedding model, when none is set."""
    if teacher.embedded:
        from lakesynth.llm import embedded

        with (embedded.serve_embeddings if embeddings else embedded.serve)(teacher) as url:
            yield Endpoint(url, teacher.model)
        return
    if teacher.base_url == "databricks":
        yield _databricks_endpoint(teacher)
        return
    key = teacher.api_key()
    if teacher.api_key_env and not key:
        raise ConfigError(
            f"endpoints.{teacher.name}.api_key_env: environment variable {teacher.api_key_env} is not set"
        )
    yield Endpoint(teacher.base_url.rstrip("/"), teacher.model, SecretStr(key or "unused"))


def endpoint(ctx, teacher: EndpointSettings | None = None) -> Endpoint:
    """The endpoint of `teacher` (endpoint settings; default: the `teacher` endpoint's), opened once per run (`ctx.shared`): the
    embedded teacher starts on first use and stops with the run, shared by every stage that calls it."""
    teacher = teacher or ctx.cfg.endpoint("teacher")
    key = ("endpoint", teacher.base_url, teacher.model, teacher.api_key_env, teacher.gguf_path)
    return ctx.shared(key, lambda: open_endpoint(teacher))


def _databricks_endpoint(teacher: EndpointSettings) -> Endpoint:
    """Model Serving through databricks-sdk's unified auth (env vars, profile, notebook or job identity)."""
    try:
        config = _databricks_config(teacher.timeout_s)
        header = config.authenticate().get("Authorization", "")
    except Exception as exc:  # noqa: BLE001 - the SDK raises several types; all mean "no usable credentials"
        raise EndpointError(
            f"endpoints.{teacher.name}.base_url=databricks: cannot authenticate to Databricks: {exc}"
        ) from None
    token = SecretStr(header.removeprefix("Bearer "))
    return Endpoint(f"{config.host.rstrip('/')}/serving-endpoints", teacher.model, token, databricks_auth=True)


def _databricks_config(timeout_s: float, **settings):
    from databricks.sdk.config import Config

    # The teacher's timeout also bounds the SDK's start-up probing of the host (300 s by default).
    wait = max(1, int(timeout_s))
    return Config(retry_timeout_seconds=wait, http_timeout_seconds=wait, **settings)


@functools.cache
def tls() -> ssl.SSLContext:
    """The one TLS context of this process's endpoint clients: building one loads the CA bundle (23 ms of CPU),
    and a pool opens a client per batch."""
    return httpx.create_ssl_context()
