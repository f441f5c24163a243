"""README.md in --output_dir: a model card in the Hub's format (YAML metadata, model-index with the final metrics),
built from metrics.json alone, so any finished run (every kind of task, resumed or not) gets the same card; and
--push_to_hub: checked before any work, uploaded at the end, a failed upload one line with the command to retry."""

import dataclasses
import math
import shlex
import sys
from pathlib import Path

from accelerate.utils import broadcast_object_list
from huggingface_hub import (EvalResult, ModelCard, ModelCardData, constants, create_repo, get_token,
                             try_to_load_from_cache, upload_folder)
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from metrics.history import History
from metrics.tasks import MULTI_LABEL, REGRESSION, task_for
from training.cli import Parser, RunError
from training.environment import under_accelerate_launch
from training.outputs import final_model_is

CARD = "README.md"
# Not uploaded: checkpoints/ (optimizer and RNG states, each ~3x the model: for resuming here, not for using the
# model), best/ (a second full copy of a model), profile_* (a trace can be hundreds of MB). tensorboard/ goes: the Hub
# shows its event files as the repo's training metrics.
PUSH_IGNORE = ("checkpoints/*", "best/*", "profile_*")
SECRET_FLAGS = ("hub_token",)  # never written to metrics.json, the card or a tracker
KINDS = {MULTI_LABEL: "multi-label", REGRESSION: "regression"}  # else single-label: the tag
DOING = {"single-label": "single-label text classification", "multi-label": "multi-label text classification",
         "regression": "regression on text (a score per row)"}
REPO_NAME = "not a Hub repository name (NAME or NAMESPACE/NAME: letters, digits, '-', '_', '.'; at most 96)"


def valid_repo_name(name: str) -> bool:
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def is_hub_id(name: str | None) -> bool:
    """A Hub name rather than a local path: the Hub rejects a card whose `base_model` or `datasets` is a path."""
    return bool(name) and not Path(name).exists() and valid_repo_name(name)


def redact(flags: dict) -> dict:
    """The flags with each token replaced by a placeholder, as the Trainer's TrainingArguments.to_dict does."""
    return {name: (f"<{name}>" if name in SECRET_FLAGS and value else value) for name, value in flags.items()}


# ---- The command ----

def command_line(config, num_processes: int) -> str:
    """The command that made the run: sys.argv when train.py is the program (under `accelerate launch` too; the
    launcher's own flags are not visible, only its process count), else (train.main called from Python) the flags that
    differ from their defaults. Tokens are never written."""
    if Path(sys.argv[0]).name == "train.py":
        args = hide_tokens(sys.argv[1:])
    else:
        args = _changed_flags(config)
    launched = under_accelerate_launch() or num_processes > 1
    program = (f"accelerate launch{f' --num_processes {num_processes}' if num_processes > 1 else ''}" if launched
               else "python")
    return shlex.join([*program.split(), "train.py", *args])


def hide_tokens(args: list[str]) -> list[str]:
    shown = list(args)
    for i, arg in enumerate(args):
        name, equals, _ = arg.removeprefix("--").partition("=")
        if arg.startswith("--") and name in SECRET_FLAGS:
            if equals:
                shown[i] = f"--{name}=<{name}>"
            elif i + 1 < len(args):
                shown[i + 1] = f"<{name}>"
    return shown


def _changed_flags(config) -> list[str]:
    args = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if value == field.default or field.name == "config":  # a --config file's values are in the config
            continue
        if isinstance(value, bool):
            args.append(f"--{field.name}" if value else f"--no-{field.name}")
        elif field.name in SECRET_FLAGS:
            args += [f"--{field.name}", f"<{field.name}>"]
        elif isinstance(value, tuple):
            args += [f"--{field.name}", *map(str, value)]
        else:
            args += [f"--{field.name}", str(value)]
    return args


# ---- The card ----

