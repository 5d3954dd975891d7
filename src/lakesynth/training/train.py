"""The project's LoRA training script: a student model learns from the JSONL, by SFT or by DPO.

- `sft` (default): the student learns the answers in the chat JSONL (`{"messages": [...]}`).
- `dpo`: the student learns to prefer the chosen answer over the rejected one, from TRL's conversational
  preference JSONL (`{"prompt": [...], "chosen": [...], "rejected": [...]}`). The reference model is the
  student with the adapter disabled, so no second copy of the model is held.

The same script runs locally (`lakesynth finetune`, backend `local`, CPU or GPU) and as the
`ai_runtime` task on Databricks serverless GPUs. It evaluates the validation split before and
after training, on the answers only, and saves the adapter and the metrics:

    python -m lakesynth.training.train --train train.jsonl --val val.jsonl --out DIR [--method sft|dpo] [--model DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def load_split(path: str):
    """The chat JSONL as prompt/completion pairs, so the loss counts the answers only: one pair per assistant
    message, on the messages before it (a conversation teaches every turn, not only its last)."""
    from datasets import load_dataset

    data = load_dataset("json", data_files=path, split="train")
    return data.map(_per_reply, batched=True, remove_columns=data.column_names)


def _per_reply(batch: dict) -> dict:
    prompts, completions = [], []
    for messages in batch["messages"]:
        for i, message in enumerate(messages):
            if message["role"] == "assistant":
                prompts.append(messages[:i])
                completions.append([message])
    return {"prompt": prompts, "completion": completions}


def _student(model_dir: str):
    """The student's tokenizer (with a pad token, which batching needs) and the model in float32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


def _lora(r: int):
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")


