"""Fine-tune a pretrained transformer for text classification with a hand-written Accelerate loop.

    accelerate launch train.py                      # the reference recipe: bert-base-cased on 5,000 IMDB reviews
    accelerate launch train.py --config configs/imdb-gpt2.yaml --learning_rate 3e-5   # a file, flags override it
    python train.py --model_name_or_path DIR --debug   # one process, no launcher, seconds: step through the loop

Top to bottom: the flags (Config); data and model; main: set up, evaluate before, the epochs, finish; one epoch of
steps (forward, backward, clip, step, schedule); evaluation, checkpoints and the end of the run.
"""

import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import NamedTuple

import logging

import torch
from accelerate import Accelerator
from accelerate.data_loader import prepare_data_loader
from accelerate.utils import DistributedType, broadcast_object_list, set_seed
from tqdm.auto import tqdm
from transformers import get_scheduler

from data import (KEEP_CHOICES, add_pair_separator, check_head_tokens, check_pair_room, eval_loader, global_batches,
                  length_order, load_splits, on_device, padding_collator, padding_efficiency, process_batches,
                  rename_classes, rows_per_optimizer_step, select_subset, tokenize, train_loader)
from metrics import ALL_METRICS, MULTI_LABEL, PROBLEM_TYPES
from metrics.tasks import DEFAULT_THRESHOLD, task_for
from model.lora import add_lora, lora_summary, peft_problem
from model import (AUTOCAST_DTYPES, BUCKET_MULTIPLE, COMPILE_MODES, compile_classifier, compile_seconds, load_classifier,
                   load_tokenizer, name_fsdp_blocks, parameter_groups, prefer_fast_attention, prepare_attention_masks,
                   resolve_max_length)
from training.checkpoints import (checkpoints_dir, config_differences, damaged_file, intact_checkpoint_advice,
                                  list_checkpoints, load_training_state, prune_checkpoints, save_checkpoint)
from training.cli import (AT_LEAST_ONE, MAY_CHANGE, NON_NEGATIVE, POSITIVE, REPEAT, SEED, Range, RunError, flag,
                          one_line_errors)
from training.config import (DEBUG_EVAL_ROWS, DEBUG_EVAL_STEPS, DEBUG_MAX_LENGTH, DEBUG_TRAIN_ROWS, Plan, data_flag,
                             debug_flag, eval_flag, make_plan, model_flag, optim_flag, output_flag, parse_config,
                             speed_flag)
from training.environment import check_process_group, configure_logging, log_distributed_type, use_the_cores
from training.nonfinite import NonFiniteGuard
from training.outputs import (BEST_RECORD, check_output_dir, find_best_model, open_output_dir, output_dir_problem,
                              save_best_model, save_model, write_results)
from training.model_card import (check_push_to_hub, create_hub_repo, hide_tokens, hub_model_id_problem, push_to_hub,
                                 redact, write_model_card)
from training.state import BestTracker, TrainState
from training.stopping import StopSignals, exit_code, signal_name
from training.telemetry import Telemetry, missing_trackers, trackers_for

logger = logging.getLogger("train")
# The transformers schedules that need nothing but the step count (not reduce_lr_on_plateau, which needs metrics).
SCHEDULES = ["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
             "inverse_sqrt"]


