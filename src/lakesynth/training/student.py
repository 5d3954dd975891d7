"""The student answering questions, before and after its fine-tune: one model load, the LoRA adapter on and off.

Greedy decoding, so the same student, adapter and prompt always give the same answer, and the comparison
measures the fine-tune, not sampling noise. Runs wherever transformers does (CPU here, a GPU task on Databricks).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext


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
    model, tokenizer, prompts: list[list[dict]], *, tuned: bool, max_new_tokens: int = 160, batch_size: int = 8
) -> list[str]:
    """Each prompt's reply; with `tuned` false, the adapter is switched off (the base student)."""
    import torch

    replies: list[str] = []
    off = nullcontext() if tuned or not hasattr(model, "disable_adapter") else model.disable_adapter()
    with off, torch.no_grad():
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
    return replies
