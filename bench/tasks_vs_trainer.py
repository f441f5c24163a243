"""transformers' Trainer ("at its best": dynamic padding, length-grouped batches) against this repo's train.py on three
GLUE-style jobs: MRPC (sentence pairs, binary), STS-B (pairs, regression) and GoEmotions (multi-label, 28 labels). Same
model, rows, epochs and hyperparameters on both sides: batch 8 (eval 32), AdamW lr 5e-5, weight decay 0.01 (not on
biases and norms), linear schedule without warmup, gradient norm clipped at 1.0, seed 42, at most 128 tokens; one
evaluation before training and one after, the metrics computed by the same code (metrics.tasks).

    python bench/tasks_vs_trainer.py --task mrpc                    # 3,668 / 408 rows, 3 epochs, fp32
    python bench/tasks_vs_trainer.py --task stsb --precision bf16   # 5,749 / 1,500 rows
    python bench/tasks_vs_trainer.py --task go_emotions             # 8,000 train rows, all 5,426 validation rows
    python bench/tasks_vs_trainer.py --task mrpc --train_samples 64 --eval_samples 64 --epochs 1   # a smoke test

Each side runs in its own child process (its own peak RSS). Train seconds: the training loop alone (train.py's phase
timer; the Trainer from on_train_begin to on_train_end, once its dataloader and optimizer exist). Eval seconds: the
evaluation before training (with --eval_strategy no train.py times no other). Prints a markdown table and writes
results/tasks-vs-trainer-TASK.{md,json}. Take the timings on a quiet machine.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, describe_cpu, describe_machine  # noqa: E402
from bench.trainer_vs_loop import run_measured, timed  # noqa: E402

DATA = ROOT.parent / "shared/data"
MAX_LENGTH = 128
SINGLE, MULTI, REGRESSION = "single_label_classification", "multi_label_classification", "regression"
TASKS = {  # text columns, problem_type, default train rows (0: all), the metrics shown, train.py's extra flags
    "mrpc": (("sentence1", "sentence2"), SINGLE, 0, ("accuracy", "f1"), []),
    "stsb": (("sentence1", "sentence2"), REGRESSION, 0, ("pearson", "spearman"), ["--problem_type", "regression"]),
    "go_emotions": (("text",), MULTI, 8000, ("micro_f1", "macro_f1", "subset_accuracy"), ["--label_names"]),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--model", default=str(ROOT.parent / "shared/models/all-MiniLM-L6-v2"))
    parser.add_argument("--train_samples", type=int, default=None, help="default: all (go_emotions: 8000); <= 0: all")
    parser.add_argument("--eval_samples", type=int, default=0, help="validation rows; <= 0: all")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--sides", default="train.py,Trainer", help="comma-separated: train.py, Trainer")
    parser.add_argument("--results_dir", default=str(ROOT / "results"))
    parser.add_argument("--child_json", default=None, help=argparse.SUPPRESS)  # internal: the Trainer side's process
    args = parser.parse_args(argv)
    if args.train_samples is None:
        args.train_samples = TASKS[args.task][2]
    return args


def label_names(task: str) -> list[str]:
    if task == "go_emotions":
        return (DATA / task / "labels.txt").read_text().split("\n")  # 28 names, no trailing newline
    return ["score"] if task == "stsb" else ["not_equivalent", "equivalent"]


def rows_used(task: str, split: str, n: int) -> int:
    import pyarrow.parquet as pq

    total = pq.ParquetFile(DATA / task / f"{split}.parquet").metadata.num_rows
    return total if n <= 0 else min(n, total)


def load_tokenized(args, tokenizer) -> tuple:
    """The rows train.py takes (data.select_subset: split.shuffle(seed=42).select(range(n)); n <= 0 or >= the split:
    all, in file order), tokenized the Trainer way: tokenizer(s1, s2, truncation=True, max_length=128), unpadded."""
    from datasets import List, Value, load_dataset

    columns, problem_type = TASKS[args.task][:2]
    files = {split: str(DATA / args.task / f"{split}.parquet") for split in ("train", "validation")}
    splits = load_dataset("parquet", data_files=files)
    num_labels = len(label_names(args.task))

    def encode(rows):
        encoded = tokenizer(*(rows[c] for c in columns), truncation=True, max_length=MAX_LENGTH)
        encoded["labels"] = ([[float(i in ids) for i in range(num_labels)] for ids in rows["labels"]]
                             if problem_type == MULTI else rows["label"])  # multi-hot float targets for BCE
        return encoded

    def cut(split, n):
        split = split if n <= 0 or n >= len(split) else split.shuffle(seed=42).select(range(n))
        encoded = split.map(encode, batched=True, remove_columns=split.column_names)
        # map keeps a replaced column's feature type (go_emotions' labels: int64), which BCEWithLogitsLoss refuses
        return encoded.cast_column("labels", List(Value("float32"))) if problem_type == MULTI else encoded

    return cut(splits["train"], args.train_samples), cut(splits["validation"], args.eval_samples)


def run_trainer(args) -> dict:
    """The Trainer side, inside its own process: evaluate, train, evaluate."""
    import torch
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainerCallback, TrainingArguments, set_seed)

    from metrics.tasks import task_for

    problem_type, names = TASKS[args.task][1], label_names(args.task)
    task = task_for(problem_type)  # threshold 0.5 for multi-label
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    (train_set, eval_set), tokenize_seconds = timed(lambda: load_tokenized(args, tokenizer))
    set_seed(42)  # before the new head is initialized, as train.py seeds it
    model = AutoModelForSequenceClassification.from_pretrained(
        args.model, num_labels=task.num_outputs(names), problem_type=problem_type)

    class TrainClock(TrainerCallback):  # the loop alone, as train.py's timer counts it
        def on_train_begin(self, *_, **__):
            self.start = time.perf_counter()

        def on_train_end(self, *_, **__):
            self.seconds = time.perf_counter() - self.start

    def compute_metrics(prediction) -> dict:  # argmax ids / logits[:, 0] / sigmoid probabilities, as train.py keeps
        outputs = task.outputs(torch.as_tensor(prediction.predictions)).numpy()
        figures = task.evaluate(prediction.label_ids, outputs, names)
        return {key: value for key, value in figures.items() if not isinstance(value, dict)}  # no per-label tables

    clock = TrainClock()
    with tempfile.TemporaryDirectory() as output_dir:
        training_args = TrainingArguments(
            output_dir=output_dir, per_device_train_batch_size=8, per_device_eval_batch_size=32, learning_rate=5e-5,
            weight_decay=0.01, num_train_epochs=args.epochs, lr_scheduler_type="linear", warmup_steps=0,
            max_grad_norm=1.0, seed=42, eval_strategy="no", save_strategy="no", report_to=[], use_cpu=True,
            bf16=args.precision == "bf16", dataloader_num_workers=0, train_sampling_strategy="group_by_length")
        trainer = Trainer(model=model, args=training_args, train_dataset=train_set, eval_dataset=eval_set,
                          processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
                          compute_metrics=compute_metrics, callbacks=[clock])
        before, eval_before_seconds = timed(trainer.evaluate)
        _, train_call_seconds = timed(trainer.train)
        after, eval_after_seconds = timed(trainer.evaluate)
    plain = lambda metrics: {key.removeprefix("eval_"): value for key, value in metrics.items()}  # noqa: E731
    return {"before": plain(before), "after": plain(after), "train_seconds": clock.seconds,
            "train_samples_per_second": len(train_set) * args.epochs / clock.seconds,
            "train_call_seconds": train_call_seconds, "eval_before_seconds": eval_before_seconds,
            "eval_after_seconds": eval_after_seconds, "tokenize_seconds": tokenize_seconds,
            "train_rows": len(train_set), "eval_rows": len(eval_set), "threads": torch.get_num_threads()}


def loop_command(args, output_dir: Path) -> list[str]:
    """train.py with the same rows, epochs and hyperparameters (its defaults spelled out)."""
    extra = TASKS[args.task][4] + (label_names(args.task) if args.task == "go_emotions" else [])
    command = [sys.executable, ROOT / "train.py", "--model_name_or_path", args.model, "--dataset_name",
               DATA / args.task, "--train_samples", args.train_samples, "--eval_samples", args.eval_samples,
               "--num_train_epochs", args.epochs, "--per_device_train_batch_size", 8, "--per_device_eval_batch_size",
               32, "--learning_rate", 5e-5, "--weight_decay", 0.01, "--lr_scheduler_type", "linear",
               "--num_warmup_steps", 0, "--max_grad_norm", 1.0, "--seed", 42, "--max_length", MAX_LENGTH,
               "--eval_strategy", "no", "--output_dir", output_dir, "--overwrite_output_dir",
               "--mixed_precision", {"fp32": "no", "bf16": "bf16"}[args.precision], *extra]
    return [str(part) for part in command]


def run_side(args, side: str) -> dict:
    """One side in a fresh child process; its results with the child's peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        if side == "Trainer":
            peak = run_measured([sys.executable, __file__, *sys.argv[1:], "--child_json", f"{tmp}/trainer.json"])
            return json.loads(Path(tmp, "trainer.json").read_text()) | {"peak_rss_gib": peak}
        peak = run_measured(loop_command(args, Path(tmp)))
        metrics = json.loads(Path(tmp, "metrics.json").read_text())
    speed = metrics["speed"]
    return {"before": metrics["before"], "after": metrics["after"], "train_seconds": speed["train_seconds"],
            "train_samples_per_second": speed["train_samples_per_second"],
            "eval_before_seconds": metrics["before"].get("seconds"), "eval_after_seconds": None,  # not timed by it
            "tokenize_seconds": speed.get("tokenize_seconds"), "peak_rss_gib": peak}


