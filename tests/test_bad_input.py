"""Bad input: one `error:` line naming the file, row or column and what to do; exit code 1 before any training, and
the output directory (here holding a previous run, with --overwrite_output_dir given) left exactly as it was."""

import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import run_train

GOOD = pd.DataFrame({"text": ["a fine film", "dull and long", "loved it", "awful"], "label": [1, 0, 1, 0]})


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def previous_run(tmp_path) -> Path:
    """An output_dir a previous run filled: a bad new run must not touch it."""
    out = tmp_path / "out"
    (out / "checkpoints" / "step_5").mkdir(parents=True)
    (out / "checkpoints" / "step_5" / "training_state.json").write_text(json.dumps({"completed_steps": 5}))
    (out / "metrics.json").write_text('{"after": {"accuracy": 0.9}}\n')
    (out / "log.jsonl").write_text('{"step": 1, "loss": 0.7}\n')
    return out


def data_dir(tmp_path: Path, train=GOOD, test=GOOD, fmt="csv") -> Path:
    folder = tmp_path / "data"
    folder.mkdir(exist_ok=True)
    for split, frame in (("train", train), ("test", test)):
        if frame is None:
            continue
        if fmt == "csv":
            frame.to_csv(folder / f"{split}.csv", index=False)
        else:
            frame.to_json(folder / f"{split}.jsonl", orient="records", lines=True)
    return folder


def run_bad(model, dataset, out, *flags):
    result = run_train(["--model_name_or_path", model, "--dataset_name", dataset, "--output_dir", out,
                        "--overwrite_output_dir", "--max_length", 32, *flags], check=False)
    return result.returncode, result.stderr.strip().splitlines()[-1]


