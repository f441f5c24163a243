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
    splits, _ = load_splits(str(tmp_path), text_column="body", label_columns=("y",))
    assert splits["train"]["text"][:] == ["a", "b"]


def test_imdb_integer_labels_are_named_neg_pos(small_imdb):
    splits, names = load_splits(str(small_imdb))
    assert names == ["neg", "pos"]
    assert (len(splits["train"]), len(splits["eval"])) == (64, 101)


@pytest.mark.parametrize(("folder", "names"), [("imdb", ["neg", "pos"]), ("IMDB", ["neg", "pos"]),
                                               ("my_imdb_spam", ["LABEL_0", "LABEL_1"])])
def test_only_imdb_itself_names_its_0_1_labels_neg_pos(tmp_path, folder, names):
    for split, frame in (("train", TRAIN), ("test", TEST)):
        write(frame, tmp_path / folder / f"{split}.parquet", "parquet")
    assert load_splits(str(tmp_path / folder))[1] == names
    assert load_splits(str(tmp_path / folder / "train.parquet"))[1] == names  # one file: its folder's name


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
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the Hub is off: not found here, and not looked up there
    with pytest.raises(FileNotFoundError, match="pass a local directory or file"):
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


def labelled(tmp_path, train_labels, test_labels, fmt="csv"):
    texts = ["good film", "bad film", "great", "awful", "fine", "dull"]
    write(pd.DataFrame({"text": texts[: len(train_labels)], "label": train_labels}), tmp_path / f"train.{fmt}", fmt)
    write(pd.DataFrame({"text": texts[: len(test_labels)], "label": test_labels}), tmp_path / f"test.{fmt}", fmt)
    return str(tmp_path)


@pytest.mark.parametrize("train_labels, test_labels, names, train_ids, test_ids", [
    ([1, 2, 1, 2], [2, 1], ["1", "2"], [0, 1, 0, 1], [1, 0]),  # polarity data sets: 2 classes, not 3
    ([0, 1, 7, 1], [7, 0], ["0", "1", "7"], [0, 1, 2, 1], [2, 0]),  # 3 classes, not 8
    ([-1, 1, -1], [1], ["-1", "1"], [0, 1, 0], [1]),
    ([0.0, 1.0, 1.0], [1.0, 0.0], ["LABEL_0", "LABEL_1"], [0, 1, 1], [1, 0]),  # what pandas writes after a NaN
])
def test_train_label_values_are_the_classes_in_sorted_order(tmp_path, train_labels, test_labels, names, train_ids,
                                                            test_ids):
    splits, found = load_splits(labelled(tmp_path, train_labels, test_labels))
    assert found == names
    assert splits["train"]["label"][:] == train_ids and splits["eval"]["label"][:] == test_ids


def test_an_eval_label_no_train_row_has_is_named(tmp_path):
    with pytest.raises(ValueError) as error:
        load_splits(labelled(tmp_path, [1, 2, 1], [2, 3]))
    assert str(error.value) == (f"{tmp_path / 'test.csv'}: row 1 (0-based) has label 3, which no train row has (train "
                                "labels: 1, 2); fix or remove that row")


def test_a_label_that_is_not_a_whole_number_is_named(tmp_path):
    with pytest.raises(ValueError) as error:
        load_splits(labelled(tmp_path, [0.0, 1.0, 0.5], [1.0]))
    assert str(error.value) == (f"{tmp_path / 'train.csv'}: row 2 (0-based) has label 0.5, not a whole number; labels "
                                "are classes (integers or names): for scores pass --problem_type regression")


def test_label_names_rename_the_classes_and_must_match_their_count():
    from data import rename_classes

    assert rename_classes(("World", "Sports"), ["LABEL_0", "LABEL_1"]) == ["World", "Sports"]
    assert rename_classes(None, ["1", "2"]) == ["1", "2"]
    with pytest.raises(ValueError, match=r"^--label_names gives 2 names \(a, b\) but the train split has 3 classes "
                                         r"\(0, 1, 7\); give one name per class, in this order$"):
        rename_classes(("a", "b"), ["0", "1", "7"])


