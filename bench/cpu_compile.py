"""Eager vs torch.compile for one training step on the CPU: the measurement behind --torch_compile's CPU default.

    python bench/cpu_compile.py --model ../shared/models/all-MiniLM-L6-v2 --out results/cpu-compile.json

MiniLM train steps (forward, backward, fused AdamW) at batch 8 and two bucket lengths, as the loop runs them with
--pad_to_multiple_of 64: the first call of each shape (compiling, for the compiled model) and the mean of 5 more.
"""

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification

LENGTHS = (128, 256)


def train_step(model, optimizer, length: int, generator: torch.Generator) -> None:
    ids = torch.randint(1000, 2000, (8, length), generator=generator)
    labels = torch.randint(0, 2, (8,), generator=generator)
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    F.cross_entropy(logits.float(), labels).backward()
    optimizer.step()
    optimizer.zero_grad()


def measure(model_dir: str, compiled: bool) -> dict:
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    if compiled:
        model.forward = torch.compile(model.forward, dynamic=True)  # as model/compiling.py does
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for length in LENGTHS:
        train_step(model, optimizer, length, generator)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(5):
        for length in LENGTHS:
            train_step(model, optimizer, length, generator)
    return {"first_calls_s": round(first, 2), "step_s": round((time.perf_counter() - start) / (5 * len(LENGTHS)), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", default="results/cpu-compile.json")
    args = parser.parse_args()
    result = {"torch": torch.__version__, "threads": torch.get_num_threads(), "lengths": LENGTHS,
              "eager": measure(args.model, False), "compiled": measure(args.model, True)}
    result["compiled_over_eager_step"] = round(result["compiled"]["step_s"] / result["eager"]["step_s"], 3)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
