"""One real fine-tune: the pretrained MiniLM encoder learns IMDB sentiment from a few hundred rows (~12 s)."""

import pytest

from conftest import read_outputs, run_train


def test_minilm_learns_imdb_sentiment(minilm_dir, imdb_dir, tmp_path):
    # 192 rows x 2 epochs of 48 tokens at lr 2e-4: two thirds of the compute of 288 rows at 1e-4 (accuracy 0.715 after),
    # and still clearly learning. The review's tail (where the verdict usually is) teaches more per token than its
    # head; evaluated before and after training only.
    run_train(["--model_name_or_path", minilm_dir, "--dataset_name", imdb_dir, "--output_dir", tmp_path,
               "--train_samples", 192, "--eval_samples", 200, "--max_length", 48, "--truncation_keep", "tail",
               "--num_train_epochs", 2, "--eval_strategy", "no", "--learning_rate", 2e-4,
               "--per_device_train_batch_size", 8, "--per_device_eval_batch_size", 32], report_png=True)
    metrics, _ = read_outputs(tmp_path)
    assert metrics["before"]["rows"] == metrics["after"]["rows"] == 200
    assert metrics["before"]["accuracy"] == pytest.approx(0.505, abs=0.03)  # a fresh head: chance
    # Measured (fp32, length-grouped batches) with 1 and with 2 threads alike: accuracy 0.505 before, 0.745 after;
    # train loss 0.6953, 0.4621 in epochs 1-2. Other seeds learn less or as much (+0.11 with --seed 1; +0.26 with 2
    # and --subset_seed 7; +0.19 with 3 and 3). Allow for other thread counts and BLAS builds.
    assert metrics["after"]["accuracy"] == pytest.approx(0.745, abs=0.04)
    assert metrics["after"]["accuracy"] - metrics["before"]["accuracy"] >= 0.15
    assert [e["train_loss"] for e in metrics["epochs"]] == pytest.approx([0.695, 0.462], abs=0.03)
    # Every one of these reviews is longer than 48 tokens: the loop pads nothing (grouping on real IMDB lengths is
    # tested in test_sampling.py).
    assert metrics["speed"]["train_padding_efficiency"] == 1.0
