"""Metrics: accuracy, precision, recall and F1 with scikit-learn, as the reference recipe reports them."""

from sklearn.metrics import accuracy_score, precision_recall_fscore_support

REPORT_NAMES = {"accuracy": "Accuracy", "f1": "F1-Score", "precision": "Precision", "recall": "Recall"}


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


def format_report(metrics: dict) -> str:
    """The reference's printout: `Accuracy: …`, `F1-Score: …`, `Precision: …`, `Recall: …`."""
    return "\n".join(f"{title}: {metrics[key]:.4f}" for key, title in REPORT_NAMES.items())


class BestTracker:
    """The best evaluation so far by one metric, and how many evaluations have passed without beating it."""

    LOWER_IS_BETTER = ("loss",)

    def __init__(self, metric: str, patience: int | None = None):
        self.metric, self.patience = metric, patience
        self.best: dict | None = None  # {"metric", "value", "epoch", "step"}
        self.evaluations_without_improvement = 0

    def update(self, metrics: dict, epoch: int, step: int) -> bool:
        """Record an evaluation; True if it is the new best."""
        value = metrics[self.metric]
        if self.best is None:
            improved = True
        elif self.metric in self.LOWER_IS_BETTER:
            improved = value < self.best["value"]
        else:
            improved = value > self.best["value"]
        if improved:
            self.best = {"metric": self.metric, "value": value, "epoch": epoch, "step": step}
            self.evaluations_without_improvement = 0
        else:
            self.evaluations_without_improvement += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.evaluations_without_improvement >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "evaluations_without_improvement": self.evaluations_without_improvement}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.evaluations_without_improvement = state["best"], state["evaluations_without_improvement"]
