"""--gradient_checkpointing's cost and gain, in one run: a bert-base-size BERT built from BertConfig() (110M
parameters, random weights: memory and time do not depend on them) with the MiniLM tokenizer (the same 30,522-token
vocabulary), on IMDB reviews of more than 512 tokens, so every batch is 8 x 512. Each variant is its own train.py
child process (its own peak RSS: the model, AdamW's state, the activations); step time is the median of the logged
steps after the first.

    python bench/gradient_checkpointing.py                       # fp32, 5 steps each, on the CPU
    python bench/gradient_checkpointing.py --mixed_precision bf16 --steps 20     # on a GPU (peak_gpu_gib too)

Writes results/gradient-checkpointing-PRECISION-DEVICE.{md,json}. Take it on a quiet machine.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, machine_name, write_table  # noqa: E402
from bench.trainer_vs_loop import run_measured  # noqa: E402

BATCH, LENGTH = 8, 512


def prepare(folder: Path, imdb: Path, tokenizer_dir: Path, rows: int) -> tuple[Path, Path]:
    """The random bert-base-size model (saved with the tokenizer) and a train/test folder of long reviews."""
    import pandas as pd
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=tokenizer.vocab_size, num_labels=2))
    model.save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    reviews = pd.read_parquet(imdb / "train.parquet").sample(n=2000, random_state=0)  # both classes (the file is sorted)
    lengths = [len(ids) for ids in tokenizer(list(reviews["text"]))["input_ids"]]
    long = reviews[[length > LENGTH for length in lengths]].reset_index(drop=True)
    data = folder / "long_reviews"
    data.mkdir()
    long[:rows].to_parquet(data / "train.parquet")
    long[rows : rows + BATCH].to_parquet(data / "test.parquet")
    return folder / "model", data


def measure(model: Path, data: Path, out: Path, steps: int, precision: str, checkpointing: bool) -> dict:
    command = [sys.executable, str(ROOT / "train.py"), "--model_name_or_path", model, "--dataset_name", data,
               "--output_dir", out, "--train_samples", 0, "--eval_samples", 0, "--max_length", LENGTH,
               "--per_device_train_batch_size", BATCH, "--num_train_epochs", 1, "--max_train_steps", steps,
               "--logging_steps", 1, "--eval_strategy", "no", "--mixed_precision", precision]
    peak_rss = run_measured(list(map(str, command + (["--gradient_checkpointing"] if checkpointing else []))))
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    metrics = json.loads((out / "metrics.json").read_text())
    step_seconds = [BATCH / record["samples_per_second"] for record in log[1:]]
    return {"gradient_checkpointing": checkpointing, "peak_rss_gib": round(peak_rss, 2),
            "peak_gpu_gib": metrics["speed"].get("peak_gpu_gib"), "step_s": round(statistics.median(step_seconds), 3),
            "losses": [record["loss"] for record in log], "padding_efficiency": log[-1]["padding_efficiency"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--imdb", default=str(ROOT.parent / "shared/data/imdb"))
    parser.add_argument("--tokenizer", default=str(ROOT.parent / "shared/models/all-MiniLM-L6-v2"))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--mixed_precision", default="no", choices=["no", "bf16", "fp16"])
    args = parser.parse_args()
    import torch

    device = "gpu" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        model, data = prepare(Path(tmp), Path(args.imdb), Path(args.tokenizer), args.steps * BATCH)
        rows = [measure(model, data, Path(tmp) / f"run-{on}", args.steps, args.mixed_precision, on)
                for on in (False, True)]
    without, with_it = rows
    same = with_it["losses"] == without["losses"]  # (compiled on a GPU they may differ in the last bits)
    lines = [f"bert-base-size BERT (110M), batch {BATCH} x {LENGTH} tokens, --mixed_precision {args.mixed_precision}, "
             f"{args.steps} steps, {machine_name()}; `python bench/gradient_checkpointing.py {' '.join(sys.argv[1:])}`, "
             f"{time.strftime('%Y-%m-%d')}", "",
             "| --gradient_checkpointing | peak RSS GiB | peak GPU GiB | step s (median after the first) |",
             "| --- | --- | --- | --- |"]
    lines += [f"| {'on' if r['gradient_checkpointing'] else 'off'} | {r['peak_rss_gib']} | {r['peak_gpu_gib'] or '-'} "
              f"| {r['step_s']} |" for r in rows]
    ratio = with_it["step_s"] / without["step_s"]
    lines.append(f"\nsame per-step losses: {'yes' if same else 'no'}; step time x{ratio:.2f}")
    write_table(f"gradient-checkpointing-{args.mixed_precision}-{device}", lines, args, rows)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
