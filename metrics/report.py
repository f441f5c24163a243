"""The run at a glance: report.md (config, before/after, per-epoch table, time, throughput) and report.png (loss and
learning rate per step, evaluation metrics per step with the "before" point, the final confusion matrix).

matplotlib is optional: without it report.png is skipped with a notice; report.md needs nothing. Both can be drawn
again from a finished run's folder (after `pip install matplotlib`, say):

    python -m metrics.report result
"""

import argparse
import json
import logging
from pathlib import Path

from sklearn.metrics import confusion_matrix

from metrics import EVAL_SCALARS, METRICS, averaging
from metrics.history import History

logger = logging.getLogger(__name__)

PRECISION_NAMES = {"no": "fp32"}


def confusion(labels, predictions, label_names: list[str]) -> dict:
    """Rows are the true labels, columns the predicted ones, both in label-id order."""
    matrix = confusion_matrix(labels, predictions, labels=list(range(len(label_names))))
    return {"labels": list(label_names), "matrix": matrix.tolist()}


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


def write_markdown(path: Path, history: History) -> None:
    config, speed = history.config, history.speed
    before, after = history.before, history.after
    lines = [f"# {config['model_name_or_path']} on {config['dataset_name']}", "",
             f"{config['train_rows']} train / {config['eval_rows']} eval rows, {config['num_train_epochs']} epochs, "
             f"{config['max_train_steps']} optimizer steps of {config['total_train_batch_size']} rows, "
             f"lr {config['learning_rate']}, weight decay {config['weight_decay']}, precision "
             f"{PRECISION_NAMES.get(config['mixed_precision'], config['mixed_precision'])}, {config['num_processes']} "
             f"process(es), max length {config['max_length']} "
             f"(keep {config['truncation_keep']}).", "", "## Before and after training", ""]
    lines += _table(["", *EVAL_SCALARS], [[name, *(_number(m[k]) for k in EVAL_SCALARS)]
                                             for name, m in (("before", before), ("after", after))])
    if averaging(after) == "macro":
        lines += ["", "F1, precision and recall are macro averages: the unweighted mean over the classes.", "",
                  "## Per class (after training)", ""]
        lines += _table(["class", "precision", "recall", "f1", "support"],
                        [[name, *(_number(c[k]) for k in ("precision", "recall", "f1")), c["support"]]
                         for name, c in after["per_class"].items()])
    lines += ["", "## Per epoch", ""]
    lines += _table(["epoch", "step", "train loss", *METRICS, "eval loss"],
                    [[e["epoch"], e["step"], _number(e["train_loss"]), *(_number(e.get(k)) for k in EVAL_SCALARS)]
                     for e in history.epochs])
    if len(history.evaluations) != len(history.epochs):  # evaluations every N steps
        lines += ["", "## Evaluations", ""]
        lines += _table(["epoch", "step", *EVAL_SCALARS],
                        [[e["epoch"], e["step"], *(_number(e[k]) for k in EVAL_SCALARS)]
                         for e in history.evaluations])
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


def write_picture(path: Path, history: History, log: list[dict]) -> bool:
    """report.png; False (with a notice) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib is not installed: skipping report.png (pip install matplotlib); report.md is written")
        return False
    figure, ((loss_axis, lr_axis), (eval_axis, matrix_axis)) = plt.subplots(2, 2, figsize=(13, 9))
    before, after, config = history.before, history.after, history.config
    figure.suptitle(f"{Path(config['model_name_or_path']).name}: {config['train_rows']} train rows, "
                    f"{config['num_train_epochs']} epochs - accuracy {before['accuracy']:.3f} before, "
                    f"{after['accuracy']:.3f} after", fontsize=13)
    steps = [record["step"] for record in log]
    loss_axis.plot(steps, [record["loss"] for record in log], color="tab:blue", alpha=0.45,
                   label="train loss (each logged window)")
    loss_axis.plot([e["step"] for e in history.epochs], [e["train_loss"] for e in history.epochs], "s-",
                   color="navy", label="train loss (epoch mean)")
    evaluations = history.evaluations
    loss_axis.plot([0] + [e["step"] for e in evaluations], [before["loss"]] + [e["loss"] for e in evaluations],
                   "o--", color="tab:red", label="eval loss")
    for epoch in history.epochs:
        for axis in (loss_axis, lr_axis, eval_axis):
            axis.axvline(epoch["step"], color="grey", linestyle=":", linewidth=0.8)
    loss_axis.set(title="Loss (dotted lines: epoch ends)", xlabel="optimizer step", ylabel="cross-entropy")
    loss_axis.legend()
    lr_axis.plot(steps, [record["learning_rate"] for record in log], color="tab:green")
    lr_axis.set(title="Learning rate", xlabel="optimizer step", ylabel="learning rate")
    lr_axis.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    eval_steps = [0] + [e["step"] for e in evaluations]
    for metric in METRICS:
        values = [before[metric]] + [e[metric] for e in evaluations]
        eval_axis.plot(eval_steps, values, "o-", label=f"{metric} ({values[-1]:.3f})")
    if history.confusion_matrix:  # what always answering the most common label would score
        majority = max(map(sum, history.confusion_matrix["matrix"])) / config["eval_rows"]
        eval_axis.axhline(majority, color="grey", linestyle="--", label=f"majority-label accuracy ({majority:.3f})")
    eval_axis.set(title=f"Evaluation on {config['eval_rows']} rows (step 0: before training)", xlabel="optimizer step",
                  ylim=(0, 1.02))
    eval_axis.legend(loc="lower right")
    if history.confusion_matrix:
        names, matrix = history.confusion_matrix["labels"], history.confusion_matrix["matrix"]
        matrix_axis.imshow(matrix, cmap="Blues")
        for true, row in enumerate(matrix):
            for predicted, count in enumerate(row):
                share = count / max(sum(row), 1)
                matrix_axis.text(predicted, true, f"{count}\n{share:.1%}", ha="center", va="center",
                                 color="white" if share > 0.5 else "black")
        matrix_axis.set(title="Confusion matrix after training", xlabel="predicted", ylabel="true",
                        xticks=range(len(names)), yticks=range(len(names)), xticklabels=names, yticklabels=names)
    else:
        matrix_axis.set_axis_off()
        matrix_axis.text(0.5, 0.5, "no final predictions\n(resumed after the last evaluation)", ha="center")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m metrics.report", description="Draw report.md and report.png "
                                     "again from an output dir's metrics.json and log.jsonl.")
    parser.add_argument("output_dir")
    folder = Path(parser.parse_args(argv).output_dir)
    if not (folder / "metrics.json").is_file():
        raise SystemExit(f"error: {folder}: no metrics.json (is it a finished train.py output dir?)")
    history = History.read(folder / "metrics.json")
    log = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    write_markdown(folder / "report.md", history)
    drawn = write_picture(folder / "report.png", history, log)
    print(f"wrote {folder / 'report.md'}" + (f" and {folder / 'report.png'}" if drawn else ""))


if __name__ == "__main__":
    logging.basicConfig(format="%(message)s", level=logging.INFO)
    main()
