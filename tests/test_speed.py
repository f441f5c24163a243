"""The speed features: length-sorted evaluation, throughput fields in log.jsonl, the profiler, the launcher's threads,
and bf16 on the CPU."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, read_outputs, run_train
from test_train import TINY, evaluate_saved, without_predictions


def test_length_sorted_eval_gives_unsorted_metrics_and_input_order_predictions(tiny_bert, small_imdb, tmp_path):
    run_train(["--model_name_or_path", tiny_bert, "--dataset_name", small_imdb, "--output_dir", tmp_path,
               "--train_samples", 32, "--eval_samples", 0, "--num_train_epochs", 1, "--learning_rate", 3e-3,
               "--max_length", 256, "--per_device_eval_batch_size", 16])
    metrics, _ = read_outputs(tmp_path)
    plain = evaluate_saved(tmp_path, small_imdb, 0, 256)  # input order, no sorting
    assert without_predictions(plain) == pytest.approx(metrics["after"], rel=1e-5)
    rows = [json.loads(line) for line in (tmp_path / "eval_predictions.jsonl").read_text().splitlines()]
    assert [r["row"] for r in rows] == list(range(101))
    assert sum(r["label"] == r["prediction"] for r in rows) / 101 == pytest.approx(metrics["after"]["accuracy"])
    assert [r["prediction"] for r in rows] == plain["predictions"]


def test_log_records_throughput_and_the_profiler_writes_a_trace(tiny_bert, small_imdb, tmp_path):
    run_train(["--model_name_or_path", tiny_bert, "--dataset_name", small_imdb, "--output_dir", tmp_path,
               "--train_samples", 0, "--eval_samples", 16, "--num_train_epochs", 1, "--max_length", 128,
               "--logging_steps", 2, "--profile_steps", 2, "--peak_tflops", 1.0])
    _, log = read_outputs(tmp_path)
    for record in log:
        assert 0.8 <= record["padding_efficiency"] <= 1.0  # 64 rows sort into few, uneven groups
        seconds = sum(record[f"time_{p}_s"] for p in ("data", "forward", "backward", "optimizer"))
        assert record["samples_per_second"] == pytest.approx(16 / seconds, rel=1e-3)  # 2 steps x 8 rows
        assert record["tokens_per_second"] > record["samples_per_second"] and 0 < record["mfu"] < 1
    trace = json.loads((tmp_path / "profile_trace.json").read_text())
    assert any(event.get("name", "").startswith("aten::") for event in trace["traceEvents"])
    table = (tmp_path / "profile_top_ops.txt").read_text()
    assert "Self CPU" in table and "aten::" in table


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 cores to see the thread fix")
def test_plain_accelerate_launch_uses_the_cores_unless_told(tiny_bert, small_imdb, tmp_path):
    def launch(extra, out):  # started at once: the two launches (seconds of imports each) run side by side
        env = os.environ | {"HF_HUB_OFFLINE": "1"}
        env.pop("OMP_NUM_THREADS", None)
        command = [sys.executable, "-m", "accelerate.commands.launch", *extra, str(ROOT / "train.py"),
                   "--model_name_or_path", str(tiny_bert), "--dataset_name", str(small_imdb), "--output_dir", str(out),
                   "--train_samples", "8", "--eval_samples", "8", "--num_train_epochs", "1", "--eval_strategy", "no",
                   "--peak_tflops", "1", *map(str, TINY)]
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def stderr_of(process):
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-3000:]
        return stderr

    untold, told = launch([], tmp_path / "a"), launch(["--num_cpu_threads_per_process", "1"], tmp_path / "b")
    try:
        threads = os.cpu_count()
        assert f"accelerate launch set OMP_NUM_THREADS=1; using {threads} threads per process" in stderr_of(untold)
        assert "threads per process" not in stderr_of(told)
    finally:
        for process in (untold, told):
            if process.poll() is None:
                process.kill()
                process.wait()


def test_bf16_on_the_cpu_trains_close_to_fp32(tiny_bert, small_imdb, tmp_path):
    common = ["--model_name_or_path", tiny_bert, "--dataset_name", small_imdb, "--train_samples", 0,
              "--eval_samples", 48, "--num_train_epochs", 1, "--learning_rate", 1e-3, *TINY]
    run_train(common + ["--output_dir", tmp_path / "fp32"])
    run_train(common + ["--output_dir", tmp_path / "bf16", "--mixed_precision", "bf16"])
    (fp32, fp32_log), (bf16, bf16_log) = read_outputs(tmp_path / "fp32"), read_outputs(tmp_path / "bf16")
    assert bf16["config"]["mixed_precision"] == "bf16"
    assert [r["loss"] for r in bf16_log] == pytest.approx([r["loss"] for r in fp32_log], abs=0.02)
    assert [r["loss"] for r in bf16_log] != [r["loss"] for r in fp32_log]  # autocast really ran
    assert bf16["after"]["loss"] == pytest.approx(fp32["after"]["loss"], abs=0.02)
