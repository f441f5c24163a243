"""report.md, report.png and eval_predictions.jsonl of each kind of job (training.outputs.write_results), from runs
built by hand: six eval rows, evaluations at steps 1-4, metrics from metrics.tasks. No model is trained."""

import json
import struct
import sys

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr

from conftest import run_module
from metrics import report
from metrics.history import History
from metrics.tasks import MULTI_LABEL, REGRESSION, SINGLE_LABEL, task_for
from training.outputs import write_results

CONFIG = {"model_name_or_path": "models/tiny", "dataset_name": "data/six", "train_rows": 8, "eval_rows": 6,
          "num_train_epochs": 2, "max_train_steps": 4, "total_train_batch_size": 4, "learning_rate": 0.001,
          "weight_decay": 0.0, "mixed_precision": "no", "num_processes": 1, "max_length": 64,
          "truncation_keep": "head", "text_column": "text", "label_column": "label"}
SPEED = {"tokenize_seconds": 0.1, "train_seconds": 2.0, "train_samples_per_second": 8.0,
         "train_padding_efficiency": 0.9, "eval_padding_efficiency": 0.8}
LOG = [{"step": step, "loss": 1.0 / step, "learning_rate": 0.001 * (5 - step) / 4} for step in range(1, 5)]

# Each kind: label names, the eval rows' labels, the outputs before training and after (task.outputs on the host).
RUNS = {
    SINGLE_LABEL: (["neg", "neu", "pos"], [0, 1, 2, 0, 1, 2], [0] * 6, [0, 1, 2, 0, 2, 2]),
    MULTI_LABEL: (["joy", "anger", "fear"],
                  [[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 0, 1], [0, 1, 1], [1, 0, 0]],
                  [[0.4, 0.4, 0.4]] * 6,
                  [[0.9, 0.1, 0.2], [0.8, 0.3, 0.1], [0.2, 0.1, 0.4], [0.1, 0.2, 0.7], [0.3, 0.6, 0.8],
                   [0.7, 0.2, 0.6]]),
    REGRESSION: (["score"], [0.5, 1.0, 2.0, 3.0, 4.5, 5.0], [5.0, 4.5, 3.0, 2.0, 1.0, 0.5],
                 [1.0, 1.0, 2.5, 2.5, 4.0, 5.0]),
}


