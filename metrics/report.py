"""The run at a glance: report.md (config, before/after, per-epoch table, time, throughput) and report.png (loss and
learning rate per step, evaluation metrics per step with the "before" point, and the final model on the eval rows: the
confusion matrix (single-label), each label's F1 (multi-label), or predicted against true scores (regression)).
The job's kind, and so its metrics, comes from metrics.json's config["problem_type"] (older runs: single-label).

matplotlib is optional: without it report.png is skipped with a notice; report.md needs nothing. Both can be drawn
again from a finished run's folder (after `pip install matplotlib`, say); the scatter of a regression reads
eval_predictions.jsonl:

    python -m metrics.report result
"""

import argparse
import json
import logging
from pathlib import Path


from metrics.history import History
from metrics.tasks import MULTI_LABEL, REGRESSION, SINGLE_LABEL, task_for

logger = logging.getLogger(__name__)

PRECISION_NAMES = {"no": "fp32"}


def _row(cells) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def _table(header: list, rows: list) -> list[str]:
    return [_row(header), _row(["---"] * len(header)), *(_row(row) for row in rows)]


def _number(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "" if value is None else str(value)


def duration(seconds: float) -> str:
    """A time a reader can see at any size: 0.42 s reads as 420 ms, not 0 s."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.1f} s" if seconds < 100 else f"{seconds:,.0f} s"


def run_task(history: History):
    """The run's task, from its record (metrics.json files from before problem_type: single-label)."""
    return task_for(history.config.get("problem_type"), history.config.get("threshold"))


def _header(config: dict) -> list[str]:
    return [f"# {config['model_name_or_path']} on {config['dataset_name']}", "",
            f"{config['train_rows']} train / {config['eval_rows']} eval rows, {config['num_train_epochs']} epochs, "
            f"{config['max_train_steps']} optimizer steps of {config['total_train_batch_size']} rows, "
            f"lr {config['learning_rate']}, weight decay {config['weight_decay']}, precision "
            f"{PRECISION_NAMES.get(config['mixed_precision'], config['mixed_precision'])}, {config['num_processes']} "
            f"process(es), max length {config['max_length']} "
            f"(keep {config['truncation_keep']}).", ""]


def _after_notes(task, after: dict) -> list[str]:
    """What the metrics mean, and the per-class or per-label figures of the final model."""
    if task.problem_type == REGRESSION:
        return ["", "Pearson and Spearman: the correlation of the predicted with the true scores (1 at best, 0 for "
                "none, negative when reversed); MSE and MAE: the mean squared and the mean absolute error (0 at best)."]
    if task.problem_type == MULTI_LABEL:
        lines = ["", f"A label is predicted when its probability is >= {task.threshold}. Micro averages count every "
                 "(row, label) pair once, macro averages are the unweighted mean over the labels; subset accuracy is "
                 "the share of rows with every label right."]
        if "per_label" in after:
            lines += ["", "## Per label (after training)", ""]
            lines += _table(["label", "support", "precision", "recall", "f1"],
                            [[name, c["support"], *(_number(c[k]) for k in ("precision", "recall", "f1"))]
                             for name, c in after["per_label"].items()])
        return lines
    if "per_class" not in after:  # two classes: binary figures of the positive class
        return []
    lines = ["", "F1, precision and recall are macro averages: the unweighted mean over the classes.", "",
             "## Per class (after training)", ""]
    return lines + _table(["class", "precision", "recall", "f1", "support"],
                          [[name, *(_number(c[k]) for k in ("precision", "recall", "f1")), c["support"]]
                           for name, c in after["per_class"].items()])


def _progress(history: History, metrics: tuple) -> list[str]:
    """The per-epoch table, and the evaluations table when evaluations came every N steps."""
    scalars = (*metrics, "loss")
    lines = ["", "## Per epoch", ""]
    lines += _table(["epoch", "step", "train loss", *metrics, "eval loss"],
                    [[e["epoch"], e["step"], _number(e["train_loss"]), *(_number(e.get(k)) for k in scalars)]
                     for e in history.epochs])
    if len(history.evaluations) != len(history.epochs):  # evaluations every N steps
        lines += ["", "## Evaluations", ""]
        lines += _table(["epoch", "step", *scalars],
                        [[e["epoch"], e["step"], *(_number(e[k]) for k in scalars)] for e in history.evaluations])
    return lines


def write_markdown(path: Path, history: History) -> None:
    config, speed, task = history.config, history.speed, run_task(history)
    before, after, scalars = history.before, history.after, (*task.metrics, "loss")
    lines = _header(config) + ["## Before and after training", ""]
    lines += _table(["", *scalars], [[name, *(_number(m[k]) for k in scalars)]
                                     for name, m in (("before", before), ("after", after))])
    lines += _after_notes(task, after) + _progress(history, task.metrics)
    if history.best:
        best = history.best
        lines += ["", f"Best {best['metric']}: {best['value']:.4f} at step {best['step']} (epoch {best['epoch']})."]
    if history.stopped_early:
        lines += ["", f"Stopped early at step {history.stopped_early['step']}: {history.stopped_early['reason']}."]
    if history.confusion_matrix:
        names = history.confusion_matrix["labels"]
        lines += ["", "## Confusion matrix (rows: true, columns: predicted)", ""]
        lines += _table(["", *names], [[name, *row] for name, row in zip(names, history.confusion_matrix["matrix"])])
    lines += ["", "## Time and throughput", "",
              f"- wall time: {duration(history.runtime_seconds)} (tokenizing {duration(speed['tokenize_seconds'])}, "
              f"training {duration(speed['train_seconds'])}, evaluations {duration(history.evaluation_seconds())})",
              f"- training: {speed['train_samples_per_second']:.2f} samples/s; padding efficiency train "
              f"{speed['train_padding_efficiency']:.3f}, eval {speed['eval_padding_efficiency']:.3f}", ""]
    path.write_text("\n".join(lines))


def _draw_loss_and_rate(loss_axis, lr_axis, history: History, log: list[dict], loss_name: str) -> None:
    steps = [record["step"] for record in log]
    loss_axis.plot(steps, [record["loss"] for record in log], color="tab:blue", alpha=0.45,
                   label="train loss (each logged window)")
    loss_axis.plot([e["step"] for e in history.epochs], [e["train_loss"] for e in history.epochs], "s-",
                   color="navy", label="train loss (epoch mean)")
    evaluations = history.evaluations
    loss_axis.plot([0] + [e["step"] for e in evaluations], [history.before["loss"]] + [e["loss"] for e in evaluations],
                   "o--", color="tab:red", label="eval loss")
    loss_axis.set(title="Loss (dotted lines: epoch ends)", xlabel="optimizer step", ylabel=loss_name)
    loss_axis.legend()
    lr_axis.plot(steps, [record["learning_rate"] for record in log], color="tab:green")
    lr_axis.set(title="Learning rate", xlabel="optimizer step", ylabel="learning rate")
    lr_axis.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))


