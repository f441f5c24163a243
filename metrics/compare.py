"""Is model B better than model A on the same rows? A paired test on their predictions of each row.

    python -m metrics.compare A.jsonl B.jsonl     # files from `predict.py MODEL --input_file F --evaluate --output_file`

The kind of job comes from the files' keys: true_label (single-label), true_labels (multi-label), true_score
(regression); both files must be of one kind and hold the same rows (the same truths, by index).

Single- and multi-label: McNemar's exact test. A multi-label row is right when its predicted set of labels equals
the true set (subset accuracy). Only the rows the two models disagree on carry information: b = A right and B wrong,
c = A wrong and B right. Under "equally accurate", each such row is a fair coin, so the p-value is the two-sided
binomial test of c out of b + c. The accuracy difference (B - A) = (c - b) / n gets a 95% interval from the paired
standard error.

Regression: the Wilcoxon signed-rank test (two-sided) on the paired absolute errors |B - true| - |A - true|; rows
where both are equally far off drop out, and when all do, p = 1. The mean absolute error difference (B - A: below 0,
B is closer) gets a 95% interval of mean +- 1.96 sd / sqrt(n) of the paired differences.
"""

import argparse
import json
import math
import operator
import statistics

from scipy.stats import binomtest, wilcoxon

from metrics.tasks import MULTI_LABEL, REGRESSION, SINGLE_LABEL, TASKS, task_for

# predict.py's keys of each kind (metrics/tasks.py names them)
TRUTH_KEYS = {task.problem_type: task.truth_key for task in TASKS}
PREDICTION_KEYS = {task.problem_type: task.prediction_key for task in TASKS}


