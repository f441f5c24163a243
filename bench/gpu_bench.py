"""The GPU speed benchmark, one run: the Trainer (a, b) against this loop (c) on bert-base from config, IMDB 2,000 train /
1,000 eval rows, 1 epoch, batch 8; (c) on the full seed job (5,000 / 5,000 rows, 3 epochs, evaluation before and
after every epoch); MiniLM's accuracy after 2,000 / 1,000 rows in bf16 (the defaults) against fp32 eager; and where
bf16's time went (one train step at a repeated shape against new shapes, cuDNN attention on and off).

    bash bench/gpu_bench.sh                                        # on the GPU machine (see that file)
    python bench/gpu_bench.py --models /tmp/models --data DIR --out DIR --dry_run   # the CPU: every step, tiny

Writes gpu-bench.json ({"device", "versions", "rows": [{"variant", "job", "end_to_end_s", "train_samples_per_s",
"eval_samples_per_s", "train_mfu", "compile_s", "padding_efficiency", "peak_gpu_gib", "accuracy_after", ...}],
"bf16_steps"}) and gpu-bench.md after every row, the most wanted rows first (--rows picks and orders them), so a call
stopped at its time limit keeps what it measured. end_to_end_s: the process's start to its exit, metrics.json
written, compiling included. The Trainer's compile time is inside its training time (null here).
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import describe_machine, run_logged, scaled_rows  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", required=True, help="a folder with bert-base/ and minilm/ (gpu-kit's make_models.py)")
    parser.add_argument("--data", required=True, help="an IMDB folder with train.parquet and test.parquet")
    parser.add_argument("--out", required=True, help="gpu-bench.json, gpu-bench.md and runs.log: rewritten after "
                                                     "every row, so a run stopped at a time limit keeps its rows")
    parser.add_argument("--work", default=None, help="the runs' output dirs (default: OUT/runs)")
    parser.add_argument("--rows", default=",".join(ROWS), help="which rows, in this order (default: all, the most "
                                                               "wanted first)")
    parser.add_argument("--dry_run", action="store_true", help="the CPU: 1%% of the rows, fp32, nothing compiled")
    parser.add_argument("--diagnose_only", action="store_true", help=argparse.SUPPRESS)  # internal: the bf16 steps
    return parser.parse_args(argv)


class RowFailed(Exception):
    """A row's command failed: recorded in the table and the JSON, and the next row runs."""