def _draw_evaluations(axis, history: History, task) -> None:
    """The task's bounded metrics at step 0 (before) and every evaluation; correlations can go below 0."""
    evaluations, config = history.evaluations, history.config
    eval_steps = [0] + [e["step"] for e in evaluations]
    lowest = 0.0
    for metric in task.plotted:
        values = [history.before[metric]] + [e[metric] for e in evaluations]
        axis.plot(eval_steps, values, "o-", label=f"{metric} ({values[-1]:.3f})")
        lowest = min(lowest, *values)
    if history.confusion_matrix:  # what always answering the most common label would score
        majority = max(map(sum, history.confusion_matrix["matrix"])) / config["eval_rows"]
        axis.axhline(majority, color="grey", linestyle="--", label=f"majority-label accuracy ({majority:.3f})")
    if lowest < 0:
        axis.axhline(0, color="black", linewidth=0.6)
    axis.set(title=f"Evaluation on {config['eval_rows']} rows (step 0: before training)", xlabel="optimizer step",
             ylim=(lowest - 0.02 if lowest < 0 else 0, 1.02))
    axis.legend(loc="lower right")


def _draw_confusion_matrix(axis, history: History, predictions: list[dict] | None) -> bool:
    if not history.confusion_matrix:
        return False
    names, matrix = history.confusion_matrix["labels"], history.confusion_matrix["matrix"]
    axis.imshow(matrix, cmap="Blues")
    for true, row in enumerate(matrix):
        for predicted, count in enumerate(row):
            share = count / max(sum(row), 1)
            axis.text(predicted, true, f"{count}\n{share:.1%}", ha="center", va="center",
                      color="white" if share > 0.5 else "black")
    axis.set(title="Confusion matrix after training", xlabel="predicted", ylabel="true",
             xticks=range(len(names)), yticks=range(len(names)), xticklabels=names, yticklabels=names)
    return True


