"""Side by side, in one run: (a) the reference recipe with transformers.Trainer (padding="max_length", fp32),
(b) Trainer at its best (dynamic padding, group_by_length, the same precision as c), (c) this repo's train.py.

    python bench/trainer_vs_loop.py                                   # MiniLM, 1,000 / 1,000 IMDB rows, fp32 and bf16
    python bench/trainer_vs_loop.py --train_samples 500 --eval_samples 500 --eval_batch_size 32

Every variant runs in its own process (fair peak memory: the child's max RSS) on the same model, rows and
hyperparameters: eval before, 1 epoch of training, eval after. Prints a markdown table and writes bench/results/*.json.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT.parent / "shared/models/all-MiniLM-L6-v2"))
    parser.add_argument("--dataset", default=str(ROOT.parent / "shared/data/imdb"))
    parser.add_argument("--train_samples", type=int, default=1000)
    parser.add_argument("--eval_samples", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--eval_batch_size", type=int, default=8, help="for (b) and (c); (a) uses the recipe's 8")
    parser.add_argument("--learning_rate", type=float, default=5e-5)
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16")
    parser.add_argument("--results_dir", default=str(ROOT / "bench/results"))
    parser.add_argument("--variant", default=None, help=argparse.SUPPRESS)  # internal: run one Trainer variant
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    # (b) with the Trainer's own switches for the loop's GPU fixes (bench/gpu_bench.py): compile, buckets, no cuDNN SDPA
    parser.add_argument("--trainer_compile", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--pad_to_multiple_of", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--no_cudnn_sdp", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def loader_padding_efficiency(loader) -> float:
    """Real tokens / tokens computed over the batches a dataloader forms."""
    masks = [batch["attention_mask"] for batch in loader]
    return sum(m.sum().item() for m in masks) / sum(m.numel() for m in masks)


def timed(function) -> tuple:
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def trainer_padding(trainer, train_tokens, eval_tokens, reference: bool) -> tuple[list[int], float, float]:
    """Each training row's real tokens, and the padding efficiency of the batches the Trainer will actually form (its
    own samplers and collator): train and eval."""
    if reference:  # every row padded to 512
        lengths = [sum(mask) for mask in train_tokens["attention_mask"]]
        eval_lengths = [sum(mask) for mask in eval_tokens["attention_mask"]]
        return lengths, sum(lengths) / (512 * len(lengths)), sum(eval_lengths) / (512 * len(eval_lengths))
    # the batches its own dataloaders form (with group_by_length, eval batches are length-grouped too)
    return ([len(ids) for ids in train_tokens["input_ids"]], loader_padding_efficiency(trainer.get_train_dataloader()),
            loader_padding_efficiency(trainer.get_eval_dataloader()))


def run_trainer(args) -> dict:
    """One Trainer run, (a) `reference` or (b) `best`, timed phase by phase."""
    import torch
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments, set_seed)

    from data import load_splits, select_subset
    from metrics import classification_metrics
    from metrics.throughput import measure_peak_tflops, model_flops_utilization, training_flop_rates

    reference = args.variant == "reference"
    set_seed(42)
    if args.no_cudnn_sdp and torch.cuda.is_available():
        torch.backends.cuda.enable_cudnn_sdp(False)
    splits, names = load_splits(args.dataset)
    train_rows = select_subset(splits["train"], args.train_samples, 42)
    eval_rows = select_subset(splits["eval"], args.eval_samples, 42)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    start = time.perf_counter()
    padding = {"padding": "max_length"} if reference else {}

    def encode(rows):
        return tokenizer(rows["text"], truncation=True, max_length=512, **padding)

    train_tokens = train_rows.map(encode, batched=True, remove_columns=["text"]).rename_column("label", "labels")
    eval_tokens = eval_rows.map(encode, batched=True, remove_columns=["text"]).rename_column("label", "labels")
    tokenize_seconds = time.perf_counter() - start
    model = AutoModelForSequenceClassification.from_pretrained(
        args.model, num_labels=2, id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    training_args = TrainingArguments(
        output_dir=str(Path(args.results_dir) / f"trainer-{args.variant}-{args.precision}"), report_to="none",
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=8 if reference else args.eval_batch_size,
        learning_rate=args.learning_rate, weight_decay=0.01, num_train_epochs=args.epochs, lr_scheduler_type="linear",
        eval_strategy="no", save_strategy="no", logging_steps=50, seed=42,
        use_cpu=not torch.cuda.is_available(),  # the GPU when there is one, as train.py uses it
        bf16=args.precision == "bf16", dataloader_num_workers=0, torch_compile=args.trainer_compile,
        **({} if reference else {"train_sampling_strategy": "group_by_length"}),
    )

    trainer = Trainer(model=model, args=training_args, train_dataset=train_tokens, eval_dataset=eval_tokens,
                      data_collator=None if reference else DataCollatorWithPadding(
                          tokenizer, pad_to_multiple_of=args.pad_to_multiple_of),
                      compute_metrics=lambda prediction: classification_metrics(
                          prediction.label_ids, prediction.predictions.argmax(-1), names))
    lengths, train_efficiency, eval_efficiency = trainer_padding(trainer, train_tokens, eval_tokens, reference)
    before, eval_before_seconds = timed(trainer.evaluate)
    _, train_seconds = timed(trainer.train)
    after, eval_after_seconds = timed(trainer.evaluate)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    peak_gpu_gib = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None  # before the matmuls
    # MFU as train.py counts it: FLOPs on the real tokens of every epoch, against the same measured peak.
    train_mfu = model_flops_utilization(training_flop_rates(model), args.epochs * sum(lengths),
                                        args.epochs * sum(n * n for n in lengths), train_seconds,
                                        measure_peak_tflops(device))
    return {"tokenize_s": tokenize_seconds, "eval_before_s": eval_before_seconds, "train_s": train_seconds,
            "eval_after_s": eval_after_seconds, "train_padding_efficiency": train_efficiency,
            "eval_padding_efficiency": eval_efficiency, "accuracy_before": before["eval_accuracy"],
            "accuracy_after": after["eval_accuracy"], "train_rows": len(train_tokens), "train_mfu": train_mfu,
            "peak_gpu_gib": peak_gpu_gib}


def run_loop(args, precision: str) -> dict:
    """(c): train.py in a child process; its metrics.json has the phase timings."""
    out = Path(args.results_dir) / f"loop-{precision}"
    command = [sys.executable, str(ROOT / "train.py"), "--model_name_or_path", args.model, "--dataset_name",
               args.dataset, "--train_samples", str(args.train_samples), "--eval_samples", str(args.eval_samples),
               "--num_train_epochs", str(args.epochs), "--per_device_train_batch_size", str(args.batch_size),
               "--per_device_eval_batch_size", str(args.eval_batch_size), "--learning_rate", str(args.learning_rate),
               "--max_length", "512", "--mixed_precision", {"fp32": "no", "bf16": "bf16"}[precision],
               "--output_dir", str(out), "--overwrite_output_dir", "--logging_steps", "25"]
    peak = run_measured(command)
    metrics = json.loads((out / "metrics.json").read_text())
    epoch_evals = sum(e["seconds"] for e in metrics["evaluations"])  # per-epoch evaluations: the last is "after"
    return {"tokenize_s": metrics["speed"]["tokenize_seconds"], "eval_before_s": metrics["before"]["seconds"],
            "train_s": metrics["speed"]["train_seconds"], "eval_after_s": epoch_evals,
            "train_padding_efficiency": metrics["speed"]["train_padding_efficiency"],
            "eval_padding_efficiency": metrics["speed"]["eval_padding_efficiency"],
            "accuracy_before": metrics["before"]["accuracy"], "accuracy_after": metrics["after"]["accuracy"]}, peak


def run_measured(command: list) -> float:
    """Run a child process to the end; its own peak resident memory in GiB."""
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"benchmark child failed: {' '.join(command)}")
    return usage.ru_maxrss / 2**20  # KiB on Linux


def child(args, variant: str, precision: str) -> dict:
    """Run one variant in a fresh process; add its wall time and peak memory."""
    start = time.perf_counter()
    if variant == "loop":
        result, peak = run_loop(args, precision)
    else:
        peak = run_measured([sys.executable, __file__, *sys.argv[1:], "--variant", variant, "--precision", precision])
        result = json.loads((Path(args.results_dir) / f"trainer-{variant}-{precision}.json").read_text())
    result["wall_s"] = time.perf_counter() - start
    result["peak_rss_gib"] = peak
    return result


def table(rows: dict, args) -> str:
    n_train, n_eval = args.train_samples * args.epochs, args.eval_samples
    lines = ["| variant | tokenize s | eval samples/s | train samples/s | padding eff. train / eval | end-to-end s "
             "| peak RSS GiB | accuracy after |", "|---|---|---|---|---|---|---|---|"]
    derived = {}
    for name, r in rows.items():
        eval_speed = 2 * n_eval / (r["eval_before_s"] + r["eval_after_s"])
        train_speed = n_train / r["train_s"]
        end_to_end = r["tokenize_s"] + r["eval_before_s"] + r["train_s"] + r["eval_after_s"]
        derived[name] = (eval_speed, train_speed, end_to_end)
        lines.append(f"| {name} | {r['tokenize_s']:.1f} | {eval_speed:.1f} | {train_speed:.2f} | "
                     f"{r['train_padding_efficiency']:.2f} / {r['eval_padding_efficiency']:.2f} | {end_to_end:.0f} | "
                     f"{r['peak_rss_gib']:.2f} | {r['accuracy_after']:.4f} |")
    for precision in args.precisions.split(","):
        c = derived.get(f"(c) loop {precision}")
        for other in ("(a) Trainer reference fp32", f"(b) Trainer best {precision}"):
            if c and other in derived:
                o = derived[other]
                lines.append(f"\n(c) {precision} vs {other}: eval x{c[0] / o[0]:.2f}, train x{c[1] / o[1]:.2f}, "
                             f"end-to-end x{o[2] / c[2]:.2f}")
    return "\n".join(lines)


def main(args) -> None:
    Path(args.results_dir).mkdir(parents=True, exist_ok=True)
    if args.variant:  # inside a child process
        result = run_trainer(args)
        (Path(args.results_dir) / f"trainer-{args.variant}-{args.precision}.json").write_text(json.dumps(result))
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows = {}
    # Peak RSS of children only grows, so run the variants from the expected smallest footprint to the largest.
    for precision in args.precisions.split(","):
        rows[f"(c) loop {precision}"] = child(args, "loop", precision)
        rows[f"(b) Trainer best {precision}"] = child(args, "best", precision)
    rows["(a) Trainer reference fp32"] = child(args, "reference", "fp32")
    report = table(rows, args)
    print(report)
    (Path(args.results_dir) / "table.md").write_text(report + "\n")
    (Path(args.results_dir) / "results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main(parse_args())