@dataclass(frozen=True)
class Config:
    """Every flag, with its default (`python train.py --help` lists them by group), its range, and whether a resumed
    run must repeat it (REPEAT) or may change it (MAY_CHANGE). Parsed once, checked, then frozen."""

    config: str | None = flag(None, "a YAML or JSON file of flag values (keys as the flag names); flags given here "
                                    "override it", group=None, resume=MAY_CHANGE)
    dataset_name: str = data_flag("stanfordnlp/imdb", "Hub name, or a local directory/file (parquet, csv, json, jsonl) "
                                                      "or aclImdb/ folder", resume=REPEAT)
    dataset_config_name: str | None = data_flag(None, "the dataset's configuration (nyu-mll/glue: mrpc, stsb, ...); "
                                                      "for a local folder, its subfolder of that name", resume=REPEAT)
    text_column: str | None = data_flag(None, "default: a known pair (sentence1 sentence2, question1 question2, "
                                              "premise hypothesis, question sentence, ...), else the first of text, "
                                              "sentence, review, content", resume=REPEAT)
    text_pair_column: str | None = data_flag(None, "the second text of a sentence pair, tokenized with the first as "
                                                   "the tokenizer's pair template puts them (default: the detected "
                                                   "pair's, when --text_column is not given)", resume=REPEAT)
    label_column: tuple[str, ...] | None = data_flag(None, "default: the first of label, labels, sentiment; several "
                                                           "names: one 0/1 column per label (multi-label)",
                                                     resume=REPEAT)
    problem_type: str | None = data_flag(None, "default: multi_label_classification for a list of labels per row or "
                                               "several --label_column, else single_label_classification; regression: "
                                               "one number per row", resume=REPEAT, choices=PROBLEM_TYPES)
    label_names: tuple[str, ...] | None = data_flag(None, "a name for each class, in the order of their ids (the "
                                                          "sorted label values), e.g. World Sports Business Sci/Tech; "
                                                          "saved as the model's id2label", resume=REPEAT)
    validation_split_percentage: int | None = data_flag(None, "data with a train split only: hold out this %% of its "
                                                              "rows (seeded by --subset_seed) as the eval split",
                                                        resume=REPEAT, valid=Range(1, 99, words="between 1 and 99"))
    train_samples: int = data_flag(5000, "rows of the train split; <= 0: all", resume=REPEAT)
    eval_samples: int = data_flag(5000, "rows of the test/validation split; <= 0: all", resume=REPEAT)
    subset_seed: int = data_flag(42, "the subset is split.shuffle(seed).select(range(n))", resume=REPEAT, valid=SEED)
    max_length: int | None = data_flag(None, "truncate to this many tokens (default: the model's limit, at most 512)",
                                       resume=REPEAT, valid=AT_LEAST_ONE)
    truncation_keep: str = data_flag("head", "which tokens of a text longer than --max_length to keep: the head (the "
                                             "recipe), the tail, or head_tail (the first --head_tokens and the end; "
                                             "Sun et al. 2019)", resume=REPEAT, choices=KEEP_CHOICES)
    head_tokens: int = data_flag(128, "with --truncation_keep head_tail", resume=REPEAT, valid=NON_NEGATIVE)
    group_by_length: bool = data_flag(True, "batch training rows of similar length (shuffled in mega-batches), so "
                                            "padding wastes little", resume=REPEAT)
    model_name_or_path: str = model_flag("google-bert/bert-base-cased", resume=REPEAT)
    ignore_mismatched_sizes: bool = model_flag(False, "replace the classification head of a model fine-tuned for "
                                                      "another number of labels", resume=REPEAT)
    lora_r: int | None = model_flag(None, "train LoRA adapters of this rank (and the head) instead of every weight "
                                          "(needs peft); the saved model has them merged, adapter/ holds them alone",
                                    resume=REPEAT, valid=AT_LEAST_ONE, check=peft_problem)
    lora_alpha: float | None = model_flag(None, "LoRA's scale numerator (default: 2 x --lora_r)", resume=REPEAT,
                                          valid=POSITIVE)
    lora_dropout: float | None = model_flag(None, "dropout on LoRA's input (default 0)", resume=REPEAT,
                                            valid=Range(0, 1, high_open=True))
    lora_target_modules: tuple[str, ...] | None = model_flag(None, "the linear layers to adapt, by name (default: "
                                                                   "peft's for the architecture, e.g. query value)",
                                                             resume=REPEAT)
    gradient_checkpointing: bool = model_flag(False, "recompute each layer's activations in the backward instead of "
                                                     "keeping them: less memory, slower steps, the same numbers",
                                              resume=MAY_CHANGE)
    per_device_train_batch_size: int = optim_flag(8, resume=REPEAT, valid=AT_LEAST_ONE)
    per_device_eval_batch_size: int | None = optim_flag(None, "default: 8 on a CPU, 64 on a GPU (evaluation runs "
                                                              "in length order, so batches pad little whatever their "
                                                              "size)", resume=MAY_CHANGE, valid=AT_LEAST_ONE)
    learning_rate: float = optim_flag(5e-5, resume=REPEAT, valid=POSITIVE)
    weight_decay: float = optim_flag(0.01, "not applied to biases and norm weights", resume=REPEAT, valid=NON_NEGATIVE)
    num_train_epochs: int = optim_flag(3, resume=REPEAT, valid=AT_LEAST_ONE)
    max_train_steps: int | None = optim_flag(None, "optimizer steps; overrides --num_train_epochs", resume=REPEAT,
                                             valid=AT_LEAST_ONE)
    gradient_accumulation_steps: int = optim_flag(1, resume=REPEAT, valid=AT_LEAST_ONE)
    num_warmup_steps: int | None = optim_flag(None, "linear warmup steps (default 0)", resume=REPEAT,
                                              valid=NON_NEGATIVE)
    warmup_ratio: float | None = optim_flag(None, "warmup as a fraction of the optimizer steps", resume=REPEAT,
                                            valid=Range(0, 1, high_open=True))
    lr_scheduler_type: str = optim_flag("linear", "the learning-rate schedule after warmup (transformers' "
                                                  "get_scheduler names)", resume=REPEAT, choices=SCHEDULES)
    max_grad_norm: float = optim_flag(1.0, "clip the gradient norm; <= 0: no clipping", resume=REPEAT,
                                      valid=Range(words="a finite number"))
    mixed_precision: str | None = optim_flag(None, "default: what `accelerate launch` / `accelerate config` says, "
                                                   "else no", resume=REPEAT, choices=list(AUTOCAST_DTYPES))
    seed: int = optim_flag(42, "model init, dropout and the training order", resume=REPEAT, valid=SEED)
    eval_strategy: str = eval_flag("epoch", "evaluate after every epoch, every --eval_steps optimizer steps, or only "
                                            "at the end", resume=REPEAT, choices=["epoch", "steps", "no"])
    eval_steps: int | None = eval_flag(None, "with --eval_strategy steps", resume=REPEAT, valid=AT_LEAST_ONE)
    metric_for_best_model: str | None = eval_flag(None, "picks output_dir/best (default: accuracy, micro_f1 or "
                                                        "pearson, by --problem_type; loss, mse and mae: lower is "
                                                        "better)", resume=REPEAT, choices=list(ALL_METRICS))
    threshold: float | None = eval_flag(None, f"multi-label: a label is predicted when its probability is at least "
                                              f"this (default {DEFAULT_THRESHOLD}); saved with the model",
                                        resume=REPEAT, valid=Range(0, 1, low_open=True, high_open=True))
    load_best_model_at_end: bool = eval_flag(False, "the final model in output_dir is the best evaluation's, not the "
                                                    "last step's", resume=REPEAT)
    save_best_model: bool = eval_flag(False, "also keep the best evaluation's model in output_dir/best (a second full "
                                             "copy; never kept when it is the final model)", resume=REPEAT)
    early_stopping_patience: int | None = eval_flag(None, "stop after this many evaluations without improving "
                                                          "--metric_for_best_model", resume=REPEAT, valid=AT_LEAST_ONE)
    output_dir: str = output_flag("result", resume=MAY_CHANGE, check=output_dir_problem)
    overwrite_output_dir: bool = output_flag(False, "replace a non-empty --output_dir", resume=MAY_CHANGE)
    logging_steps: int = output_flag(10, "write a log.jsonl line every N optimizer steps", resume=MAY_CHANGE,
                                     valid=AT_LEAST_ONE)
    checkpointing_steps: str | int | None = output_flag(None, "save the full training state every N optimizer steps, "
                                                              "or 'epoch'", resume=MAY_CHANGE)
    save_total_limit: int | None = output_flag(None, "keep the newest N checkpoints (and the best)", resume=MAY_CHANGE,
                                               valid=AT_LEAST_ONE)
    report_to: str = output_flag("none", "also log to these trackers (all: every one installed); TensorBoard: "
                                         "tensorboard --logdir OUTPUT_DIR/tensorboard", resume=MAY_CHANGE,
                                 choices=["none", "tensorboard", "wandb", "all"], check=missing_trackers)
    push_to_hub: bool = output_flag(False, "at the end, upload --output_dir (its model, README.md model card, "
                                           "metrics; not checkpoints/, best/, profile_*) to the Hub", resume=MAY_CHANGE)
    hub_model_id: str | None = output_flag(None, "the Hub repository, NAME or NAMESPACE/NAME (default: --output_dir's "
                                                 "folder name, in your namespace)", resume=MAY_CHANGE,
                                           check=hub_model_id_problem)
    hub_token: str | None = output_flag(None, "the token to push with (default: HF_TOKEN, or the one `hf auth login` "
                                              "saved); never written to an output", resume=MAY_CHANGE)
    resume_from_checkpoint: str | None = output_flag(None, "a checkpoint folder, or 'latest' in --output_dir; "
                                                           "continues exactly where it stopped", resume=MAY_CHANGE)
    torch_compile: bool | None = speed_flag(None, "compile the model's forward (and so its backward) with "
                                                  "torch.compile, dynamic shapes: one graph for training, one for "
                                                  "evaluation (default: on for a GPU; off on a CPU, where compiling "
                                                  "took minutes and the steps ran 4.6%% slower)", resume=MAY_CHANGE)
    torch_compile_mode: str = speed_flag("default", "torch.compile's mode (reduce-overhead: CUDA graphs, one per "
                                                    "batch shape)", resume=MAY_CHANGE, choices=COMPILE_MODES)
    pad_to_multiple_of: int | None = speed_flag(None, "pad each batch to a multiple of N tokens (at most --max_length), "
                                                      "so batches come in a few shapes (default: "
                                                      f"{BUCKET_MULTIPLE} with a CUDA-graph --torch_compile_mode, "
                                                      "else 1: each batch to its longest row)", resume=MAY_CHANGE,
                                                valid=AT_LEAST_ONE)
    profile_steps: int = speed_flag(0, "profile this many optimizer steps (after the first) with torch.profiler",
                                    resume=MAY_CHANGE, valid=NON_NEGATIVE)
    peak_tflops: float | None = speed_flag(None, "the device's peak TFLOP/s for MFU (default: its fastest dense "
                                                 "matmul, bf16 on a GPU, measured at start; the same whatever "
                                                 "--mixed_precision)", resume=MAY_CHANGE, valid=POSITIVE)
    dataloader_num_workers: int = speed_flag(0, "worker processes for each DataLoader; 0 loads in the main process "
                                                "(debuggers can follow)", resume=MAY_CHANGE, valid=NON_NEGATIVE)
    debug: bool = debug_flag(False, f"{DEBUG_TRAIN_ROWS} train / {DEBUG_EVAL_ROWS} eval rows of at most "
                                    f"{DEBUG_MAX_LENGTH} tokens, 1 epoch, evaluate every {DEBUG_EVAL_STEPS} steps, log "
                                    "every step, eager (not compiled), autograd anomaly detection, full tracebacks "
                                    "(the values it sets are compared on resume, not the switch)", resume=MAY_CHANGE)