def write_model_card(output_dir: Path, config, model_id: str | None = None) -> Path:
    """README.md from output_dir's metrics.json (the main process, after it is written). `model_id`: what
    `pipeline(model=...)` loads in the card's example (default: the folder as given; the repo once pushed)."""
    history = History.read(Path(output_dir) / "metrics.json")
    record = history.config
    task = task_for(record["problem_type"], record["threshold"])
    name = repo_name(config)
    data = card_data(record, task, history.after, name)
    body = card_body(output_dir, record, task, history, name, model_id or str(output_dir),
                     command_line(config, record["num_processes"]))
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")
    path = Path(output_dir) / CARD
    card.save(path)
    return path


def card_data(record: dict, task, after: dict, name: str) -> ModelCardData:
    """The YAML block: base model and dataset only when they are Hub names (the Hub refuses paths there), a license
    only when the base model's card states one, and the final metrics as the model-index."""
    base, dataset, config_name = record["model_name_or_path"], record["dataset_name"], record["dataset_config_name"]
    dataset_type = dataset if is_hub_id(dataset) else Path(dataset).name  # a folder: its name
    results = [EvalResult(task_type="text-classification", task_name="Text Classification", dataset_type=dataset_type,
                          dataset_name=" ".join(filter(None, (dataset, config_name))), dataset_config=config_name,
                          metric_type=metric, metric_value=after[metric], metric_name=task.titles[metric])
               for metric in task.metrics if math.isfinite(after[metric])]  # NaN (a constant prediction): not a number
    return ModelCardData(base_model=base if is_hub_id(base) else None,
                         datasets=[dataset] if is_hub_id(dataset) else None, license=base_model_license(base),
                         library_name="transformers", pipeline_tag="text-classification", model_name=name,
                         eval_results=results or None,
                         tags=["text-classification", KINDS.get(task.problem_type, "single-label"), "accelerate"])


def base_model_license(name: str) -> str | None:
    """The license the base model's own card states (a local folder's README.md, or the Hub cache's; no download)."""
    path = Path(name) / CARD if Path(name).is_dir() else (try_to_load_from_cache(name, CARD) if is_hub_id(name)
                                                          else None)
    if not isinstance(path, (str, Path)) or not Path(path).is_file():
        return None
    try:
        return ModelCard.load(path, ignore_metadata_errors=True).data.license
    except (ValueError, OSError):  # someone else's card that does not parse: no license claimed
        return None


def card_body(output_dir, record: dict, task, history: History, name: str, model_id: str, command: str) -> str:
    kind = KINDS.get(task.problem_type, "single-label")
    base = _linked(record["model_name_or_path"], "")
    dataset = " ".join(filter(None, (_linked(record["dataset_name"], "datasets/"), record["dataset_config_name"])))
    pair = f" `{record['text_pair_column']}`" if record["text_pair_column"] else ""
    lines = ["", f"# {name}", "",  # a blank line after the YAML block
             f"{base} fine-tuned on {dataset} for {DOING[kind]} with a hand-written Accelerate loop "
             f"(train.py): {labels_line(record, task)} Input: the `{record['text_column']}`{pair and ' and'}{pair} "
             f"column{'s (a sentence pair)' if pair else ''}.", "",
             "## Evaluation", "",
             f"{history.after['rows']:,} rows of the eval split, before and after training:", "",
             "| metric | before | after |", "| --- | --- | --- |"]
    before = history.before or {}
    for metric in (*task.metrics, "loss"):
        title = task.titles.get(metric, f"Loss: {task.loss_name}")
        lines.append(f"| {title} | {_figure(before.get(metric))} | {_figure(history.after.get(metric))} |")
    lines += ["", *best_lines(output_dir, history, task), "", "## Training", "",
              "| setting | value |", "| --- | --- |",
              *(f"| {setting} | {value} |" for setting, value in settings(record, history)), "",
              "The command that made it:", "", "```bash", command, "```"]
    if record.get("resume_from_checkpoint"):
        lines += ["", f"Resumed from a checkpoint (`--resume_from_checkpoint {record['resume_from_checkpoint']}`): "
                      "the run began with the same training flags, without that one."]
    return "\n".join(lines + ["", "## Use", "", *usage(model_id, task, bool(pair)), ""])


