"""Metrics: accuracy, precision, recall and F1 with scikit-learn, as the reference recipe reports them."""

from sklearn.metrics import accuracy_score, precision_recall_fscore_support

METRICS = ("accuracy", "f1", "precision", "recall")
EVAL_SCALARS = (*METRICS, "loss")  # what every evaluation reports (and --metric_for_best_model can pick)
REPORT_TITLES = dict(zip(METRICS, ("Accuracy", "F1-Score", "Precision", "Recall")))


def classification_metrics(labels, predictions, label_names: list[str]) -> dict:
    """Binary average for two classes (positive = label 1); macro average plus per-class figures for more."""
    result = {"accuracy": float(accuracy_score(labels, predictions))}
    if len(label_names) == 2:
        precision, recall, f1, _ = precision_recall_fscore_support(
            labels, predictions, average="binary", pos_label=1, zero_division=0
        )
        return result | {"f1": float(f1), "precision": float(precision), "recall": float(recall)}
    ids = list(range(len(label_names)))
    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, predictions, labels=ids, average="macro", zero_division=0
    )
    result |= {"f1": float(f1), "precision": float(precision), "recall": float(recall)}
    per_class = precision_recall_fscore_support(labels, predictions, labels=ids, average=None, zero_division=0)
    result["per_class"] = {
        name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for name, p, r, f, s in zip(label_names, *per_class)
    }
    return result


def averaging(metrics: dict) -> str:
    """How F1, precision and recall were averaged: "binary" (positive = label 1) or "macro" (3+ classes)."""
    return "macro" if "per_class" in metrics else "binary"


def format_report(metrics: dict) -> str:
    """The reference's printout: `Accuracy: …`, `F1-Score: …`, `Precision: …`, `Recall: …` (with 3+ classes
    `F1-Score (macro): …`: unweighted means over the classes)."""
    macro = " (macro)" if averaging(metrics) == "macro" else ""
    return "\n".join(f"{title}{macro if key != 'accuracy' else ''}: {metrics[key]:.4f}"
                     for key, title in REPORT_TITLES.items())