def _common_args(out_dir: str, *, max_steps, learning_rate, batch_size, max_length, seed) -> dict:
    """What SFTConfig and DPOConfig share: the script evaluates by hand and saves only the final adapter."""
    import torch

    return {
        "output_dir": str(Path(out_dir) / "checkpoints"),
        "max_steps": max_steps,
        "per_device_train_batch_size": batch_size,
        "per_device_eval_batch_size": batch_size,
        "learning_rate": learning_rate,
        "max_length": max_length,
        "eval_strategy": "no",
        "save_strategy": "no",
        "logging_steps": max(1, max_steps // 5),
        "report_to": [],
        "use_cpu": not torch.cuda.is_available(),
        "bf16": False,
        "seed": seed,
        "activation_checkpointing": False,
    }


def _save(trainer, out_dir: str, figures: dict, *, method: str, model_dir: Path, started: float) -> dict:
    """Save the adapter and write `<out_dir>/metrics.json`: the method's figures and what every run reports."""
    adapter = Path(out_dir) / "adapter"
    trainer.model.save_pretrained(adapter)
    metrics = {
        "method": method,
        **figures,
        "steps": trainer.args.max_steps,
        "train_examples": len(trainer.train_dataset),
        "val_examples": len(trainer.eval_dataset),
        "student": str(model_dir),
        "adapter": str(adapter),
        "device": "cpu" if trainer.args.use_cpu else "cuda",
        "seconds": round(time.monotonic() - started, 1),
    }
    Path(out_dir, "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return metrics


# What SFT and DPO do differently: their default learning rate, and the figures kept (name, the evaluation's key).
LEARNING_RATES = {"sft": 2e-4, "dpo": 5e-5}
FIGURES = {
    "sft": (("val_loss", "eval_loss"),),
    "dpo": (
        ("reward_accuracy", "eval_rewards/accuracies"),
        ("reward_margin", "eval_rewards/margins"),
        ("val_loss", "eval_loss"),
    ),
}


def _trainer(method: str, beta: float):
    """The method's trainer, its config (with what only it takes) and its reader of the JSONL."""
    if method == "dpo":
        from datasets import load_dataset
        from trl import DPOConfig, DPOTrainer

        def read(path: str):
            return load_dataset("json", data_files=path, split="train")

        return DPOTrainer, lambda **common: DPOConfig(**common, beta=beta), read
    from trl import SFTConfig, SFTTrainer

    return SFTTrainer, SFTConfig, load_split


def _progress_lines(every_s: float):
    """A callback that prints `finetune: step 40/200, loss 1.234, 2.1 s/step, ETA 5 min` at most every `every_s`
    seconds and at the last step: without a terminal, the trainer's bar shows nothing a log can follow."""
    from transformers import TrainerCallback

    class Lines(TrainerCallback):
        def __init__(self) -> None:
            self.started = self.said = time.monotonic()
            self.loss = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.loss = (logs or {}).get("loss", self.loss)

        def on_step_end(self, args, state, control, **kwargs):
            now, step, total = time.monotonic(), state.global_step, state.max_steps
            if now - self.said < every_s and step < total:
                return
            self.said, each = now, (now - self.started) / max(step, 1)
            loss = f", loss {self.loss:.3f}" if self.loss is not None else ""
            eta = f", ETA {round(each * (total - step))} s" if step < total else ""
            print(f"finetune: step {step}/{total}{loss}, {each:.1f} s/step{eta}", file=sys.stderr, flush=True)

    return Lines()


def train(
    train_path: str,
    val_path: str,
    out_dir: str,
    *,
    model: str,
    method: str = "sft",
    max_steps: int = 20,
    learning_rate: float | None = None,
    lora_r: int = 16,
    batch_size: int = 2,
    max_length: int = 256,
    val_examples: int = 200,
    beta: float = 0.1,
    seed: int = 42,
    progress_s: float = 30.0,
) -> dict:
    """LoRA SFT or DPO of the student in folder `model` for `max_steps` steps; returns the metrics, also written to
    `<out_dir>/metrics.json`. SFT reports the validation loss; DPO also its implicit rewards on val: accuracy is the
    share of pairs whose chosen answer out-scores the rejected one, margin the mean difference."""
    started = time.monotonic()
    tokenizer, student = _student(model)
    trainer_class, config, read = _trainer(method, beta)
    common = _common_args(
        out_dir,
        max_steps=max_steps,
        learning_rate=learning_rate or LEARNING_RATES[method],
        batch_size=batch_size,
        max_length=max_length,
        seed=seed,
    )
    quiet = not sys.stderr.isatty()  # a task or CI log: plain lines every progress_s instead of a redrawn bar
    trainer = trainer_class(
        model=student,  # DPO: with a peft_config and no ref_model, the reference is this model with the adapter off
        args=config(**common, disable_tqdm=quiet),
        callbacks=[_progress_lines(progress_s)] if quiet else None,
        train_dataset=read(train_path),
        eval_dataset=read(val_path),
        processing_class=tokenizer,
        peft_config=_lora(lora_r),
    )
    for name, data in (("train", trainer.train_dataset), ("val", trainer.eval_dataset)):
        if len(data) == 0:  # the trainer drops an example whose answer the length limit cut off entirely
            raise ValueError(f"every {name} example is longer than max_length={max_length} tokens; raise it")
    # The loss is measured twice, on CPU a forward pass per example each time: the first val_examples say enough.
    trainer.eval_dataset = trainer.eval_dataset.select(range(min(val_examples, len(trainer.eval_dataset))))
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    figures = {
        f"{name}_{when}": round(float(found[key]), 4)
        for name, key in FIGURES[method]
        for when, found in (("before", before), ("after", after))
    }
    return _save(trainer, out_dir, figures, method=method, model_dir=Path(model), started=started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lakesynth.training.train", description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True)
    parser.add_argument("--val", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--method", choices=("sft", "dpo"), default="sft")
    parser.add_argument(
        "--model", help="Hugging Face model folder (default: the packaged SmolLM2-135M-Instruct, where lakesynth is)"
    )
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--learning-rate", type=float, help="default: 2e-4 for sft, 5e-5 for dpo")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--val-examples", type=int, default=200, help="validation examples the loss is measured on")
    parser.add_argument("--beta", type=float, default=0.1, help="dpo: how far the student may move from the base")
    parser.add_argument("--mlflow", action="store_true", help="log params and metrics to the active MLflow setup")
    args = parser.parse_args(argv)
    model = args.model
    if model is None:
        try:  # the script also runs alone on a GPU node, where only --model can name the student
            from lakesynth.training.student import packaged_student
        except ImportError:
            parser.error("--model is needed where lakesynth is not installed (the packaged student comes with it)")
        model = str(packaged_student(Path("~/.cache/lakesynth").expanduser()))
    settings = {
        "model": model,
        "method": args.method,
        "beta": args.beta,
        "max_steps": args.max_steps,
        "lora_r": args.lora_r,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "val_examples": args.val_examples,
        "learning_rate": args.learning_rate,
    }
    metrics = train(args.train, args.val, args.out, **settings)
    if args.mlflow:
        import mlflow

        with mlflow.start_run(run_name=f"lakesynth-{args.method}"):
            mlflow.log_params({k: v for k, v in vars(args).items() if k != "mlflow"})
            mlflow.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
            mlflow.log_artifacts(metrics["adapter"], "adapter")
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
