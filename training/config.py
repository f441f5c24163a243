"""The run's configuration, parsed once: the command line (built from train.py's `Config` dataclass, whose fields are
the flags), an optional YAML/JSON file under the same names, the checks a user can fail, and the numbers derived from
it all (`Plan`), computed in one place and saved with the run."""

import argparse
import dataclasses
import difflib
import json
import math
import types
import typing
from functools import partial
from pathlib import Path

import yaml

from model import resolve_speed
from training.cli import Parser, flag, flag_errors

DEBUG_TRAIN_ROWS, DEBUG_EVAL_ROWS, DEBUG_EVAL_STEPS, DEBUG_MAX_LENGTH = 64, 32, 4, 128  # --debug: a run of seconds

data_flag, model_flag, optim_flag, eval_flag, output_flag, speed_flag, debug_flag = (
    partial(flag, group=name) for name in ("data", "model", "optimization", "evaluation, best model, early stopping",
                                           "output and checkpoints", "speed and profiling", "debugging"))


def value_type(annotation) -> type:
    """`int | None` -> int; `str | int | None` -> str (the first type is what the command line gives);
    `tuple[str, ...]` stays as it is (a flag taking one or more values)."""
    if isinstance(annotation, types.UnionType):
        return next(arg for arg in typing.get_args(annotation) if arg is not type(None))
    return annotation


def is_list(annotation) -> bool:
    return typing.get_origin(value_type(annotation)) is tuple


def build_parser(config_class, description: str, prog: str = "train.py") -> argparse.ArgumentParser:
    parser = Parser(prog=prog, description=description)
    groups = {None: parser}
    for field in dataclasses.fields(config_class):
        name = field.metadata["group"]
        group = groups.get(name) or groups.setdefault(name, parser.add_argument_group(name))
        options = {"default": field.default, "help": field.metadata["help"] or "(default: %(default)s)"}
        if value_type(field.type) is bool:  # off by default: --NAME; on or decided later (None): --NAME / --no-NAME
            options["action"] = "store_true" if field.default is False else argparse.BooleanOptionalAction
        elif is_list(field.type):  # --NAME A B C
            options |= {"nargs": "+", "type": typing.get_args(value_type(field.type))[0]}
        else:
            options |= {"type": value_type(field.type), "choices": field.metadata["choices"]}
        group.add_argument(f"--{field.name}", **options)
    return parser


def parse_config(config_class, argv: list, description: str):
    """The frozen config: command line over the --config file over the defaults, checked (argparse's exit 2 and one
    line on stderr for anything a user can get wrong)."""
    parser = build_parser(config_class, description)
    argv = [str(arg) for arg in argv]
    given, _ = parser.parse_known_args(argv)
    if given.config:  # the file's values first, so the command line's flags (parsed later) win
        argv = file_arguments(given.config, config_class, parser) + argv
    values = vars(parser.parse_args(argv))
    values |= {name: tuple(value) for name, value in values.items() if isinstance(value, list)}  # frozen: no lists
    if values["debug"]:
        values |= debug_values(values)
    check(values, config_class, parser)
    return config_class(**values)


SWITCH_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}
NULL_WORDS = ("null", "Null", "NULL", "~", "")  # YAML's ways to say "no value": the flag keeps its default


def file_arguments(path: str, config_class, parser: argparse.ArgumentParser) -> list[str]:
    """A YAML/JSON file of flag values turned into command-line arguments, so argparse converts and checks them like
    typed flags. YAML is read as text (yaml.BaseLoader), so each value reaches its flag as that flag's type and nothing
    else: `no` stays the word for a string flag (PyYAML's YAML 1.1 made `eval_strategy: no` False), `010` is 10 (not
    octal 8), and a switch takes true/false or yes/no/on/off. Unknown keys are an error naming the nearest flag;
    `key: null` keeps the default."""
    file = Path(path)
    if not file.is_file():
        parser.error(f"--config {path}: no such file")
    try:
        text = file.read_text()
        values = json.loads(text) if file.suffix == ".json" else yaml.load(text, Loader=yaml.BaseLoader)
    except (ValueError, yaml.YAMLError) as error:
        parser.error(f"--config {path}: not valid {'JSON' if file.suffix == '.json' else 'YAML'} "
                     f"({str(error).splitlines()[0]})")
    if not isinstance(values, dict):
        parser.error(f"--config {path}: expected a mapping of flag names to values, like `learning_rate: 5.0e-5`")
    fields = {field.name: field for field in dataclasses.fields(config_class)}
    arguments = []
    for key, value in values.items():
        field = fields.get(key)
        if field is None or key == "config":
            nearest = difflib.get_close_matches(str(key), [name for name in fields if name != "config"], n=1)
            hint = f"; did you mean {nearest[0]!r}?" if nearest else ""
            parser.error(f"--config {path}: unknown key {key!r}{hint}")
        if value is None or (file.suffix != ".json" and value in NULL_WORDS):
            continue
        if value_type(field.type) is bool:
            value = SWITCH_WORDS.get(value.lower(), value) if isinstance(value, str) else value
            if not isinstance(value, bool):
                parser.error(f"--config {path}: {key} must be true or false, got {value!r}")
            if field.default is not False:  # a BooleanOptionalAction
                arguments.append(f"--{key}" if value else f"--no-{key}")
            elif value:
                arguments.append(f"--{key}")
        elif is_list(field.type) and isinstance(value, list):
            arguments += [f"--{key}", *map(str, value)]
        else:
            arguments += [f"--{key}", str(value)]
    return arguments