def _linked(name: str, kind: str) -> str:
    """A Hub name as a link to its page; a local path as it was given (the Hub links only Hub names)."""
    return f"[{name}](https://huggingface.co/{kind}{name})" if is_hub_id(name) else f"`{name}`"


def labels_line(record: dict, task) -> str:
    names = record["label_names"]
    if task.problem_type == REGRESSION:
        return f"one score per row (`{record['label_column']}`)."
    if task.problem_type == MULTI_LABEL:
        return (f"{len(names)} labels, any number per row, each predicted at probability >= {task.threshold}: "
                f"{', '.join(names)}.")
    return f"{len(names)} classes (id: name): {', '.join(f'{i}: {n}' for i, n in enumerate(names))}."


def best_lines(output_dir, history: History, task) -> list[str]:
    """The best evaluation during training, whether it is the saved model, and an early stop."""
    lines = []
    best = history.best
    if best is None:
        lines.append("No evaluation during training; the saved model is the last step's.")
    else:
        which = "the saved model" if final_model_is(best, Path(output_dir)) else "not the saved model (the last step's)"
        title = task.titles.get(best["metric"], best["metric"])
        lines.append(f"Best evaluation during training: {title} {best['value']:.4f} at step {best['step']} (epoch "
                     f"{best['epoch']}), {which}.")
    if history.stopped_early:
        lines.append(f"Stopped early at step {history.stopped_early['step']}: {history.stopped_early['reason']}.")
    return lines


def settings(record: dict, history: History) -> list[tuple[str, str]]:
    """The resolved settings (metrics.json's config), a row each."""
    warmup = record["num_warmup_steps"]
    rows = [("learning rate", f"{record['learning_rate']:g}, {record['lr_scheduler_type']} schedule, {warmup} warmup "
                              f"step{'s' * (warmup != 1)}"),
            ("epochs, optimizer steps", f"{record['num_train_epochs']}, {record['max_train_steps']}"),
            ("batch", f"{record['per_device_train_batch_size']} per device x {record['num_processes']} process"
                      f"{'es' * (record['num_processes'] != 1)} x {record['gradient_accumulation_steps']} accumulated "
                      f"= {record['total_train_batch_size']} rows per step; eval batch {record['eval_batch_size']}"),
            ("weight decay, max grad norm", f"{record['weight_decay']:g}, {record['max_grad_norm']:g}"),
            ("precision", {"no": "fp32"}.get(record["mixed_precision"], record["mixed_precision"])),
            ("max length", f"{record['max_length']} tokens, keeping the "
                           f"{record['truncation_keep'].replace('_', ' + ')}"),
            ("rows (train, eval)", f"{record['train_rows']:,}, {record['eval_rows']:,} (subset seed "
                                   f"{record['subset_seed']})"),
            ("seed", str(record["seed"]))]
    if record.get("lora_r"):
        modules = " ".join(record["lora_target_modules"] or ["peft's default modules"])
        rows.append(("LoRA", f"rank {record['lora_r']}, alpha {record['lora_alpha'] or 2 * record['lora_r']:g}, "
                             f"dropout {record['lora_dropout'] or 0:g}, on {modules} (merged into the saved weights; "
                             "adapter/ alone)"))
    if record.get("gradient_checkpointing"):
        rows.append(("gradient checkpointing", "on (memory, not the numbers)"))
    if history.runtime_seconds is not None:
        rows.append(("run time", f"{history.runtime_seconds:,.0f} s"))
    return rows


