"""Loading every supported source, column detection, labels, the recipe's subset, tokenization and padding."""

import pandas as pd
import pytest
from datasets import Dataset
from transformers import AutoTokenizer, DataCollatorWithPadding

from data import load_splits, select_subset, tokenize

TRAIN = pd.DataFrame({"review": ["good film", "bad film", "great", "awful", "fine"], "sentiment": [1, 0, 1, 0, 1]})
TEST = pd.DataFrame({"review": ["superb", "dull"], "sentiment": [1, 0]})


def write(frame: pd.DataFrame, path, fmt: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    {"parquet": lambda: frame.to_parquet(path), "csv": lambda: frame.to_csv(path, index=False),
     "jsonl": lambda: frame.to_json(path, orient="records", lines=True)}[fmt]()


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_directory_of_split_files_loads_with_detected_columns(tmp_path, fmt):
    write(TRAIN, tmp_path / f"train.{fmt}", fmt)
    write(TEST, tmp_path / f"test.{fmt}", fmt)
    splits, names = load_splits(str(tmp_path))
    assert splits["train"].column_names == ["text", "label"]
    assert splits["train"]["text"][:] == list(TRAIN.review)
    assert splits["eval"]["label"][:] == [1, 0]
    assert names == ["LABEL_0", "LABEL_1"]


def test_hub_layout_sharded_files_and_validation_split(tmp_path):
    write(TRAIN, tmp_path / "plain_text" / "train-00000-of-00001.parquet", "parquet")
    write(TEST, tmp_path / "plain_text" / "validation-00000-of-00001.parquet", "parquet")
    write(TEST, tmp_path / "plain_text" / "unsupervised-00000-of-00001.parquet", "parquet")
    splits, _ = load_splits(str(tmp_path))
    assert (len(splits["train"]), len(splits["eval"])) == (5, 2)


def test_single_file_finds_its_eval_split_beside_it(tmp_path):
    write(TRAIN, tmp_path / "train.csv", "csv")
    write(TEST, tmp_path / "test.csv", "csv")
    splits, _ = load_splits(str(tmp_path / "train.csv"))
    assert (len(splits["train"]), len(splits["eval"])) == (5, 2)


def test_string_labels_map_to_sorted_ids_and_keep_their_names(tmp_path):
    write(TRAIN.assign(sentiment=["pos", "neg", "pos", "neg", "pos"]), tmp_path / "train.csv", "csv")
    write(TEST.assign(sentiment=["pos", "neg"]), tmp_path / "test.csv", "csv")
    splits, names = load_splits(str(tmp_path))
    assert names == ["neg", "pos"]
    assert splits["train"]["label"][:] == [1, 0, 1, 0, 1]


def test_explicit_columns_override_detection(tmp_path):
    frame = pd.DataFrame({"body": ["a", "b"], "y": [0, 1], "text": ["x", "y"]})
    write(frame, tmp_path / "train.jsonl", "jsonl")
    write(frame, tmp_path / "test.jsonl", "jsonl")
    splits, _ = load_splits(str(tmp_path), text_column="body", label_column="y")
    assert splits["train"]["text"][:] == ["a", "b"]


def test_imdb_integer_labels_are_named_neg_pos(small_imdb):
    splits, names = load_splits(str(small_imdb))
    assert names == ["neg", "pos"]
    assert (len(splits["train"]), len(splits["eval"])) == (64, 101)


def test_aclimdb_folder_loads_with_neg_pos(tmp_path):
    root = tmp_path / "aclImdb"
    reviews = {("train", "neg"): ["awful<br />film", "dull"], ("train", "pos"): ["great"],
               ("test", "neg"): ["bad"], ("test", "pos"): ["fine", "superb"]}
    for (split, sentiment), texts in reviews.items():
        (root / split / sentiment).mkdir(parents=True)
        for i, text in enumerate(texts):
            (root / split / sentiment / f"{i}_{3 if sentiment == 'neg' else 8}.txt").write_text(text)
    for given in (tmp_path, root):  # the folder itself or its parent
        splits, names = load_splits(str(given))
        assert names == ["neg", "pos"]
        assert splits["train"]["text"][:] == ["awful<br />film", "dull", "great"]
        assert splits["train"]["label"][:] == [0, 0, 1]
        assert splits["eval"]["label"][:] == [0, 1, 1]


@pytest.mark.parametrize("setup, message", [
    (lambda d: None, "no train file found"),
    (lambda d: write(TRAIN, d / "train.csv", "csv"), "no test or validation split found"),
    (lambda d: (write(TRAIN.rename(columns={"review": "body"}), d / "train.csv", "csv"),
                write(TEST, d / "test.csv", "csv")), "pass --text_column"),
])
def test_bad_local_data_is_one_actionable_line(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises((ValueError, FileNotFoundError), match=message) as error:
        load_splits(str(tmp_path))
    assert "\n" not in str(error.value)


def test_missing_local_path_is_not_sent_to_the_hub(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        load_splits(str(tmp_path / "nope"))


def test_hub_name_without_network_says_what_to_pass(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConnectionError, match="pass a local directory or file"):
        load_splits("someone/not-a-local-dataset")


def test_subset_is_the_recipes_shuffle_then_select():
    split = Dataset.from_dict({"text": [str(i) for i in range(100)], "label": [i % 2 for i in range(100)]})
    assert select_subset(split, 10, 42)["text"][:] == split.shuffle(seed=42).select(range(10))["text"][:]
    assert len(select_subset(split, 0, 42)) == 100 and len(select_subset(split, 500, 42)) == 100


def test_tokenization_truncates_without_padding_and_collator_pads_to_longest(minilm_dir):
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    split = Dataset.from_dict({"text": ["short", "a much longer review " * 50], "label": [0, 1]})
    tokens = tokenize(split, tokenizer, max_length=16)
    lengths = [len(ids) for ids in tokens["input_ids"]]
    assert lengths == [3, 16]  # [CLS] short [SEP]; the long one cut at 16
    assert "labels" in tokens.column_names and "text" not in tokens.column_names
    batch = DataCollatorWithPadding(tokenizer)([tokens[0], tokens[1]])
    assert tuple(batch["input_ids"].shape) == (2, 16)
    assert batch["attention_mask"][0].tolist() == [1, 1, 1] + [0] * 13