def parse_args(argv=None) -> Config:
    config = parse_config(Config, sys.argv[1:] if argv is None else argv, __doc__)
    if argv is None:  # W&B records the command line: not with --hub_token's value
        sys.argv[1:] = hide_tokens(sys.argv[1:])
    return config


# ---- Data and model ----

class Loaded(NamedTuple):
    train_tokens: object  # datasets.Dataset: input_ids, attention_mask, ..., labels (not padded)
    eval_tokens: object
    label_names: list[str]
    columns: dict  # the source's text, text pair and label column(s)
    task: object  # metrics.tasks: what differs between single-label, multi-label and regression
    tokenizer: object
    classifier: torch.nn.Module
    max_length: int
    tokenize_seconds: float
    train_lengths: list[int]  # tokens per row, counted once: for length grouping and padding efficiency
    eval_lengths: list[int]


def load_data_and_model(config: Config, accelerator) -> Loaded:
    """Tokenized train/eval subsets, label names, the task, tokenizer and classifier; bad input is one line and exit
    code 1."""
    with one_line_errors(config.debug):
        splits, label_names = load_splits(config.dataset_name, config.text_column, config.label_column,
                                          config.validation_split_percentage, config.subset_seed,
                                          config.text_pair_column, config.dataset_config_name, config.problem_type)
        label_names = rename_classes(config.label_names, label_names)
        task = choose_task(config, splits.problem_type)
        pairs = splits.columns["text_pair"] is not None
        # Pick the subset before tokenizing: only the rows we use are tokenized.
        train_rows = select_subset(splits["train"], config.train_samples, config.subset_seed)
        eval_rows = select_subset(splits["eval"], config.eval_samples, config.subset_seed)
        for name, rows, split in (("train", train_rows, splits["train"]), ("eval", eval_rows, splits["eval"])):
            if len(rows) < len(split):  # the recipe's 5,000 rows would cut a user's own data set silently
                logger.info(f"using {len(rows):,} of {len(split):,} {name} rows; --{name}_samples 0 for all")
        tokenizer = load_tokenizer(config.model_name_or_path)
        if pairs and (separator := add_pair_separator(tokenizer)):
            logger.info(f"sentence pairs: {type(tokenizer).__name__}'s template puts nothing between the two texts; "
                        f"{separator!r} now separates them (saved with the tokenizer, so pipeline() does the same)")
        classifier = load_classifier(config.model_name_or_path, label_names, tokenizer, task,
                                     config.ignore_mismatched_sizes)
        max_length = resolve_max_length(config.max_length, tokenizer, classifier.config)
        if pairs:
            check_pair_room(config.truncation_keep, max_length, tokenizer)
        else:
            check_head_tokens(config.truncation_keep, config.head_tokens, max_length, tokenizer)
    # Saved with the model, so predict.py truncates as training did (pipelines read model_max_length only: head), reads
    # the same columns of a file and applies the same threshold.
    tokenizer.model_max_length = max_length
    classifier.config.update({"truncation_keep": config.truncation_keep, "head_tokens": config.head_tokens,
                              "text_column": splits.columns["text"], "text_pair_column": splits.columns["text_pair"],
                              "threshold": task.threshold, "label_column": splits.columns["label"]})
    start = time.perf_counter()
    with accelerator.main_process_first():  # the main process fills the datasets cache; the others read it
        train_tokens, eval_tokens = (tokenize(rows, tokenizer, max_length, config.truncation_keep, config.head_tokens)
                                     for rows in (train_rows, eval_rows))
    tokenize_seconds = round(time.perf_counter() - start, 3)
    train_lengths, eval_lengths = ([len(ids) for ids in tokens["input_ids"]] for tokens in (train_tokens, eval_tokens))
    return Loaded(train_tokens, eval_tokens, label_names, splits.columns, task, tokenizer, classifier, max_length,
                  tokenize_seconds, train_lengths, eval_lengths)


