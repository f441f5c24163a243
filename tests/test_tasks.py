"""Sentence pairs, regression and multi-label end to end, on small cuts of GLUE MRPC (pairs, two classes), GLUE STS-B
(pairs, a score per row) and GoEmotions (a list of labels per row, 28 labels): what holds for single-label holds for
each (pinned losses, predict.py = train's "after", pipeline, exact resume, gradient accumulation = the big batch,
2 processes = 1, bf16, best model, trackers, the resume check), and bad input is one line."""

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from transformers import pipeline

import predict as predict_module
from conftest import (SHARED, ForkedTrain, finish_launch, kill_after_checkpoint, read_outputs, require,
                      run_in_process, run_train)
from metrics import task_for

GLUE_DIR = Path(os.environ.get("TEST_GLUE_DIR", SHARED / "data"))
# kind: (data set, its rows' cut: train, eval; train.py's extra flags)
KINDS = {"pairs": ("mrpc", ["--ignore_mismatched_sizes"]),
         "regression": ("stsb", ["--problem_type", "regression", "--ignore_mismatched_sizes"]),
         "multi_label": ("go_emotions", ["--ignore_mismatched_sizes", "--learning_rate", 3e-3])}
PROBLEM_TYPES = {"pairs": "single_label_classification", "regression": "regression",
                 "multi_label": "multi_label_classification"}
COMMON = ["--train_samples", 0, "--eval_samples", 0, "--num_train_epochs", 2, "--per_device_train_batch_size", 8,
          "--max_length", 64, "--logging_steps", 1, "--learning_rate", 1e-3]


def cut(name: str, out: Path, train_rows: int = 24, eval_rows: int = 15) -> Path:
    """train.parquet and validation.parquet of `train_rows` / `eval_rows` rows (15: odd, so 2 processes' last eval
    batch is uneven), in a folder named like the data set."""
    source = require(GLUE_DIR / name)
    folder = out / name
    folder.mkdir(parents=True)
    train = pd.read_parquet(source / "train.parquet").sample(n=train_rows, random_state=0).reset_index(drop=True)
    validation = pd.read_parquet(source / "validation.parquet")
    if "labels" in validation:  # GoEmotions: only eval rows whose labels the cut's train rows have
        known = {label for labels in train["labels"] for label in labels}
        validation = validation[[set(labels) <= known for labels in validation["labels"]]]
    train.to_parquet(folder / "train.parquet")
    validation.sample(n=eval_rows, random_state=0).reset_index(drop=True).to_parquet(folder / "validation.parquet")
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("glue")
    return {kind: cut(name, out) for kind, (name, _) in KINDS.items()}


def args_for(kind: str, tiny_bert, data: dict) -> list:
    return ["--model_name_or_path", tiny_bert, "--dataset_name", data[kind], *COMMON, *KINDS[kind][1]]


@pytest.fixture(scope="module")
def runs(tiny_bert, data, tmp_path_factory) -> dict:
    """Each kind trained once (fp32, one process, checkpoints every 2 steps, TensorBoard, report.png): its folder."""
    out = tmp_path_factory.mktemp("kinds")
    for kind in KINDS:
        run_train(args_for(kind, tiny_bert, data) + ["--output_dir", out / kind, "--checkpointing_steps", 2,
                                                     "--report_to", "tensorboard"], report_png=True)
    return {kind: out / kind for kind in KINDS}