def finished_run(folder, problem_type, outputs="after", old_config=False):
    """A run's folder as train.py leaves it: log.jsonl, then write_results. Returns (task, History)."""
    names, labels, before_outputs, after_outputs = RUNS[problem_type]
    task = task_for(problem_type, 0.5 if problem_type == MULTI_LABEL else None)

    def evaluation(outputs, loss):
        return task.evaluate(np.array(labels), np.array(outputs), names) | {"loss": loss, "rows": len(labels)}

    evaluations = [{"epoch": (step + 1) // 2, "step": step, "seconds": 0.25} | evaluation(out, loss)
                   for step, out, loss in ((1, before_outputs, 0.8), (2, before_outputs, 0.7),
                                           (3, after_outputs, 0.4), (4, after_outputs, 0.3))]
    config = CONFIG | {"label_names": names}
    if not old_config:  # metrics.json from before problem_type lacks these
        config |= {"problem_type": problem_type, "threshold": getattr(task, "threshold", None),
                   "text_pair_column": None}
    history = History(before=evaluation(before_outputs, 0.9), epochs=[{"epoch": 1, "step": 2, "train_loss": 0.8},
                                                                       {"epoch": 2, "step": 4, "train_loss": 0.4}],
                      evaluations=evaluations, after=evaluation(after_outputs, 0.3), config=config, speed=SPEED,
                      best={"metric": task.metrics[0], "value": evaluations[-1][task.metrics[0]], "epoch": 2,
                            "step": 4}, runtime_seconds=3.5)
    folder.mkdir(exist_ok=True)
    (folder / "log.jsonl").write_text("".join(json.dumps(record) + "\n" for record in LOG))
    write_results(folder, history, task, labels, after_outputs if outputs == "after" else None, names)
    return task, history


def predictions_of(folder):
    return [json.loads(line) for line in (folder / "eval_predictions.jsonl").read_text().splitlines()]


def test_single_label_report_of_a_run_from_before_problem_type_keeps_its_tables(tmp_path):
    finished_run(tmp_path, SINGLE_LABEL, old_config=True)
    markdown = (tmp_path / "report.md").read_text()
    # before: all "neg" (2 of 6 right); after: one neu row called pos (5 of 6); macro F1 = (1 + 2/3 + 0.8) / 3
    assert "|  | accuracy | f1 | precision | recall | loss |" in markdown
    assert "| before | 0.3333 | 0.1667 | 0.1111 | 0.3333 | 0.9000 |" in markdown
    assert "| after | 0.8333 | 0.8222 | 0.8889 | 0.8333 | 0.3000 |" in markdown
    assert "F1, precision and recall are macro averages: the unweighted mean over the classes." in markdown
    assert "| neu | 1.0000 | 0.5000 | 0.6667 | 2 |" in markdown and "| pos | 0.6667 | 1.0000 | 0.8000 | 2 |" in markdown
    assert "| epoch | step | train loss | accuracy | f1 | precision | recall | eval loss |" in markdown
    assert "| 1 | 2 | 0.8000 |  |  |  |  |  |" in markdown  # steps strategy: the epoch row has no metrics
    assert "## Evaluations" in markdown and "| 2 | 3 | 0.8333 | 0.8222 | 0.8889 | 0.8333 | 0.4000 |" in markdown
    assert "Best accuracy: 0.8333 at step 4 (epoch 2)." in markdown
    assert "| neu | 0 | 1 | 1 |" in markdown  # the confusion matrix: rows true, columns predicted
    assert json.loads((tmp_path / "metrics.json").read_text())["confusion_matrix"] == {
        "labels": ["neg", "neu", "pos"], "matrix": [[2, 0, 0], [0, 1, 1], [0, 0, 2]]}
    assert predictions_of(tmp_path)[4] == {"row": 4, "label": 1, "prediction": 2}


def test_multi_label_report_has_the_micro_macro_table_and_each_labels_support(tmp_path):
    finished_run(tmp_path, MULTI_LABEL)
    markdown = (tmp_path / "report.md").read_text()
    assert ("|  | micro_f1 | macro_f1 | subset_accuracy | micro_precision | micro_recall | macro_precision | "
            "macro_recall | loss |") in markdown
    # Predicted (>= 0.5): joy rows 0 1 5 (all right), anger row 4 (of 1 4), fear rows 3 4 5 (of 3 4): 6 right
    # pairs, 1 false and 1 missed: micro 6/7; rows 0 2 3 4 have every label right.
    assert "| after | 0.8571 | 0.8222 | 0.6667 | 0.8571 | 0.8571 | 0.8889 | 0.8333 | 0.3000 |" in markdown
    assert "| before | 0.0000 | 0.0000 | 0.1667 | 0.0000 | 0.0000 | 0.0000 | 0.0000 | 0.9000 |" in markdown
    assert "A label is predicted when its probability is >= 0.5." in markdown
    assert "| label | support | precision | recall | f1 |" in markdown
    assert "| joy | 3 | 1.0000 | 1.0000 | 1.0000 |" in markdown
    assert "| anger | 2 | 1.0000 | 0.5000 | 0.6667 |" in markdown
    assert "| fear | 2 | 0.6667 | 1.0000 | 0.8000 |" in markdown
    assert "Best micro_f1: 0.8571 at step 4 (epoch 2)." in markdown
    assert "Confusion matrix" not in markdown and "per_class" not in markdown
    assert json.loads((tmp_path / "metrics.json").read_text())["confusion_matrix"] is None
    assert predictions_of(tmp_path)[4:] == [
        {"row": 4, "label": [1, 2], "prediction": [1, 2], "probabilities": [0.3, 0.6, 0.8]},
        {"row": 5, "label": [0], "prediction": [0, 2], "probabilities": [0.7, 0.2, 0.6]}]


def test_regression_report_has_correlations_and_errors(tmp_path):
    finished_run(tmp_path, REGRESSION)
    markdown = (tmp_path / "report.md").read_text()
    labels, before, after = RUNS[REGRESSION][1:]
    pearson, spearman = pearsonr(labels, after)[0], spearmanr(labels, after)[0]
    assert "|  | pearson | spearman | mse | mae | loss |" in markdown
    # before: the scores reversed (Spearman -1); errors 4.5, 3.5, 1, -1, -3.5, -4.5: MSE 67/6, MAE 3
    assert f"| before | {pearsonr(labels, before)[0]:.4f} | -1.0000 | 11.1667 | 3.0000 | 0.9000 |" in markdown
    # errors after: 0.5, 0, 0.5, -0.5, -0.5, 0: MSE 1/6, MAE 1/3
    assert f"| after | {pearson:.4f} | {spearman:.4f} | 0.1667 | 0.3333 | 0.3000 |" in markdown
    assert "Pearson and Spearman: the correlation of the predicted with the true scores" in markdown
    assert "| epoch | step | train loss | pearson | spearman | mse | mae | eval loss |" in markdown
    assert f"| 2 | 4 | {pearson:.4f} | {spearman:.4f} | 0.1667 | 0.3333 | 0.3000 |" in markdown
    assert f"Best pearson: {pearson:.4f} at step 4 (epoch 2)." in markdown
    assert "Confusion matrix" not in markdown and "Per class" not in markdown
    assert json.loads((tmp_path / "metrics.json").read_text())["confusion_matrix"] is None
    assert [(p["row"], p["label"], p["prediction"]) for p in predictions_of(tmp_path)] == [
        (i, label, output) for i, (label, output) in enumerate(zip(labels, after))]


def test_a_run_resumed_after_its_last_evaluation_has_no_predictions_file(tmp_path):
    finished_run(tmp_path, SINGLE_LABEL, outputs=None)
    assert not (tmp_path / "eval_predictions.jsonl").exists()
    assert json.loads((tmp_path / "metrics.json").read_text())["confusion_matrix"] is None
    markdown = (tmp_path / "report.md").read_text()
    assert "| after | 0.8333 |" in markdown and "Confusion matrix" not in markdown


@pytest.mark.parametrize("problem_type", [SINGLE_LABEL, MULTI_LABEL, REGRESSION])
def test_report_png_is_written_for_each_kind(problem_type, tmp_path):
    pytest.importorskip("matplotlib", reason="optional dependency: pip install matplotlib")
    finished_run(tmp_path, problem_type)
    png = (tmp_path / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (1300, 900)


def test_the_last_panel_shows_each_kinds_final_figures(tmp_path):
    """Regression: each row's (true, predicted) point and the y = x line; multi-label: each label's F1 bar and its
    support; the evaluation axis goes below 0 for a negative correlation (regression's before)."""
    pytest.importorskip("matplotlib", reason="optional dependency: pip install matplotlib")
    import matplotlib.pyplot as plt

    figure, (scatter_axis, bars_axis, eval_axis, accuracy_axis) = plt.subplots(1, 4)
    _, history = finished_run(tmp_path / "regression", REGRESSION)
    predictions = predictions_of(tmp_path / "regression")
    assert report._draw_scatter(scatter_axis, history, predictions) is True
    labels, _, after = RUNS[REGRESSION][1:]
    assert scatter_axis.collections[0].get_offsets().tolist() == [list(pair) for pair in zip(labels, after)]
    assert scatter_axis.lines[0].get_xydata().tolist() == [[0.5, 0.5], [5.0, 5.0]]
    assert report._draw_scatter(scatter_axis, history, None) is False  # resumed: nothing to draw
    report._draw_evaluations(eval_axis, history, task_for(REGRESSION))
    assert eval_axis.get_ylim()[0] == pytest.approx(-1.02)  # Spearman -1 before training
    task, history = finished_run(tmp_path / "multi", MULTI_LABEL)
    assert report._draw_label_f1(bars_axis, history, None) is True
    assert [bar.get_height() for bar in bars_axis.patches] == pytest.approx([1.0, 2 / 3, 0.8])
    assert [text.get_text() for text in bars_axis.texts] == ["n=3", "n=2", "n=2"]
    _, history = finished_run(tmp_path / "single", SINGLE_LABEL)
    report._draw_evaluations(accuracy_axis, history, task_for(SINGLE_LABEL))
    assert accuracy_axis.get_ylim() == (0, 1.02)
    plt.close(figure)


def test_without_matplotlib_each_kinds_picture_is_skipped_with_a_notice(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with caplog.at_level("INFO"):
        finished_run(tmp_path, MULTI_LABEL)
    assert not (tmp_path / "report.png").exists() and (tmp_path / "report.md").is_file()
    assert "matplotlib is not installed: skipping report.png (pip install matplotlib)" in caplog.text


def test_python_m_metrics_report_draws_a_regression_run_again_from_its_predictions(tmp_path):
    pytest.importorskip("matplotlib", reason="optional dependency: pip install matplotlib")
    finished_run(tmp_path, REGRESSION)
    markdown, png = (tmp_path / "report.md").read_text(), (tmp_path / "report.png").read_bytes()
    (tmp_path / "report.md").unlink(), (tmp_path / "report.png").unlink()
    result = run_module("metrics.report", [tmp_path])
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"wrote {tmp_path / 'report.md'} and {tmp_path / 'report.png'}\n"
    assert (tmp_path / "report.md").read_text() == markdown and (tmp_path / "report.png").read_bytes() == png
    # Without eval_predictions.jsonl the scatter is missing: another picture.
    (tmp_path / "eval_predictions.jsonl").unlink()
    report.main([str(tmp_path)])
    assert (tmp_path / "report.png").read_bytes() != png and (tmp_path / "report.md").read_text() == markdown
