"""predict.py: every input form, input order kept through length-sorted batches, CSV/JSONL output, --evaluate."""

import csv
import json

import pandas as pd
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import predict as predict_module
from conftest import run_in_process, run_train
from predict import predict
from test_train import TINY

TEXTS = ["A wonderful, moving film.", "Dull.", "I did not expect to enjoy this as much as I did, but it won me over.",
         "Awful acting, awful script, awful everything; I left after an hour.", "Fine."]


@pytest.fixture(scope="module")
def trained(tiny_bert, small_imdb, tmp_path_factory):
    out = tmp_path_factory.mktemp("predict_model")
    run_train(["--model_name_or_path", tiny_bert, "--dataset_name", small_imdb, "--output_dir", out,
               "--train_samples", 32, "--eval_samples", 32, "--num_train_epochs", 1, "--learning_rate", 1e-3, *TINY])
    return out


def run_predict(args, stdin=None, check=True):
    """`python predict.py ARGS`, in this process: its stdout (or, with check=False, the whole result)."""
    result = run_in_process(predict_module, args, stdin)
    if not check:
        return result
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def one_by_one(model_dir, texts):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return torch.cat([model(**tokenizer(t, return_tensors="pt", truncation=True)).logits.softmax(-1) for t in texts])


def test_length_sorted_batches_return_input_order(trained):
    tokenizer = AutoTokenizer.from_pretrained(trained)
    model = AutoModelForSequenceClassification.from_pretrained(trained).eval()
    assert tokenizer.model_max_length == 64  # train.py saved its --max_length with the tokenizer
    batched = predict(model, tokenizer, TEXTS, batch_size=2, max_length=64)
    torch.testing.assert_close(batched, one_by_one(trained, TEXTS), atol=1e-5, rtol=0)


def test_texts_from_flags_stdin_and_txt_give_the_same_jsonl(trained, tmp_path):
    from_flags = run_predict([trained, *[arg for text in TEXTS for arg in ("--text", text)]])
    from_stdin = run_predict([trained], stdin="\n".join(TEXTS) + "\n")
    (tmp_path / "reviews.txt").write_text("\n".join(TEXTS) + "\n")
    from_txt = run_predict([trained, "--input_file", tmp_path / "reviews.txt"])
    assert from_flags == from_stdin == from_txt
    rows = [json.loads(line) for line in from_flags.splitlines()]
    expected = one_by_one(trained, TEXTS)
    assert [row["index"] for row in rows] == list(range(len(TEXTS)))
    for row, probs in zip(rows, expected.tolist()):
        assert row["probabilities"] == pytest.approx({"neg": probs[0], "pos": probs[1]}, abs=1e-5)
        assert row["label"] == ("pos" if probs[1] > probs[0] else "neg") and row["score"] == pytest.approx(max(probs))