class Bench:
    def __init__(self, args):
        self.args, self.out = args, Path(args.out)
        self.work = Path(args.work) if args.work else self.out / "runs"
        self.log = self.out / "runs.log"
        self.scale = 0.01 if args.dry_run else 1.0
        self.bf16 = "no" if args.dry_run else "bf16"  # an AVX2 CPU runs bf16 ~50x slower than fp32

    def rows(self, n: int) -> int:
        return scaled_rows(n, self.scale)

    def run(self, command: list) -> float:
        """A child process to its end, output appended to runs.log; its wall seconds."""
        code, seconds = run_logged(command, self.log, timeout=600)
        if code != 0:
            raise RowFailed(f"exit code {code}: {' '.join(map(str, command))} (its output: runs.log)")
        return seconds

    def loop(self, label: str, job: str, model: str, *flags) -> dict:
        """(c): train.py as a user runs it; the row from its metrics.json."""
        train, evaluate, epochs = (5000, 5000, 3) if job == "seed" else (2000, 1000, 1)
        out = self.work / label.replace(" ", "_")
        flags = [*flags, *(["--no-torch_compile"] if self.args.dry_run else [])]
        wall = self.run([sys.executable, "train.py", "--model_name_or_path", Path(self.args.models) / model,
                         "--dataset_name", self.args.data, "--train_samples", self.rows(train), "--eval_samples",
                         self.rows(evaluate), "--num_train_epochs", epochs, "--output_dir", out,
                         "--overwrite_output_dir", "--logging_steps", 50, *flags])
        metrics = json.loads((out / "metrics.json").read_text())
        speed, evaluations = metrics["speed"], [metrics["before"], *metrics["evaluations"]]
        return {"variant": "c", "job": job, "label": label, "end_to_end_s": wall,
                "train_samples_per_s": speed["train_samples_per_second"],
                "eval_samples_per_s": sum(e["rows"] for e in evaluations) / sum(e["seconds"] for e in evaluations),
                "train_mfu": speed["train_mfu"], "compile_s": speed["compile_seconds"],
                "padding_efficiency": speed["train_padding_efficiency"], "peak_gpu_gib": speed["peak_gpu_gib"],
                "accuracy_after": metrics["after"]["accuracy"], "peak_tflops": speed["peak_tflops"],
                "train_seconds": speed["train_seconds"], "torch_compile": metrics["config"]["torch_compile"],
                "pad_to_multiple_of": metrics["config"]["pad_to_multiple_of"]}

    def trainer(self, label: str, variant: str, precision: str, *flags) -> dict:
        """(a) or (b): bench/trainer_vs_loop.py's Trainer in a child process, 2,000 / 1,000 rows."""
        results = self.work / label.replace(" ", "_")
        train, evaluate = self.rows(2000), self.rows(1000)
        wall = self.run([sys.executable, "bench/trainer_vs_loop.py", "--model", Path(self.args.models) / "bert-base",
                         "--dataset", self.args.data, "--train_samples", train, "--eval_samples", evaluate,
                         "--results_dir", results, "--variant", {"a": "reference", "b": "best"}[variant],
                         "--precision", precision, *flags])
        r = json.loads((results / f"trainer-{'reference' if variant == 'a' else 'best'}-{precision}.json").read_text())
        return {"variant": variant, "job": "2k1k", "label": label, "end_to_end_s": wall,
                "train_samples_per_s": train / r["train_s"],
                "eval_samples_per_s": 2 * evaluate / (r["eval_before_s"] + r["eval_after_s"]),
                "train_mfu": r["train_mfu"], "compile_s": None, "padding_efficiency": r["train_padding_efficiency"],
                "peak_gpu_gib": r["peak_gpu_gib"], "accuracy_after": r["accuracy_after"], "train_seconds": r["train_s"]}

    def bf16_steps(self) -> dict:
        self.run([sys.executable, __file__, "--models", self.args.models, "--data", self.args.data, "--out", self.work,
                  "--diagnose_only"] + (["--dry_run"] if self.args.dry_run else []))
        return json.loads((self.work / "bf16_steps.json").read_text())