def choose_task(config: Config, problem_type: str):
    """The task of the problem type the data (or --problem_type) says, checked against the flags only it takes."""
    task = task_for(problem_type, config.threshold)
    if config.threshold is not None and task.threshold is None:
        raise ValueError(f"--threshold applies to multi-label data; this is {problem_type}: drop --threshold (or pass "
                         f"--problem_type {MULTI_LABEL} for one 0/1 column per label)")
    metric = config.metric_for_best_model
    if metric is not None and metric not in (*task.metrics, "loss"):
        raise ValueError(f"--metric_for_best_model {metric}: not a {problem_type} metric; choose one of "
                         f"{', '.join((*task.metrics, 'loss'))}")
    logger.info(f"problem type {problem_type} (--problem_type to choose another)")
    return task


@dataclass
class Run:
    """What the parts of the loop share; built once by set_up."""

    config: Config
    plan: Plan
    accelerator: Accelerator
    data: Loaded
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: object
    guard: NonFiniteGuard
    eval_batches: object
    collator: object  # DataCollatorWithPadding, or data.loaders.BucketPadding around one
    state: TrainState
    telemetry: Telemetry
    record: dict  # the run as resolved (run_record): metrics.json's config, what a resume compares, trackers' config
    output_dir: Path
    predictions: dict  # main process: eval predictions in input order, of the last and of the best evaluation
    stop: StopSignals  # SIGTERM/SIGINT/SIGUSR1 received: checked after each step
    evaluated_at: int | None = None  # the step this process last evaluated at (not a resumed run's evaluations)
    best_dir: Path | None = None  # --load_best_model_at_end: the folder holding the best evaluation's model
    hub_repo: str | None = None  # --push_to_hub: the repository, created before training


def main(config: Config) -> None:
    start_time = time.perf_counter()
    run = set_up(config)
    state, history = run.state, run.state.history
    run.stop.install()  # SIGTERM, SIGINT, SIGUSR1 from here on: a checkpoint at the step in progress, then exit
    try:
        if history.before is None:
            history.before = timed_evaluation(run)[0]
            run.telemetry.evaluated(history.before, step=0)
            run.accelerator.print(f"Before training:\n{run.data.task.format_report(history.before)}")
        run.model.train()
        for epoch in range(state.epoch, run.plan.num_train_epochs):
            if not run_is_over(run):
                train_epoch(run, epoch)  # a resumed epoch starts after the micro-batches its checkpoint had trained
            elif state.batches_done == 0:
                break  # the run ended at the previous epoch's end (or the checkpoint resumed from was taken there)
            end_of_epoch(run, epoch)  # (a run that ended mid-epoch, or was resumed there, still closes that epoch)
        finish(run, start_time)
        if run.stop.received:  # after the last step: finishing (the final evaluation and save) loses nothing
            logger.warning(f"{signal_name(run.stop.received)} came after the last step; the run finished first and "
                           "is complete")
    except torch.OutOfMemoryError:
        run.telemetry.progress.close()
        if config.debug:
            raise
        raise RunError(out_of_memory(run)) from None
    except OSError as error:  # a checkpoint or the model could not be written (disk full, permissions)
        run.telemetry.progress.close()
        if config.debug:
            raise
        raise RunError(str(error)) from None
    finally:
        run.stop.restore()


def out_of_memory(run: Run) -> str:
    """One line: where, the batch, what to try, and what is saved."""
    checkpoints = list_checkpoints(run.output_dir)
    shape = getattr(run.telemetry, "batch_shape", None) if run.model.training else None  # eval batches: not counted
    where = (f"at step {run.state.completed_steps + 1}" if run.model.training else
             f"in the evaluation after step {run.state.completed_steps}")
    return (f"out of memory {where} (epoch {run.state.epoch + 1}"
            f"{f', a batch of {shape[0]} rows x {shape[1]} tokens' if shape else ''}); try a smaller "
            "--per_device_train_batch_size (with --gradient_accumulation_steps to keep the step's rows), a smaller "
            f"--max_length or --per_device_eval_batch_size; "
            f"{f'the last checkpoint is {checkpoints[-1]}' if checkpoints else 'no checkpoint was saved'}")


def run_is_over(run: Run) -> bool:
    """The one place that decides when training stops: the planned steps are done, or early stopping says so."""
    return run.state.completed_steps >= run.plan.max_train_steps or run.state.tracker.should_stop