def usage(model_id: str, task, pair: bool) -> list[str]:
    text = '{"text": "A wonderful film.", "text_pair": "A great movie."}' if pair else '"A wonderful film."'
    options = ", top_k=None" if task.problem_type == MULTI_LABEL else ""  # every label's probability
    return ["```python", "from transformers import pipeline", "",
            f"classifier = pipeline(\"text-classification\", model=\"{model_id}\"{options})",
            f"print(classifier({text}))", "```", "",
            f"Or `python predict.py {model_id} --text ...{' --text_pair ...' if pair else ''}` with this repository's "
            "predict.py (it truncates as training did)."]


def _figure(value) -> str:
    return "-" if value is None else f"{value:.4f}"


# ---- --push_to_hub ----

def hub_model_id_problem(value: str) -> str | None:
    """--hub_model_id's check, with the flag: a name the Hub accepts."""
    return None if valid_repo_name(value) else REPO_NAME


def check_push_to_hub(config) -> None:
    """Before any work: --push_to_hub without the Hub (HF_HUB_OFFLINE) or without a token stops here, one line, exit
    code 2 (as a bad flag), rather than after hours of training."""
    problem = None
    if not config.push_to_hub:
        return
    if constants.HF_HUB_OFFLINE:
        problem = ("--push_to_hub needs the Hub, but HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set: unset it, or "
                   "train without --push_to_hub and upload later with `hf upload`")
    elif config.hub_token is None and get_token() is None:
        problem = "--push_to_hub needs a Hugging Face token: run `hf auth login`, set HF_TOKEN, or pass --hub_token"
    elif config.hub_model_id is None and not valid_repo_name(repo_name(config)):
        problem = f"--push_to_hub: --output_dir's name {repo_name(config)!r} is {REPO_NAME}; pass --hub_model_id"
    if problem:
        Parser(prog="train.py").error(problem)


def create_hub_repo(config, accelerator) -> str | None:
    """Before any work, as the Trainer does: the repository created (or found) on the main process, so that a token
    without write access or a namespace that is not the user's stops the run now, not after training. Every process
    gets the answer (one broadcast), so all stop together. Returns its id with the namespace (what push_to_hub
    uploads to), or None without --push_to_hub."""
    if not config.push_to_hub:
        return None
    answer = [None, None]  # the repository's id, or what went wrong
    if accelerator.is_main_process:
        try:
            answer[0] = create_repo(repo_name(config), exist_ok=True, token=config.hub_token).repo_id
        except Exception as error:  # noqa: BLE001 - HTTP, connection, auth: whatever the network raises
            answer[1] = first_line(error)
    repo, problem = broadcast_object_list(answer)
    if problem:
        raise RunError(f"--push_to_hub: cannot create the Hub repository {repo_name(config)} ({problem}); check that "
                       "the token may write there (`hf auth whoami`) and --hub_model_id's namespace")
    return repo


def first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def repo_name(config) -> str:
    return config.hub_model_id or Path(config.output_dir).absolute().name


def retry_command(repo: str, output_dir, token_given: bool) -> str:
    excludes = [arg for pattern in PUSH_IGNORE for arg in ("--exclude", pattern)]
    return shlex.join(["hf", "upload", repo, str(output_dir), ".", *excludes,
                       *(["--token", "<hub_token>"] if token_given else [])])


def push_to_hub(output_dir: Path, config, repo: str) -> str:
    """Upload output_dir less PUSH_IGNORE to `repo` (create_hub_repo's); the card names the repo first. The outputs
    are already written: a failure is one line with the command that retries the upload, exit code 1."""
    try:
        write_model_card(output_dir, config, model_id=repo)
        upload_folder(repo_id=repo, folder_path=output_dir, ignore_patterns=list(PUSH_IGNORE), token=config.hub_token,
                      commit_message="End of training")
    except Exception as error:  # noqa: BLE001 - HTTP, connection, auth, quota: whatever the network raises
        if config.debug:
            raise
        raise RunError(f"the upload to the Hub failed ({first_line(error)}); the run is complete in {output_dir}; retry with: "
                       f"{retry_command(repo, output_dir, config.hub_token is not None)}") from None
    return f"https://huggingface.co/{repo}"