def debug_values(values: dict) -> dict:
    """--debug: seconds, not hours: tiny subsets, one epoch, frequent evaluation and logging."""
    def capped(name: str, limit: int) -> int:  # a smaller limit given with --debug is kept
        return min(values[name], limit) if values[name] > 0 else limit

    changed = {"train_samples": capped("train_samples", DEBUG_TRAIN_ROWS),
               "eval_samples": capped("eval_samples", DEBUG_EVAL_ROWS), "num_train_epochs": 1, "logging_steps": 1,
               "max_length": values["max_length"] or DEBUG_MAX_LENGTH,  # 512-token reviews took ~100 s on MiniLM
               # eager, unless asked: a breakpoint in the model's forward stops there, anomaly detection sees its ops
               "torch_compile": False if values["torch_compile"] is None else values["torch_compile"]}
    if values["eval_strategy"] != "no":
        changed |= {"eval_strategy": "steps", "eval_steps": values["eval_steps"] or DEBUG_EVAL_STEPS}
    return changed


def check(values: dict, config_class, parser: argparse.ArgumentParser) -> None:
    """Fail before any work: each flag's own range and check (declared with the flag), then the combinations of flags
    a user can get wrong (--checkpointing_steps N becomes an int here)."""
    steps = values["checkpointing_steps"]
    if steps not in (None, "epoch"):
        if not steps.isdigit() or int(steps) <= 0:
            parser.error(f"--checkpointing_steps must be a positive integer or 'epoch', got {steps!r}")
        values["checkpointing_steps"] = int(steps)
    errors = flag_errors(config_class, values)
    if errors:
        parser.error(errors[0] if len(errors) == 1 else "; ".join(errors))
    if values["num_warmup_steps"] is not None and values["warmup_ratio"] is not None:
        parser.error("give --num_warmup_steps or --warmup_ratio, not both")
    if (values["eval_strategy"] == "steps") != (values["eval_steps"] is not None):
        parser.error("--eval_steps goes with --eval_strategy steps, and that needs --eval_steps")
    lora_flags = [f"--{name}" for name in ("lora_alpha", "lora_dropout", "lora_target_modules")
                  if values[name] is not None]
    if lora_flags and not values["lora_r"]:
        parser.error(f"{', '.join(lora_flags)} set LoRA's adapters: give --lora_r too")
    if values["eval_strategy"] == "no" and (values["early_stopping_patience"] or values["load_best_model_at_end"]):
        parser.error("--early_stopping_patience and --load_best_model_at_end need evaluations: not --eval_strategy no")


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the run resolves from the config, the data, the model, the device and the processes; computed once, saved
    with the run. A field named like a flag is that flag's resolved value (eval_batch_size is
    --per_device_eval_batch_size's). Steps count optimizer steps across all processes."""

    text_column: str  # --text_column, or the one detected
    text_pair_column: str | None  # sentence pairs: the second text's column
    label_column: str | list[str]  # several: one 0/1 column per label
    label_names: list[str]  # --label_names, or the data's classes (or labels)
    problem_type: str  # --problem_type, or the one the data says (metrics/tasks.py)
    metric_for_best_model: str  # --metric_for_best_model, or the problem type's first metric
    threshold: float | None  # multi-label only
    max_length: int  # --max_length, or the model's limit capped at 512
    mixed_precision: str  # --mixed_precision, or the launcher's
    num_processes: int
    torch_compile: bool  # --torch_compile, or the device's default (model/compiling.py)
    pad_to_multiple_of: int  # 1: each batch padded to its longest row
    eval_batch_size: int  # per process
    global_batch_size: int  # rows of one micro-batch over all processes
    total_train_batch_size: int  # rows of one optimizer step
    steps_per_epoch: int
    max_train_steps: int
    num_train_epochs: int
    num_warmup_steps: int


def make_plan(config, data, accelerator) -> Plan:
    """`data`: train.py's Loaded (rows, classes, columns and max length as the data and the model decided them)."""
    train_rows, max_length = len(data.train_tokens), data.max_length
    torch_compile, pad_to_multiple_of, eval_batch_size = resolve_speed(
        accelerator.device, config.torch_compile, config.torch_compile_mode, config.pad_to_multiple_of,
        config.per_device_eval_batch_size)
    global_batch_size = config.per_device_train_batch_size * accelerator.num_processes
    accumulation = config.gradient_accumulation_steps
    steps_per_epoch = math.ceil(math.ceil(train_rows / global_batch_size) / accumulation)
    max_train_steps = config.max_train_steps or config.num_train_epochs * steps_per_epoch
    task = data.task
    return Plan(text_column=data.columns["text"], text_pair_column=data.columns["text_pair"],
                label_column=data.columns["label"], label_names=list(data.label_names),
                problem_type=task.problem_type, metric_for_best_model=config.metric_for_best_model or task.metrics[0],
                threshold=task.threshold, max_length=max_length, mixed_precision=accelerator.mixed_precision,
                num_processes=accelerator.num_processes, torch_compile=torch_compile,
                pad_to_multiple_of=pad_to_multiple_of, eval_batch_size=eval_batch_size,
                global_batch_size=global_batch_size, total_train_batch_size=global_batch_size * accumulation,
                steps_per_epoch=steps_per_epoch, max_train_steps=max_train_steps,
                num_train_epochs=math.ceil(max_train_steps / steps_per_epoch),
                num_warmup_steps=config.num_warmup_steps or math.ceil((config.warmup_ratio or 0) * max_train_steps))
