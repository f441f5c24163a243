"""Paired tests of two models' predictions (python -m metrics.compare): McNemar's exact test (single- and multi-label),
Wilcoxon's signed-rank test on the absolute errors (regression)."""

import json

import pytest
from scipy.stats import wilcoxon

from conftest import run_module
from metrics.compare import compare, main, mcnemar, paired_errors


def test_mcnemar_counts_disagreements_and_gives_the_exact_p_value():
    truth = [1] * 100
    a = [1] * 60 + [0] * 40  # 60 right
    b = [1] * 50 + [0] * 10 + [1] * 20 + [0] * 20  # 70 right; A-only right: rows 50-59 (10), B-only: rows 60-79 (20)
    result = mcnemar(truth, a, b)
    assert (result["only_a_right"], result["only_b_right"]) == (10, 20)
    assert result["accuracy_a"] == 0.6 and result["accuracy_b"] == 0.7 and result["difference"] == pytest.approx(0.1)
    # Two-sided binomial P(X <= 10 or X >= 20 | 30, 1/2) = 2 * sum(C(30, k), k <= 10) / 2^30 = 0.098737.
    assert result["p_value"] == pytest.approx(0.0987371, abs=1e-7)
    # SE = sqrt(30 - 100/100) / 100 = 0.0538516; 95% CI = 0.1 -+ 0.105549
    assert result["ci95"] == pytest.approx([0.1 - 0.105549, 0.1 + 0.105549], abs=1e-6)
    assert mcnemar(truth, a, a)["p_value"] == 1.0


def test_cli_reads_predict_outputs_and_refuses_files_without_labels(tmp_path, capsys):
    def write(name, labels, truth=True):
        rows = [{"index": i, "label": label} | ({"true_label": "pos"} if truth else {}) for i, label in enumerate(labels)]
        (tmp_path / name).write_text("".join(json.dumps(row) + "\n" for row in reversed(rows)))  # order by index
        return str(tmp_path / name)

    a, b = write("a.jsonl", ["pos", "neg", "neg", "neg"]), write("b.jsonl", ["pos", "pos", "pos", "neg"])
    main([a, b])
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (summary["accuracy_a"], summary["accuracy_b"], summary["only_b_right"], summary["p_value"]) == (0.25, 0.75, 2, 0.5)
    bare = write("bare.jsonl", ["pos"], truth=False)  # python -m metrics.compare: its exit code and one line
    result = run_module("metrics.compare", [a, bare])
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: {bare}: no true_label; write it with predict.py --evaluate --output_file {bare}"


def write_rows(path, rows):
    """predict.py's order is not the rows' order: compare sorts by index."""
    path.write_text("".join(json.dumps({"index": i} | row) + "\n" for i, row in reversed(list(enumerate(rows)))))
    return str(path)


def test_regression_compares_absolute_errors_with_wilcoxon_and_a_paired_interval(tmp_path):
    truth = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    # |A - true| = 2 3 4 5 6 1, |B - true| = 1 1 1 1 1 7: B - A = -1 -2 -3 -4 -5 +6
    a = write_rows(tmp_path / "a.jsonl", [{"score": t + e, "true_score": t} for t, e in zip(truth, [2, -3, 4, 5, -6, 1])])
    b = write_rows(tmp_path / "b.jsonl", [{"score": t + e, "true_score": t} for t, e in zip(truth, [1, 1, -1, 1, 1, 7])])
    kind, result = compare(a, b)
    assert kind == "regression"
    assert (result["rows"], result["a_closer"], result["b_closer"]) == (6, 1, 5)
    assert (result["mae_a"], result["mae_b"]) == pytest.approx((21 / 6, 12 / 6))
    # Signed ranks: W+ = 6 (the +6 alone). Exact two-sided p = 2 * #{subsets of 1..6 summing to <= 6} / 2^6
    # = 2 * 14 / 64 = 0.4375, as scipy's wilcoxon gives it.
    assert result["p_value"] == pytest.approx(0.4375) == wilcoxon([-1, -2, -3, -4, -5, 6]).pvalue
    # mean -1.5; sample sd sqrt(77.5 / 5) = 3.937004; 1.96 * sd / sqrt(6) = 3.150259
    assert result["difference"] == pytest.approx(-1.5)
    assert result["ci95"] == pytest.approx([-1.5 - 3.150259, -1.5 + 3.150259], abs=1e-6)
    assert paired_errors(truth, truth, truth)["p_value"] == 1.0  # no row differs: nothing against "equally close"