def set_up(config: Config) -> Run:
    """Processes, data, model, optimizer and schedule; and where the run starts: fresh, or exactly where a checkpoint
    left it. Bad input stops here, before --output_dir is touched."""
    check_push_to_hub(config)  # offline or no token: stop now, not after training
    trackers = trackers_for(config.report_to)
    accelerator = Accelerator(gradient_accumulation_steps=config.gradient_accumulation_steps,
                              mixed_precision=config.mixed_precision, log_with=trackers or None,
                              project_dir=Path(config.output_dir) / "tensorboard")
    check_process_group(accelerator)
    configure_logging(accelerator)
    log_distributed_type(accelerator)
    use_the_cores(accelerator)
    hub_repo = create_hub_repo(config, accelerator)  # a token that cannot write there: stop now too
    with one_line_errors(config.debug):
        if config.lora_r and accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
            raise ValueError(f"--lora_r with {accelerator.distributed_type.value}: not supported (untested; the "
                             "merged model is saved from one process's full weights); run LoRA with DDP")
        checkpoint = check_output_dir(config)
    torch.autograd.set_detect_anomaly(config.debug)  # names the forward op behind a NaN gradient (slow: --debug only)
    set_seed(config.seed)  # before the classifier head is initialized

    data = load_data_and_model(config, accelerator)
    plan = make_plan(config, data, accelerator)
    # Each batch padded to its longest row, or (--pad_to_multiple_of, compiling) to one of a few bucket lengths.
    collator = padding_collator(data.tokenizer, plan.pad_to_multiple_of, plan.max_length)
    # accelerate shards the eval batches over processes; the loop moves them to the device (device_placement off).
    eval_batches = accelerator.prepare_data_loader(eval_loader(
        data.eval_tokens, plan.eval_batch_size, collator, config.dataloader_num_workers, accelerator.device,
        data.eval_lengths), device_placement=False)
    model, optimizer, lr_scheduler = prepare_training(config, plan, data.classifier, accelerator)
    record = run_record(config, plan, data, trackers)
    logger.info(f"Training {len(data.train_tokens)} rows, evaluating {len(data.eval_tokens)}: {plan.num_train_epochs} "
                f"epochs, {plan.max_train_steps} optimizer steps of {plan.total_train_batch_size} rows "
                f"({plan.num_processes} processes x {config.per_device_train_batch_size} x "
                f"{config.gradient_accumulation_steps} accumulated)")

    state = TrainState(BestTracker(plan.metric_for_best_model, config.early_stopping_patience), accelerator.device)
    output_dir = Path(config.output_dir)
    saved, best_dir = {}, None
    if checkpoint is not None:
        saved = resume(state, checkpoint, config, record, accelerator)
        if config.load_best_model_at_end and state.tracker.best is not None:
            best_dir = find_best_model(state.tracker.best, output_dir, checkpoint)
    log_file = (open_output_dir(output_dir, config.overwrite_output_dir, state.completed_steps if checkpoint else None)
                if accelerator.is_main_process else None)  # one writer: only the main process touches output_dir
    if best_dir is not None and best_dir.parent != output_dir and best_dir != output_dir:
        # Resumed into another --output_dir: the best model comes along, so the new folder does not need the old one.
        if accelerator.is_main_process:
            shutil.copytree(best_dir, output_dir / "best", dirs_exist_ok=True)
        accelerator.wait_for_everyone()
        best_dir = output_dir / "best"
    tracker_config = {k: v for k, v in record.items() if isinstance(v, (int, float, str, bool))}
    telemetry = Telemetry(accelerator, config, plan, data.classifier, output_dir, log_file,
                          tracker_config if trackers else None, state.completed_steps)
    # Skips a NaN/inf update on the device (fused AdamW's found_inf): the loop checks the flag only where it syncs.
    return Run(config, plan, accelerator, data, model, optimizer, lr_scheduler, NonFiniteGuard(optimizer, accelerator),
               eval_batches, collator, state, telemetry, record, output_dir,
               predictions={"last": None, "best": saved.get("best_outputs")}, stop=StopSignals(accelerator),
               best_dir=best_dir, hub_repo=hub_repo)


def prepare_training(config: Config, plan: Plan, classifier, accelerator) -> tuple:
    """The model, AdamW and the schedule, prepared for the devices and processes (and compiled when planned)."""
    # Fused AdamW: one kernel for all parameters (MiniLM on this CPU: 8 ms a step instead of 67 ms), same update rule.
    # Sharded parameters (FSDP/DeepSpeed) keep the default implementation.
    fused = accelerator.distributed_type in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)
    with one_line_errors(config.debug):
        if config.lora_r:
            classifier = add_lora(classifier, config.lora_r, config.lora_alpha, config.lora_dropout or 0.0,
                                  config.lora_target_modules)
            logger.info(lora_summary(classifier))
        if config.gradient_checkpointing:
            # Non-reentrant: works with frozen inputs (LoRA) and torch.compile; the RNG is replayed, so dropout
            # draws the same masks in the recomputation.
            classifier.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if accelerator.distributed_type == DistributedType.FSDP and (block := name_fsdp_blocks(classifier)):
        logger.info(f"FSDP: {type(classifier).__name__} names no blocks to wrap; wrapping each {block}")
    optimizer = torch.optim.AdamW(parameter_groups(classifier, config.weight_decay), lr=config.learning_rate,
                                  fused=fused)
    # Counted in optimizer steps across all processes. Not prepared: accelerate's wrapper steps it once per process
    # per step; the loop steps it by hand once.
    lr_scheduler = get_scheduler(config.lr_scheduler_type, optimizer, num_warmup_steps=plan.num_warmup_steps,
                                 num_training_steps=plan.max_train_steps)
    model, optimizer = accelerator.prepare(classifier, optimizer)
    accelerator.register_for_checkpointing(lr_scheduler)
    prefer_fast_attention(accelerator.device)
    if plan.torch_compile:  # after prepare: the forward with accelerate's autocast is what gets compiled; inside
        # DDP's wrapper, whose own forward (buffer broadcasts) breaks the graph, and which dynamo splits by buckets
        compile_classifier(accelerator.unwrap_model(model), config.torch_compile_mode,
                           fall_back_to_eager=config.torch_compile is None)
    else:  # eager: the 4D attention mask built on the device, or transformers asks the host about padding every step
        prepare_attention_masks(accelerator.unwrap_model(model))
    return model, optimizer, lr_scheduler


def run_record(config: Config, plan: Plan, data: Loaded, trackers: list[str]) -> dict:
    """The run as metrics.json's `config` records it, built once: every flag with the value the run resolved for it
    (the plan's, where the plan resolves one: max_length, mixed_precision, label_names, the columns, ...), the rest of
    the plan, and the rows and trackers. A resume compares its REPEAT flags; trackers get its scalars."""
    plan_values = asdict(plan)
    flags = redact({name: plan_values.get(name, value) for name, value in asdict(config).items()})  # no --hub_token
    facts = {"train_rows": len(data.train_tokens), "eval_rows": len(data.eval_tokens),
             "trackers": trackers}
    return {**flags, **{k: v for k, v in plan_values.items() if k not in flags}, **facts}


