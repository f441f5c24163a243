"""LoRA against full fine-tuning, in one run: MiniLM-L6 on IMDB, 2,000 train / 1,000 eval rows (the quick start's
rows), 1 epoch, batch 8, at most 512 tokens, each variant its own train.py child process (its own peak RSS).
Full fine-tuning at the recipe's lr 5e-5; LoRA (r 8, alpha 16, peft's default modules: query and value, the head
trained in full) at lr 5e-4, since its few weights need larger steps (LoRA papers use 1e-4 to 1e-3).

    python bench/lora_vs_full.py                                  # fp32, on the CPU: ~20 minutes
    python bench/lora_vs_full.py --train_samples 64 --eval_samples 32 --max_length 64   # a smoke test

Writes results/lora-vs-full-PRECISION.{md,json}. Take it on a quiet machine.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, machine_name, write_table  # noqa: E402

VARIANTS = {"full fine-tuning": ["--learning_rate", "5e-5"],
            "LoRA r 8": ["--learning_rate", "5e-4", "--lora_r", "8"]}


def measure(name: str, extra: list, args, out: Path) -> dict:
    command = [sys.executable, str(ROOT / "train.py"), "--model_name_or_path", args.model, "--dataset_name", args.imdb,
               "--output_dir", str(out), "--train_samples", str(args.train_samples), "--eval_samples",
               str(args.eval_samples), "--num_train_epochs", "1", "--mixed_precision", args.mixed_precision,
               *(["--max_length", str(args.max_length)] if args.max_length else []), *extra]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{name} failed:\n{stderr[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    lora = re.search(r"LoRA: ([\d,]+) of ([\d,]+) parameters train", stderr)
    if lora:
        trainable, total = (int(n.replace(",", "")) for n in lora.groups())
    else:
        from transformers import AutoModelForSequenceClassification

        total = trainable = sum(p.numel() for p in AutoModelForSequenceClassification.from_pretrained(out).parameters())
    return {"variant": name, "trainable_parameters": trainable, "parameters": total,
            "train_samples_per_second": metrics["speed"]["train_samples_per_second"],
            "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2), "peak_gpu_gib": metrics["speed"]["peak_gpu_gib"],
            "accuracy_before": metrics["before"]["accuracy"], "accuracy_after": metrics["after"]["accuracy"],
            "f1_after": metrics["after"]["f1"], "runtime_seconds": metrics["runtime_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT.parent / "shared/models/all-MiniLM-L6-v2"))
    parser.add_argument("--imdb", default=str(ROOT.parent / "shared/data/imdb"))
    parser.add_argument("--train_samples", type=int, default=2000)
    parser.add_argument("--eval_samples", type=int, default=1000)
    parser.add_argument("--max_length", type=int, default=None)
    parser.add_argument("--mixed_precision", default="no", choices=["no", "bf16", "fp16"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(name, extra, args, Path(tmp) / str(i)) for i, (name, extra) in enumerate(VARIANTS.items())]
    lines = [f"MiniLM-L6, IMDB {args.train_samples:,} / {args.eval_samples:,} rows, 1 epoch, batch 8, "
             f"--mixed_precision {args.mixed_precision}, {machine_name()}; `python bench/lora_vs_full.py "
             f"{' '.join(sys.argv[1:])}`, {time.strftime('%Y-%m-%d')}", "",
             "| variant | trainable parameters | train samples/s | peak RSS GiB | accuracy before -> after | F1 after |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['variant']} | {r['trainable_parameters']:,} of {r['parameters']:,} | "
              f"{r['train_samples_per_second']} | {r['peak_rss_gib']} | {r['accuracy_before']:.4f} -> "
              f"{r['accuracy_after']:.4f} | {r['f1_after']:.4f} |" for r in rows]
    if args.train_samples == 2000 and args.eval_samples == 1000:  # the measured setting; smoke tests write nothing
        write_table(f"lora-vs-full-{args.mixed_precision}", lines, args, rows)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