def mcnemar(truth: list, predicted_a: list, predicted_b: list, is_right=operator.eq) -> dict:
    """Paired comparison of two models' predictions of the same rows; is_right(true, predicted): a row is right."""
    if not len(truth) == len(predicted_a) == len(predicted_b) > 0:
        raise ValueError(f"need the same non-zero number of rows, got {len(truth)}, {len(predicted_a)}, {len(predicted_b)}")
    n = len(truth)
    right_a = [is_right(t, p) for t, p in zip(truth, predicted_a)]
    right_b = [is_right(t, p) for t, p in zip(truth, predicted_b)]
    only_a = sum(a and not b for a, b in zip(right_a, right_b))
    only_b = sum(b and not a for a, b in zip(right_a, right_b))
    difference = (only_b - only_a) / n
    # Paired standard error of the difference of two proportions measured on the same rows.
    standard_error = math.sqrt(max(only_a + only_b - (only_b - only_a) ** 2 / n, 0.0)) / n
    p_value = binomtest(only_b, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return {
        "rows": n, "accuracy_a": sum(right_a) / n, "accuracy_b": sum(right_b) / n,
        "only_a_right": only_a, "only_b_right": only_b, "difference": difference,
        "ci95": [difference - 1.96 * standard_error, difference + 1.96 * standard_error], "p_value": float(p_value),
    }


def paired_errors(truth: list, predicted_a: list, predicted_b: list) -> dict:
    """Paired comparison of two regression models' absolute errors on the same rows."""
    if not len(truth) == len(predicted_a) == len(predicted_b) > 1:
        raise ValueError(f"need the same number of rows, at least 2, got {len(truth)}, {len(predicted_a)}, "
                         f"{len(predicted_b)}")
    n = len(truth)
    errors_a = [abs(p - t) for t, p in zip(truth, predicted_a)]
    errors_b = [abs(p - t) for t, p in zip(truth, predicted_b)]
    differences = [b - a for a, b in zip(errors_a, errors_b)]
    difference = statistics.fmean(differences)
    half_width = 1.96 * statistics.stdev(differences) / math.sqrt(n)
    # Wilcoxon drops the rows with no difference; with none left there is nothing against "equally close".
    p_value = wilcoxon(differences).pvalue if any(differences) else 1.0
    return {
        "rows": n, "mae_a": statistics.fmean(errors_a), "mae_b": statistics.fmean(errors_b),
        "a_closer": sum(d > 0 for d in differences), "b_closer": sum(d < 0 for d in differences),
        "difference": difference, "ci95": [difference - half_width, difference + half_width],
        "p_value": float(p_value),
    }


def read_predictions(path: str) -> tuple[str, list, list]:
    """(problem_type, truths, predictions) from predict.py's JSONL, in row order; label sets as sorted lists."""
    rows = [json.loads(line) for line in open(path)]
    kind = next((kind for kind, key in TRUTH_KEYS.items() if rows and key in rows[0]), None)
    if kind is None:  # name the truth the file's predictions call for
        predicted = next((kind for kind, key in PREDICTION_KEYS.items() if rows and key in rows[0]), SINGLE_LABEL)
        raise ValueError(f"{path}: no {TRUTH_KEYS[predicted]}; write it with predict.py --evaluate "
                         f"--output_file {path}")
    rows.sort(key=lambda row: row["index"])
    truth, predicted = [row[TRUTH_KEYS[kind]] for row in rows], [row[PREDICTION_KEYS[kind]] for row in rows]
    if kind == MULTI_LABEL:
        truth, predicted = [sorted(names) for names in truth], [sorted(names) for names in predicted]
    return kind, truth, predicted


def print_result(kind: str, result: dict) -> None:
    low, high = result["ci95"]
    if kind == REGRESSION:
        print(f"rows: {result['rows']}\nMAE A: {result['mae_a']:.4f}\nMAE B: {result['mae_b']:.4f}\n"
              f"B - A (mean absolute error): {result['difference']:+.4f} (95% CI {low:+.4f} to {high:+.4f})\n"
              f"A closer: {result['a_closer']}, B closer: {result['b_closer']}\n"
              f"Wilcoxon signed-rank p-value (absolute errors): {result['p_value']:.3g}")
    else:
        name = "subset accuracy" if kind == MULTI_LABEL else "accuracy"
        if kind == MULTI_LABEL:
            print("multi-label: a row is right when its predicted set of labels equals the true set")
        print(f"rows: {result['rows']}\n{name} A: {result['accuracy_a']:.4f}\n{name} B: {result['accuracy_b']:.4f}\n"
              f"B - A: {result['difference']:+.4f} (95% CI {low:+.4f} to {high:+.4f})\n"
              f"only A right: {result['only_a_right']}, only B right: {result['only_b_right']}\n"
              f"McNemar exact p-value: {result['p_value']:.3g}")
    print(json.dumps(result))


def compare(path_a: str, path_b: str) -> tuple[str, dict]:
    """(problem_type, the paired test's result) of two predict.py files of the same rows."""
    kind_a, truth_a, predicted_a = read_predictions(path_a)
    kind_b, truth_b, predicted_b = read_predictions(path_b)
    if kind_a != kind_b:
        raise ValueError(f"{path_a} holds {kind_a} predictions and {path_b} {kind_b} ones: compare two models of "
                         "one kind of job")
    if truth_a != truth_b:
        truths = "true scores" if kind_a == REGRESSION else "true labels"
        raise ValueError(f"{path_a} and {path_b} do not hold the same rows ({truths} differ)")
    if kind_a == REGRESSION:
        return kind_a, paired_errors(truth_a, predicted_a, predicted_b)
    return kind_a, mcnemar(truth_a, predicted_a, predicted_b, task_for(kind_a).is_right)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("predictions_a")
    parser.add_argument("predictions_b")
    args = parser.parse_args(argv)
    try:
        kind, result = compare(args.predictions_a, args.predictions_b)
    except (ValueError, OSError) as error:
        raise SystemExit(f"error: {error}") from None
    print_result(kind, result)


if __name__ == "__main__":
    main()