# ---- One epoch: the training step ----

def train_epoch(run: Run, epoch: int) -> None:
    """The epoch's optimizer steps: forward, loss, backward, clip, step, schedule, zero; after each step, log,
    evaluate or checkpoint when it is time, and stop when the run is over."""
    config, plan, accelerator, model, state, telemetry, task = (run.config, run.plan, run.accelerator, run.model,
                                                                 run.state, run.telemetry, run.data.task)
    batches, rows_per_step, epoch_length = epoch_batches(run, epoch)
    accumulation = config.gradient_accumulation_steps
    clip_at = config.max_grad_norm if config.max_grad_norm > 0 else math.inf  # no clipping: a clip at infinity
    telemetry.restart()
    for batch in on_device(batches, accelerator.device):
        telemetry.batch_loaded(batch)  # the data phase's time, the batch's tokens (on the device: no sync)
        step_rows = rows_per_step[state.batches_done // accumulation]  # real rows in this optimizer step, all processes
        with accelerator.accumulate(model):
            labels, weights = batch.pop("labels"), batch.pop("loss_weight")
            logits = model(**batch).logits
            row_losses = task.row_losses(logits, labels) * weights  # cross-entropy, BCE or squared error (fp32)
            telemetry.lap("forward")
            # The step's loss is the mean over all its real rows (every micro-batch, every process), whatever the
            # batch sizes: DDP averages gradients over processes and backward() divides by GA, so undo both.
            accelerator.backward(row_losses.sum() * plan.num_processes * accumulation / step_rows)
            state.micro_batch_done(row_losses)
            telemetry.lap("backward")
            if not accelerator.sync_gradients:
                continue  # accumulating: the group's last micro-batch clips and steps
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), clip_at)  # the norm before clipping
            flag_if_not_finite(run, grad_norm)  # NaN/inf: this update and every later one skipped, on the device
            learning_rate = run.lr_scheduler.get_last_lr()[0]  # the rate this step uses, for the log
            run.optimizer.step()
            if not accelerator.optimizer_step_was_skipped:  # fp16 skips steps with inf gradients
                run.lr_scheduler.step()
            run.optimizer.zero_grad()
            telemetry.lap("optimizer")
        if after_step(run, epoch + state.batches_done / epoch_length, step_rows, learning_rate):
            break


def epoch_batches(run: Run, epoch: int) -> tuple:
    """This process's micro-batches of the epoch, on the CPU (a resumed epoch: those its checkpoint had not trained),
    the real rows of each optimizer step over all processes, and the epoch's micro-batches per process."""
    config, plan, rows = run.config, run.plan, run.data.train_tokens
    # Every process builds the same global batches and takes its own slice of each (see data/sampling.py).
    lengths = run.data.train_lengths if config.group_by_length else None
    batches = global_batches(len(rows), plan.global_batch_size, config.seed, epoch, lengths,
                             config.gradient_accumulation_steps)
    shard = process_batches(batches, len(rows), plan.num_processes, run.accelerator.process_index)
    # Already sharded, so accelerate must not shard again (num_processes=1); it marks the epoch's last batch, which
    # makes accumulate() step on a short final group too. The batches stay on the CPU until on_device moves them.
    loader = prepare_data_loader(train_loader(rows, shard[run.state.batches_done:], run.collator,
                                              config.dataloader_num_workers, run.accelerator.device),
                                 num_processes=1, process_index=0)
    return loader, rows_per_optimizer_step(batches, config.gradient_accumulation_steps), len(shard)


def flag_if_not_finite(run: Run, grad_norm: torch.Tensor) -> None:
    """Hand the step's loss and gradient norm to the NaN/inf guard (queued on the device: no sync; see
    training/nonfinite.py) and the norm to the log; fp16 and sharded optimizers have no device flag and check now."""
    run.telemetry.add_grad_norm(grad_norm)
    run.guard.check(run.state.step_loss, grad_norm, run.state.completed_steps + 1)
    run.state.step_loss.zero_()
    if run.guard.must_check_every_step:
        stop_if_not_finite(run)


def stop_if_not_finite(run: Run) -> None:
    """Stop if a step's loss or gradient norm was NaN/inf. Its update and every later one were skipped (the guard's
    flag latches) and no checkpoint was saved after it, so the weights and the last checkpoint stay good. Called where
    the loop syncs anyway: logging steps, evaluations, checkpoints (one .item() there; none per step)."""
    step = run.guard.first_bad_step()
    if step:
        run.telemetry.progress.close()
        end_training(run)
        checkpoints = list_checkpoints(run.output_dir)
        kept = f"the last good checkpoint is {checkpoints[-1]}" if checkpoints else "no checkpoint had been saved"
        raise RunError(f"the training loss is NaN or infinite at step {step} (epoch "
                       f"{(step - 1) // run.plan.steps_per_epoch + 1}); stopped before updating the weights, {kept}. "
                       "Try a lower --learning_rate, --max_grad_norm 1.0, or bf16 instead of fp16")


def after_step(run: Run, epoch_position: float, step_rows: int, learning_rate: float) -> bool:
    """Count the step; log, evaluate or checkpoint when it is time. True when the run is over."""
    config, state = run.config, run.state
    state.step_taken(step_rows)
    step = state.completed_steps
    log_now = step % config.logging_steps == 0 or step == run.plan.max_train_steps
    evaluate_now = config.eval_strategy == "steps" and step % config.eval_steps == 0
    checkpoint_now = isinstance(config.checkpointing_steps, int) and step % config.checkpointing_steps == 0
    stop_signal = run.stop.requested(sync_point=log_now or evaluate_now or checkpoint_now)  # 0: go on
    if log_now or evaluate_now or checkpoint_now or stop_signal:
        stop_if_not_finite(run)  # nothing after a bad step is logged, evaluated or saved
    run.telemetry.step_done(state, step_rows, epoch_position, learning_rate, log_now)
    if evaluate_now:
        evaluate_and_track(run, state.epoch + 1)
    if checkpoint_now or stop_signal:
        save_and_prune(run, f"step_{step}")
    if stop_signal:
        stop_for_signal(run, stop_signal)
    run.telemetry.restart()  # an evaluation or a checkpoint is not training time
    return run_is_over(run)