def test_regression_cli_prints_the_lines_and_the_json(tmp_path, capsys):
    a = write_rows(tmp_path / "a.jsonl", [{"score": s, "true_score": 1.0} for s in (1.5, 2.0, 0.0)])
    b = write_rows(tmp_path / "b.jsonl", [{"score": s, "true_score": 1.0} for s in (1.0, 1.5, 0.5)])
    main([a, b])
    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == ["rows: 3", "MAE A: 0.8333", "MAE B: 0.3333"]
    assert lines[3] == "B - A (mean absolute error): -0.5000 (95% CI -0.5000 to -0.5000)"  # every row 0.5 closer
    assert lines[4:6] == ["A closer: 0, B closer: 3", "Wilcoxon signed-rank p-value (absolute errors): 0.25"]
    assert json.loads(lines[6])["b_closer"] == 3


def test_multi_label_mcnemar_counts_rows_whose_label_set_is_right(tmp_path, capsys):
    truth = [["joy"], ["anger", "joy"], [], ["fear"], ["anger", "fear"], ["joy"]]
    a_sets = [["joy"], ["joy", "anger"], [], ["fear", "joy"], ["anger"], []]  # right: rows 0 1 2
    b_sets = [["joy", "anger"], ["anger", "joy"], ["joy"], ["fear"], ["fear", "anger"], ["joy"]]  # right: 1 3 4 5

    def rows(sets, truth_order):
        return [{"labels": s, "probabilities": {"joy": 0.5, "anger": 0.5, "fear": 0.5}, "true_labels": truth_order(t)}
                for s, t in zip(sets, truth)]

    a = write_rows(tmp_path / "a.jsonl", rows(a_sets, list))
    b = write_rows(tmp_path / "b.jsonl", rows(b_sets, lambda names: list(reversed(names))))  # same sets, other order
    main([a, b])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "multi-label: a row is right when its predicted set of labels equals the true set"
    assert lines[1:4] == ["rows: 6", "subset accuracy A: 0.5000", "subset accuracy B: 0.6667"]
    assert lines[5:7] == ["only A right: 2, only B right: 3", "McNemar exact p-value: 1"]  # rows 0 2 / 3 4 5
    result = json.loads(lines[7])
    assert (result["only_a_right"], result["only_b_right"], result["p_value"]) == (2, 3, 1.0)
    assert result["difference"] == pytest.approx(1 / 6)


def test_files_of_two_kinds_or_other_truths_are_refused_in_one_line(tmp_path):
    single = write_rows(tmp_path / "single.jsonl", [{"label": "pos", "score": 0.9, "true_label": "pos"}])
    multi = write_rows(tmp_path / "multi.jsonl", [{"labels": ["pos"], "true_labels": ["pos"]}])
    regression = write_rows(tmp_path / "regression.jsonl", [{"score": 1.0, "true_score": 1.0}, {"score": 2.0,
                                                                                                 "true_score": 2.0}])
    other = write_rows(tmp_path / "other.jsonl", [{"score": 1.0, "true_score": 1.0}, {"score": 2.0, "true_score": 3.0}])
    bare = write_rows(tmp_path / "bare.jsonl", [{"labels": ["pos"]}])
    for pair, message in (((single, multi), f"error: {single} holds single_label_classification predictions and "
                                             f"{multi} multi_label_classification ones: compare two models of one "
                                             "kind of job"),
                          ((regression, other), f"error: {regression} and {other} do not hold the same rows (true "
                                                "scores differ)"),
                          ((multi, bare), f"error: {bare}: no true_labels; write it with predict.py --evaluate "
                                          f"--output_file {bare}")):
        with pytest.raises(SystemExit) as stop:
            main(list(pair))
        assert str(stop.value) == message