def table(args, results: dict, header: dict) -> str:
    shown = TASKS[args.task][3]
    lines = [f"{args.task}: {header['train_rows']:,} train / {header['eval_rows']:,} validation rows, {args.epochs} "
             f"epoch(s), {args.precision}; {header['cpu']} (avx512_bf16: {header['avx512_bf16']}, amx: "
             f"{header['amx']}), torch {header['torch']}, transformers {header['transformers']}", "",
             f"| side | {' | '.join(shown)} | train samples/s | train s | eval s | peak RSS GiB |",
             "|---|" + "---|" * (len(shown) + 4)]
    for side, r in results.items():
        figures = " | ".join(f"{r['after'][key]:.4f}" if key in r["after"] else "n/a" for key in shown)
        lines.append(f"| {side} | {figures} | {r['train_samples_per_second']:.2f} | {r['train_seconds']:.1f} | "
                     f"{r['eval_before_seconds']:.1f} | {r['peak_rss_gib']:.2f} |")
    return "\n".join(lines)


def main(args) -> None:
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(name, "1")  # local files only; the children inherit it
    if args.child_json:  # inside the Trainer side's process
        Path(args.child_json).write_text(json.dumps(run_trainer(args)))
        return
    results = {side: run_side(args, side) for side in args.sides.split(",")}
    header = {"command": " ".join(["python", *sys.argv]), "task": args.task, "precision": args.precision,
              "epochs": args.epochs, "train_rows": rows_used(args.task, "train", args.train_samples),
              "eval_rows": rows_used(args.task, "validation", args.eval_samples), **describe_cpu(),
              **{k: v for k, v in describe_machine().items() if k not in ("device", "cuda")}}  # a CPU run
    report = table(args, results, header)
    print(report)
    out = Path(args.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"tasks-vs-trainer-{args.task}.md").write_text(f"`{header['command']}`\n\n{report}\n")
    (out / f"tasks-vs-trainer-{args.task}.json").write_text(json.dumps(header | {"results": results}, indent=1))


if __name__ == "__main__":
    main(parse_args())