def _draw_label_f1(axis, history: History, predictions: list[dict] | None) -> bool:
    """Each label's F1 after training, its support (the eval rows with the label) above the bar."""
    per_label = (history.after or {}).get("per_label")
    if not per_label:
        return False
    names = list(per_label)
    bars = axis.bar(range(len(names)), [per_label[name]["f1"] for name in names], color="tab:purple")
    for bar, name in zip(bars, names):
        axis.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.01, f"n={per_label[name]['support']}",
                  ha="center", va="bottom", fontsize=8)
    axis.set(title="F1 of each label after training (n: the eval rows with the label)", ylabel="F1", ylim=(0, 1.1),
             xticks=range(len(names)))
    axis.set_xticklabels(names, rotation=90 if len(names) > 8 else 0)
    return True


def _draw_scatter(axis, history: History, predictions: list[dict] | None) -> bool:
    """The final model's score of each eval row against the true one; on the y = x line: exact."""
    if not predictions:
        return False
    truth, predicted = [p["label"] for p in predictions], [p["prediction"] for p in predictions]
    low, high = min(*truth, *predicted), max(*truth, *predicted)
    axis.scatter(truth, predicted, s=8, alpha=0.5, color="tab:blue")
    axis.plot([low, high], [low, high], color="grey", linestyle="--", label="y = x (exact)")
    axis.set(title=f"Predicted against true after training ({len(predictions)} rows)", xlabel="true score",
             ylabel="predicted score")
    axis.legend(loc="upper left")
    return True


FINAL_PANELS = {SINGLE_LABEL: _draw_confusion_matrix, MULTI_LABEL: _draw_label_f1, REGRESSION: _draw_scatter}


def write_picture(path: Path, history: History, log: list[dict], predictions: list[dict] | None = None) -> bool:
    """report.png; `predictions`: eval_predictions.jsonl's rows (the regression scatter). False (with a notice) when
    matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib is not installed: skipping report.png (pip install matplotlib); report.md is written")
        return False
    task, config, before, after = run_task(history), history.config, history.before, history.after
    headline = task.metrics[0]
    figure, ((loss_axis, lr_axis), (eval_axis, final_axis)) = plt.subplots(2, 2, figsize=(13, 9))
    figure.suptitle(f"{Path(config['model_name_or_path']).name}: {config['train_rows']} train rows, "
                    f"{config['num_train_epochs']} epochs - {task.titles[headline]} {before[headline]:.3f} before, "
                    f"{after[headline]:.3f} after", fontsize=13)
    _draw_loss_and_rate(loss_axis, lr_axis, history, log, task.loss_name)
    _draw_evaluations(eval_axis, history, task)
    for epoch in history.epochs:
        for axis in (loss_axis, lr_axis, eval_axis):
            axis.axvline(epoch["step"], color="grey", linestyle=":", linewidth=0.8)
    if not FINAL_PANELS[task.problem_type](final_axis, history, predictions):
        final_axis.set_axis_off()
        final_axis.text(0.5, 0.5, "no final predictions\n(resumed after the last evaluation)", ha="center")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def read_predictions(folder: Path) -> list[dict] | None:
    """eval_predictions.jsonl's rows; None when the run wrote none."""
    path = folder / "eval_predictions.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else None


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m metrics.report", description="Draw report.md and report.png "
                                     "again from an output dir's metrics.json, log.jsonl and eval_predictions.jsonl.")
    parser.add_argument("output_dir")
    folder = Path(parser.parse_args(argv).output_dir)
    if not (folder / "metrics.json").is_file():
        raise SystemExit(f"error: {folder}: no metrics.json (is it a finished train.py output dir?)")
    history = History.read(folder / "metrics.json")
    log = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    write_markdown(folder / "report.md", history)
    drawn = write_picture(folder / "report.png", history, log, read_predictions(folder))
    print(f"wrote {folder / 'report.md'}" + (f" and {folder / 'report.png'}" if drawn else ""))


if __name__ == "__main__":
    logging.basicConfig(format="%(message)s", level=logging.INFO)
    main()