CASES = {
    "blank text": (lambda d: data_dir(d, train=GOOD.assign(text=["a fine film", "   ", "loved it", "awful"])),
                   "{data}/train.csv: row 1 (0-based) has an empty text '   ' in column 'text'; fill or remove that row"),
    "missing label": (lambda d: data_dir(d, test=GOOD.assign(label=[1, None, 0, None])),
                      "{data}/test.csv: row 1 (0-based) has no label in column 'label'; fill or remove that row"),
    "row without the label key": (
        lambda d: (data_dir(d, fmt="jsonl"), (d / "data" / "train.jsonl").write_text(
            '{"text": "good", "label": 1}\n{"text": "bad", "label": 0}\n{"text": "no label here"}\n')) and d / "data",
        "{data}/train.jsonl: row 2 (0-based) has no label in column 'label'; fill or remove that row"),
    "labels beyond the model's head": (
        lambda d: data_dir(d, train=GOOD.assign(label=[0, 1, 2, 1])),
        "--model_name_or_path {model}: its classification head has 2 outputs (LABEL_0, LABEL_1) but the data needs 3 "
        "(LABEL_0, LABEL_1, LABEL_2); pass --ignore_mismatched_sizes to train a new head"),
    "invalid UTF-8 in a CSV": (
        lambda d: (data_dir(d), (d / "data" / "train.csv").write_bytes(b"text,label\ngood \xff film,1\n")) and d / "data",
        "{data}/train.csv: cannot read it as csv ('utf-8' codec can't decode byte 0xff in position 5: invalid start "
        "byte); re-save it as UTF-8"),
    "header and no rows": (lambda d: data_dir(d, test=GOOD.iloc[:0]),
                           "{data}/test.csv: no rows (only a header?); every split needs labelled texts"),
    "no eval split": (lambda d: data_dir(d, test=None),
                      "--dataset_name {data}: no test or validation split found beside the train data; add a test.csv "
                      "or validation.csv file, or pass --validation_split_percentage 10 to hold out 10% of the train "
                      "rows"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_data_is_one_line_and_leaves_the_output_dir_alone(case, tiny_bert, tmp_path, previous_run):
    make, message = CASES[case]
    data = make(tmp_path)
    before = snapshot(previous_run)
    code, last_line = run_bad(tiny_bert, data, previous_run)
    assert code == 1
    assert last_line == "error: " + message.format(data=tmp_path / "data", model=tiny_bert)
    assert snapshot(previous_run) == before


def test_aclimdb_review_that_is_not_utf8_is_named(tiny_bert, tmp_path, previous_run):
    root = tmp_path / "aclImdb"
    for split in ("train", "test"):
        for label in ("pos", "neg"):
            (root / split / label).mkdir(parents=True)
            (root / split / label / "0_7.txt").write_text("a review")
    (root / "train" / "neg" / "1_2.txt").write_bytes(b"bad \xe9 byte")
    before = snapshot(previous_run)
    code, last_line = run_bad(tiny_bert, root, previous_run)
    assert (code, last_line) == (1, f"error: {root}/train/neg/1_2.txt: not valid UTF-8 (byte 4); fix or remove the file")
    assert snapshot(previous_run) == before


def test_string_labels_under_another_column_name_are_mapped(tiny_bert, tmp_path):
    frame = pd.DataFrame({"review": GOOD.text, "sentiment": ["pos", "neg", "pos", "neg"]})
    data = data_dir(tmp_path, train=frame, test=frame)
    out = tmp_path / "out"
    run_train(["--model_name_or_path", tiny_bert, "--dataset_name", data, "--output_dir", out, "--max_length", 32,
               "--num_train_epochs", 1])
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "neg", "1": "pos"}
    assert json.loads((out / "metrics.json").read_text())["after"]["rows"] == 4
    recorded = json.loads((out / "metrics.json").read_text())["config"]  # the columns found, not null
    assert (recorded["text_column"], recorded["label_column"]) == ("review", "sentiment")


@pytest.mark.parametrize("model, message", [
    ("{tmp}/no-such-model", "--model_name_or_path {tmp}/no-such-model: cannot load it"),
    ("someone/not-on-this-machine", "--model_name_or_path someone/not-on-this-machine: cannot load it"),
])
def test_missing_model_or_unreachable_hub_name_is_one_line(model, message, tmp_path, previous_run):
    data = data_dir(tmp_path)
    before = snapshot(previous_run)
    code, last_line = run_bad(model.format(tmp=tmp_path), data, previous_run)
    assert code == 1 and last_line.startswith("error: " + message.format(tmp=tmp_path))
    assert "pass a local model directory" in last_line
    assert snapshot(previous_run) == before


def test_nan_loss_stops_at_its_step_and_keeps_the_last_good_checkpoint(tiny_bert, small_imdb, tmp_path):
    out = tmp_path / "out"
    # lr 1e30: step 1 blows the weights up to ~1e30 (still finite), step 2's forward overflows to inf/NaN.
    result = run_train(["--model_name_or_path", tiny_bert, "--dataset_name", small_imdb, "--output_dir", out,
                        "--max_length", 32, "--train_samples", 32, "--eval_samples", 16,
                        "--per_device_train_batch_size", 4, "--learning_rate", 1e30, "--checkpointing_steps", 1,
                        "--logging_steps", 1],
                       check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: the training loss is NaN or infinite at step 2 (epoch 1); stopped before updating the weights, the "
        f"last good checkpoint is {out}/checkpoints/step_1. Try a lower --learning_rate, --max_grad_norm 1.0, or bf16 "
        "instead of fp16")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_1"]
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [1]
    assert not (out / "metrics.json").exists()


def test_debug_shows_the_full_traceback_instead_of_one_line(tiny_bert, tmp_path):
    data = data_dir(tmp_path, train=GOOD.assign(text=["a fine film", "", "loved it", "awful"]))
    result = run_train(["--model_name_or_path", tiny_bert, "--dataset_name", data, "--output_dir", tmp_path / "out",
                        "--max_length", 32, "--debug"], check=False)
    assert result.returncode == 1 and "Traceback (most recent call last)" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"ValueError: {data}/train.csv: row 1 (0-based) has no text in column 'text'; fill or remove that row")
