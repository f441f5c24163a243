"""What a run leaves in --output_dir: refused when it would overwrite a previous run by accident, cleared of a replaced
run's leftovers, log.jsonl continued on resume, the saved model (every process calls save_model), and at the end
metrics.json, eval_predictions.jsonl, report.md and report.png. Only the main process writes."""

import json
import logging
import os
import shutil
from pathlib import Path

from metrics.history import History
from model.lora import ADAPTER_DIR, is_lora, merged_state_dict
from metrics.report import write_markdown, write_picture
from training.checkpoints import find_checkpoint, list_checkpoints

logger = logging.getLogger("train")

BEST_RECORD = "best_evaluation.json"  # in best/: which evaluation its model is ({"metric", "value", "epoch", "step"})


def output_dir_problem(path: str) -> str | None:
    """Checked with the flag, before anything is loaded."""
    return "is a file; --output_dir names a folder" if Path(path).is_file() else None


def check_output_dir(config) -> Path | None:
    """Before any work: the checkpoint to resume, or None; refuse to overwrite a previous run by accident."""
    output_dir = Path(config.output_dir)
    if config.resume_from_checkpoint:
        return find_checkpoint(config.resume_from_checkpoint, output_dir)
    if output_dir.is_dir() and any(output_dir.iterdir()) and not config.overwrite_output_dir:
        resumable = ("or --resume_from_checkpoint latest to continue the run in it" if list_checkpoints(output_dir)
                     else "or another --output_dir (it holds no checkpoint to resume from)")
        raise FileExistsError(f"--output_dir {output_dir} is not empty: pass --overwrite_output_dir to replace it, "
                              f"{resumable}")
    return None


def open_output_dir(output_dir: Path, overwrite: bool, resumed_step: int | None):
    """On the main process: the folder made ready and log.jsonl opened (a resumed run keeps the lines up to its
    checkpoint's step; a replaced run's checkpoints/, best/ and tensorboard/ are removed). Elsewhere: None."""
    if overwrite and resumed_step is None:
        for stale in ("checkpoints", "best", "tensorboard", ADAPTER_DIR):  # a previous run's: not to be mixed in
            shutil.rmtree(output_dir / stale, ignore_errors=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    kept = []
    if resumed_step is not None and (output_dir / "log.jsonl").exists():  # drop lines logged after the checkpoint
        kept = [line for line in (output_dir / "log.jsonl").read_text().splitlines()
                if json.loads(line)["step"] <= resumed_step]
    log_file = open(output_dir / "log.jsonl", "w")
    log_file.writelines(line + "\n" for line in kept)
    return log_file


def find_best_model(best: dict, output_dir: Path, checkpoint: Path) -> Path | None:
    """--load_best_model_at_end, resumed after the best evaluation: the folder with its model, or None with a warning
    now (the run then ends with the last step's model, unless a later evaluation is better). Looked for in
    --output_dir's best/, the checkpoint's run's best/ (resumed into another folder), and --output_dir itself (a
    finished run, whose final model is the best)."""
    for folder in (output_dir / "best", checkpoint.parent.parent / "best"):
        record = folder / BEST_RECORD
        if record.is_file() and json.loads(record.read_text())["step"] == best["step"]:
            return folder
    if final_model_is(best, output_dir):
        return output_dir
    logger.warning(f"--load_best_model_at_end: the best evaluation's model (step {best['step']}) is in neither "
                   f"{output_dir / 'best'} nor {checkpoint.parent.parent / 'best'}; unless a later evaluation is "
                   "better, the final model will be the last step's")
    return None


def final_model_is(best: dict, output_dir: Path) -> bool:
    """Whether the model in output_dir is the best evaluation's: metrics.json says so (its `after` is that
    evaluation's metrics)."""
    if not (output_dir / "metrics.json").is_file():
        return False
    metrics = json.loads((output_dir / "metrics.json").read_text())
    evaluation = next((e for e in metrics.get("evaluations", []) if e["step"] == best["step"]), {})
    return metrics.get("best") == best and metrics["after"].items() <= evaluation.items()


def save_model(model, tokenizer, accelerator, directory: Path) -> None:
    """save_pretrained in a form `pipeline(model=directory)` loads; every process must call it (FSDP/DeepSpeed)."""
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    if is_lora(unwrapped):  # (DDP or one process only: each process holds the full weights)
        if accelerator.is_main_process:
            unwrapped.save_pretrained(directory / ADAPTER_DIR)  # the adapter and the head alone, for peft users
        # The adapter merged, so pipeline() loads a plain model; built and written by the main process only.
        state_dict = merged_state_dict(unwrapped) if accelerator.is_main_process else None
        unwrapped = unwrapped.get_base_model()
    else:
        state_dict = accelerator.get_state_dict(model)  # a collective under FSDP/DeepSpeed
    unwrapped.save_pretrained(
        directory, is_main_process=accelerator.is_main_process, save_function=accelerator.save, state_dict=state_dict
    )
    if accelerator.is_main_process:
        tokenizer.save_pretrained(directory)
        readable_by_all(directory)
    accelerator.wait_for_everyone()


def save_best_model(model, tokenizer, accelerator, output_dir: Path, best: dict) -> Path:
    """output_dir/best: the model, and which evaluation it is (BEST_RECORD: a resume checks it is still the best)."""
    directory = output_dir / "best"
    save_model(model, tokenizer, accelerator, directory)
    if accelerator.is_main_process:
        (directory / BEST_RECORD).write_text(json.dumps(best) + "\n")
    return directory


def readable_by_all(directory: Path) -> None:
    """safetensors writes its files owner-only (0600); the model is shared like every other output (the umask's
    mode, 0644 under the usual 022)."""
    umask = os.umask(0)
    os.umask(umask)
    for weights in [*directory.glob("*.safetensors"), *(directory / ADAPTER_DIR).glob("*.safetensors")]:
        weights.chmod(0o666 & ~umask)


def write_results(output_dir: Path, history: History, task, eval_labels: list, outputs: list | None,
                  label_names: list[str]) -> None:
    """metrics.json, eval_predictions.jsonl (the final model's output for every eval row, in input order, as
    task.prediction_record gives it: unknown only when resuming after the evaluation that made it), the confusion
    matrix (single-label only), report.md and report.png. `outputs`: the task's outputs() on the host, per row."""
    records = None
    if outputs is not None:
        records = [{"row": i, **task.prediction_record(label, output, label_names)}
                   for i, (label, output) in enumerate(zip(eval_labels, outputs, strict=True))]
        (output_dir / "eval_predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        history.confusion_matrix = task.confusion(eval_labels, outputs, label_names)  # single-label only
    history.write(output_dir / "metrics.json")
    write_markdown(output_dir / "report.md", history)
    write_picture(output_dir / "report.png", history,
                  [json.loads(line) for line in (output_dir / "log.jsonl").read_text().splitlines()], records)
