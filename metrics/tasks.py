"""The three kinds of job, by the name transformers gives them in a model config's `problem_type`, and everything that
differs between them, in one place: the head's size, the loss of each row, what an evaluation keeps of the logits,
the scores predict.py and `pipeline` show, the metrics and their printout, the confusion matrix, a row of
eval_predictions.jsonl, and what predict.py reads and writes (metrics.compare reads its keys).

- single_label_classification: one class per row; softmax, cross-entropy; accuracy, F1, precision, recall.
- multi_label_classification: any set of labels per row (a multi-hot row; none set is a valid row); a sigmoid per
  label, binary cross-entropy averaged over the labels; a label is predicted when its probability is >= the threshold.
- regression: one number per row; the raw output, squared error; Pearson, Spearman, MSE, MAE.

train.py, predict.py, the report and metrics.compare each call `task_for(problem_type)` once and use what it returns
(the report draws its last panel, and compare picks McNemar or Wilcoxon, by the problem type).
"""

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

SINGLE_LABEL, MULTI_LABEL, REGRESSION = "single_label_classification", "multi_label_classification", "regression"
PROBLEM_TYPES = (SINGLE_LABEL, MULTI_LABEL, REGRESSION)
LOWER_IS_BETTER = ("loss", "mse", "mae")  # for --metric_for_best_model; every other metric: higher is better
DEFAULT_THRESHOLD = 0.5


def per_label(truth, predicted, names: list[str], **options) -> dict:
    """{name: precision, recall, f1, support} for each class or label (scikit-learn's, no average)."""
    figures = precision_recall_fscore_support(truth, predicted, average=None, zero_division=0, **options)
    return {name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(names, *figures)}


class SingleLabel:
    problem_type = SINGLE_LABEL
    threshold = None  # multi-label only
    # predict.py's keys for the prediction and, with --evaluate, the truth (metrics.compare reads them)
    prediction_key, truth_key = "label", "true_label"
    metrics = ("accuracy", "f1", "precision", "recall")  # the first is --metric_for_best_model's default
    plotted = metrics  # drawn on report.png's evaluation axis (0..1)
    loss_name = "cross-entropy"
    titles = dict(zip(metrics, ("Accuracy", "F1-Score", "Precision", "Recall")))

    def num_outputs(self, label_names: list[str]) -> int:
        return len(label_names)

    def row_losses(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels, reduction="none")

    def outputs(self, logits: torch.Tensor) -> torch.Tensor:
        """What an evaluation gathers of each row: the predicted class id."""
        return logits.argmax(dim=-1)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """predict.py's (and pipeline's) per-label figures: class probabilities."""
        return logits.float().softmax(dim=-1)

    def predicted(self, scores: torch.Tensor) -> torch.Tensor:
        """predict.py: from its scores to what evaluate() gathers."""
        return scores.argmax(dim=-1)

    def evaluate(self, labels: np.ndarray, outputs: np.ndarray, label_names: list[str]) -> dict:
        """Binary average for two classes (positive = label 1); macro average plus per-class figures for more."""
        result = {"accuracy": float(accuracy_score(labels, outputs))}
        two = len(label_names) == 2
        options = {"average": "binary", "pos_label": 1} if two else {"labels": list(range(len(label_names))),
                                                                     "average": "macro"}
        precision, recall, f1, _ = precision_recall_fscore_support(labels, outputs, zero_division=0, **options)
        result |= {"f1": float(f1), "precision": float(precision), "recall": float(recall)}
        if not two:
            result["per_class"] = per_label(labels, outputs, label_names, labels=list(range(len(label_names))))
        return result

    def format_report(self, metrics: dict) -> str:
        """The reference's printout: `Accuracy: …`, `F1-Score: …`, `Precision: …`, `Recall: …` (with 3+ classes
        `F1-Score (macro): …`: unweighted means over the classes)."""
        macro = " (macro)" if "per_class" in metrics else ""
        return "\n".join(f"{title}{macro if key != 'accuracy' else ''}: {metrics[key]:.4f}"
                         for key, title in self.titles.items())

    def prediction_record(self, label, output, label_names: list[str]) -> dict:
        """eval_predictions.jsonl: the true and predicted class ids."""
        return {"label": int(label), "prediction": int(output)}

    def is_right(self, label, output) -> bool:
        """metrics.compare: a row this model got right (McNemar's test counts them)."""
        return label == output

    def truth(self, labels: list, label2id: dict, source: str) -> list[int]:
        """predict.py --evaluate: a file's labels as the model's class ids. Labels are ids (0..n-1) or the model's
        label names; a model whose classes are integer values (trained on labels 1/2: id2label {0: "1", 1: "2"}) takes
        the values themselves."""
        by_value = all(name.lstrip("-").isdigit() for name in label2id)
        ids = []
        for row, label in enumerate(labels):
            if isinstance(label, bool) or (isinstance(label, float) and label.is_integer()):
                label = int(label)  # train.py's classes of a bool column are 0/1; pandas writes 0.0/1.0 after a NaN
            if isinstance(label, int) and not isinstance(label, bool) and not by_value:
                if not 0 <= label < len(label2id):
                    raise ValueError(f"{source}: row {row} (0-based) has label {label}, outside the model's "
                                     f"0..{len(label2id) - 1} ({', '.join(label2id)})")
                ids.append(label)
            elif str(label) in label2id:
                ids.append(label2id[str(label)])
            else:
                raise ValueError(f"{source}: row {row} (0-based) has label {label!r}, not one of the model's "
                                 f"{sorted(label2id)}")
        return ids

    def predict_record(self, scores: list[float], names: list[str], truth=None) -> dict:
        """predict.py's row: the predicted label, its probability and every class's (and the true label)."""
        best = max(range(len(scores)), key=scores.__getitem__)
        record = {"label": names[best], "score": scores[best], "probabilities": dict(zip(names, scores))}
        return record if truth is None else record | {"true_label": names[truth]}

    def confusion(self, labels: list, outputs: list, label_names: list[str]) -> dict | None:
        """The final confusion matrix (metrics.json): rows the true classes, columns the predicted, in id order."""
        matrix = confusion_matrix(labels, outputs, labels=list(range(len(label_names))))
        return {"labels": list(label_names), "matrix": matrix.tolist()}


