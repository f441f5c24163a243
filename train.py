"""Fine-tune a pretrained transformer for text classification with a hand-written Accelerate loop.

    accelerate launch train.py                      # the reference recipe: bert-base-cased on 5,000 IMDB reviews
    accelerate launch train.py --config configs/imdb-gpt2.yaml --learning_rate 3e-5   # a file, flags override it
    python train.py --model_name_or_path DIR --debug   # one process, no launcher, seconds: step through the loop

Top to bottom: arguments; data and model; optimizer and schedule; evaluation; the training loop; outputs.
"""

import argparse
import contextlib
import difflib
import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path

import datasets
import torch
import torch.nn.functional as F
import transformers
import yaml
from accelerate import Accelerator
from accelerate.data_loader import prepare_data_loader
from accelerate.utils import (
    DistributedType,
    broadcast_object_list,
    is_tensorboard_available,
    is_wandb_available,
    set_seed,
)
from tqdm.auto import tqdm
from transformers import DataCollatorWithPadding, get_linear_schedule_with_warmup

from data import (
    KEEP_CHOICES,
    check_head_tokens,
    eval_loader,
    global_batches,
    length_order,
    load_splits,
    on_device,
    padding_efficiency,
    process_batches,
    rows_per_optimizer_step,
    select_subset,
    tokenize,
    train_loader,
)
from metrics import BestTracker, classification_metrics, format_report
from metrics.report import confusion, write_markdown, write_picture
from metrics.throughput import PhaseTimer, measure_peak_tflops, profile_sort_key, training_flop_rates
from model import AUTOCAST_DTYPES, load_classifier, load_tokenizer, parameter_groups, resolve_max_length
from model.checkpoints import (
    config_differences,
    find_checkpoint,
    list_checkpoints,
    load_training_state,
    prune_checkpoints,
    save_checkpoint,
)

