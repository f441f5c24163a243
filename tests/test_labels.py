"""Labels as users bring them, end to end: values 1/2 (two classes, named by value, and predict.py takes the values),
four classes named with --label_names (macro averages said as such, the per-class table in report.md)."""

import json

import pandas as pd
import pytest
from transformers import pipeline

import predict as predict_module
from conftest import read_outputs, run_in_process, run_train

TEXTS = ["a fine film", "dull and long", "loved it", "awful", "superb acting", "boring plot", "great fun", "weak"]


def test_labels_1_2_train_two_classes_named_by_value_and_predict_takes_the_values(tiny_bert, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    frame = pd.DataFrame({"text": TEXTS, "label": [2, 1, 2, 1, 2, 1, 2, 1]})
    frame.to_csv(data / "train.csv", index=False)
    frame.to_csv(data / "test.csv", index=False)
    out = tmp_path / "out"
    result = run_train(["--model_name_or_path", tiny_bert, "--dataset_name", data, "--output_dir", out,
                        "--max_length", 32, "--num_train_epochs", 1])
    assert "labels 1, 2 are classes 0..1 in that order (saved as the model's id2label)" in result.stderr
    assert json.loads((out / "config.json").read_text())["id2label"] == {"0": "1", "1": "2"}
    metrics, _ = read_outputs(out)
    assert metrics["config"]["label_names"] == ["1", "2"] and metrics["after"]["rows"] == 8
    evaluated = run_in_process(predict_module, [out, "--input_file", data / "test.csv", "--evaluate"])
    assert evaluated.returncode == 0
    assert evaluated.stdout.splitlines()[0] == f"Accuracy: {metrics['after']['accuracy']:.4f}"


@pytest.fixture(scope="module")
def four_classes(tiny_bert, tmp_path_factory):
    data = tmp_path_factory.mktemp("four")
    frame = pd.DataFrame({"text": TEXTS * 2, "label": [0, 1, 2, 3] * 4})
    frame.to_csv(data / "train.csv", index=False)
    frame.to_csv(data / "test.csv", index=False)
    out = data / "out"
    result = run_train(["--model_name_or_path", tiny_bert, "--dataset_name", data, "--output_dir", out,
                        "--max_length", 32, "--num_train_epochs", 1, "--ignore_mismatched_sizes",
                        "--label_names", "World", "Sports", "Business", "Sci/Tech"])
    return out, result


def test_label_names_name_the_classes_of_the_saved_model(four_classes):
    out, _ = four_classes
    assert json.loads((out / "config.json").read_text())["id2label"] == {
        "0": "World", "1": "Sports", "2": "Business", "3": "Sci/Tech"}
    answers = pipeline("text-classification", model=str(out))(["great fun"])
    assert answers[0]["label"] in {"World", "Sports", "Business", "Sci/Tech"}


def test_macro_averages_are_said_and_report_md_has_the_per_class_table(four_classes):
    out, result = four_classes
    metrics, _ = read_outputs(out)
    after = result.stdout.split("After training:")[1].strip().splitlines()
    assert after == [f"Accuracy: {metrics['after']['accuracy']:.4f}", f"F1-Score (macro): {metrics['after']['f1']:.4f}",
                     f"Precision (macro): {metrics['after']['precision']:.4f}",
                     f"Recall (macro): {metrics['after']['recall']:.4f}"]
    report = (out / "report.md").read_text()
    assert "F1, precision and recall are macro averages: the unweighted mean over the classes." in report
    world = metrics["after"]["per_class"]["World"]
    assert (f"| World | {world['precision']:.4f} | {world['recall']:.4f} | {world['f1']:.4f} | {world['support']} |"
            in report)


def test_label_names_of_the_wrong_count_stop_before_any_output(tiny_bert, small_imdb, tmp_path):
    result = run_train(["--model_name_or_path", tiny_bert, "--dataset_name", small_imdb, "--output_dir", tmp_path / "o",
                        "--label_names", "bad", "good", "ugly"], check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --label_names gives 3 names (bad, good, ugly) but the train split has 2 classes (neg, pos); give one "
        "name per class, in this order")
    assert not (tmp_path / "o").exists()
