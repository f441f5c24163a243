"""McNemar's exact test on two models' paired predictions (python -m metrics.compare)."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT
from metrics.compare import mcnemar


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


def test_cli_reads_predict_outputs_and_refuses_files_without_labels(tmp_path):
    def write(name, labels, truth=True):
        rows = [{"index": i, "label": label} | ({"true_label": "pos"} if truth else {}) for i, label in enumerate(labels)]
        (tmp_path / name).write_text("".join(json.dumps(row) + "\n" for row in reversed(rows)))  # order by index
        return str(tmp_path / name)

    a, b = write("a.jsonl", ["pos", "neg", "neg", "neg"]), write("b.jsonl", ["pos", "pos", "pos", "neg"])
    result = subprocess.run([sys.executable, "-m", "metrics.compare", a, b], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.splitlines()[-1])
    assert (summary["accuracy_a"], summary["accuracy_b"], summary["only_b_right"], summary["p_value"]) == (0.25, 0.75, 2, 0.5)
    bare = write("bare.jsonl", ["pos"], truth=False)
    result = subprocess.run([sys.executable, "-m", "metrics.compare", a, bare], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: {bare}: no true_label; write it with predict.py --evaluate --output_file {bare}"