def test_csv_in_csv_out_and_evaluate_prints_the_four_metrics(trained, tmp_path):
    frame = pd.DataFrame({"review": TEXTS, "sentiment": ["pos", "neg", "pos", "neg", "pos"]})
    frame.to_csv(tmp_path / "labelled.csv", index=False)
    stdout = run_predict([trained, "--input_file", tmp_path / "labelled.csv", "--evaluate",
                          "--output_file", tmp_path / "out.csv"])
    with open(tmp_path / "out.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["index", "label", "score", "prob_neg", "prob_pos", "true_label"]
    assert [row["true_label"] for row in rows] == list(frame.sentiment)
    predicted = [row["label"] for row in rows]
    accuracy = sum(p == t for p, t in zip(predicted, frame.sentiment)) / len(TEXTS)
    assert stdout.splitlines()[0] == f"Accuracy: {accuracy:.4f}"
    assert [line.split(":")[0] for line in stdout.splitlines()] == ["Accuracy", "F1-Score", "Precision", "Recall"]


def test_label_id_outside_the_models_labels_is_one_line(trained, tmp_path):
    pd.DataFrame({"text": ["x", "y"], "label": [1, 5]}).to_json(tmp_path / "bad.jsonl", orient="records", lines=True)
    result = run_predict([trained, "--input_file", tmp_path / "bad.jsonl", "--evaluate"], check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'bad.jsonl'}: row 1 (0-based) has label 5, outside the model's 0..1 (neg, pos)")


def test_unknown_label_name_is_one_line(trained, tmp_path):
    pd.DataFrame({"text": ["x"], "label": ["meh"]}).to_json(tmp_path / "bad.jsonl", orient="records", lines=True)
    result = run_predict([trained, "--input_file", tmp_path / "bad.jsonl", "--evaluate"], check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'bad.jsonl'}: row 0 (0-based) has label 'meh', not one of the model's ['neg', 'pos']")


LONG = ("The first half drags: slow scenes, flat jokes, nothing happens for an hour. " * 3
        + "Then it turns around and the ending is superb, moving and funny; I loved it.")


def test_predict_truncates_as_the_model_was_trained_and_bf16_stays_close(tiny_bert, small_imdb, tmp_path):
    from data import encode

    out = tmp_path / "head_tail_model"
    run_train(["--model_name_or_path", tiny_bert, "--dataset_name", small_imdb, "--output_dir", out,
               "--train_samples", 16, "--eval_samples", 16, "--max_train_steps", 1, "--max_length", 16,
               "--truncation_keep", "head_tail", "--head_tokens", 4, "--logging_steps", 1])
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert (model.config.truncation_keep, model.config.head_tokens, tokenizer.model_max_length) == ("head_tail", 4, 16)
    expected = {}
    for keep in ("head_tail", "head"):
        encoded = encode([LONG], tokenizer, 16, keep, 4)
        with torch.no_grad():
            logits = model(**{k: torch.tensor(v) for k, v in encoded.items()}).logits
        expected[keep] = logits.softmax(-1)[0].tolist()
    assert expected["head_tail"] != pytest.approx(expected["head"], abs=1e-6)  # the choice matters for this text
    rows = [json.loads(line) for line in run_predict([out, "--text", LONG]).splitlines()]
    assert list(rows[0]["probabilities"].values()) == pytest.approx(expected["head_tail"], abs=1e-5)
    rows = [json.loads(line) for line in run_predict([out, "--text", LONG, "--truncation_keep", "head"]).splitlines()]
    assert list(rows[0]["probabilities"].values()) == pytest.approx(expected["head"], abs=1e-5)
    rows = [json.loads(line) for line in run_predict([out, "--text", LONG, "--mixed_precision", "bf16"]).splitlines()]
    assert list(rows[0]["probabilities"].values()) == pytest.approx(expected["head_tail"], abs=2e-2)


def test_a_row_without_a_text_is_train_pys_one_line(trained, tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"review": "no text key"}\n')
    result = run_predict([trained, "--input_file", tmp_path / "bad.jsonl"], check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'bad.jsonl'}: row 1 (0-based) has no text in column 'text'; fill or remove that row")


def test_blank_lines_are_skipped_and_the_output_keeps_the_line_numbers(trained, tmp_path):
    (tmp_path / "reviews.txt").write_text("A wonderful film.\n\n   \nDull.\n")
    result = run_predict([trained, "--input_file", tmp_path / "reviews.txt"], check=False)
    assert result.returncode == 0
    assert [json.loads(line)["index"] for line in result.stdout.splitlines()] == [0, 3]
    assert (f"{tmp_path / 'reviews.txt'}: skipped 2 blank line(s) (0-based: 1, 2); the output keeps the input's line "
            "numbers") in result.stderr


def test_a_folder_without_a_saved_model_is_one_line(tmp_path):
    checkpoint = tmp_path / "checkpoints" / "step_4"
    checkpoint.mkdir(parents=True)
    for model_dir, message in ((checkpoint, f"error: {checkpoint}: no saved model here (no config.json); pass "
                                            "train.py's --output_dir (or its best/), not a checkpoint folder"),
                               (tmp_path / "nope", f"error: {tmp_path / 'nope'}: no such directory (relative to ")):
        result = run_in_process(predict_module, [model_dir, "--text", "hi"])
        assert result.returncode == 1 and result.stderr.strip().splitlines()[-1].startswith(message)