def test_only_the_split_files_are_read_and_the_others_are_named(tmp_path, caplog):
    write(TRAIN, tmp_path / "train.csv", "csv")
    write(TRAIN.iloc[:2], tmp_path / "train_small.csv", "csv")  # used to be merged into train silently
    write(TEST, tmp_path / "test.csv", "csv")
    with caplog.at_level("INFO"):
        splits, _ = load_splits(str(tmp_path))
    assert (len(splits["train"]), len(splits["eval"])) == (5, 2)
    assert "Left out of {}: train_small.csv (not a train/test/validation split file)".format(tmp_path) in caplog.text
    assert f"train split: {tmp_path / 'train.csv'}" in caplog.text
    assert "text column 'review', label column 'sentiment'" in caplog.text


def test_split_files_in_two_folders_are_refused(tmp_path):
    write(TRAIN, tmp_path / "a" / "train.csv", "csv")
    write(TRAIN, tmp_path / "b" / "train.csv", "csv")
    write(TEST, tmp_path / "a" / "test.csv", "csv")
    with pytest.raises(ValueError, match=r"2 files for the train split in different folders .*; point --dataset_name "
                                         r"at one of the folders"):
        load_splits(str(tmp_path))


def test_tsv_files_load_like_csv_with_quotes_as_text(tmp_path):
    (tmp_path / "train.tsv").write_text('sentence\tlabel\nit\'s a "great" film\t1\ndull\t0\n')
    (tmp_path / "test.tsv").write_text("sentence\tlabel\nfine\t1\n")
    for given in (tmp_path, tmp_path / "train.tsv"):
        splits, names = load_splits(str(given))
        assert splits["train"]["text"][:] == ['it\'s a "great" film', "dull"] and names == ["LABEL_0", "LABEL_1"]


def test_a_missing_relative_path_says_where_it_looked_when_the_hub_is_off(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError) as error:
        load_splits("data/imdb")  # one slash: could be a Hub name, but the Hub is off
    assert str(error.value) == (f"--dataset_name data/imdb: no such file or directory (relative to {tmp_path}); the "
                                "Hub is off (HF_HUB_OFFLINE), so it was not looked up there: pass a local directory "
                                "or file, or go online")


def test_a_train_split_alone_gets_a_seeded_held_out_eval_split(tmp_path):
    frame = pd.DataFrame({"text": [f"review {i}" for i in range(40)], "label": [i % 2 for i in range(40)]})
    write(frame, tmp_path / "reviews.csv", "csv")  # one file, no partner
    splits, _ = load_splits(str(tmp_path / "reviews.csv"), validation_split_percentage=25, seed=42)
    again, _ = load_splits(str(tmp_path / "reviews.csv"), validation_split_percentage=25, seed=42)
    assert (len(splits["train"]), len(splits["eval"])) == (30, 10)
    assert sorted(splits["train"]["text"][:] + splits["eval"]["text"][:]) == sorted(frame.text)  # a partition
    assert splits["eval"]["text"][:] == again["eval"]["text"][:]  # seeded
    with pytest.raises(FileNotFoundError, match="or pass --validation_split_percentage 10 to hold out 10% of the train"):
        load_splits(str(tmp_path / "reviews.csv"))


def test_the_tokenized_rows_cache_key_follows_what_decides_the_tokens(minilm_dir, gpt2_tokenizer_dir):
    """The same key before and after the tokenizer has truncated something (its state changes with each call: the
    processes of one run must agree), another key for other rows, length, truncation or tokenizer."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    from data.loading import tokenized_fingerprint

    rows = Dataset.from_dict({"text": ["a b c d e f", "g h"], "label": [0, 1]})
    minilm, gpt2 = AutoTokenizer.from_pretrained(minilm_dir), AutoTokenizer.from_pretrained(gpt2_tokenizer_dir)
    key = tokenized_fingerprint(rows, minilm, 64, "head", 128)
    minilm(["a b c d e f"], truncation=True, max_length=3, padding="max_length")  # a call's state: not in the key
    assert tokenized_fingerprint(rows, minilm, 64, "head", 128) == key
    others = {tokenized_fingerprint(rows.select([0]), minilm, 64, "head", 128),
              tokenized_fingerprint(rows, minilm, 32, "head", 128), tokenized_fingerprint(rows, minilm, 64, "tail", 128),
              tokenized_fingerprint(rows, gpt2, 64, "head", 128)}
    minilm.truncation_side = "left"
    others.add(tokenized_fingerprint(rows, minilm, 64, "head", 128))
    minilm.truncation_side = "right"
    minilm.add_tokens(["zzqx"])  # an added token: in the key
    others.add(tokenized_fingerprint(rows, minilm, 64, "head", 128))
    assert len(others) == 6 and key not in others