def stop_for_signal(run: Run, number: int) -> None:
    """After the checkpoint of the step in progress: one line, and the exit code of a process the signal stopped."""
    run.telemetry.progress.close()
    end_training(run)
    step = run.state.completed_steps
    if run.accelerator.is_main_process:
        print(f"stopped by {signal_name(number)} at step {step} (epoch {run.state.epoch + 1}); saved "
              f"{checkpoints_dir(run.output_dir) / f'step_{step}'}; continue with --resume_from_checkpoint latest",
              file=sys.stderr)
    raise SystemExit(exit_code(number))


def end_of_epoch(run: Run, epoch: int) -> None:
    """The epoch's train loss, its evaluation and its checkpoint; the next epoch starts from nothing."""
    config, state, history = run.config, run.state, run.state.history
    stop_if_not_finite(run)
    train_loss = run.accelerator.reduce(state.epoch_loss, reduction="sum").item() / max(state.epoch_rows, 1)
    epoch_record = {"epoch": epoch + 1, "step": state.completed_steps, "train_loss": train_loss}
    if config.eval_strategy == "epoch":
        epoch_record |= evaluate_and_track(run, epoch + 1)
    history.epochs.append(epoch_record)
    logger.info(f"epoch {epoch + 1}: train loss {train_loss:.4f}")
    if state.tracker.should_stop:
        best = state.tracker.best
        history.stopped_early = {
            "epoch": epoch + 1, "step": state.completed_steps,
            "reason": f"{run.plan.metric_for_best_model} did not improve in {config.early_stopping_patience} "
                      f"evaluations (best {best['value']:.4f} at step {best['step']})"}
        logger.info(f"Stopping early: {history.stopped_early['reason']}")
    state.next_epoch()
    if config.checkpointing_steps == "epoch":
        save_and_prune(run, f"epoch_{epoch + 1}")


# ---- Evaluation ----

def evaluate(model, eval_batches, accelerator, task, label_names) -> tuple[dict, list | None]:
    """Metrics over every eval row exactly once, computed on the main process and sent to the others; and, on the
    main process, each row's output (class id, label probabilities or score) in the eval rows' input order (the loader
    runs in length order)."""
    model.eval()
    rows, outputs, labels, losses = [], [], [], []
    batches = on_device(eval_batches, accelerator.device)  # pinned, asynchronous copies on CUDA
    for batch in tqdm(batches, desc="eval", leave=False, total=len(eval_batches),
                      disable=not accelerator.is_local_main_process):
        batch_rows, batch_labels = batch.pop("row"), batch.pop("labels")
        with torch.no_grad():
            logits = model(**batch).logits
        batch_losses = task.row_losses(logits, batch_labels)
        # One gather per batch; gather_for_metrics drops the rows accelerate repeated to even out the last batch.
        gathered = accelerator.gather_for_metrics((batch_rows, task.outputs(logits), batch_labels, batch_losses))
        for store, tensor in zip((rows, outputs, labels, losses), gathered):
            store.append(tensor)  # kept on the device: no host read per batch
    model.train()
    result, in_input_order = [None], None
    if accelerator.is_main_process:  # one copy of each to the host, after the last batch
        rows, outputs, labels, losses = (torch.cat(store).cpu() for store in (rows, outputs, labels, losses))
        order = rows.argsort()
        labels, outputs = labels[order].numpy(), outputs[order].numpy()
        result[0] = task.evaluate(labels, outputs, label_names) | {"loss": losses.mean().item(), "rows": len(labels)}
        in_input_order = outputs.tolist()
    # Every process needs the figures: they decide the best model and early stopping together.
    return broadcast_object_list(result)[0], in_input_order


def timed_evaluation(run: Run) -> tuple[dict, list | None]:
    start = time.perf_counter()
    metrics, outputs = evaluate(run.model, run.eval_batches, run.accelerator, run.data.task, run.data.label_names)
    return metrics | {"seconds": round(time.perf_counter() - start, 3)}, outputs


def evaluate_and_track(run: Run, epoch: int) -> dict:
    """Evaluate; keep the best model in output_dir/best; count evaluations without improvement."""
    state = run.state
    timed, run.predictions["last"] = timed_evaluation(run)
    run.evaluated_at = state.completed_steps  # on every process (the predictions are only on the main one)
    metrics = metrics_of(timed)
    state.history.evaluations.append({"epoch": epoch, "step": state.completed_steps} | timed)
    run.telemetry.evaluated(metrics, state.completed_steps)
    if state.tracker.update(metrics, epoch, state.completed_steps):
        run.predictions["best"] = run.predictions["last"]
        if run.config.load_best_model_at_end or run.config.save_best_model:  # a full copy: only when asked for
            run.best_dir = save_best_model(run.model, run.data.tokenizer, run.accelerator, run.output_dir,
                                           state.tracker.best)
    state.history.best = best = state.tracker.best
    metric = run.plan.metric_for_best_model
    logger.info(f"step {state.completed_steps}: eval {metric} {metrics[metric]:.4f} (best {best['value']:.4f} at "
                f"step {best['step']})")
    return metrics


def metrics_of(evaluation: dict) -> dict:
    """An `evaluations` record without where and how long: the model's metrics alone."""
    return {k: v for k, v in evaluation.items() if k not in ("epoch", "step", "seconds")}


# ---- Checkpoints and the end of the run ----

def resume_settings(config_class, record: dict) -> dict:
    """What a resumed run must repeat: every REPEAT flag as the run resolved it, and the process count."""
    repeat = [field.name for field in fields(config_class) if field.metadata["resume"] == REPEAT]
    return {name: record[name] for name in repeat} | {"num_processes": record["num_processes"]}


