"""Embeddings: texts -> unit vectors from an OpenAI-compatible `/embeddings` endpoint, a batch per request.

Retried as chat requests are (408, 409, 429 and 5xx; Retry-After; jittered backoff; a throttle, a 429 or a 503
with Retry-After, on the endpoint's max_throttle_retries rather than max_retries); a Databricks token is renewed once
after a 401. A batch that still fails raises EndpointError: an embedding has no partial result
to keep in a row, and the stage that needs it fails whole, with nothing written.
"""

from __future__ import annotations

import time

import httpx2 as httpx
import numpy as np

from lakesynth.config import EndpointSettings
from lakesynth.errors import EndpointError
from lakesynth.llm.auth import Auth, Endpoint, tls
from lakesynth.llm.retry import RETRYABLE_STATUS, backoff, retry_after
from lakesynth.llm.throttle import is_throttle


class _Retry(Exception):
    def __init__(self, retry_after: float | None, throttled: bool) -> None:
        self.retry_after, self.throttled = retry_after, throttled


def embed(endpoint: Endpoint, teacher: EndpointSettings, texts: list[str], *, batch: int = 64) -> np.ndarray:
    """One L2-normalised float32 row per text, in order."""
    auth = Auth(endpoint, teacher.timeout_s)
    url = f"{endpoint.base_url}/embeddings"
    vectors: list[list[float]] = []
    with httpx.Client(timeout=teacher.timeout_s, verify=tls()) as client:
        for start in range(0, len(texts), batch):
            vectors.extend(_one(client, url, auth, endpoint.model, texts[start : start + batch], teacher))
    found = np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1)
    return found / np.maximum(np.linalg.norm(found, axis=1, keepdims=True), 1e-12)


def _one(client: httpx.Client, url: str, auth: Auth, model: str, texts: list[str], teacher: EndpointSettings) -> list:
    renewed = False
    failed = throttled = 0
    while True:
        header = auth.header()
        try:
            response = client.post(url, json={"model": model, "input": texts}, headers=header)
            status = response.status_code
            if status == 401 and auth.refreshable and not renewed:
                auth.refresh(header)
                renewed = True
                continue
            if status in RETRYABLE_STATUS or status >= 500:
                asked = retry_after(response.headers)
                raise _Retry(asked, is_throttle(status, asked))
        except (httpx.RequestError, _Retry) as exc:
            if getattr(exc, "throttled", False):
                throttled += 1
                tries, budget = throttled, teacher.max_throttle_retries
            else:
                failed += 1
                tries, budget = failed, teacher.max_retries
            if tries > budget:
                attempts = failed + throttled
                raise EndpointError(f"embeddings at {url}: no reply after {attempts} attempts ({exc!r})") from None
            time.sleep(backoff(tries, exc))
            continue
        if not response.is_success:
            raise EndpointError(
                auth.redact(f"embeddings at {url} answered {response.status_code}: {response.text[:300]}")
            )
        data = sorted(response.json()["data"], key=lambda d: d["index"])
        return [d["embedding"] for d in data]
