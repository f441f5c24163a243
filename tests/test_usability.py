"""Config files, --debug, trackers (TensorBoard), and the run's report.md / report.png."""

import json
import logging
import struct
import sys
import types

import pytest
import torch
from accelerate.utils import DistributedType

import train
import training.telemetry
from conftest import ROOT, read_outputs, run_train
from metrics.history import History
from metrics.report import duration, write_picture
from training.environment import log_distributed_type
from training.telemetry import flop_rate


def test_config_file_values_with_command_line_overrides(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("learning_rate: 3.0e-5\nnum_train_epochs: 2\ngroup_by_length: false\noutput_dir: from-file\n"
                      "checkpointing_steps: 200\nload_best_model_at_end: true\nmax_length: null\n")
    args = train.parse_args(["--config", config, "--num_train_epochs", "4"])
    assert (args.learning_rate, args.num_train_epochs, args.group_by_length) == (3e-5, 4, False)
    assert (args.output_dir, args.checkpointing_steps, args.load_best_model_at_end) == ("from-file", 200, True)
    assert args.max_length is None and args.per_device_train_batch_size == 8  # null and absent keys keep defaults
    as_json = tmp_path / "run.json"
    as_json.write_text(json.dumps({"learning_rate": 1e-4, "mixed_precision": "bf16"}))
    args = train.parse_args(["--config", as_json])
    assert (args.learning_rate, args.mixed_precision) == (1e-4, "bf16")


@pytest.mark.parametrize("content, message", [
    ("learning_rat: 1.0e-4\n", "unknown key 'learning_rat'; did you mean 'learning_rate'?"),
    ("group_by_length: maybe\n", "group_by_length must be true or false, got 'maybe'"),
    ("mixed_precision: fp8\n", "argument --mixed_precision: invalid choice: 'fp8'"),
    ("- a list\n", "expected a mapping of flag names to values"),
    ("learning_rate: [1\n", "not valid YAML"),
])
def test_bad_config_files_are_one_line_naming_the_key(tmp_path, capsys, content, message):
    config = tmp_path / "bad.yaml"
    config.write_text(content)
    with pytest.raises(SystemExit) as stop:
        train.parse_args(["--config", config])
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_shipped_configs_hold_the_reference_recipes():
    bert = train.parse_args(["--config", ROOT / "configs" / "imdb-bert.yaml"])
    assert (bert.model_name_or_path, bert.dataset_name, bert.train_samples, bert.eval_samples) == (
        "google-bert/bert-base-cased", "stanfordnlp/imdb", 5000, 5000)
    assert (bert.num_train_epochs, bert.learning_rate, bert.weight_decay, bert.per_device_train_batch_size,
            bert.output_dir) == (3, 5e-5, 0.01, 8, "result")
    assert bert.per_device_eval_batch_size is None and bert.torch_compile is None  # the device's defaults
    gpt2 = train.parse_args(["--config", ROOT / "configs" / "imdb-gpt2.yaml"])
    assert (gpt2.model_name_or_path, gpt2.train_samples, gpt2.eval_samples) == ("openai-community/gpt2", 1000, 1000)
    offline = train.parse_args(["--config", ROOT / "configs" / "imdb-minilm-offline.yaml"])
    assert (offline.model_name_or_path, offline.dataset_name, offline.mixed_precision) == (
        "../shared/models/all-MiniLM-L6-v2", "../shared/data/imdb", "bf16")


def test_debug_makes_a_run_of_seconds():
    args = train.parse_args(["--debug"])
    assert (args.train_samples, args.eval_samples, args.num_train_epochs) == (64, 32, 1)
    assert (args.eval_strategy, args.eval_steps, args.logging_steps, args.dataloader_num_workers) == ("steps", 4, 1, 0)
    assert train.parse_args(["--debug", "--train_samples", 16]).train_samples == 16  # smaller limits are kept
    assert args.max_length == 128 and train.parse_args(["--debug", "--max_length", 64]).max_length == 64
    assert args.torch_compile is False  # eager: breakpoints in the forward stop, even on a GPU
    assert train.parse_args(["--debug", "--torch_compile"]).torch_compile is True


def test_report_to_a_tracker_that_is_not_installed_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setattr(training.telemetry, "is_tensorboard_available", lambda: False)
    monkeypatch.setattr(training.telemetry, "is_wandb_available", lambda: False)
    for report_to, message in (("tensorboard", "--report_to tensorboard: tensorboard is not installed; pip install "
                                               "tensorboard, or pass --report_to none"),
                               ("all", "--report_to all: neither tensorboard nor wandb is installed")):
        with pytest.raises(SystemExit):
            train.parse_args(["--report_to", report_to])
        assert message in capsys.readouterr().err


@pytest.fixture(scope="module")
def debug_run(tiny_bert, small_imdb, tmp_path_factory):
    pytest.importorskip("tensorboard", reason="optional dependency: pip install tensorboard")
    out = tmp_path_factory.mktemp("debug_run")
    run_train(["--model_name_or_path", tiny_bert, "--dataset_name", small_imdb, "--output_dir", out,
               "--max_length", 64, "--learning_rate", 1e-3, "--debug", "--report_to", "tensorboard"], report_png=True)
    return out


def test_debug_run_evaluates_every_4_steps_and_logs_every_step(debug_run):
    metrics, log = read_outputs(debug_run)
    assert metrics["config"]["train_rows"] == 64 and metrics["config"]["eval_rows"] == 32
    assert [r["step"] for r in log] == list(range(1, 9))
    assert [e["step"] for e in metrics["evaluations"]] == [4, 8]


def test_tensorboard_gets_the_logged_losses_and_metrics(debug_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    metrics, log = read_outputs(debug_run)
    events = EventAccumulator(str(debug_run / "tensorboard" / "text-classification")).Reload()
    losses = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert losses == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in log]
    rates = [e.value for e in events.Scalars("train/learning_rate")]
    assert rates == pytest.approx([r["learning_rate"] for r in log], rel=1e-6)
    accuracy = [(e.step, e.value) for e in events.Scalars("eval/accuracy")]
    expected = [(0, metrics["before"]["accuracy"])] + [(e["step"], e["accuracy"]) for e in metrics["evaluations"]]
    assert accuracy == [(step, pytest.approx(value, rel=1e-6)) for step, value in expected]


def test_report_md_and_png_describe_the_run(debug_run):
    metrics, _ = read_outputs(debug_run)
    report = (debug_run / "report.md").read_text()
    after, before = metrics["after"], metrics["before"]
    assert f"| before | {before['accuracy']:.4f} | {before['f1']:.4f} |" in report
    assert f"| after | {after['accuracy']:.4f} | {after['f1']:.4f} |" in report
    assert f"| 1 | 8 | {metrics['epochs'][0]['train_loss']:.4f} |" in report  # the epoch's train loss
    assert "## Evaluations" in report and f"| 1 | 4 | {metrics['evaluations'][0]['accuracy']:.4f} |" in report
    matrix = metrics["confusion_matrix"]
    assert matrix["labels"] == ["neg", "pos"] and sum(map(sum, matrix["matrix"])) == 32
    predictions = [json.loads(line) for line in (debug_run / "eval_predictions.jsonl").read_text().splitlines()]
    assert matrix["matrix"][1][1] == sum(p["label"] == 1 and p["prediction"] == 1 for p in predictions)
    assert (matrix["matrix"][0][0] + matrix["matrix"][1][1]) / 32 == pytest.approx(after["accuracy"])
    assert f"| pos | {matrix['matrix'][1][0]} | {matrix['matrix'][1][1]} |" in report


def test_report_png_is_written(debug_run):
    pytest.importorskip("matplotlib", reason="optional dependency: pip install matplotlib")
    png = (debug_run / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (1300, 900)  # 13 x 9 in at 100 dpi


def test_without_matplotlib_the_picture_is_skipped_with_a_notice(debug_run, monkeypatch, tmp_path, caplog):
    metrics, log = read_outputs(debug_run)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with caplog.at_level("INFO"):
        assert write_picture(tmp_path / "report.png", History.from_dict(metrics), log) is False
    assert not (tmp_path / "report.png").exists()
    assert "matplotlib is not installed: skipping report.png (pip install matplotlib)" in caplog.text


def test_help_shows_defaults_abbreviations_are_refused_and_flag_errors_are_one_line(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    assert "(default: 5e-05)" in " ".join(capsys.readouterr().out.split())  # --learning_rate's, however wrapped
    for argv, message in ((["--learning_rat", "1e-4"], "unrecognized arguments: --learning_rat 1e-4"),
                          (["--learning_rate", "-1"], "--learning_rate must be positive, got -1.0")):
        with pytest.raises(SystemExit) as stop:
            train.parse_args(argv)
        assert stop.value.code == 2
        assert capsys.readouterr().err == f"train.py: error: {message} (python train.py --help lists the flags)\n"


def test_the_report_is_drawn_again_from_an_output_dir(debug_run, tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="optional dependency: pip install matplotlib")
    import shutil

    from metrics import report

    folder = tmp_path / "run"
    shutil.copytree(debug_run, folder)
    expected = (folder / "report.md").read_text()
    (folder / "report.md").unlink(), (folder / "report.png").unlink()
    report.main([str(folder)])
    assert (folder / "report.md").read_text() == expected and (folder / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert capsys.readouterr().out == f"wrote {folder / 'report.md'} and {folder / 'report.png'}\n"
    with pytest.raises(SystemExit, match="no metrics.json"):
        report.main([str(tmp_path)])


def test_short_times_and_small_peaks_are_shown_in_units_that_show_them(debug_run):
    assert [duration(s) for s in (0.0, 0.42, 3.14159, 1234.5)] == ["0 ms", "420 ms", "3.1 s", "1,234 s"]
    assert [flop_rate(t) for t in (0.0384, 989.4)] == ["38.4 GFLOP/s", "989.4 TFLOP/s"]
    metrics, _ = read_outputs(debug_run)
    assert f"training {duration(metrics['speed']['train_seconds'])}, evaluations " in (
        debug_run / "report.md").read_text()


@pytest.mark.parametrize(("variable", "asked"), [("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED",
                                                                                    "DEEPSPEED")])
def test_the_distributed_type_that_runs_is_logged_and_a_config_it_is_not_is_said(variable, asked, monkeypatch,
                                                                                 caplog):
    """`accelerate launch --config_file fsdp.yaml` with ACCELERATE_USE_CPU=1 runs MULTI_CPU (plain DDP), silently."""
    caplog.set_level(logging.INFO, logger="train")
    accelerator = types.SimpleNamespace(distributed_type=DistributedType.MULTI_CPU, num_processes=2,
                                        device=torch.device("cpu"), mixed_precision="no")
    monkeypatch.setenv(variable, "true")
    log_distributed_type(accelerator)
    assert caplog.messages == [
        "distributed type MULTI_CPU: 2 process(es) on cpu, mixed precision no",
        f"the launcher's config asked for {asked} ({variable}=true) but accelerate runs MULTI_CPU on cpu: the model is "
        f"not sharded (accelerate turns {asked} into MULTI_CPU without a GPU)"]
    caplog.clear()
    monkeypatch.setenv(variable, "false")
    log_distributed_type(accelerator)
    assert len(caplog.messages) == 1
