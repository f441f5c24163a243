"""Every flag is declared once, with its range and whether a resume must repeat it; values out of range stop the run
with one line before anything is loaded, on the command line and in a --config file alike."""

import dataclasses
import math

import pytest

import train
from training.cli import MAY_CHANGE, REPEAT, Range
from training.config import value_type

# Integer flags where every value means something (<= 0: all rows).
UNBOUNDED = {"train_samples", "eval_samples"}


def test_every_flag_says_whether_a_resume_must_repeat_it():
    for field in dataclasses.fields(train.Config):
        assert field.metadata["resume"] in (REPEAT, MAY_CHANGE), field.name
    repeat = {f.name for f in dataclasses.fields(train.Config) if f.metadata["resume"] == REPEAT}
    # What decides the rows, batches and updates must be repeated; where outputs go and how fast may change.
    assert {"group_by_length", "max_grad_norm", "mixed_precision", "label_names", "metric_for_best_model", "seed",
            "learning_rate", "dataset_name"} <= repeat
    assert not {"output_dir", "logging_steps", "report_to", "checkpointing_steps", "resume_from_checkpoint",
                "torch_compile", "per_device_eval_batch_size"} & repeat


def outside(valid: Range) -> list:
    """Values just outside a range: below, above, and (for floats) NaN and infinity."""
    values = [math.nan, math.inf]
    if valid.low != -math.inf:
        values.append(valid.low if valid.low_open else valid.low - 1)
    if valid.high != math.inf:
        values.append(valid.high if valid.high_open else valid.high + 1)
    return values


def out_of_range_cases():
    for field in dataclasses.fields(train.Config):
        kind = value_type(field.type)
        if kind not in (int, float) or field.name in UNBOUNDED:
            continue
        valid = field.metadata["valid"]
        assert valid is not None, f"--{field.name} has no range: give it one, or list it in UNBOUNDED"
        for value in outside(valid):
            if kind is float or math.isfinite(value):  # an int flag refuses nan/inf as argparse's own error
                yield field.name, kind(value)


@pytest.mark.parametrize(("name", "value"), list(out_of_range_cases()))
def test_every_numeric_flag_refuses_a_value_out_of_its_range_in_one_line(name, value, capsys):
    with pytest.raises(SystemExit) as stop:
        train.parse_args([f"--{name}", str(value)])
    assert stop.value.code == 2
    message = capsys.readouterr().err
    assert message.count("\n") == 1
    assert message.startswith(f"train.py: error: --{name} must be ")
    assert message.endswith(f", got {value} (python train.py --help lists the flags)\n")


@pytest.mark.parametrize(("flags", "message"), [
    (["--seed", -1], "--seed must be in [0, 4294967295], got -1"),
    (["--num_warmup_steps", -4], "--num_warmup_steps must be >= 0, got -4"),
    (["--weight_decay", -1], "--weight_decay must be >= 0, got -1.0"),
    (["--warmup_ratio", 1], "--warmup_ratio must be in [0, 1), got 1.0"),
    (["--learning_rate", "nan"], "--learning_rate must be positive and finite, got nan"),
    (["--learning_rate", "inf"], "--learning_rate must be positive and finite, got inf"),
    (["--weight_decay", -1, "--seed", -1], "--weight_decay must be >= 0, got -1.0; --seed must be in [0, 4294967295], "
                                           "got -1"),
])
def test_the_issues_out_of_range_values(flags, message, capsys):
    with pytest.raises(SystemExit):
        train.parse_args(flags)
    assert capsys.readouterr().err == f"train.py: error: {message} (python train.py --help lists the flags)\n"


def test_an_output_dir_that_is_a_file_stops_before_anything_is_loaded(tmp_path, capsys):
    existing = tmp_path / "notes.txt"
    existing.write_text("mine\n")
    with pytest.raises(SystemExit):
        train.parse_args(["--output_dir", existing])
    assert capsys.readouterr().err == (f"train.py: error: --output_dir {existing}: is a file; --output_dir names a "
                                       "folder (python train.py --help lists the flags)\n")
    assert existing.read_text() == "mine\n"


def test_yaml_values_reach_each_flag_as_its_type(tmp_path):
    """PyYAML's YAML 1.1 reads no/yes/on/off as booleans, 010 as octal, 1:30 as 90: a flag file is read as text, so a
    string flag keeps the word, a number is the flag's type, a switch takes the word as a boolean."""
    config = tmp_path / "run.yaml"
    config.write_text("eval_strategy: steps\neval_steps: 010\nlabel_names: [no, yes]\ntext_column: on\n"
                      "label_column: 1:30\ngroup_by_length: no\ntorch_compile: off\nsave_best_model: yes\n"
                      "overwrite_output_dir: true\nmax_length: null\nhead_tokens: ~\n")
    args = train.parse_args(["--config", config])
    assert (args.eval_strategy, args.eval_steps, args.label_names, args.text_column, args.label_column) == (
        "steps", 10, ("no", "yes"), "on", ("1:30",))  # --label_column takes one or more names
    assert (args.max_length, args.head_tokens) == (None, 128)  # null: the default
    config.write_text("eval_strategy: no\n")
    assert train.parse_args(["--config", config]).eval_strategy == "no"
    assert (args.group_by_length, args.torch_compile, args.save_best_model, args.overwrite_output_dir) == (
        False, False, True, True)
