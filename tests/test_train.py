"""train.py end to end on tiny from-config models: outputs, reload, the learning-rate schedule, gradient accumulation."""

import json

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, pipeline

from conftest import read_outputs, run_train
from data import load_splits, select_subset, tokenize
from metrics import classification_metrics

TINY = ["--max_length", 64, "--logging_steps", 1]


def evaluate_saved(model_dir, dataset_dir, eval_samples, max_length):
    """Metrics of a saved model on the eval rows train.py used, computed here in one plain process."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    splits, names = load_splits(str(dataset_dir))
    rows = tokenize(select_subset(splits["eval"], eval_samples, 42), tokenizer, max_length)
    labels, logits = [], []
    for batch in DataLoader(rows, batch_size=16, collate_fn=DataCollatorWithPadding(tokenizer)):
        labels.append(batch.pop("labels"))
        with torch.no_grad():
            logits.append(model(**batch).logits)
    labels, logits = torch.cat(labels), torch.cat(logits)
    loss = torch.nn.functional.cross_entropy(logits, labels).item()
    predictions = logits.argmax(-1)
    return classification_metrics(labels, predictions, names) | {"loss": loss, "rows": len(labels),
                                                                 "predictions": predictions.tolist()}


def without_predictions(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "predictions"}


@pytest.fixture(scope="module")
def bert_run(tiny_bert, small_imdb, tmp_path_factory):
    out = tmp_path_factory.mktemp("bert_run")
    result = run_train(["--model_name_or_path", tiny_bert, "--dataset_name", small_imdb, "--output_dir", out,
                        "--train_samples", 0, "--eval_samples", 0, "--num_train_epochs", 2, "--learning_rate", 1e-3,
                        *TINY])
    return out, result


def test_outputs_are_written_and_consistent(bert_run):
    out, result = bert_run
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    metrics, log = read_outputs(out)
    assert set(metrics) >= {"before", "epochs", "after", "config"}
    assert metrics["before"]["rows"] == metrics["after"]["rows"] == 101  # every eval row once
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    last = metrics["epochs"][-1]
    assert metrics["after"] == {k: v for k, v in last.items() if k not in ("epoch", "step", "train_loss")}
    assert metrics["config"]["max_length"] == 64 and metrics["config"]["label_names"] == ["neg", "pos"]
    assert metrics["config"]["max_train_steps"] == 16 and metrics["config"]["mixed_precision"] == "no"
    assert [r["step"] for r in log] == list(range(1, 17))
    assert log[7]["epoch"] == 1.0 and log[-1]["epoch"] == 2.0
    # The epoch's train loss is the mean over its rows: every step here has 8 rows, so the mean of the step losses.
    assert last["train_loss"] == pytest.approx(sum(r["loss"] for r in log[8:]) / 8, rel=1e-5)
    # The reference's printout, before and after.
    before, after = result.stdout.split("After training:")
    assert f"Accuracy: {metrics['before']['accuracy']:.4f}" in before
    assert f"F1-Score: {metrics['after']['f1']:.4f}\nPrecision: {metrics['after']['precision']:.4f}" in after


def test_losses_are_pinned(bert_run):
    """fp32 on the CPU is deterministic: a changed loss means the math changed."""
    metrics, log = read_outputs(bert_run[0])
    assert metrics["before"]["loss"] == pytest.approx(0.693017, abs=1e-5)
    assert [r["loss"] for r in log][:4] == pytest.approx([0.692478, 0.703908, 0.696912, 0.694871], abs=1e-5)
    assert metrics["after"]["loss"] == pytest.approx(0.694912, abs=1e-5)


def test_linear_schedule_decays_to_zero_at_the_last_step(bert_run):
    _, log = read_outputs(bert_run[0])
    # No warmup: step k (1-based) of 16 runs at lr * (1 - (k - 1) / 16); the 17th would run at 0.
    assert [r["learning_rate"] for r in log] == pytest.approx([1e-3 * (1 - k / 16) for k in range(16)], rel=1e-6)


def test_saved_model_reloads_and_reproduces_after_metrics(bert_run, small_imdb):
    out, _ = bert_run
    metrics, _ = read_outputs(out)
    reloaded = without_predictions(evaluate_saved(out, small_imdb, 0, 64))
    assert reloaded == pytest.approx(metrics["after"], rel=1e-5)
    classify = pipeline("text-classification", model=str(out), truncation=True, max_length=64)
    assert {answer["label"] for answer in classify(["A wonderful film.", "Dreadful, boring, awful."])} <= {"neg", "pos"}


def test_gpt2_pads_with_eos_and_saves_a_loadable_model(tiny_gpt2, small_imdb, tmp_path):
    result = run_train(["--model_name_or_path", tiny_gpt2, "--dataset_name", small_imdb, "--output_dir", tmp_path,
                        "--train_samples", 32, "--eval_samples", 40, "--num_train_epochs", 1, *TINY])
    assert "no pad token: padding with its eos token '<|endoftext|>'" in result.stderr
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["pad_token_id"] == 50256 and saved["id2label"] == {"0": "neg", "1": "pos"}
    metrics, log = read_outputs(tmp_path)
    assert len(log) == 4 and metrics["after"]["rows"] == 40
    classify = pipeline("text-classification", model=str(tmp_path))
    answers = classify(["Great!", "A long and rather tedious evening at the cinema, sadly."], batch_size=2)
    assert {answer["label"] for answer in answers} <= {"neg", "pos"}
    reloaded = without_predictions(evaluate_saved(tmp_path, small_imdb, 40, 64))
    assert reloaded == pytest.approx(metrics["after"], rel=1e-5)


def test_gradient_accumulation_matches_a_bigger_batch(tiny_bert, small_imdb, tmp_path):
    """8 x 1 and 2 x 4 take the same optimizer steps (60 rows: the last group is short) to 1e-4."""
    common = ["--model_name_or_path", tiny_bert, "--dataset_name", small_imdb, "--train_samples", 60,
              "--eval_samples", 16, "--num_train_epochs", 1, *TINY]
    run_train(common + ["--output_dir", tmp_path / "big", "--per_device_train_batch_size", 8])
    run_train(common + ["--output_dir", tmp_path / "acc", "--per_device_train_batch_size", 2,
                        "--gradient_accumulation_steps", 4])
    (_, big), (_, acc) = read_outputs(tmp_path / "big"), read_outputs(tmp_path / "acc")
    assert len(big) == len(acc) == 8  # ceil(60 / 8): the short last group still steps
    assert [r["loss"] for r in acc] == pytest.approx([r["loss"] for r in big], abs=1e-4)
    assert [r["learning_rate"] for r in acc] == pytest.approx([r["learning_rate"] for r in big], rel=1e-6)
    big_weights, acc_weights = load_file(tmp_path / "big" / "model.safetensors"), load_file(
        tmp_path / "acc" / "model.safetensors")
    for name, tensor in big_weights.items():
        torch.testing.assert_close(acc_weights[name], tensor, atol=1e-4, rtol=0, msg=name)


def test_max_train_steps_and_warmup_ratio_shape_the_schedule(tiny_bert, small_imdb, tmp_path):
    run_train(["--model_name_or_path", tiny_bert, "--dataset_name", small_imdb, "--output_dir", tmp_path,
               "--train_samples", 0, "--eval_samples", 16, "--num_train_epochs", 3, "--max_train_steps", 10,
               "--gradient_accumulation_steps", 3, "--warmup_ratio", 0.2, *TINY])
    metrics, log = read_outputs(tmp_path)
    # 64 rows / 8 = 8 micro-batches = 3 steps per epoch (the last closes a group of 2): 10 steps end in epoch 4.
    assert [r["step"] for r in log] == list(range(1, 11)) and len(metrics["epochs"]) == 4
    assert metrics["config"]["num_warmup_steps"] == 2 and metrics["epochs"][-1]["step"] == 10
    expected = [5e-5 * s / 2 if s < 2 else 5e-5 * (10 - s) / 8 for s in range(10)]
    assert [r["learning_rate"] for r in log] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("flags, message", [
    (["--per_device_train_batch_size", 0], "--per_device_train_batch_size must be positive"),
    (["--learning_rate", -1], "--learning_rate must be positive"),
    (["--num_warmup_steps", 2, "--warmup_ratio", 0.1], "not both"),
])
def test_bad_flags_fail_before_any_output(flags, message, tmp_path):
    result = run_train(["--output_dir", tmp_path / "out", *flags], check=False)
    assert result.returncode != 0 and message in result.stderr
    assert not (tmp_path / "out").exists()


def test_bad_data_is_one_line_and_touches_no_output(tiny_bert, tmp_path):
    result = run_train(["--model_name_or_path", tiny_bert, "--dataset_name", tmp_path / "missing",
                        "--output_dir", tmp_path / "out"], check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == f"error: --dataset_name {tmp_path / 'missing'}: no such file or directory"
    assert not (tmp_path / "out").exists()


def test_a_cut_split_is_said(tiny_bert, small_imdb, tmp_path):
    """The recipe's defaults cut a user's own data set: say so, and how to keep it whole."""
    result = run_train(["--model_name_or_path", tiny_bert, "--dataset_name", small_imdb, "--output_dir", tmp_path,
                        "--train_samples", 16, "--eval_samples", 0, "--max_train_steps", 1, *TINY])
    assert "using 16 of 64 train rows; --train_samples 0 for all" in result.stderr
    assert "eval rows" not in result.stderr  # the whole eval split: nothing to say


def test_lr_scheduler_type_and_the_gradient_norm_in_the_log(tiny_bert, small_imdb, tmp_path):
    """What a Trainer user misses: a cosine schedule by name; the gradient norm (before clipping) on every log line."""
    import math

    common = ["--model_name_or_path", tiny_bert, "--dataset_name", small_imdb, "--train_samples", 0,
              "--eval_samples", 16, "--num_train_epochs", 1, "--learning_rate", 1e-3, *TINY]
    run_train(common + ["--output_dir", tmp_path / "cosine", "--lr_scheduler_type", "cosine"])
    metrics, log = read_outputs(tmp_path / "cosine")
    assert metrics["config"]["lr_scheduler_type"] == "cosine"
    # No warmup: step k (1-based) of 8 runs at lr * 0.5 * (1 + cos(pi * (k - 1) / 8)).
    assert [r["learning_rate"] for r in log] == pytest.approx(
        [1e-3 * 0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)], rel=1e-6)
    norms = [r["grad_norm"] for r in log]
    assert all(0 < norm < 100 for norm in norms)
    # Without clipping the norms are still logged, and the first step (same weights, same batch) has the same norm.
    run_train(common + ["--output_dir", tmp_path / "unclipped", "--lr_scheduler_type", "cosine", "--max_grad_norm", 0])
    _, unclipped = read_outputs(tmp_path / "unclipped")
    assert unclipped[0]["grad_norm"] == pytest.approx(norms[0], rel=1e-6) and len(unclipped) == 8


def test_validation_split_percentage_trains_on_a_single_file(tiny_bert, small_imdb, tmp_path):
    import pandas as pd

    pd.read_parquet(small_imdb / "train.parquet").to_csv(tmp_path / "reviews.csv", index=False)
    result = run_train(["--model_name_or_path", tiny_bert, "--dataset_name", tmp_path / "reviews.csv", "--output_dir",
                        tmp_path / "out", "--validation_split_percentage", 25, "--train_samples", 0, "--eval_samples",
                        0, "--max_train_steps", 1, *TINY])
    assert "eval split: 16 rows (25%) held out of the 64 train rows (seed 42); training on the other 48" in result.stderr
    metrics, _ = read_outputs(tmp_path / "out")
    assert (metrics["config"]["train_rows"], metrics["config"]["eval_rows"]) == (48, 16)
    bad = run_train(["--validation_split_percentage", 100], check=False)
    assert bad.returncode == 2 and "--validation_split_percentage must be between 1 and 99, got 100" in bad.stderr
