"""Metrics: what each kind of job reports (metrics/tasks.py: accuracy/F1/precision/recall with scikit-learn, as the
reference recipe reports them; micro/macro F1 and subset accuracy for multi-label; Pearson, Spearman, MSE and MAE for
regression), the report, and paired comparisons of two models."""

from metrics.tasks import (ALL_METRICS, LOWER_IS_BETTER, MULTI_LABEL, PROBLEM_TYPES, REGRESSION, SINGLE_LABEL,
                           SingleLabel, task_for)


def classification_metrics(labels, predictions, label_names: list[str]) -> dict:
    """Single-label metrics: binary average for two classes (positive = label 1); macro plus per-class for more."""
    return SingleLabel().evaluate(labels, predictions, label_names)


def format_report(metrics: dict) -> str:
    """The reference's printout of single-label metrics (other kinds: task_for(problem_type).format_report)."""
    return SingleLabel().format_report(metrics)


__all__ = ["ALL_METRICS", "LOWER_IS_BETTER", "MULTI_LABEL", "PROBLEM_TYPES", "REGRESSION", "SINGLE_LABEL",
           "classification_metrics", "format_report", "task_for"]