# The first three step losses and the final evaluation's loss: fp32 on the CPU is deterministic.
PINNED = {"pairs": ([0.693828, 0.693290, 0.674284], 0.677438),
          "regression": ([16.350233, 3.925394, 10.037977], 8.504959),
          "multi_label": ([0.695672, 0.685552, 0.674720], 0.650439)}


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_trains_with_its_loss_and_reports_its_metrics(kind, runs):
    metrics, log = read_outputs(runs[kind])
    task = task_for(PROBLEM_TYPES[kind])
    assert metrics["config"]["problem_type"] == PROBLEM_TYPES[kind]
    assert set(metrics["after"]) >= {*task.metrics, "loss", "rows"} and metrics["after"]["rows"] == 15
    losses, after = PINNED[kind]
    assert [r["loss"] for r in log[:3]] == pytest.approx(losses, abs=1e-5)
    assert metrics["after"]["loss"] == pytest.approx(after, abs=1e-5)
    saved = json.loads((runs[kind] / "config.json").read_text())
    assert saved["problem_type"] == PROBLEM_TYPES[kind]  # pipeline() applies softmax, sigmoid or nothing by it
    assert saved["threshold"] == (0.5 if kind == "multi_label" else None)
    predictions = [json.loads(line) for line in (runs[kind] / "eval_predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 15 and [p["row"] for p in predictions] == list(range(15))
    report = (runs[kind] / "report.md").read_text()
    assert all(f" {metric} " in report for metric in task.metrics)


def test_pairs_are_detected_and_tokenized_as_the_tokenizers_pair(runs, data, minilm_dir):
    from transformers import AutoTokenizer

    from data import load_splits, tokenize

    metrics, _ = read_outputs(runs["pairs"])
    assert (metrics["config"]["text_column"], metrics["config"]["text_pair_column"]) == ("sentence1", "sentence2")
    splits, _ = load_splits(str(data["pairs"]))
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    rows = tokenize(splits["eval"], tokenizer, 24)
    expected = tokenizer(splits["eval"]["text"][:], splits["eval"]["text_pair"][:], truncation=True, max_length=24)
    assert rows["input_ids"][:] == expected["input_ids"] and rows["token_type_ids"][:] == expected["token_type_ids"]
    first = rows["input_ids"][0]
    assert first[0] == tokenizer.cls_token_id and first.count(tokenizer.sep_token_id) == 2  # [CLS] a [SEP] b [SEP]
    assert max(len(ids) for ids in rows["input_ids"][:]) == 24  # longest first: both texts cut


def test_gpt2_pairs_get_a_separator_that_pipeline_keeps(tiny_gpt2, data, tmp_path):
    from transformers import AutoTokenizer

    out = tmp_path / "gpt2_pairs"
    result = run_train(["--model_name_or_path", tiny_gpt2, "--dataset_name", data["pairs"], "--output_dir", out,
                        "--train_samples", 8, "--eval_samples", 4, "--num_train_epochs", 1, "--max_length", 64])
    assert "'<|endoftext|>' now separates them" in result.stderr
    tokenizer = AutoTokenizer.from_pretrained(out)  # the saved template: what predict.py and pipeline() use
    ids = tokenizer("good film", "bad film")["input_ids"]
    assert ids == tokenizer("good film")["input_ids"] + [tokenizer.eos_token_id] + tokenizer("bad film")["input_ids"]
    assert tokenizer("good film")["input_ids"] == tokenizer("good film", add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("kind", list(KINDS))
def test_predict_and_pipeline_give_the_runs_after(kind, runs, data, tmp_path):
    metrics, _ = read_outputs(runs[kind])
    task = task_for(PROBLEM_TYPES[kind])
    output = tmp_path / "predictions.jsonl"
    result = run_in_process(predict_module, [runs[kind], "--input_file", data[kind] / "validation.parquet",
                                             "--evaluate", "--output_file", output])
    assert result.returncode == 0, result.stderr
    assert result.stdout == task.format_report(metrics["after"]) + "\n"
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    frame = pd.read_parquet(data[kind] / "validation.parquet")
    classify = pipeline("text-classification", model=str(runs[kind]), top_k=None)
    inputs = [{"text": a, "text_pair": b} for a, b in zip(frame["sentence1"], frame["sentence2"])] if kind != \
        "multi_label" else list(frame["text"])
    answers = classify(inputs[:3])
    for row, answer in zip(rows, answers):
        scores = {a["label"]: a["score"] for a in answer}
        if kind == "regression":
            assert scores["label"] == pytest.approx(row["score"], abs=1e-5) and "true_score" in row
        else:
            assert scores == pytest.approx(row["probabilities"], abs=1e-5)
    if kind == "multi_label":  # the labels at or above the saved threshold; the cut's ids (not 0..n-1) name them
        assert rows[0]["labels"] == [n for n, p in rows[0]["probabilities"].items() if p >= 0.5]
        assert rows[0]["true_labels"] == [str(i) for i in frame["labels"][0]]


def test_a_pair_model_asks_predict_for_pairs(runs):
    result = run_in_process(predict_module, [runs["pairs"], "--text", "one text alone"])
    assert result.returncode == 1
    assert result.stderr.strip().endswith("was trained on sentence pairs (sentence1, sentence2): give each --text a "
                                          "--text_pair, or an --input_file with both columns")
    paired = run_in_process(predict_module, [runs["pairs"], "--text", "He left.", "--text_pair", "He went away."])
    assert json.loads(paired.stdout)["label"] in ("LABEL_0", "LABEL_1")


def comparable(folder: Path) -> tuple:
    metrics, log = read_outputs(folder)
    return metrics["after"], [(r["step"], r["loss"], r["learning_rate"]) for r in log]


@pytest.mark.parametrize("kind", list(KINDS))
def test_resuming_from_a_checkpoint_ends_as_the_uninterrupted_run(kind, runs, tiny_bert, data, tmp_path):
    """Every step's loss, the final metrics and the weights: bit for bit (the resumed run starts at step 2 of 6)."""
    resumed = tmp_path / "resumed"
    run_train(args_for(kind, tiny_bert, data) + ["--output_dir", resumed, "--resume_from_checkpoint",
                                                 runs[kind] / "checkpoints" / "step_2"])
    after, log = comparable(resumed)
    full_after, full_log = comparable(runs[kind])
    assert after == full_after and log == full_log[2:]
    weights, full = load_file(resumed / "model.safetensors"), load_file(runs[kind] / "model.safetensors")
    assert all(torch.equal(weights[name], full[name]) for name in full)


def test_a_multi_label_run_killed_and_resumed_ends_as_the_uninterrupted_run(runs, tiny_bert, data, tmp_path):
    """SIGKILL once its step_4 checkpoint is complete (of 6 steps), then --resume_from_checkpoint latest."""
    args = args_for("multi_label", tiny_bert, data) + ["--checkpointing_steps", 2]
    killed_at = kill_after_checkpoint(args, tmp_path / "b", "step_4")
    assert killed_at[-1] in ("step_4", "step_6")
    run_train(args + ["--output_dir", tmp_path / "b", "--resume_from_checkpoint", "latest"])
    assert comparable(tmp_path / "b") == comparable(runs["multi_label"])
    weights, full = load_file(tmp_path / "b" / "model.safetensors"), load_file(runs["multi_label"] / "model.safetensors")
    assert all(torch.equal(weights[name], full[name]) for name in full)


@pytest.mark.parametrize("kind", list(KINDS))
def test_gradient_accumulation_and_buckets_give_the_big_batchs_steps(kind, runs, tiny_bert, data, tmp_path):
    """4 rows x 2 accumulated, padded to multiples of 16, = 8 rows padded to the longest: the loss averages over the
    step's rows (multi-label: over every row and label), whatever the micro-batches."""
    run_train(args_for(kind, tiny_bert, data) + ["--output_dir", tmp_path / "ga", "--per_device_train_batch_size", 4,
                                                 "--gradient_accumulation_steps", 2, "--pad_to_multiple_of", 16])
    (metrics, log), (full, full_log) = read_outputs(tmp_path / "ga"), read_outputs(runs[kind])
    assert [r["loss"] for r in log] == pytest.approx([r["loss"] for r in full_log], abs=2e-5)
    assert metrics["after"]["loss"] == pytest.approx(full["after"]["loss"], abs=2e-5)


@pytest.mark.parametrize("kind", ["regression", "multi_label"])
def test_bf16_follows_fp32(kind, runs, tiny_bert, data, tmp_path):
    run_train(args_for(kind, tiny_bert, data) + ["--output_dir", tmp_path / "bf16", "--mixed_precision", "bf16",
                                                 "--num_train_epochs", 1])
    (metrics, log), (_, full_log) = read_outputs(tmp_path / "bf16"), read_outputs(runs[kind])
    assert metrics["config"]["mixed_precision"] == "bf16"
    scale = 1.0 if kind == "regression" else 0.05  # squared errors of scores 0..5, or BCE near 0.69
    assert [r["loss"] for r in log] == pytest.approx([r["loss"] for r in full_log[:3]], abs=0.2 * scale)


def test_best_model_by_an_error_is_the_lowest(runs, tiny_bert, data, tmp_path):
    """mse: lower is better; the final model is the best evaluation's."""
    run_train(args_for("regression", tiny_bert, data) + ["--output_dir", tmp_path / "best", "--eval_strategy", "steps",
                                                         "--eval_steps", 1, "--metric_for_best_model", "mse",
                                                         "--load_best_model_at_end"])
    metrics, _ = read_outputs(tmp_path / "best")
    errors = [e["mse"] for e in metrics["evaluations"]]
    assert metrics["best"]["value"] == min(errors) and metrics["after"]["mse"] == min(errors)


def test_early_stopping_on_a_multi_label_metric(tiny_bert, data, tmp_path):
    run_train(args_for("multi_label", tiny_bert, data) + ["--output_dir", tmp_path / "early", "--eval_strategy",
                                                          "steps", "--eval_steps", 1, "--early_stopping_patience", 1,
                                                          "--metric_for_best_model", "subset_accuracy",
                                                          "--num_train_epochs", 4])
    metrics, _ = read_outputs(tmp_path / "early")
    values = [e["subset_accuracy"] for e in metrics["evaluations"]]
    assert metrics["stopped_early"] and len(values) < 12 and values[-1] <= max(values[:-1])


def test_trackers_get_each_kinds_metrics(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for kind, metric in (("regression", "pearson"), ("multi_label", "micro_f1")):
        metrics, _ = read_outputs(runs[kind])
        events = EventAccumulator(str(runs[kind] / "tensorboard" / "text-classification")).Reload()
        values = [(e.step, e.value) for e in events.Scalars(f"eval/{metric}")]
        expected = [(0, metrics["before"][metric])] + [(e["step"], e[metric]) for e in metrics["evaluations"]]
        assert values == [(step, pytest.approx(value, rel=1e-6)) for step, value in expected]


def test_resume_refuses_another_threshold_or_problem_type(runs, tiny_bert, data, tmp_path):
    checkpoint = runs["multi_label"] / "checkpoints" / "step_2"
    result = run_train(args_for("multi_label", tiny_bert, data) + ["--output_dir", tmp_path / "r", "--threshold", 0.3,
                                                                   "--resume_from_checkpoint", checkpoint], check=False)
    assert result.returncode == 1 and "threshold: 0.5 -> 0.3" in result.stderr.strip().splitlines()[-1]


def test_compare_takes_regression_predictions(runs, data, tmp_path):
    from metrics.compare import compare

    output = tmp_path / "p.jsonl"
    run_in_process(predict_module, [runs["regression"], "--input_file", data["regression"] / "validation.parquet",
                                    "--evaluate", "--output_file", output])
    kind, result = compare(str(output), str(output))
    assert kind == "regression" and result["difference"] == 0 and result["p_value"] == 1.0


# ---- Detection and bad input: one line, before anything is written ----

def write(folder: Path, train: list[dict], validation: list[dict], suffix: str = ".jsonl") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", train), ("validation", validation)):
        frame = pd.DataFrame(rows)
        if suffix == ".jsonl":
            frame.to_json(folder / f"train{suffix}" if split == "train" else folder / f"validation{suffix}",
                          orient="records", lines=True)
        else:
            frame.to_parquet(folder / f"{split}{suffix}")
    return folder


def test_list_labels_and_label_columns_are_multi_hot(tmp_path):
    from data import load_splits

    listed = write(tmp_path / "listed", [{"text": "a", "labels": ["joy", "fear"]}, {"text": "b", "labels": []}],
                   [{"text": "c", "labels": ["fear"]}], ".parquet")
    splits, names = load_splits(str(listed))
    assert splits.problem_type == "multi_label_classification" and names == ["fear", "joy"]
    assert splits["train"]["label"][:] == [[1.0, 1.0], [0.0, 0.0]]  # no label set: all zeros, a valid row
    columns = write(tmp_path / "columns", [{"text": "a", "anger": 1, "joy": 0}, {"text": "b", "anger": 0, "joy": 0}],
                    [{"text": "c", "anger": 0, "joy": 1}])
    splits, names = load_splits(str(columns), label_columns=("anger", "joy"))
    assert splits.problem_type == "multi_label_classification" and names == ["anger", "joy"]
    assert splits["eval"]["label"][:] == [[0.0, 1.0]] and splits.columns["label"] == ["anger", "joy"]


def write_csv(folder: Path, train: list[tuple], validation: list[tuple]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", train), ("validation", validation)):
        pd.DataFrame(rows, columns=["text", "labels"]).to_csv(folder / f"{split}.csv", index=False)
    return folder


BAD = {
    "mixed list and single labels": (
        lambda d: write(d, [{"text": "a", "labels": [1, 2]}, {"text": "b", "labels": 3}], [{"text": "c", "labels": [1]}]),
        [], "{data}/train.jsonl: row 1 (0-based) has label 3 but row 0 has [1, 2]; give every row of column 'labels' a "
            "list of labels (multi-label) or every row one label"),
    "a listed label no train row has": (
        lambda d: write(d, [{"text": "a", "labels": [1]}], [{"text": "c", "labels": [1, 7]}], ".parquet"),
        [], "{data}/validation.parquet: row 0 (0-based) has label 7, which no train row has (train labels: 1); fix or "
            "remove that row"),
    "a score that is not a number": (
        lambda d: write(d, [{"text": "a", "label": 1.5}, {"text": "b", "label": "high"}], [{"text": "c", "label": 2.0}]),
        ["--problem_type", "regression"], "{data}/train.jsonl: row 1 (0-based) has label 'high', not a number; "
                                          "--problem_type regression needs a number in every row"),
    "a missing label column": (
        lambda d: write(d, [{"text": "a", "anger": 1}], [{"text": "c", "anger": 0}]),
        ["--label_column", "anger", "joy"], "{data}: no column 'joy' (--label_column); columns are ['text', 'anger']"),
    "an empty second text": (
        lambda d: write(d, [{"sentence1": "a", "sentence2": "b", "label": 0}, {"sentence1": "a", "sentence2": " ",
                                                                                "label": 1}],
                        [{"sentence1": "c", "sentence2": "d", "label": 1}]),
        [], "{data}/train.jsonl: row 1 (0-based) has an empty text ' ' in column 'sentence2'; fill or remove that row"),
    "a label column that is not 0/1": (
        lambda d: write(d, [{"text": "a", "anger": 1, "joy": 2}], [{"text": "c", "anger": 0, "joy": 1}]),
        ["--label_column", "anger", "joy"], "{data}/train.jsonl: row 0 (0-based) has 2 in label column 'joy'; each "
                                            "label column holds 0 or 1 (multi-label, one column per label)"),
    "tail truncation of pairs": (
        lambda d: write(d, [{"sentence1": "a", "sentence2": "b", "label": 0}], [{"sentence1": "c", "sentence2": "d",
                                                                                 "label": 0}]),
        ["--truncation_keep", "tail"], "--truncation_keep tail: sentence pairs are truncated longest first, as the "
                                       "tokenizer does it; pass --truncation_keep head (tail and head_tail apply to "
                                       "one text)"),
    "a threshold for single-label data": (
        lambda d: write(d, [{"text": "a", "label": 0}, {"text": "b", "label": 1}], [{"text": "c", "label": 0}]),
        ["--threshold", 0.3], "--threshold applies to multi-label data; this is single_label_classification: drop "
                              "--threshold (or pass --problem_type multi_label_classification for one 0/1 column per "
                              "label)"),
    "a list written as text in a CSV": (
        lambda d: write_csv(d, [("a", "[1, 2]"), ("b", "[3]")], [("c", "[1]")]),
        [], "{data}/train.csv: label '[1, 2]' is a list written as text (CSV and TSV cells hold no lists); save the data "
            "as JSONL or parquet, or give one 0/1 column per label (--label_column NAME ...)"),
    "list labels in train, one label in eval": (
        lambda d: write(d, [{"text": "a", "labels": [1, 2]}], [{"text": "c", "labels": 1}], ".parquet"),
        [], "{data}/validation.parquet: column 'labels' does not hold a list of labels per row as the train split "
            "does; give both splits the same kind of label"),
    "a metric of another kind": (
        lambda d: write(d, [{"text": "a", "label": 0.5}], [{"text": "c", "label": 2.0}]),
        ["--problem_type", "regression", "--metric_for_best_model", "accuracy"],
        "--metric_for_best_model accuracy: not a regression metric; choose one of pearson, spearman, mse, mae, loss"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_before_any_output(case, tiny_bert, tmp_path):
    make, flags, message = BAD[case]
    folder = make(tmp_path / "data")
    result = run_train(["--model_name_or_path", tiny_bert, "--dataset_name", folder, "--output_dir", tmp_path / "out",
                        "--ignore_mismatched_sizes", *flags], check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == "error: " + message.format(data=folder)
    assert not (tmp_path / "out").exists()


def test_a_gpt2_pair_needs_room_for_the_second_text(tiny_gpt2, data, tmp_path):
    result = run_train(["--model_name_or_path", tiny_gpt2, "--dataset_name", data["pairs"], "--output_dir",
                        tmp_path / "out", "--max_length", 2], check=False)
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --max_length 2 leaves no room for the second text: the tokenizer's pair template adds 1 special token(s); "
        "pass --max_length 3 or more")
    assert not (tmp_path / "out").exists()


def test_dataset_config_name_picks_a_local_subfolder_and_unlabelled_test_splits_are_skipped(data, tmp_path):
    """A local copy of nyu-mll/glue: one folder per configuration, each with GLUE's hidden test labels (-1)."""
    from data import load_splits

    glue = tmp_path / "glue"
    (glue / "mrpc").mkdir(parents=True)
    for split in ("train", "validation"):
        (glue / "mrpc" / f"{split}-00000-of-00001.parquet").write_bytes((data["pairs"] / f"{split}.parquet").read_bytes())
    test = pd.read_parquet(data["pairs"] / "validation.parquet").assign(label=-1)
    test.to_parquet(glue / "mrpc" / "test-00000-of-00001.parquet")
    splits, _ = load_splits(str(glue), config_name="mrpc")
    assert len(splits["eval"]) == 15 and -1 not in splits["eval"]["label"][:]
    with pytest.raises(FileNotFoundError, match=r"--dataset_config_name stsb: no folder .*glue/stsb \(folders: mrpc\)"):
        load_splits(str(glue), config_name="stsb")


def test_multi_label_metrics_count_rows_without_labels():
    task = task_for("multi_label_classification", 0.5)
    labels = np.array([[1, 0], [0, 0], [0, 1]])
    outputs = np.array([[0.9, 0.2], [0.1, 0.3], [0.6, 0.4]])  # row 2: predicts label 0, misses label 1
    metrics = task.evaluate(labels, outputs, ["a", "b"])
    assert metrics["subset_accuracy"] == pytest.approx(2 / 3)  # the empty row, predicted empty, is right
    assert metrics["micro_precision"] == 0.5 and metrics["micro_recall"] == 0.5
    assert metrics["per_label"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_hub_layouts_list_class_labels_and_a_configuration_reach_datasets(tmp_path, monkeypatch):
    """A Hub copy of GoEmotions keeps its ClassLabel names in the parquet's metadata; a Hub name with a configuration
    is loaded with it (load_dataset(name, config))."""
    import datasets

    import data.loading
    from data import load_splits

    feature = datasets.Features({"text": datasets.Value("string"),
                                 "labels": datasets.List(datasets.ClassLabel(names=["anger", "joy", "fear"]))})
    folder = tmp_path / "go_emotions"
    for split, labels in (("train", [[0, 2], []]), ("validation", [[1]])):
        datasets.Dataset.from_dict({"text": ["a", "b"][: len(labels)], "labels": labels}, features=feature).to_parquet(
            folder / f"{split}.parquet")
    splits, names = load_splits(str(folder))
    assert names == ["anger", "joy", "fear"] and splits["eval"]["label"][:] == [[0.0, 1.0, 0.0]]

    calls = []
    hub_copy = datasets.DatasetDict({split: datasets.load_dataset("parquet", data_files=str(folder / f"{split}.parquet"),
                                                                  split="train") for split in ("train", "validation")})
    monkeypatch.setattr(data.loading.datasets, "load_dataset", lambda *args: calls.append(args) or hub_copy)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    splits, _ = load_splits("google-research-datasets/go_emotions", config_name="simplified")
    assert calls == [("google-research-datasets/go_emotions", "simplified")] and len(splits["train"]) == 2


@pytest.fixture(scope="module")
def label_columns_run(tiny_bert, data, tmp_path_factory) -> tuple[Path, Path]:
    """GoEmotions' first three labels of the cut as one 0/1 column each (Jigsaw/SemEval style), trained 1 epoch."""
    folder = tmp_path_factory.mktemp("columns") / "emotions"
    folder.mkdir()
    for split in ("train", "validation"):
        frame = pd.read_parquet(data["multi_label"] / f"{split}.parquet")
        for name, label in (("admiration", 0), ("joy", 17), ("neutral", 27)):
            frame[name] = [int(label in labels) for labels in frame["labels"]]
        frame.drop(columns=["labels"]).to_parquet(folder / f"{split}.parquet")
    out = tmp_path_factory.mktemp("columns_run")
    run_train(["--model_name_or_path", tiny_bert, "--dataset_name", folder, "--output_dir", out, "--label_column",
               "admiration", "joy", "neutral", "--ignore_mismatched_sizes", *COMMON, "--num_train_epochs", 1])
    return folder, out


def test_one_column_per_label_trains_predicts_and_loads_in_pipeline(label_columns_run):
    folder, out = label_columns_run
    metrics, _ = read_outputs(out)
    assert metrics["config"]["problem_type"] == "multi_label_classification"
    assert metrics["config"]["label_names"] == ["admiration", "joy", "neutral"]
    assert set(metrics["after"]["per_label"]) == {"admiration", "joy", "neutral"}
    # predict.py finds the three label columns the model was trained on, and prints the run's after
    result = run_in_process(predict_module, [out, "--input_file", folder / "validation.parquet", "--evaluate"])
    assert result.stdout == task_for("multi_label_classification").format_report(metrics["after"]) + "\n"
    text = pd.read_parquet(folder / "validation.parquet")["text"][0]
    answer = pipeline("text-classification", model=str(out), top_k=None)([text])[0]
    probabilities = json.loads(run_in_process(predict_module, [out, "--text", text]).stdout)["probabilities"]
    assert {a["label"]: a["score"] for a in answer} == pytest.approx(probabilities, abs=1e-5)  # sigmoid, not softmax


def test_threshold_is_saved_and_predict_may_move_it(runs):
    text = "I am so happy and grateful"
    at_saved = json.loads(run_in_process(predict_module, [runs["multi_label"], "--text", text]).stdout)
    at_low = json.loads(run_in_process(predict_module, [runs["multi_label"], "--text", text, "--threshold",
                                                        0.01]).stdout)
    assert at_saved["labels"] == [n for n, p in at_saved["probabilities"].items() if p >= 0.5]
    assert at_low["labels"] == list(at_low["probabilities"]) and at_low["probabilities"] == at_saved["probabilities"]
    refused = run_in_process(predict_module, [runs["regression"], "--text", "a", "--text_pair", "b", "--threshold", 0.3])
    assert refused.returncode == 1 and refused.stderr.strip().endswith("is a regression model; --threshold applies "
                                                                       "to multi-label models")


def test_named_pair_columns_and_one_text_alone(tmp_path):
    from data import load_splits

    folder = write(tmp_path / "pairs", [{"a": "x", "b": "y", "label": 0}, {"a": "z", "b": "w", "label": 1}],
                   [{"a": "u", "b": "v", "label": 1}])
    splits, _ = load_splits(str(folder), text_column="a", text_pair_column="b")
    assert splits.columns["text_pair"] == "b" and splits["eval"]["text_pair"][:] == ["v"]
    single, _ = load_splits(str(folder), text_column="a")
    assert single.columns["text_pair"] is None and single["eval"].column_names == ["text", "label"]


def test_bool_labels_train_and_evaluate(tiny_bert, tmp_path):
    folder = write(tmp_path / "flags", [{"text": f"row {i}", "label": i % 2 == 0} for i in range(8)],
                   [{"text": f"eval {i}", "label": i % 2 == 1} for i in range(4)], ".parquet")
    run_train(["--model_name_or_path", tiny_bert, "--dataset_name", folder, "--output_dir", tmp_path / "out",
               "--num_train_epochs", 1, "--max_length", 16])
    metrics, _ = read_outputs(tmp_path / "out")
    result = run_in_process(predict_module, [tmp_path / "out", "--input_file", folder / "validation.parquet",
                                             "--evaluate"])
    assert metrics["config"]["label_names"] == ["LABEL_0", "LABEL_1"]
    assert result.returncode == 0 and result.stdout.startswith(f"Accuracy: {metrics['after']['accuracy']:.4f}")


def test_mnli_style_eval_splits_are_found(data, tmp_path):
    """MNLI's splits: validation_matched / validation_mismatched / test_matched (labels hidden: -1)."""
    from data import load_splits

    mnli = tmp_path / "mnli"
    mnli.mkdir()
    frame = pd.read_parquet(data["pairs"] / "validation.parquet")
    pd.read_parquet(data["pairs"] / "train.parquet").to_parquet(mnli / "train-00000-of-00001.parquet")
    frame.to_parquet(mnli / "validation_matched-00000-of-00001.parquet")
    frame.iloc[:3].to_parquet(mnli / "validation_mismatched-00000-of-00001.parquet")
    frame.assign(label=-1).to_parquet(mnli / "test_matched-00000-of-00001.parquet")
    splits, _ = load_splits(str(mnli))
    assert len(splits["eval"]) == 15  # validation_matched: test_matched has no labels, mismatched comes after


def test_a_config_file_gives_several_label_columns_and_a_threshold(tmp_path):
    import train

    config = tmp_path / "emotions.yaml"
    config.write_text("label_column: [anger, joy]\nproblem_type: multi_label_classification\nthreshold: 0.4\n")
    args = train.parse_args(["--config", config])
    assert (args.label_column, args.problem_type, args.threshold) == (("anger", "joy"), "multi_label_classification",
                                                                      0.4)


@pytest.fixture(scope="module")
def two_processes(tiny_bert, data, tmp_path_factory) -> dict:
    """Regression and multi-label, each as 2 processes x 4 rows, started together. Eager: what is particular to a kind
    under several processes (its gathered outputs, its loss's weighting) is outside the compiled forward, whose graph
    differs between kinds only in the head's width; DDP + torch.compile is tested in test_multiprocess.py."""
    out = tmp_path_factory.mktemp("two_processes")
    launches = [ForkedTrain(args_for(kind, tiny_bert, data) + ["--output_dir", out / kind,
                                                               "--per_device_train_batch_size", 4], 2)
                for kind in ("regression", "multi_label")]
    for process in launches:
        finish_launch(process, check=True)
    return {kind: out / kind for kind in ("regression", "multi_label")}


@pytest.mark.parametrize("kind", ["regression", "multi_label"])
def test_two_processes_take_one_processs_steps(kind, runs, two_processes):
    """= 1 process x 8 rows; 15 eval rows each counted once."""
    (two, two_log), (one, one_log) = read_outputs(two_processes[kind]), read_outputs(runs[kind])
    assert two["config"]["num_processes"] == 2 and two["before"]["rows"] == two["after"]["rows"] == 15
    assert [r["loss"] for r in two_log] == pytest.approx([r["loss"] for r in one_log], abs=1e-4)
    metric = task_for(PROBLEM_TYPES[kind]).metrics[0]
    assert two["before"][metric] == pytest.approx(one["before"][metric], abs=1e-5)
    assert two["after"]["loss"] == pytest.approx(one["after"]["loss"], abs=1e-4)
