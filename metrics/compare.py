"""Is model B better than model A on the same rows? McNemar's exact test on their paired predictions.

    python -m metrics.compare A.jsonl B.jsonl     # files from `predict.py MODEL --input_file F --evaluate --output_file`

Only the rows the two models disagree on carry information: b = A right and B wrong, c = A wrong and B right. Under
"equally accurate", each such row is a fair coin, so the p-value is the two-sided binomial test of c out of b + c.
The accuracy difference (B - A) = (c - b) / n gets a 95% interval from the paired standard error.
"""

import argparse
import json
import math

from scipy.stats import binomtest


def mcnemar(truth: list, predicted_a: list, predicted_b: list) -> dict:
    """Paired comparison of two models' predictions of the same rows."""
    if not len(truth) == len(predicted_a) == len(predicted_b) > 0:
        raise ValueError(f"need the same non-zero number of rows, got {len(truth)}, {len(predicted_a)}, {len(predicted_b)}")
    n = len(truth)
    right_a = [p == t for p, t in zip(predicted_a, truth)]
    right_b = [p == t for p, t in zip(predicted_b, truth)]
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


def read_predictions(path: str) -> tuple[list, list]:
    """(true labels, predicted labels) from predict.py's JSONL, in row order."""
    rows = [json.loads(line) for line in open(path)]
    if not rows or "true_label" not in rows[0]:
        raise ValueError(f"{path}: no true_label; write it with predict.py --evaluate --output_file {path}")
    rows.sort(key=lambda row: row["index"])
    return [row["true_label"] for row in rows], [row["label"] for row in rows]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("predictions_a")
    parser.add_argument("predictions_b")
    args = parser.parse_args(argv)
    try:
        truth_a, predicted_a = read_predictions(args.predictions_a)
        truth_b, predicted_b = read_predictions(args.predictions_b)
        if truth_a != truth_b:
            raise ValueError(f"{args.predictions_a} and {args.predictions_b} do not hold the same rows (true labels differ)")
        result = mcnemar(truth_a, predicted_a, predicted_b)
    except (ValueError, OSError) as error:
        raise SystemExit(f"error: {error}") from None
    low, high = result["ci95"]
    print(f"rows: {result['rows']}\naccuracy A: {result['accuracy_a']:.4f}\naccuracy B: {result['accuracy_b']:.4f}\n"
          f"B - A: {result['difference']:+.4f} (95% CI {low:+.4f} to {high:+.4f})\n"
          f"only A right: {result['only_a_right']}, only B right: {result['only_b_right']}\n"
          f"McNemar exact p-value: {result['p_value']:.3g}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
