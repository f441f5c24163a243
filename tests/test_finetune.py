"""One real fine-tune: the pretrained MiniLM encoder learns IMDB sentiment from a few hundred rows (~15-20 s)."""

import pytest

from conftest import read_outputs, run_train


def test_minilm_learns_imdb_sentiment(minilm_dir, imdb_dir, tmp_path):
    # 288 rows x 2 epochs of 48 tokens: a third of the compute of 320 x 3 of 96, and still clearly learning. The
    # review's tail (where the verdict usually is) teaches more per token than its head; evaluated before and after
    # training only.
    run_train(["--model_name_or_path", minilm_dir, "--dataset_name", imdb_dir, "--output_dir", tmp_path,
               "--train_samples", 288, "--eval_samples", 200, "--max_length", 48, "--truncation_keep", "tail",
               "--num_train_epochs", 2, "--eval_strategy", "no", "--learning_rate", 1e-4,
               "--per_device_train_batch_size", 8, "--per_device_eval_batch_size", 32])
    metrics, _ = read_outputs(tmp_path)
    assert metrics["before"]["rows"] == metrics["after"]["rows"] == 200
    assert metrics["before"]["accuracy"] == pytest.approx(0.505, abs=0.03)  # a fresh head: chance
    # Measured (fp32, length-grouped batches) with 1 and with 2 threads alike: accuracy 0.505 before, 0.715 after;
    # train loss 0.6902, 0.5489 in epochs 1-2. Other seeds learn as much (+0.21 to +0.30 with --seed 1; 2 and
    # --subset_seed 7; 3 and 3). Allow for other thread counts and BLAS builds.
    assert metrics["after"]["accuracy"] == pytest.approx(0.715, abs=0.04)
    assert metrics["after"]["accuracy"] - metrics["before"]["accuracy"] >= 0.15
    assert [e["train_loss"] for e in metrics["epochs"]] == pytest.approx([0.690, 0.549], abs=0.03)
    # Every one of these reviews is longer than 48 tokens: the loop pads nothing (grouping on real IMDB lengths is
    # tested in test_sampling.py).
    assert metrics["speed"]["train_padding_efficiency"] == 1.0