def resume(state: TrainState, checkpoint: Path, config: Config, record: dict, accelerator) -> dict:
    """The checkpoint checked (readable, same settings) and loaded; its training_state.json returned."""
    damaged = damaged_file(checkpoint, accelerator.num_processes)
    if damaged:  # latest does not pass over a damaged checkpoint silently: the user picks the one to resume
        raise RunError(f"{checkpoint}: {damaged} cannot be read; "
                       f"{intact_checkpoint_advice(checkpoint.parent.parent, checkpoint, accelerator.num_processes)}")
    saved = load_training_state(checkpoint)
    # Checkpoints before this version saved the flags as given (None: decided by the run): either form matches.
    differences = config_differences(saved["settings"], resume_settings(Config, record), given=asdict(config))
    if differences:
        raise RunError(f"{checkpoint} was made with other settings ({'; '.join(differences)}); resume with the same "
                       "flags, or start a new --output_dir")
    accelerator.load_state(str(checkpoint))  # model, optimizer, scheduler, RNG states
    state.load_state_dict(saved, accelerator.process_index)
    logger.info(f"Resumed from {checkpoint}: epoch {state.epoch + 1}, step {state.completed_steps}")
    return saved


def save_and_prune(run: Run, name: str) -> None:
    """A checkpoint of accelerate's states and the TrainState; then keep only the newest --save_total_limit (and the
    best step's)."""
    saved = run.state.state_dict(run.accelerator) | {"settings": resume_settings(Config, run.record)}
    if run.config.load_best_model_at_end:  # the best evaluation's outputs: its eval_predictions.jsonl after a resume
        saved["best_outputs"] = run.predictions["best"]
    save_checkpoint(run.accelerator, run.output_dir, name, saved)
    if run.accelerator.is_main_process:
        best = run.state.tracker.best
        prune_checkpoints(run.output_dir, run.config.save_total_limit, best and best["step"])


def best_model_saved(run: Run) -> bool:
    """--load_best_model_at_end: whether the best evaluation's model is in output_dir/best; if not, the warning why
    (the run then ends with the last step's model instead of losing it)."""
    best = run.state.tracker.best
    if best is None:
        logger.warning("--load_best_model_at_end: no evaluation ran during training (a run shorter than --eval_steps?); "
                       "the final model is the last step's")
        return False
    return run.best_dir is not None  # (if not, find_best_model has said why when the run resumed)


def save_final_model(run: Run) -> None:
    try:
        save_model(run.model, run.data.tokenizer, run.accelerator, run.output_dir)
    except OSError as error:  # a full disk, no permission: say where, and what training is still saved
        checkpoints = list_checkpoints(run.output_dir)
        kept = (f"the last checkpoint, {checkpoints[-1]}, is intact: resume from it once there is room" if checkpoints
                else "no checkpoint was saved (--checkpointing_steps keeps the training if this can happen)")
        raise OSError(f"cannot save the final model to {run.output_dir} ({error.strerror or error}); {kept}") from error


def finish(run: Run, start_time: float) -> None:
    """The final model ("after": the last step's, or the best evaluation's) and every output file."""
    config, accelerator, state, history = run.config, run.accelerator, run.state, run.state.history
    eval_order, size = length_order(run.data.eval_lengths), run.plan.eval_batch_size
    speed = {"tokenize_seconds": run.data.tokenize_seconds} | run.telemetry.close() | {
        "eval_padding_efficiency": padding_efficiency(  # one process's batches of the sorted order
            [eval_order[i : i + size] for i in range(0, len(eval_order), size)], run.data.eval_lengths,
            run.plan.pad_to_multiple_of, run.plan.max_length),
        "compile_seconds": compile_seconds()}
    last = history.evaluations[-1] if history.evaluations else None
    load_best = config.load_best_model_at_end and best_model_saved(run)
    if load_best:
        # The best evaluation's model, already saved: copy it rather than keep the last step's weights.
        best = next(e for e in history.evaluations if e["step"] == state.tracker.best["step"])
        history.after = metrics_of(best)
        if accelerator.is_main_process and run.best_dir != run.output_dir:  # (a finished run's: already there)
            shutil.copytree(run.best_dir, run.output_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns(BEST_RECORD))
    else:
        if last is not None and last["step"] == state.completed_steps and run.evaluated_at == state.completed_steps:
            history.after = metrics_of(last)  # the model has not changed since that evaluation
        # (else evaluate; also a run resumed after its last evaluation, so eval_predictions.jsonl is written)
        else:
            history.after, run.predictions["last"] = evaluate(run.model, run.eval_batches, accelerator, run.data.task,
                                                              run.data.label_names)
        save_final_model(run)
    if accelerator.is_main_process:
        history.config, history.speed = run.record, speed
        history.runtime_seconds = round(time.perf_counter() - start_time, 2)
        final = run.predictions["best" if load_best else "last"]
        write_results(run.output_dir, history, run.data.task, list(run.data.eval_tokens["labels"]), final,
                      run.data.label_names)
        write_model_card(run.output_dir, config)  # README.md, from the metrics.json just written
        accelerator.print(f"After training:\n{run.data.task.format_report(history.after)}")
        logger.info(f"Saved the model, metrics.json and log.jsonl to {run.output_dir} "
                    f"({history.runtime_seconds:.0f} s in all)")
    best_is_final = load_best or (state.tracker.best or {}).get("step") == state.completed_steps
    if accelerator.is_main_process and best_is_final and (run.output_dir / "best").is_dir():
        # The same weights as the final model: no second copy (removed last: metrics.json now says where it is).
        shutil.rmtree(run.output_dir / "best")
        logger.info(f"The best evaluation's model is the final model in {run.output_dir}: no separate best/")
    accelerator.wait_for_everyone()
    end_training(run)
    if config.push_to_hub and accelerator.is_main_process:  # last: a failed upload loses nothing already written
        logger.info(f"Pushed {run.output_dir} to {push_to_hub(run.output_dir, config, run.hub_repo)}")


def end_training(run: Run) -> None:
    """The trackers closed and the process group destroyed, the DDP wrapper first: its Reducer holds the group, and
    a group freed from the Reducer's destructor joins gloo's threads while holding the GIL, which hung 2 of ~25 CPU
    launches at exit (PyTorch issue #56297); freed by destroy_process_group, it lets go of the GIL first."""
    if run.accelerator.num_processes > 1:
        run.model = None
        run.accelerator.free_memory()  # accelerate's own references to the wrapper, and a garbage collection
    run.accelerator.end_training()


if __name__ == "__main__":
    main(parse_args())