class MultiLabel(SingleLabel):
    problem_type = MULTI_LABEL
    prediction_key, truth_key = "labels", "true_labels"
    metrics = ("micro_f1", "macro_f1", "subset_accuracy", "micro_precision", "micro_recall", "macro_precision",
               "macro_recall")
    plotted = ("micro_f1", "macro_f1", "subset_accuracy")
    loss_name = "binary cross-entropy (mean over labels)"
    titles = {"micro_f1": "F1 (micro)", "macro_f1": "F1 (macro)", "subset_accuracy": "Subset accuracy",
              "micro_precision": "Precision (micro)", "micro_recall": "Recall (micro)",
              "macro_precision": "Precision (macro)", "macro_recall": "Recall (macro)"}

    def __init__(self, threshold: float = DEFAULT_THRESHOLD):
        self.threshold = threshold

    def row_losses(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy of each label, averaged over the labels: a step's loss, the mean of its rows' losses,
        is then the mean over every (row, label) pair, as BCEWithLogitsLoss gives it on the whole batch."""
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none").mean(dim=-1)

    def outputs(self, logits: torch.Tensor) -> torch.Tensor:
        """Each label's probability (the threshold is applied on the host, after the gather)."""
        return logits.float().sigmoid()

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().sigmoid()

    def predicted(self, scores: torch.Tensor) -> torch.Tensor:
        return scores

    def evaluate(self, labels: np.ndarray, outputs: np.ndarray, label_names: list[str]) -> dict:
        """Micro (every row-label pair counts once) and macro (the mean over labels) F1, precision and recall; subset
        accuracy (rows with every label right); a row with no label set counts like any other."""
        truth, predicted = labels.astype(int), (outputs >= self.threshold).astype(int)
        result = {"subset_accuracy": float(accuracy_score(truth, predicted))}
        for average in ("micro", "macro"):
            precision, recall, f1, _ = precision_recall_fscore_support(truth, predicted, average=average,
                                                                       zero_division=0)
            result |= {f"{average}_f1": float(f1), f"{average}_precision": float(precision),
                       f"{average}_recall": float(recall)}
        return result | {"per_label": per_label(truth, predicted, label_names)}

    def format_report(self, metrics: dict) -> str:
        return "\n".join(f"{title}: {metrics[key]:.4f}" for key, title in self.titles.items())

    def prediction_record(self, label, output, label_names: list[str]) -> dict:
        """The true and the predicted label ids (those at or above the threshold), and each label's probability."""
        return {"label": np.flatnonzero(np.asarray(label) >= 0.5).tolist(),
                "prediction": np.flatnonzero(np.asarray(output) >= self.threshold).tolist(),
                "probabilities": [round(float(p), 6) for p in output]}

    def is_right(self, label, output) -> bool:
        """Every label right (subset accuracy's row)."""
        return sorted(label) == sorted(output)

    def truth(self, labels: list, label2id: dict, source: str) -> list[list[float]]:
        """predict.py --evaluate: each row's list of labels (names or ids) as a multi-hot row."""
        rows = []
        for row, values in enumerate(labels):
            if not isinstance(values, (list, tuple)):
                raise ValueError(f"{source}: row {row} (0-based) has label {values!r}, not a list of labels; a "
                                 "multi-label model is evaluated on a list per row or one 0/1 column per label")
            hot = [0.0] * len(label2id)
            for value in values:
                if str(value) not in label2id and not (isinstance(value, int) and 0 <= value < len(label2id)):
                    raise ValueError(f"{source}: row {row} (0-based) has label {value!r}, not one of the model's "
                                     f"{sorted(label2id)} (nor an id 0..{len(label2id) - 1})")
                hot[label2id[str(value)] if str(value) in label2id else value] = 1.0
            rows.append(hot)
        return rows

    def predict_record(self, scores: list[float], names: list[str], truth=None) -> dict:
        """The labels at or above the threshold, every label's probability (and the true labels)."""
        record = {"labels": [name for name, p in zip(names, scores) if p >= self.threshold],
                  "probabilities": dict(zip(names, scores))}
        if truth is None:
            return record
        return record | {"true_labels": [name for name, hot in zip(names, truth) if hot]}

    def confusion(self, labels: list, outputs: list, label_names: list[str]) -> None:
        return None  # a matrix per label would be the per-label table's counts again


class Regression(SingleLabel):
    problem_type = REGRESSION
    prediction_key, truth_key = "score", "true_score"
    metrics = ("pearson", "spearman", "mse", "mae")
    plotted = ("pearson", "spearman")
    loss_name = "squared error"
    titles = {"pearson": "Pearson", "spearman": "Spearman", "mse": "MSE", "mae": "MAE"}

    def num_outputs(self, label_names: list[str]) -> int:
        return 1

    def row_losses(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(logits.float().squeeze(-1), labels.float(), reduction="none")

    def outputs(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().squeeze(-1)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """The raw output (pipeline applies no function for regression either)."""
        return logits.float()

    def predicted(self, scores: torch.Tensor) -> torch.Tensor:
        return scores.squeeze(-1)

    def evaluate(self, labels: np.ndarray, outputs: np.ndarray, label_names: list[str]) -> dict:
        """GLUE's STS-B metrics (Pearson and Spearman correlation) and the errors; a constant prediction (an untrained
        head can give one) has no correlation: 0."""
        labels, outputs = labels.astype(np.float64), outputs.astype(np.float64)
        varies = np.ptp(outputs) > 0 and np.ptp(labels) > 0
        errors = outputs - labels
        return {"pearson": float(pearsonr(labels, outputs)[0]) if varies else 0.0,
                "spearman": float(spearmanr(labels, outputs)[0]) if varies else 0.0,
                "mse": float(np.mean(errors**2)), "mae": float(np.mean(np.abs(errors)))}

    def format_report(self, metrics: dict) -> str:
        return "\n".join(f"{title}: {metrics[key]:.4f}" for key, title in self.titles.items())

    def prediction_record(self, label, output, label_names: list[str]) -> dict:
        return {"label": float(str(np.float32(label))), "prediction": float(output)}  # 1.2, not 1.2000000476837158

    def is_right(self, label, output) -> bool:
        raise ValueError("a regression has no right or wrong rows: compare the errors")

    def truth(self, labels: list, label2id: dict, source: str) -> list[float]:
        """predict.py --evaluate: each row's number."""
        for row, value in enumerate(labels):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
                raise ValueError(f"{source}: row {row} (0-based) has label {value!r}, not a number; a regression "
                                 "model is evaluated on a number per row")
        return [float(value) for value in labels]

    def predict_record(self, scores: list[float], names: list[str], truth=None) -> dict:
        """The predicted number (and the true one)."""
        return {"score": scores[0]} | ({} if truth is None else {"true_score": truth})

    def confusion(self, labels: list, outputs: list, label_names: list[str]) -> None:
        return None


def task_for(problem_type: str | None, threshold: float | None = None, num_labels: int = 2):
    """The task of a problem_type. A config without one (a model not saved by train.py) is read as pipeline() reads
    it: one output is a sigmoid (multi-label of one label), more are classes."""
    if problem_type is None and num_labels == 1:
        problem_type = MULTI_LABEL
    if problem_type in (None, SINGLE_LABEL):
        return SingleLabel()
    if problem_type == MULTI_LABEL:
        return MultiLabel(DEFAULT_THRESHOLD if threshold is None else threshold)
    if problem_type == REGRESSION:
        return Regression()
    raise ValueError(f"problem_type {problem_type!r}: not one of {', '.join(PROBLEM_TYPES)}")


TASKS = (SingleLabel, MultiLabel, Regression)
ALL_METRICS = tuple(dict.fromkeys((*SingleLabel.metrics, *MultiLabel.metrics, *Regression.metrics, "loss")))
