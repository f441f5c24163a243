"""The GPU check: every path of the project run once on the GPU, one table out. Run by bench/gpu_check.sh (which sets
up the GPU kit) in one call of the device tool; each step is a real command, as a user would type it.

    python bench/gpu_check.py --models /tmp/models --data .gpu-kit/assets/imdb --out $OUT
    python bench/gpu_check.py --models /tmp/models --data ../shared/data/imdb --out /tmp/check --scale 0.02   # CPU dry run

Steps: MiniLM 2,000/1,000 rows 1 epoch in bf16 and fp32 (accuracy before/after, train and eval samples/s); a run killed
after its first checkpoint and resumed, against the uninterrupted run (final metrics, weights); predict.py on the fp32
run's eval rows against train.py's "after"; GPT-2 from config (padding with eos) with --profile_steps (CUDA kernels in
the trace); bench/trainer_vs_loop.py (its Trainer variants on the GPU too). Writes gpu_check.md and gpu_check.json.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import describe_machine, run_logged, scaled_rows  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", required=True, help="a folder with minilm/ and gpt2/ (gpu-kit's make_models.py)")
    parser.add_argument("--data", required=True, help="an IMDB folder with train.parquet and test.parquet")
    parser.add_argument("--out", required=True, help="where the table, the JSON and the runs go")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every row count (a quick CPU dry run)")
    parser.add_argument("--skip_bench", action="store_true", help="leave out bench/trainer_vs_loop.py")
    parser.add_argument("--precision", default="bf16", help="of the resume and GPT-2 runs (a CPU dry run without bf16 "
                                                            "instructions: no)")
    return parser.parse_args(argv)


def run(command: list, log: Path, timeout: int = 300) -> float:
    """Run a command to the end, its output appended to `log`; its wall seconds. A failure stops the check."""
    code, seconds = run_logged(command, log, timeout)
    if code != 0:
        raise SystemExit(f"failed ({code}): {' '.join(map(str, command))}; see {log}")
    return seconds


def train_command(args, model: str, out: Path, train: int, evaluate: int, *extra, overwrite: bool = True) -> list:
    return [sys.executable, "train.py", "--model_name_or_path", Path(args.models) / model, "--dataset_name", args.data,
            "--train_samples", scaled_rows(train, args.scale), "--eval_samples", scaled_rows(evaluate, args.scale),
            "--num_train_epochs", 1, "--output_dir", out, *(["--overwrite_output_dir"] if overwrite else []), *extra]


def eval_samples_per_second(metrics: dict) -> float:
    evaluations = [metrics["before"], *metrics["evaluations"]]
    return sum(e["rows"] for e in evaluations) / sum(e["seconds"] for e in evaluations)


def minilm(args, work: Path, log: Path, precision: str) -> dict:
    out = work / f"minilm-{precision}"
    wall = run(train_command(args, "minilm", out, 2000, 1000, "--mixed_precision", precision), log)
    metrics = json.loads((out / "metrics.json").read_text())
    train, evaluate = scaled_rows(2000, args.scale), scaled_rows(1000, args.scale)
    return {"check": f"MiniLM {train}/{evaluate} rows, 1 epoch, {precision}",
            "accuracy_before": metrics["before"]["accuracy"], "accuracy_after": metrics["after"]["accuracy"],
            "train_samples_per_s": metrics["speed"]["train_samples_per_second"],
            "eval_samples_per_s": eval_samples_per_second(metrics), "peak_tflops": metrics["speed"]["peak_tflops"],
            "mfu": metrics_mfu(out), "wall_s": wall}


def metrics_mfu(out: Path) -> float:
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return sum(r["mfu"] for r in log) / len(log)


def kill_and_resume(args, work: Path, log: Path) -> dict:
    """Run A uninterrupted; run B killed (SIGKILL) once its first checkpoint is complete, then resumed from latest."""
    from safetensors.torch import load_file

    every = min(10, max(1, scaled_rows(400, args.scale) // 16))  # 50 steps in all; a dry run's few steps: half of them
    common = ["--checkpointing_steps", every, "--mixed_precision", args.precision]
    a, b = work / "resume-a", work / "resume-b"
    run(train_command(args, "minilm", a, 400, 200, *common), log)
    command = train_command(args, "minilm", b, 400, 200, *common)
    with open(log, "a") as handle:
        process = subprocess.Popen(list(map(str, command)), cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        while not (b / "checkpoints" / f"step_{every}").is_dir() and process.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        killed = process.wait() == -signal.SIGKILL
    resume = train_command(args, "minilm", b, 400, 200, *common, "--resume_from_checkpoint", "latest", overwrite=False)
    run(resume, log)
    metrics_a, metrics_b = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    weights_a, weights_b = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    max_difference = max((weights_a[k].float() - weights_b[k].float()).abs().max().item() for k in weights_a)
    logs = [[json.loads(line)["loss"] for line in (d / "log.jsonl").read_text().splitlines()] for d in (a, b)]
    return {"check": f"kill after checkpoint step_{every}, resume (MiniLM {args.precision})", "killed_mid_run": killed,
            "after_equal": metrics_a["after"] == metrics_b["after"], "after_a": metrics_a["after"]["accuracy"],
            "after_b": metrics_b["after"]["accuracy"], "max_loss_difference": max(
                abs(x - y) for x, y in zip(*logs)), "max_weight_difference": max_difference}


def predict_agrees(args, work: Path, log: Path) -> dict:
    """predict.py on the GPU over the fp32 run's eval rows: the same accuracy and the same prediction per row."""
    from data import load_splits, select_subset

    model_dir = work / "minilm-no"
    splits, _ = load_splits(args.data)
    subset = select_subset(splits["eval"], scaled_rows(1000, args.scale), 42)
    subset.to_parquet(work / "eval_rows.parquet")
    wall = run([sys.executable, "predict.py", model_dir, "--input_file", work / "eval_rows.parquet", "--evaluate",
                "--output_file", work / "predictions.jsonl"], log)
    predicted = [json.loads(line) for line in (work / "predictions.jsonl").read_text().splitlines()]
    trained = [json.loads(line) for line in (model_dir / "eval_predictions.jsonl").read_text().splitlines()]
    names = json.loads((model_dir / "config.json").read_text())["id2label"]
    differ = sum(p["label"] != names[str(t["prediction"])] for p, t in zip(predicted, trained))
    accuracy = sum(p["label"] == p["true_label"] for p in predicted) / len(predicted)
    after = json.loads((model_dir / "metrics.json").read_text())["after"]["accuracy"]
    return {"check": "predict.py (GPU) vs train.py after, fp32 model", "predict_accuracy": accuracy,
            "train_after_accuracy": after, "rows_that_differ": differ, "rows": len(predicted), "wall_s": wall}