def diagnose(args) -> None:
    """bert-base bf16 train steps at batch 8, eager: 10 at one shape (after a warm-up) and 10 at new lengths, with
    cuDNN attention allowed (PyTorch's choice) and off. Seconds per step."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForSequenceClassification

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = AutoModelForSequenceClassification.from_pretrained(Path(args.models) / "bert-base").to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)

    def step(length: int) -> None:
        ids = torch.randint(1000, 2000, (8, length), device=device)
        mask = torch.ones_like(ids)
        mask[0, length // 2:] = 0  # a padding mask, as dynamic padding gives
        with torch.autocast(device.type, dtype=dtype):
            logits = model(input_ids=ids, attention_mask=mask).logits
        F.cross_entropy(logits.float(), torch.zeros(8, dtype=torch.long, device=device)).backward()
        optimizer.step()
        optimizer.zero_grad()

    def seconds_per_step(lengths) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for length in lengths:
            step(length)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / len(lengths)

    result, repeats = {}, 2 if args.dry_run else 10
    for name, cudnn in (("cudnn_sdp_on", True), ("cudnn_sdp_off", False)):
        if device.type == "cuda":
            torch.backends.cuda.enable_cudnn_sdp(cudnn)
        step(256)
        offset = 0 if cudnn else 1  # lengths neither setting has seen yet
        result[name] = {"same_shape_s": seconds_per_step([256] * repeats),
                        "new_shapes_s": seconds_per_step([200 + 2 * i + offset for i in range(repeats)])}
    (Path(args.out) / "bf16_steps.json").write_text(json.dumps(result, indent=1))


def table(device: str, versions: dict, rows: list[dict], bf16_steps: dict, failed: list[dict]) -> str:
    def cell(value, digits: str = ".1f") -> str:
        return "" if value is None else format(value, digits)

    lines = [f"GPU benchmark on {device} ({', '.join(f'{k} {v}' for k, v in versions.items())}); bert-base from config "
             "unless said, batch 8", "",
             "| variant | job | train samples/s | eval samples/s | end to end s | compile s | train MFU | padding eff. "
             "| peak GPU GiB | accuracy after |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| ({r['variant']}) {r['label']} | {r['job']} | {cell(r['train_samples_per_s'])} | "
                     f"{cell(r['eval_samples_per_s'])} | {cell(r['end_to_end_s'])} | {cell(r['compile_s'])} | "
                     f"{cell(r['train_mfu'], '.1%')} | {cell(r['padding_efficiency'], '.2f')} | "
                     f"{cell(r['peak_gpu_gib'], '.2f')} | {cell(r['accuracy_after'], '.4f')} |")
    if bf16_steps:
        lines += ["", "bf16 train step, eager, bert-base 8 x ~256 tokens (s): " + "; ".join(
            f"{name}: same shape {v['same_shape_s']:.4f}, new shapes {v['new_shapes_s']:.4f}" for name, v in
            bf16_steps.items())]
    lines += [f"\nFailed: {f['row']}: {f['error']}" for f in failed]
    return "\n".join(lines) + "\n"


def row_steps(bench: Bench, dry_run: bool) -> dict:
    """Every row the benchmark can run, by name; each returns one row of the table."""
    bf16 = bench.bf16
    return {
        "c_compiled": lambda: bench.loop("loop bf16 (defaults: compiled)", "2k1k", "bert-base", "--mixed_precision",
                                         bf16),
        "a": lambda: bench.trainer("Trainer, the seed's recipe (pad to 512, fp32)", "a", "fp32"),
        "b_fp32": lambda: bench.trainer("Trainer, dynamic padding, group_by_length, fp32", "b", "fp32"),
        "c_seed": lambda: bench.loop("loop bf16 (defaults: compiled), seed job", "seed", "bert-base",
                                     "--mixed_precision", bf16),
        "minilm_bf16": lambda: bench.loop("MiniLM bf16 (defaults)", "2k1k", "minilm", "--mixed_precision", bf16),
        "minilm_fp32_eager": lambda: bench.loop("MiniLM fp32 eager", "2k1k", "minilm", "--mixed_precision", "no",
                                                "--no-torch_compile"),
        "c_reduce_overhead": lambda: bench.loop("loop bf16 compiled reduce-overhead", "2k1k", "bert-base",
                                                "--mixed_precision", bf16, "--torch_compile_mode", "reduce-overhead"),
        "b_compiled": lambda: bench.trainer("Trainer + torch_compile, pad_to_multiple_of 64, no cuDNN SDPA, bf16", "b",
                                            "fp32" if dry_run else "bf16", *([] if dry_run else ["--trainer_compile"]),
                                            "--pad_to_multiple_of", 64, "--no_cudnn_sdp"),
        "c_eager": lambda: bench.loop("loop eager bf16", "2k1k", "bert-base", "--mixed_precision", bf16,
                                      "--no-torch_compile"),
        "bf16_steps": bench.bf16_steps,
    }


ROWS = ["c_compiled", "a", "b_fp32", "c_seed", "minilm_bf16", "minilm_fp32_eager", "c_reduce_overhead", "b_compiled",
        "c_eager", "bf16_steps"]


def main(args) -> None:
    if args.diagnose_only:
        return diagnose(args)
    bench = Bench(args)
    for folder in (bench.out, bench.work):
        folder.mkdir(parents=True, exist_ok=True)
    versions = describe_machine()
    device = versions.pop("device")
    steps = row_steps(bench, args.dry_run)
    rows, bf16_steps, failed = [], {}, []
    for name in args.rows.split(","):
        start = time.perf_counter()
        try:
            if name == "bf16_steps":
                bf16_steps = steps[name]()
            else:
                rows.append(steps[name]())
        except RowFailed as error:
            failed.append({"row": name, "error": str(error)})
        print(f"{name}: {'failed, ' if failed and failed[-1]['row'] == name else ''}"
              f"{time.perf_counter() - start:.0f} s", flush=True)
        result = {"device": device, "versions": versions, "rows": rows, "bf16_steps": bf16_steps, "failed": failed}
        (bench.out / "gpu-bench.json").write_text(json.dumps(result, indent=1) + "\n")
        (bench.out / "gpu-bench.md").write_text(table(device, versions, rows, bf16_steps, failed))
    print(table(device, versions, rows, bf16_steps, failed))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main(parse_args())
