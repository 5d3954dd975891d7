"""Embeddings: texts -> unit vectors from an OpenAI-compatible `/embeddings` endpoint, a batch per request.

Retried as chat requests are (408, 409, 429 and 5xx; Retry-After; jittered backoff); a Databricks token is
renewed once after a 401. A batch that still fails raises EndpointError: an embedding has no partial result
to keep in a row, and the stage that needs it fails whole, with nothing written.
"""

from __future__ import annotations

import time

import httpx2 as httpx
import numpy as np

from lakesynth.config import TeacherConfig
from lakesynth.errors import EndpointError
from lakesynth.llm.auth import Auth, Endpoint
from lakesynth.llm.pool import RETRYABLE_STATUS, _backoff, _retry_after


class _Retry(Exception):
    def __init__(self, retry_after: float | None) -> None:
        self.retry_after = retry_after


def embed(endpoint: Endpoint, teacher: TeacherConfig, texts: list[str], *, batch: int = 64) -> np.ndarray:
    """One L2-normalised float32 row per text, in order."""
    auth = Auth(endpoint, teacher.timeout_s)
    url = f"{endpoint.base_url}/embeddings"
    vectors: list[list[float]] = []
    with httpx.Client(timeout=teacher.timeout_s) as client:
        for start in range(0, len(texts), batch):
            vectors.extend(_one(client, url, auth, endpoint.model, texts[start : start + batch], teacher.max_retries))
    found = np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1)
    return found / np.maximum(np.linalg.norm(found, axis=1, keepdims=True), 1e-12)


def mean_cosines(
    endpoint: Endpoint, teacher: TeacherConfig, originals: list[str], generated: list[list[str]], *, batch: int = 64
) -> list[float | None]:
    """Each original text's mean cosine with its generated ones (None where none were generated): the reverse-query
    relevance score, with every text of the batch embedded in one pass."""
    texts = [t for original, gen in zip(originals, generated) if gen for t in (original, *gen)]
    vectors = iter(embed(endpoint, teacher, texts, batch=batch) if texts else [])
    scores: list[float | None] = []
    for gen in generated:
        if not gen:
            scores.append(None)
            continue
        original, others = next(vectors), np.stack([next(vectors) for _ in gen])
        scores.append(float((others @ original).mean()))
    return scores


def _one(client: httpx.Client, url: str, auth: Auth, model: str, texts: list[str], retries: int) -> list:
    renewed = False
    for attempt in range(1, retries + 2):
        header = auth.header()
        try:
            response = client.post(url, json={"model": model, "input": texts}, headers=header)
            if response.status_code == 401 and auth.refreshable and not renewed:
                auth.refresh(header)
                renewed = True
                continue
            if response.status_code in RETRYABLE_STATUS or response.status_code >= 500:
                raise _Retry(_retry_after(response.headers))
        except (httpx.RequestError, _Retry) as exc:
            if attempt > retries:
                raise EndpointError(f"embeddings at {url}: no reply after {attempt} attempts ({exc!r})") from None
            time.sleep(_backoff(attempt, exc))
            continue
        if not response.is_success:
            raise EndpointError(
                auth.redact(f"embeddings at {url} answered {response.status_code}: {response.text[:300]}")
            )
        data = sorted(response.json()["data"], key=lambda d: d["index"])
        return [d["embedding"] for d in data]
    raise EndpointError(f"embeddings at {url}: the token was refused after renewal")