logger = logging.getLogger("train")
DEBUG_TRAIN_ROWS, DEBUG_EVAL_ROWS, DEBUG_EVAL_STEPS = 64, 32, 4  # --debug: a run of seconds


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None,
                        help="a YAML or JSON file of flag values (keys as the flag names); flags given here override it")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset_name", default="stanfordnlp/imdb",
                      help="Hub name, or a local directory/file (parquet, csv, json, jsonl) or aclImdb/ folder")
    data.add_argument("--text_column", default=None, help="default: the first of text, sentence, review, content")
    data.add_argument("--label_column", default=None, help="default: the first of label, labels, sentiment")
    data.add_argument("--train_samples", type=int, default=5000, help="rows of the train split; <= 0: all")
    data.add_argument("--eval_samples", type=int, default=5000, help="rows of the test/validation split; <= 0: all")
    data.add_argument("--subset_seed", type=int, default=42, help="the subset is split.shuffle(seed).select(range(n))")
    data.add_argument("--max_length", type=int, default=None,
                      help="truncate to this many tokens (default: the model's limit, at most 512)")
    data.add_argument("--truncation_keep", choices=KEEP_CHOICES, default="head",
                      help="which tokens of a text longer than --max_length to keep: the head (the recipe), the tail, "
                           "or head_tail (the first --head_tokens and the end; Sun et al. 2019)")
    data.add_argument("--head_tokens", type=int, default=128, help="with --truncation_keep head_tail")
    data.add_argument("--group_by_length", action=argparse.BooleanOptionalAction, default=True,
                      help="batch training rows of similar length (shuffled in mega-batches), so padding wastes little")
    model = parser.add_argument_group("model")
    model.add_argument("--model_name_or_path", default="google-bert/bert-base-cased")
    model.add_argument("--ignore_mismatched_sizes", action="store_true",
                       help="replace the classification head of a model fine-tuned for another number of labels")
    optim = parser.add_argument_group("optimization")
    optim.add_argument("--per_device_train_batch_size", type=int, default=8)
    optim.add_argument("--per_device_eval_batch_size", type=int, default=8,
                       help="evaluation runs in length order, so batches pad little whatever their size")
    optim.add_argument("--learning_rate", type=float, default=5e-5)
    optim.add_argument("--weight_decay", type=float, default=0.01, help="not applied to biases and norm weights")
    optim.add_argument("--num_train_epochs", type=int, default=3)
    optim.add_argument("--max_train_steps", type=int, default=None, help="optimizer steps; overrides --num_train_epochs")
    optim.add_argument("--gradient_accumulation_steps", type=int, default=1)
    optim.add_argument("--num_warmup_steps", type=int, default=None, help="linear warmup steps (default 0)")
    optim.add_argument("--warmup_ratio", type=float, default=None, help="warmup as a fraction of the optimizer steps")
    optim.add_argument("--max_grad_norm", type=float, default=1.0, help="clip the gradient norm; <= 0: no clipping")
    optim.add_argument("--mixed_precision", choices=list(AUTOCAST_DTYPES), default=None,
                       help="default: what `accelerate launch` / `accelerate config` says, else no")
    optim.add_argument("--seed", type=int, default=42, help="model init, dropout and the training order")
    evaluation = parser.add_argument_group("evaluation, best model, early stopping")
    evaluation.add_argument("--eval_strategy", choices=["epoch", "steps", "no"], default="epoch",
                            help="evaluate after every epoch, every --eval_steps optimizer steps, or only at the end")
    evaluation.add_argument("--eval_steps", type=int, default=None, help="with --eval_strategy steps")
    evaluation.add_argument("--metric_for_best_model", choices=["accuracy", "f1", "precision", "recall", "loss"],
                            default="accuracy", help="picks output_dir/best (loss: lower is better)")
    evaluation.add_argument("--load_best_model_at_end", action="store_true",
                            help="the final model in output_dir is the best evaluation's, not the last step's")
    evaluation.add_argument("--early_stopping_patience", type=int, default=None,
                            help="stop after this many evaluations without improving --metric_for_best_model")
    output = parser.add_argument_group("output and checkpoints")
    output.add_argument("--output_dir", default="result")
    output.add_argument("--overwrite_output_dir", action="store_true", help="replace a non-empty --output_dir")
    output.add_argument("--logging_steps", type=int, default=10, help="write a log.jsonl line every N optimizer steps")
    output.add_argument("--checkpointing_steps", default=None,
                        help="save the full training state every N optimizer steps, or 'epoch'")
    output.add_argument("--save_total_limit", type=int, default=None, help="keep the newest N checkpoints (and the best)")
    output.add_argument("--report_to", choices=["none", "tensorboard", "wandb", "all"], default="none",
                        help="also log to these trackers (all: every one installed); TensorBoard: "
                             "tensorboard --logdir OUTPUT_DIR/tensorboard")
    output.add_argument("--resume_from_checkpoint", default=None,
                        help="a checkpoint folder, or 'latest' in --output_dir; continues exactly where it stopped")
    speed = parser.add_argument_group("speed and profiling")
    speed.add_argument("--profile_steps", type=int, default=0,
                       help="profile this many optimizer steps (after the first) with torch.profiler")
    speed.add_argument("--peak_tflops", type=float, default=None,
                       help="the device's peak TFLOP/s for MFU (default: its fastest dense matmul, bf16 on a GPU, measured "
                            "at start; the same whatever --mixed_precision)")
    speed.add_argument("--dataloader_num_workers", type=int, default=0,
                       help="worker processes for each DataLoader; 0 loads in the main process (debuggers can follow)")
    debug = parser.add_argument_group("debugging")
    debug.add_argument("--debug", action="store_true",
                       help=f"{DEBUG_TRAIN_ROWS} train / {DEBUG_EVAL_ROWS} eval rows, 1 epoch, evaluate every "
                            f"{DEBUG_EVAL_STEPS} steps, log every step, autograd anomaly detection, full tracebacks")
    argv = sys.argv[1:] if argv is None else [str(arg) for arg in argv]
    given, _ = parser.parse_known_args(argv)
    if given.config:  # the file's values first, so the command line's flags (parsed later) win
        argv = config_arguments(given.config, parser) + argv
    args = parser.parse_args(argv)
    if args.debug:  # seconds, not hours: tiny subsets, one epoch, frequent evaluation and logging
        args.train_samples = min(args.train_samples, DEBUG_TRAIN_ROWS) if args.train_samples > 0 else DEBUG_TRAIN_ROWS
        args.eval_samples = min(args.eval_samples, DEBUG_EVAL_ROWS) if args.eval_samples > 0 else DEBUG_EVAL_ROWS
        args.num_train_epochs, args.logging_steps = 1, 1
        if args.eval_strategy != "no":
            args.eval_strategy, args.eval_steps = "steps", args.eval_steps or DEBUG_EVAL_STEPS

    # Fail before any work: every check a user can get wrong from the command line.
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "num_train_epochs",
                 "gradient_accumulation_steps", "logging_steps"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive, got {getattr(args, name)}")
    if args.learning_rate <= 0:
        parser.error(f"--learning_rate must be positive, got {args.learning_rate}")
    if args.max_train_steps is not None and args.max_train_steps <= 0:
        parser.error(f"--max_train_steps must be positive, got {args.max_train_steps}")
    if args.num_warmup_steps is not None and args.warmup_ratio is not None:
        parser.error("give --num_warmup_steps or --warmup_ratio, not both")
    if args.warmup_ratio is not None and not 0 <= args.warmup_ratio < 1:
        parser.error(f"--warmup_ratio must be in [0, 1), got {args.warmup_ratio}")
    if args.checkpointing_steps not in (None, "epoch"):
        if not args.checkpointing_steps.isdigit() or int(args.checkpointing_steps) <= 0:
            parser.error(f"--checkpointing_steps must be a positive integer or 'epoch', got {args.checkpointing_steps!r}")
        args.checkpointing_steps = int(args.checkpointing_steps)
    if (args.eval_strategy == "steps") != (args.eval_steps is not None):
        parser.error("--eval_steps goes with --eval_strategy steps, and that needs --eval_steps")
    if args.eval_steps is not None and args.eval_steps <= 0:
        parser.error(f"--eval_steps must be positive, got {args.eval_steps}")
    if args.eval_strategy == "no" and (args.early_stopping_patience or args.load_best_model_at_end):
        parser.error("--early_stopping_patience and --load_best_model_at_end need evaluations: not --eval_strategy no")
    if args.profile_steps < 0:
        parser.error(f"--profile_steps must be >= 0, got {args.profile_steps}")
    for name in ("early_stopping_patience", "save_total_limit"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive, got {getattr(args, name)}")
    if args.dataloader_num_workers < 0:
        parser.error(f"--dataloader_num_workers must be >= 0, got {args.dataloader_num_workers}")
    try:
        args.trackers = trackers_for(args.report_to)
    except ValueError as error:
        parser.error(str(error))
    return args



def config_arguments(path: str, parser: argparse.ArgumentParser) -> list[str]:
    """A YAML/JSON file of flag values turned into command-line arguments, so argparse converts and checks them like
    typed flags. Unknown keys are an error naming the nearest flag."""
    file = Path(path)
    if not file.is_file():
        parser.error(f"--config {path}: no such file")
    try:
        values = json.loads(file.read_text()) if file.suffix == ".json" else yaml.safe_load(file.read_text())
    except (ValueError, yaml.YAMLError) as error:
        parser.error(f"--config {path}: not valid {'JSON' if file.suffix == '.json' else 'YAML'} "
                     f"({str(error).splitlines()[0]})")
    if not isinstance(values, dict):
        parser.error(f"--config {path}: expected a mapping of flag names to values, like `learning_rate: 5.0e-5`")
    actions = {action.dest: action for action in parser._actions if action.option_strings and action.dest != "help"}
    arguments = []
    for key, value in values.items():
        action = actions.get(key)
        if action is None or key == "config":
            nearest = difflib.get_close_matches(str(key), [name for name in actions if name != "config"], n=1)
            parser.error(f"--config {path}: unknown key {key!r}" + (f"; did you mean {nearest[0]!r}?" if nearest else ""))
        if value is None:  # `key: null` keeps the default
            continue
        if isinstance(action, (argparse.BooleanOptionalAction, argparse._StoreTrueAction)):
            if not isinstance(value, bool):
                parser.error(f"--config {path}: {key} must be true or false, got {value!r}")
            if isinstance(action, argparse.BooleanOptionalAction):
                arguments.append(f"--{key}" if value else f"--no-{key}")
            elif value:
                arguments.append(f"--{key}")
        else:
            arguments += [f"--{key}", str(value)]
    return arguments


def trackers_for(report_to: str) -> list[str]:
    """The accelerate trackers --report_to asks for; one that is not installed is an error saying what to install."""
    installed = {"tensorboard": is_tensorboard_available(), "wandb": is_wandb_available()}
    if report_to == "none":
        return []
    if report_to == "all":
        if not any(installed.values()):
            raise ValueError("--report_to all: neither tensorboard nor wandb is installed; pip install tensorboard "
                             "(or wandb), or pass --report_to none")
        return [name for name, present in installed.items() if present]
    if not installed[report_to]:
        raise ValueError(f"--report_to {report_to}: {report_to} is not installed; pip install {report_to}, or pass "
                         "--report_to none")
    return [report_to]


@contextlib.contextmanager
def one_line_errors(debug: bool):
    """Bad input (ValueError, OSError) ends the run with one `error:` line, or with the full traceback under --debug."""
    try:
        yield
    except (ValueError, OSError) as error:
        if debug:
            raise
        raise SystemExit(f"error: {error}") from None


def load_data_and_model(args, accelerator):
    """Tokenized train/eval rows, label names, tokenizer, classifier, and the seconds tokenizing took; bad input is one
    line and exit code 1."""
    with one_line_errors(args.debug):
        splits, label_names = load_splits(args.dataset_name, args.text_column, args.label_column)
        # Pick the subset before tokenizing: only the rows we use are tokenized.
        train_rows = select_subset(splits["train"], args.train_samples, args.subset_seed)
        eval_rows = select_subset(splits["eval"], args.eval_samples, args.subset_seed)
        tokenizer = load_tokenizer(args.model_name_or_path)
        classifier = load_classifier(args.model_name_or_path, label_names, tokenizer, args.ignore_mismatched_sizes)
        args.max_length = resolve_max_length(args.max_length, tokenizer, classifier.config)
        check_head_tokens(args.truncation_keep, args.head_tokens, args.max_length, tokenizer)
    # The main process tokenizes first and fills the datasets cache; the others then read it.
    start = time.perf_counter()
    with accelerator.main_process_first():
        train_tokens = tokenize(train_rows, tokenizer, args.max_length, args.truncation_keep, args.head_tokens)
        eval_tokens = tokenize(eval_rows, tokenizer, args.max_length, args.truncation_keep, args.head_tokens)
    tokenize_seconds = round(time.perf_counter() - start, 3)
    return train_tokens, eval_tokens, label_names, tokenizer, classifier, tokenize_seconds


def evaluate(model, eval_batches, accelerator, label_names) -> tuple[dict, list | None]:
    """Metrics over every eval row exactly once, computed on the main process and sent to the others; and, on the
    main process, the predictions in the eval rows' input order (the loader runs in length order)."""
    model.eval()
    rows, predictions, labels, losses = [], [], [], []
    batches = on_device(eval_batches, accelerator.device)  # pinned, asynchronous copies on CUDA
    for batch in tqdm(batches, desc="eval", leave=False, total=len(eval_batches),
                      disable=not accelerator.is_local_main_process):
        batch_rows, batch_labels = batch.pop("row"), batch.pop("labels")
        with torch.no_grad():
            logits = model(**batch).logits
        batch_losses = F.cross_entropy(logits.float(), batch_labels, reduction="none")
        # One gather per batch; gather_for_metrics drops the rows accelerate repeated to even out the last batch.
        gathered = accelerator.gather_for_metrics((batch_rows, logits.argmax(dim=-1), batch_labels, batch_losses))
        for store, tensor in zip((rows, predictions, labels, losses), gathered):
            store.append(tensor.cpu())
    model.train()
    result, in_input_order = [None], None
    if accelerator.is_main_process:
        order = torch.cat(rows).argsort()
        labels, predictions = torch.cat(labels)[order].numpy(), torch.cat(predictions)[order].numpy()
        result[0] = classification_metrics(labels, predictions, label_names) | {
            "loss": torch.cat(losses).mean().item(), "rows": len(labels)}
        in_input_order = predictions.tolist()
    # Every process needs the figures: they decide the best model and early stopping together.
    return broadcast_object_list(result)[0], in_input_order


def save_model(model, tokenizer, accelerator, directory: Path) -> None:
    """save_pretrained in a form `pipeline(model=directory)` loads; every process must call it (FSDP/DeepSpeed)."""
    accelerator.wait_for_everyone()
    state_dict = accelerator.get_state_dict(model)  # a collective under FSDP/DeepSpeed
    accelerator.unwrap_model(model).save_pretrained(
        directory, is_main_process=accelerator.is_main_process, save_function=accelerator.save, state_dict=state_dict
    )
    if accelerator.is_main_process:
        tokenizer.save_pretrained(directory)
    accelerator.wait_for_everyone()


TRACKED_TRAIN_KEYS = ("loss", "learning_rate", "samples_per_second", "tokens_per_second")


def tracked(metrics: dict, prefix: str) -> dict:
    """The scalars of an evaluation for the trackers: eval/accuracy, eval/f1, ..."""
    return {f"{prefix}/{k}": v for k, v in metrics.items() if k in ("accuracy", "f1", "precision", "recall", "loss")}


def non_finite_loss_error(step: int, epoch: int, output_dir: Path) -> SystemExit:
    checkpoints = list_checkpoints(output_dir)
    kept = f"the last good checkpoint is {checkpoints[-1]}" if checkpoints else "no checkpoint had been saved"
    return SystemExit(f"error: the training loss is NaN or infinite at step {step} (epoch {epoch}); stopped before "
                      f"updating the weights, {kept}. Try a lower --learning_rate, --max_grad_norm 1.0, or bf16 "
                      "instead of fp16")


def metrics_of(evaluation: dict) -> dict:
    """An `evaluations` record without where and how long: the model's metrics alone."""
    return {k: v for k, v in evaluation.items() if k not in ("epoch", "step", "seconds")}


def use_the_cores(accelerator) -> None:
    """On a CPU, `accelerate launch` sets OMP_NUM_THREADS=1 per process unless told otherwise, which halves a 2-core
    machine. Use cores / local processes instead, unless the user chose (launcher flag or their own OMP_NUM_THREADS)."""
    launched = "ACCELERATE_DYNAMO_BACKEND" in os.environ  # set by `accelerate launch`, single- or multi-process
    if accelerator.device.type != "cpu" or os.environ.get("OMP_NUM_THREADS") != "1" or not launched:
        return
    try:  # the launcher is our parent process: did its command line or environment set the threads?
        launcher = Path(f"/proc/{os.getppid()}")
        if (b"--num_cpu_threads_per_process" in (launcher / "cmdline").read_bytes()
                or b"OMP_NUM_THREADS=" in (launcher / "environ").read_bytes()):
            return
    except OSError:
        return  # not Linux, or not allowed to look: leave the launcher's choice alone
    threads = max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if threads > 1:
        torch.set_num_threads(threads)
        logger.info(f"accelerate launch set OMP_NUM_THREADS=1; using {threads} threads per process (cores / local "
                    "processes). Pass --num_cpu_threads_per_process to accelerate launch to choose.")


def start_profiler(steps: int, output_dir: Path, is_main: bool, device: torch.device):
    """torch.profiler over `steps` optimizer steps after one to wait and one to warm up; writes a Chrome/Perfetto
    trace (profile_trace.json) and the top operators (profile_top_ops.txt) into output_dir."""
    if steps <= 0:
        return None

    def write(profile) -> None:
        if is_main:
            profile.export_chrome_trace(str(output_dir / "profile_trace.json"))
            table = profile.key_averages().table(sort_by=profile_sort_key(device), row_limit=30)
            (output_dir / "profile_top_ops.txt").write_text(table)
            logger.info(f"Wrote the profile of {steps} steps to {output_dir}/profile_trace.json and profile_top_ops.txt")

    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    profiler = torch.profiler.profile(activities=activities, on_trace_ready=write,
                                      schedule=torch.profiler.schedule(wait=1, warmup=1, active=steps, repeat=1))
    profiler.start()
    return profiler


def check_output_dir(args) -> Path | None:
    """Before any work: the checkpoint to resume, or None; refuse to overwrite a previous run by accident."""
    output_dir = Path(args.output_dir)
    if args.resume_from_checkpoint:
        return find_checkpoint(args.resume_from_checkpoint, output_dir)
    if output_dir.is_dir() and any(output_dir.iterdir()) and not args.overwrite_output_dir:
        raise FileExistsError(f"--output_dir {output_dir} is not empty: pass --overwrite_output_dir to replace it, "
                              "or --resume_from_checkpoint latest to continue the run in it")
    return None


def main(args) -> None:
    start_time = time.perf_counter()
    accelerator = Accelerator(gradient_accumulation_steps=args.gradient_accumulation_steps,
                              mixed_precision=args.mixed_precision, log_with=args.trackers or None,
                              project_dir=Path(args.output_dir) / "tensorboard")
    is_main = accelerator.is_main_process
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:  # e.g. --multi_gpu on a machine without GPUs: N lone trainings
        raise SystemExit(f"error: the launcher started {launched} processes but they did not join one group, so each "
                         "would train alone; on a CPU set ACCELERATE_USE_CPU=1 (or pass --cpu to accelerate launch)")
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO if accelerator.is_local_main_process else logging.ERROR)
    use_the_cores(accelerator)
    if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        logger.warning("fp16 on a CPU runs far slower than fp32 (no fast fp16 kernels here); use --mixed_precision bf16")
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # its checkpoint logs name every file; we log one line
    if not accelerator.is_local_main_process:
        datasets.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()
    with one_line_errors(args.debug):
        checkpoint = check_output_dir(args)
    torch.autograd.set_detect_anomaly(args.debug)  # names the forward op behind a NaN gradient (slow: --debug only)
    set_seed(args.seed)  # before the classifier head is initialized

    # ---- Data and model ----
    train_tokens, eval_tokens, label_names, tokenizer, classifier, tokenize_seconds = load_data_and_model(args, accelerator)
    # Saved with the model, so predict.py truncates as training did (pipelines read model_max_length only: head).
    tokenizer.model_max_length = args.max_length
    classifier.config.truncation_keep, classifier.config.head_tokens = args.truncation_keep, args.head_tokens
    collator = DataCollatorWithPadding(tokenizer)  # pads each batch to its own longest row
    train_lengths = [len(ids) for ids in train_tokens["input_ids"]] if args.group_by_length else None
    # Evaluate in length order (batches of similar rows pad little); each batch's "row" restores the input order.
    eval_lengths = [len(ids) for ids in eval_tokens["input_ids"]]
    eval_order = length_order(eval_lengths)
    # accelerate shards the eval batches over processes; the loop moves them to the device itself (device_placement off).
    eval_batches = accelerator.prepare_data_loader(
        eval_loader(eval_tokens, args.per_device_eval_batch_size, collator, args.dataloader_num_workers,
                    accelerator.device), device_placement=False)

    # ---- Optimizer and schedule, counted in optimizer steps across all processes ----
    num_processes, accumulation = accelerator.num_processes, args.gradient_accumulation_steps
    global_batch_size = args.per_device_train_batch_size * num_processes
    steps_per_epoch = math.ceil(math.ceil(len(train_tokens) / global_batch_size) / accumulation)
    max_train_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    num_epochs = math.ceil(max_train_steps / steps_per_epoch)
    num_warmup_steps = args.num_warmup_steps or math.ceil((args.warmup_ratio or 0) * max_train_steps)
    # Fused AdamW: one kernel for all parameters (MiniLM on this CPU: 8 ms a step instead of 67 ms), same update rule.
    # Sharded parameters (FSDP/DeepSpeed) keep the default implementation.
    fused = accelerator.distributed_type in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)
    optimizer = torch.optim.AdamW(parameter_groups(classifier, args.weight_decay), lr=args.learning_rate, fused=fused)
    lr_scheduler = get_linear_schedule_with_warmup(optimizer, num_warmup_steps, max_train_steps)
    # The scheduler is not prepared: accelerate's wrapper steps it once per process per step; we step it by hand once.
    model, optimizer = accelerator.prepare(classifier, optimizer)
    accelerator.register_for_checkpointing(lr_scheduler)

    settings = vars(args) | {"num_processes": num_processes}  # as given: what a resumed run must repeat
    config = vars(args) | {
        "mixed_precision": accelerator.mixed_precision, "num_processes": num_processes,
        "total_train_batch_size": global_batch_size * accumulation, "max_train_steps": max_train_steps,
        "num_train_epochs": num_epochs, "num_warmup_steps": num_warmup_steps, "label_names": label_names,
        "train_rows": len(train_tokens), "eval_rows": len(eval_tokens),
    }
    logger.info(f"Training {len(train_tokens)} rows, evaluating {len(eval_tokens)}: {num_epochs} epochs, "
                f"{max_train_steps} optimizer steps of {global_batch_size * accumulation} rows "
                f"({num_processes} processes x {args.per_device_train_batch_size} x {accumulation} accumulated)")

    # ---- Where the run starts: fresh, or exactly where a checkpoint left it ----
    output_dir = Path(args.output_dir)
    history = {"before": None, "epochs": [], "evaluations": [], "best": None, "stopped_early": None}
    tracker = BestTracker(args.metric_for_best_model, args.early_stopping_patience)
    start_epoch, resume_batches, completed_steps = 0, 0, 0
    running = {"epoch_loss": 0.0, "epoch_rows": 0, "window_loss": 0.0, "window_rows": 0}  # global sums so far
    if checkpoint is not None:
        state = load_training_state(checkpoint)
        differences = config_differences(state["settings"], settings)
        if differences:
            raise SystemExit(f"error: {checkpoint} was made with other settings ({'; '.join(differences)}); "
                             "resume with the same flags, or start a new --output_dir")
        accelerator.load_state(str(checkpoint))  # model, optimizer, scheduler, RNG states
        history, completed_steps = state["history"], state["completed_steps"]
        start_epoch, resume_batches = state["epoch"], state["batches_done"]
        tracker.load_state_dict(state["tracker"])
        running = state["running"]
        logger.info(f"Resumed from {checkpoint}: epoch {start_epoch + 1}, step {completed_steps}")
    log_file = None
    if is_main:  # one writer: only the main process touches output_dir
        if checkpoint is None and args.overwrite_output_dir:
            for stale in ("checkpoints", "best", "tensorboard"):  # a previous run's: not to be mixed with this one
                shutil.rmtree(output_dir / stale, ignore_errors=True)
        output_dir.mkdir(parents=True, exist_ok=True)
        kept = []
        if checkpoint is not None and (output_dir / "log.jsonl").exists():  # drop lines logged after the checkpoint
            kept = [line for line in (output_dir / "log.jsonl").read_text().splitlines()
                    if json.loads(line)["step"] <= completed_steps]
        log_file = open(output_dir / "log.jsonl", "w")
        log_file.writelines(line + "\n" for line in kept)
    if args.trackers:  # every process calls it; only the main process writes
        accelerator.init_trackers("text-classification",
                                  config={k: v for k, v in config.items() if isinstance(v, (int, float, str, bool))})

    # ---- Evaluation before training ----
    if history["before"] is None:
        eval_start = time.perf_counter()
        history["before"], _ = evaluate(model, eval_batches, accelerator, label_names)
        history["before"]["seconds"] = round(time.perf_counter() - eval_start, 3)
        accelerator.log(tracked(history["before"], "eval"), step=0)
        accelerator.print(f"Before training:\n{format_report(history['before'])}")

    predictions = {"last": None, "best": None}  # main process: eval predictions in input order

    def evaluate_and_track(epoch: int) -> dict:
        """Evaluate; keep the best model in output_dir/best; count evaluations without improvement."""
        eval_start = time.perf_counter()
        metrics, predictions["last"] = evaluate(model, eval_batches, accelerator, label_names)
        seconds = round(time.perf_counter() - eval_start, 3)
        history["evaluations"].append({"epoch": epoch, "step": completed_steps} | metrics | {"seconds": seconds})
        accelerator.log(tracked(metrics, "eval"), step=completed_steps)
        if tracker.update(metrics, epoch, completed_steps):
            predictions["best"] = predictions["last"]
            save_model(model, tokenizer, accelerator, output_dir / "best")
        history["best"] = tracker.best
        logger.info(f"step {completed_steps}: eval {args.metric_for_best_model} "
                    f"{metrics[args.metric_for_best_model]:.4f} (best {tracker.best['value']:.4f} "
                    f"at step {tracker.best['step']})")
        return metrics

    def save_and_prune(name: str, epoch: int, batches_done: int) -> None:
        """A checkpoint with everything beyond accelerate's state that an exact resume needs (losses as sums over all
        processes); then keep only the newest --save_total_limit (and the best step's)."""
        totals = accelerator.reduce(torch.stack([epoch_loss, window_loss]), "sum")
        state = {"epoch": epoch, "batches_done": batches_done, "completed_steps": completed_steps,
                 "history": history, "tracker": tracker.state_dict(), "settings": settings,
                 "running": {"epoch_loss": totals[0].item(), "epoch_rows": epoch_rows,
                             "window_loss": totals[1].item(), "window_rows": window_rows}}
        save_checkpoint(accelerator, output_dir, name, state)
        if is_main:
            prune_checkpoints(output_dir, args.save_total_limit, tracker.best and tracker.best["step"])

    # ---- The training loop ----
    def loss_sum(value: float) -> torch.Tensor:
        # A resumed sum lives on the main process only: reductions add up every process's share.
        return torch.tensor(value if is_main else 0.0, device=accelerator.device)

    window_loss, window_rows = loss_sum(running["window_loss"]), running["window_rows"]
    step_loss = torch.zeros((), device=accelerator.device)  # this optimizer step's loss sum, checked before the update
    window_tokens = torch.zeros(3, device=accelerator.device)  # real tokens, token slots, sum of squared lengths
    run_tokens = torch.zeros(3, device=accelerator.device)  # the same over the whole run (this process)
    run_rows = 0  # trained in this process's lifetime (a resumed run counts from its checkpoint)
    timer = PhaseTimer(accelerator.device, synchronize=args.profile_steps > 0)
    peak_tflops = args.peak_tflops or measure_peak_tflops(accelerator.device)
    logger.info(f"MFU is relative to {peak_tflops:.1f} TFLOP/s per process "
                f"({'--peak_tflops' if args.peak_tflops else 'the dense matmul rate measured on ' + str(accelerator.device)})")
    flops_per_token, flops_per_token_pair = training_flop_rates(classifier)
    profiler = start_profiler(args.profile_steps, output_dir, is_main, accelerator.device)
    progress = tqdm(total=max_train_steps, initial=completed_steps, desc="train",
                    disable=not accelerator.is_local_main_process)
    stop = completed_steps >= max_train_steps or tracker.should_stop  # a resumed run may have been about to stop
    model.train()
    for epoch in range(start_epoch, num_epochs):
        # Exact resume: the same batches in the same order, minus those the checkpoint had already trained on.
        skip = resume_batches if epoch == start_epoch else 0
        if stop and not skip:  # (a run resumed mid-epoch still closes that epoch, as the original did)
            break
        # Every process builds the same global batches and takes its own slice of each (see data/sampling.py).
        batches = global_batches(len(train_tokens), global_batch_size, args.seed, epoch, train_lengths, accumulation)
        rows_per_step = rows_per_optimizer_step(batches, accumulation)
        shard = process_batches(batches, len(train_tokens), num_processes, accelerator.process_index)
        epoch_loss = loss_sum(running["epoch_loss"] if skip else 0.0)
        epoch_rows = running["epoch_rows"] if skip else 0
        # Already sharded, so accelerate must not shard again (num_processes=1); it marks the epoch's last batch, which
        # makes accumulate() step on a short final group too. The batches stay on the CPU until on_device moves them.
        train_batches = prepare_data_loader(
            train_loader(train_tokens, shard[skip:], collator, args.dataloader_num_workers, accelerator.device),
            num_processes=1, process_index=0,
        )
        timer.restart()
        for micro_step, batch in enumerate(on_device(train_batches, accelerator.device), start=skip):
            timer.lap("data")
            if stop:
                break
            step_rows = rows_per_step[micro_step // accumulation]
            lengths = batch["attention_mask"].sum(dim=1)  # real tokens per row (no .item(): no GPU sync)
            window_tokens[0] += lengths.sum()
            window_tokens[1] += batch["attention_mask"].numel()
            window_tokens[2] += (lengths * lengths).sum()
            with accelerator.accumulate(model):
                labels, weights = batch.pop("labels"), batch.pop("loss_weight")
                logits = model(**batch).logits
                row_losses = F.cross_entropy(logits.float(), labels, reduction="none") * weights
                timer.lap("forward")
                # The step's loss is the mean over all its real rows (every micro-batch, every process), whatever the
                # batch sizes: DDP averages gradients over processes and backward() divides by GA, so undo both.
                accelerator.backward(row_losses.sum() * num_processes * accumulation / step_rows)
                window_loss += row_losses.detach().sum()
                epoch_loss += row_losses.detach().sum()
                step_loss += row_losses.detach().sum()
                timer.lap("backward")
                if accelerator.sync_gradients:  # the last micro-batch of a group: check, clip, step, schedule
                    # A NaN/inf loss would poison the weights: stop before the update (one sync per step, as the
                    # Trainer's NaN filter does), so the last checkpoint and the weights stay good.
                    if not torch.isfinite(accelerator.reduce(step_loss, reduction="sum")):
                        progress.close()
                        accelerator.end_training()
                        raise non_finite_loss_error(completed_steps + 1, epoch + 1, output_dir)
                    step_loss.zero_()
                    if args.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                    learning_rate = lr_scheduler.get_last_lr()[0]
                    optimizer.step()
                    if not accelerator.optimizer_step_was_skipped:  # fp16 skips steps with inf gradients
                        lr_scheduler.step()
                    optimizer.zero_grad()
                    timer.lap("optimizer")
            if not accelerator.sync_gradients:
                continue
            completed_steps += 1
            window_rows, epoch_rows, run_rows = window_rows + step_rows, epoch_rows + step_rows, run_rows + step_rows
            progress.update(1)
            if profiler is not None:
                profiler.step()
            if completed_steps % args.logging_steps == 0 or completed_steps == max_train_steps:
                # Sum over processes, divide by the real rows: the mean over the samples of the logged steps.
                totals = accelerator.reduce(torch.cat([window_loss[None], window_tokens]), reduction="sum").tolist()
                loss, (real_tokens, token_slots, squared_lengths) = totals[0] / window_rows, totals[1:]
                times = timer.read()
                seconds = sum(times.values())  # training time only: evaluations and checkpoints are not in it
                flops = flops_per_token * real_tokens + flops_per_token_pair * squared_lengths
                record = {"step": completed_steps, "epoch": round(epoch + (micro_step + 1) / len(shard), 4),
                          "loss": loss, "learning_rate": learning_rate, "samples_per_second": window_rows / seconds,
                          "tokens_per_second": real_tokens / seconds, "padding_efficiency": real_tokens / token_slots,
                          **times, "mfu": flops / seconds / (peak_tflops * 1e12 * num_processes)}
                if is_main:
                    log_file.write(json.dumps(record) + "\n")
                    log_file.flush()
                accelerator.log({f"train/{key}": record[key] for key in TRACKED_TRAIN_KEYS}, step=completed_steps)
                progress.set_postfix(loss=f"{loss:.4f}", lr=f"{learning_rate:.2e}")
                window_loss, window_rows = torch.zeros_like(window_loss), 0
                run_tokens += window_tokens
                window_tokens.zero_()
            stop = completed_steps >= max_train_steps
            if args.eval_strategy == "steps" and completed_steps % args.eval_steps == 0:
                evaluate_and_track(epoch + 1)
                stop = stop or tracker.should_stop
            if isinstance(args.checkpointing_steps, int) and completed_steps % args.checkpointing_steps == 0:
                save_and_prune(f"step_{completed_steps}", epoch, micro_step + 1)
            timer.restart()  # an evaluation or a checkpoint is not training time

        # ---- End of epoch: its train loss, its evaluation, its checkpoint ----
        train_loss = accelerator.reduce(epoch_loss, reduction="sum").item() / max(epoch_rows, 1)
        epoch_record = {"epoch": epoch + 1, "step": completed_steps, "train_loss": train_loss}
        if args.eval_strategy == "epoch":
            epoch_record |= evaluate_and_track(epoch + 1)
        history["epochs"].append(epoch_record)
        logger.info(f"epoch {epoch + 1}: train loss {train_loss:.4f}")
        if tracker.should_stop:
            stop = True
            history["stopped_early"] = {
                "epoch": epoch + 1, "step": completed_steps,
                "reason": f"{args.metric_for_best_model} did not improve in {args.early_stopping_patience} "
                          f"evaluations (best {tracker.best['value']:.4f} at step {tracker.best['step']})"}
            logger.info(f"Stopping early: {history['stopped_early']['reason']}")
        if args.checkpointing_steps == "epoch":
            epoch_loss, epoch_rows = torch.zeros((), device=accelerator.device), 0
            save_and_prune(f"epoch_{epoch + 1}", epoch + 1, 0)
    progress.close()
    if profiler is not None:
        profiler.stop()
    real_tokens, token_slots, _ = accelerator.reduce(run_tokens + window_tokens, reduction="sum").tolist()
    speed = {"tokenize_seconds": tokenize_seconds, "train_seconds": round(timer.total, 3), "peak_tflops": peak_tflops,
             "train_samples_per_second": round(run_rows / max(timer.total, 1e-9), 3),
             "train_padding_efficiency": real_tokens / max(token_slots, 1),
             "eval_padding_efficiency": padding_efficiency(  # one process's batches of the sorted order
                 [eval_order[i : i + args.per_device_eval_batch_size]
                  for i in range(0, len(eval_order), args.per_device_eval_batch_size)], eval_lengths)}

    # ---- The final evaluation and outputs: model, metrics.json, log.jsonl ----
    last = history["evaluations"][-1] if history["evaluations"] else None
    if args.load_best_model_at_end:
        # The best evaluation's model, already saved: copy it rather than keep the last step's weights.
        best = next(e for e in history["evaluations"] if e["step"] == tracker.best["step"])
        history["after"] = metrics_of(best)
        if is_main:
            shutil.copytree(output_dir / "best", output_dir, dirs_exist_ok=True)
    else:
        if last is not None and last["step"] == completed_steps:
            # The model has not changed since that evaluation, which is therefore the "after" figure.
            history["after"] = metrics_of(last)
        else:
            history["after"], predictions["last"] = evaluate(model, eval_batches, accelerator, label_names)
        save_model(model, tokenizer, accelerator, output_dir)
    if is_main:
        history["config"] = config
        history["speed"] = speed
        history["runtime_seconds"] = round(time.perf_counter() - start_time, 2)
        final = predictions["best" if args.load_best_model_at_end else "last"]
        if final is not None:  # (unknown only when resuming after the evaluation that made it)
            eval_labels = list(eval_tokens["labels"])
            history["confusion_matrix"] = confusion(eval_labels, final, label_names)
            lines = [json.dumps({"row": i, "label": int(y), "prediction": p})
                     for i, (y, p) in enumerate(zip(eval_labels, final))]
            (output_dir / "eval_predictions.jsonl").write_text("\n".join(lines) + "\n")
        (output_dir / "metrics.json").write_text(json.dumps(history, indent=2) + "\n")
        log_file.close()
        write_markdown(output_dir / "report.md", history)
        write_picture(output_dir / "report.png", history,
                      [json.loads(line) for line in (output_dir / "log.jsonl").read_text().splitlines()])
        accelerator.print(f"After training:\n{format_report(history['after'])}")
        logger.info(f"Saved the model, metrics.json and log.jsonl to {output_dir} "
                    f"({history['runtime_seconds']:.0f} s in all)")
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main(parse_args())