def gpt2_with_profile(args, work: Path, log: Path) -> dict:
    out = work / "gpt2"
    rows_needed = max(400, int(48 / args.scale))  # the profiler waits 1 step, warms up 1, records 3
    run(train_command(args, "gpt2", out, rows_needed, 200, "--mixed_precision", args.precision, "--max_length", 256,
                      "--profile_steps", 3), log)
    config = json.loads((out / "config.json").read_text())
    trace = json.loads((out / "profile_trace.json").read_text())["traceEvents"]
    kernels = sum(event.get("cat") == "kernel" for event in trace)
    top = (out / "profile_top_ops.txt").read_text()
    return {"check": "GPT-2 from config (pads with eos), --profile_steps 3", "pad_token_id": config["pad_token_id"],
            "after_rows": json.loads((out / "metrics.json").read_text())["after"]["rows"],
            "cuda_kernels_in_trace": kernels, "top_ops_sorted_by_device_time": "Self CUDA" in top}


def trainer_bench(args, work: Path, log: Path) -> dict:
    results, n = work / "bench", scaled_rows(500, args.scale)
    run([sys.executable, "bench/trainer_vs_loop.py", "--model", Path(args.models) / "minilm", "--dataset", args.data,
         "--train_samples", n, "--eval_samples", n, "--precisions", "fp32", "--results_dir", results], log, timeout=400)
    return {"check": f"bench/trainer_vs_loop.py, {n}/{n} rows fp32",
            "table": (results / "table.md").read_text()}


def table(machine: dict, results: list[dict]) -> str:
    lines = [f"GPU check on {machine['device']} (torch {machine['torch']}, CUDA {machine['cuda']}, transformers "
             f"{machine['transformers']}, accelerate {machine['accelerate']})", "",
             "| check | result |", "| --- | --- |"]
    for result in results:
        figures = "; ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                            for k, v in result.items() if k not in ("check", "table"))
        lines.append(f"| {result['check']} | {figures} |")
    bench = next((r["table"] for r in results if "table" in r), None)
    return "\n".join(lines) + (f"\n\n{bench}" if bench else "") + "\n"


def main(args) -> None:
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    log = work / "runs.log"
    machine = describe_machine()
    steps = [lambda: minilm(args, work, log, "bf16"), lambda: minilm(args, work, log, "no"),
             lambda: kill_and_resume(args, work, log), lambda: predict_agrees(args, work, log),
             lambda: gpt2_with_profile(args, work, log)]
    if not args.skip_bench:
        steps.append(lambda: trainer_bench(args, work, log))
    results = []
    for step in steps:
        start = time.perf_counter()
        results.append(step())
        print(f"{results[-1]['check']}: done in {time.perf_counter() - start:.0f} s", flush=True)
        (work / "gpu_check.json").write_text(json.dumps({"machine": machine, "results": results}, indent=1))
    report = table(machine, results)
    (work / "gpu_check.md").write_text(report)
    print(report)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main(parse_args())
