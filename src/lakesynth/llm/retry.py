"""What becomes of a failed request to an endpoint: the error classes, which statuses are retried or fatal, the wait.

Decided here and nowhere else; the pool of chat requests (pool.py) and the embeddings client (embeddings.py) both
follow it.
"""

from __future__ import annotations

import email.utils
import json
import math
import random
import time

import httpx2 as httpx


class InvalidOutput(Exception):
    """The reply was not valid JSON, broke the schema, or was cut short; retried like a 5xx."""

    def __init__(self, reason: str, raw: str | None) -> None:
        super().__init__(reason)
        self.raw = raw


class Unfinished(InvalidOutput):
    """A reply cut by its Call's `reply_cap`, below its max_tokens: the row's error at once, as the full request is
    asked later (a preview's first look)."""


class StatusError(Exception):
    """An error reply: its status, the server's message and the API's error codes (code, type)."""

    def __init__(self, status: int, message: str, codes: tuple[str, ...], retry_after: float | None = None) -> None:
        self.status, self.message, self.codes, self.retry_after = status, message, codes, retry_after
        name = _STATUS_NAMES.get(status, "InternalServerError" if status >= 500 else "APIStatusError")
        code = f" {codes[0]}" if codes else ""
        super().__init__(f"{name}: HTTP {status}{code}: {message}")


class RetryableStatus(StatusError):
    """A reply in RETRYABLE_STATUS, or a 5xx."""


class Throttled(RetryableStatus):
    """A 429, or a 503 that asks for a wait (Retry-After): the endpoint's limits, not the row's fault."""


class RejectedStatus(StatusError):
    """Any other error reply that is not fatal: this row's request was refused."""


# --- What becomes of a failed request: decided here and nowhere else ---------------------------------------
# 1. Retried, then the row's error once attempts run out (honouring Retry-After, up to MAX_RETRY_AFTER_S).
RETRYABLE_STATUS = frozenset({408, 409, 429})  # and every 5xx
RETRYABLE = (RetryableStatus, httpx.RequestError, InvalidOutput)  # RequestError: timeouts, refused, reset, ...
#    A throttle (Throttled: a 429, or a 503 with Retry-After) slows the pool (throttle.py) and is retried on a
#    budget of its own, teacher.max_throttle_retries, so a burst of them never spends max_retries. Should that
#    run out too, the row's error starts with THROTTLED, so a stage can leave it out of its failure rate.
THROTTLED = "throttled: "
UNFINISHED = "Unfinished: "  # how the error of a reply cut at a first look's cap (Unfinished) starts
# 2. The stage stops (EndpointError): no row could succeed. A Databricks token refused (401) is renewed and
#    the request sent once more first (see Auth).
FATAL_STATUS = {
    401: "the token or API key is missing, wrong or expired (teacher.api_key_env, or Databricks auth)",
    403: "the credentials may not query this endpoint",
    404: "no model or endpoint named '{model}' at {base_url} (teacher.model)",
}
UNREACHABLE = (httpx.ConnectError, httpx.ConnectTimeout, httpx.UnsupportedProtocol)  # before any reply came back
SHAPE_HINT = "the endpoint rejected the request; does it support response_format json_schema?"  # a preflight's 400
# 3. The row's error at once: every other status (400, 413, 422, the rest of 4xx), as a retry would send the
#    same request again; and a reply cut at a first look's cap (Unfinished), whose full request comes later.
#    Only the preflight, whose job is the request's shape, stops the stage on a 400, unless the API's error code
#    (or type) says the fault lies in that row's content:
ROW_ERROR_CODES = frozenset(
    {
        "context_length_exceeded",  # OpenAI
        "string_above_max_length",  # OpenAI
        "invalid_prompt",  # OpenAI: a prompt its policy refuses
        "content_filter",  # Azure OpenAI
        "exceed_context_size_error",  # llama.cpp server (the embedded teacher), as its error type
    }
)
MAX_RETRY_AFTER_S = 60.0  # the longest server-requested wait honoured before a retry (jitter comes on top)
MAX_BACKOFF_S = 30.0

# OpenAI SDK class names for statuses, so errors read as they did when the SDK made the requests.
_STATUS_NAMES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    408: "RequestTimeoutError",
    409: "ConflictError",
    413: "RequestTooLargeError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
}


def backoff(attempt: int, exc: BaseException) -> float:
    """Seconds before the next attempt: the server's Retry-After where it sent one, up to MAX_RETRY_AFTER_S
    and spread by up to a quarter more so that rows told the same wait do not all come back at once;
    otherwise exponential with full jitter."""
    asked = getattr(exc, "retry_after", None)
    if asked is not None:
        wait = min(asked, MAX_RETRY_AFTER_S)
        return random.uniform(wait, 1.25 * wait)
    return random.uniform(0, min(MAX_BACKOFF_S, 0.5 * 2 ** (attempt - 1)))


def throttle_backoff(throttled: int, budget: int, exc: BaseException) -> float:
    """Seconds before retrying the `throttled`-th throttle: as `backoff`, and once past the budget (still within
    teacher.throttle_patience_s) growing each time."""
    wait = backoff(throttled, exc)
    if throttled > budget:
        wait = max(wait, random.uniform(0.5, 1.0) * min(MAX_BACKOFF_S, 0.5 * 2 ** (throttled - budget)))
    return wait


def retry_after(headers: httpx.Headers) -> float | None:
    """The wait a server asks for: retry-after-ms (OpenAI, Azure), else Retry-After in seconds or as a date."""
    value = headers.get("retry-after-ms")
    scale = 1000.0
    if value is None:
        value, scale = headers.get("retry-after"), 1.0
    if value is None:
        return None
    try:
        seconds = float(value) / scale
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return None if math.isnan(seconds) else max(0.0, seconds)


def error_detail(content: bytes) -> tuple[str, tuple[str, ...]]:
    """The server's message and the API's error codes from an error reply: OpenAI's `{"error": {message,
    type, code}}` (llama.cpp and vLLM send variants of it), Databricks' `{error_code, message}`,
    FastAPI's `{detail}`, or plain text."""
    try:
        body = json.loads(content)
    except ValueError:
        return content[:500].decode("utf-8", "replace").strip(), ()
    error = body.get("error", body) if isinstance(body, dict) else body
    if not isinstance(error, dict):
        return str(error)[:500], ()
    message = error.get("message") or error.get("detail") or body.get("message") or error
    message = message if isinstance(message, str) else json.dumps(message, ensure_ascii=False)
    codes = (error.get("code"), error.get("type"), body.get("error_code"))
    return message[:500], tuple(c for c in codes if isinstance(c, str) and c)
