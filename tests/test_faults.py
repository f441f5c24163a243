"""Faults a run survives: stop signals (a real signal to a real process) save a checkpoint at the step in progress and
exit with 128 + the signal's number; the resumed run equals the uninterrupted one."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, ForkedTrain, finish_launch, launch_train, read_outputs, run_train
from training.checkpoints import list_checkpoints

ARGS = ["--train_samples", 0, "--eval_samples", 48, "--per_device_train_batch_size", 2, "--num_train_epochs", 2,
        "--learning_rate", 1e-3, "--max_length", 64, "--logging_steps", 4]  # 64 rows: 32 steps an epoch


def comparable(output_dir: Path) -> tuple:
    """The final metrics and every logged step, without the clock."""
    metrics, log = read_outputs(output_dir)
    return metrics["after"], [(r["step"], r["loss"], r["learning_rate"]) for r in log]


def wait_for_log_lines(output_dir: Path, lines: int, process) -> None:
    deadline = time.time() + 300
    log = output_dir / "log.jsonl"
    while process.poll() is None and time.time() < deadline:
        if log.exists() and len(log.read_text().splitlines()) >= lines:
            return
        time.sleep(0.002)


@pytest.fixture(scope="module")
def uninterrupted(tiny_bert, small_imdb, tmp_path_factory) -> tuple[list, Path]:
    args = ["--model_name_or_path", tiny_bert, "--dataset_name", small_imdb, *ARGS]
    out = tmp_path_factory.mktemp("uninterrupted")
    run_train(args + ["--output_dir", out])
    return args, out


def signal_mid_run(stop: int, args: list, out: Path, monkeypatch, at_batch: int = 13) -> tuple[int, str]:
    """SIGTERM from outside, to a real `python train.py` process (what a scheduler does); SIGINT and SIGUSR1 sent by
    the run to itself at its AT_BATCH-th training batch, in this process (the same handler, seconds faster)."""
    if stop == signal.SIGTERM:
        env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        process = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *map(str, args), "--output_dir", str(out)],
                                   cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for_log_lines(out, 2, process)  # mid-epoch 1: past step 8
        process.send_signal(stop)
        _, stderr = process.communicate(timeout=300)
        return process.returncode, stderr
    from training.telemetry import Telemetry

    batch_loaded, batches = Telemetry.batch_loaded, []

    def signalled_at_the_nth(self, batch):
        batches.append(1)
        if len(batches) == at_batch:
            os.kill(os.getpid(), stop)
        batch_loaded(self, batch)

    monkeypatch.setattr(Telemetry, "batch_loaded", signalled_at_the_nth)
    result = run_train(args + ["--output_dir", out], check=False)
    monkeypatch.undo()
    return result.returncode, result.stderr


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1])
def test_a_stop_signal_saves_the_step_in_progress_and_the_resumed_run_is_the_same(stop, uninterrupted, tmp_path,
                                                                                   monkeypatch):
    args, full = uninterrupted
    out = tmp_path / "stopped"
    returncode, stderr = signal_mid_run(stop, args, out, monkeypatch)
    assert returncode == 128 + stop, stderr[-3000:]
    saved = [p.name for p in list_checkpoints(out)]
    assert len(saved) == 1 and 8 <= int(saved[0].split("_")[1]) < 64  # no --checkpointing_steps: the stop's own
    step = int(saved[0].split("_")[1])
    assert stderr.strip().splitlines()[-1] == (
        f"stopped by {signal.Signals(stop).name} at step {step} (epoch {1 if step <= 32 else 2}); saved "
        f"{out / 'checkpoints' / saved[0]}; continue with --resume_from_checkpoint latest")
    assert not (out / "metrics.json").exists()

    run_train(args + ["--output_dir", out, "--resume_from_checkpoint", "latest"])
    assert comparable(out) == comparable(full)
    weights, full_weights = load_file(out / "model.safetensors"), load_file(full / "model.safetensors")
    assert all(torch.equal(weights[name], full_weights[name]) for name in full_weights)


def test_a_signal_to_one_of_two_processes_stops_both_at_the_same_step(uninterrupted, tmp_path):
    """SIGTERM to the second process only: both agree at the next logging step (every 4 steps here), save one
    checkpoint together and exit; resumed on 2 processes, the run ends as one process ran it uninterrupted (to 1e-4:
    no dropout; each process's loss sums given back to it: tests/test_checkpoints.py's unit test, exact)."""
    args, full = uninterrupted
    two = [*args, "--per_device_train_batch_size", 1]  # 2 processes x 1 row = 1 process x 2 rows
    out = tmp_path / "two"
    launcher = launch_train(two + ["--output_dir", out], 2)
    wait_for_log_lines(out, 2, launcher)
    workers = subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) == 2, workers
    os.kill(int(sorted(workers, key=int)[1]), signal.SIGTERM)
    result = finish_launch(launcher)
    assert result.returncode != 0
    saved = [p.name for p in list_checkpoints(out)]
    assert len(saved) == 1 and int(saved[0].split("_")[1]) % 4 == 0  # a logging step: where the processes agree
    assert "stopped by SIGTERM at step" in result.stderr

    finish_launch(ForkedTrain(two + ["--output_dir", out, "--resume_from_checkpoint", "latest"], 2), check=True)
    (resumed, _), (whole, _) = read_outputs(out), read_outputs(full)
    assert [e["step"] for e in resumed["epochs"]] == [e["step"] for e in whole["epochs"]]
    assert [e["train_loss"] for e in resumed["epochs"]] == pytest.approx([e["train_loss"] for e in whole["epochs"]],
                                                                         abs=1e-4)
    (after, log), (full_after, full_log) = comparable(out), comparable(full)
    assert [step for step, _, _ in log] == [step for step, _, _ in full_log]
    assert [loss for _, loss, _ in log] == pytest.approx([loss for _, loss, _ in full_log], abs=1e-4)
    assert [rate for _, _, rate in log] == pytest.approx([rate for _, _, rate in full_log], rel=1e-6)
    assert after["loss"] == pytest.approx(full_after["loss"], abs=1e-4) and after["accuracy"] == full_after["accuracy"]


# ---- Runs that used to die at the finish, and predict.py's input ----

def test_load_best_model_at_end_without_an_evaluation_keeps_the_last_model(tiny_bert, small_imdb, tmp_path):
    """--eval_steps beyond the run: no evaluation during training, so no best; the run still ends with its model."""
    result = run_train(["--model_name_or_path", tiny_bert, "--dataset_name", small_imdb, "--output_dir", tmp_path / "o",
                        "--train_samples", 16, "--eval_samples", 8, "--num_train_epochs", 1, "--max_length", 32,
                        "--eval_strategy", "steps", "--eval_steps", 100, "--load_best_model_at_end"])
    metrics, _ = read_outputs(tmp_path / "o")
    assert (tmp_path / "o" / "model.safetensors").is_file() and metrics["after"]["rows"] == 8
    assert "--load_best_model_at_end: no evaluation ran during training" in result.stderr


def test_max_length_without_room_for_text_is_one_line(tiny_bert, small_imdb, tmp_path):
    result = run_train(["--model_name_or_path", tiny_bert, "--dataset_name", small_imdb, "--output_dir", tmp_path / "o",
                        "--max_length", 2], check=False)
    assert result.stderr.strip().splitlines()[-1] == ("error: --max_length 2 leaves no room for text: the tokenizer "
                                                      "adds 2 special token(s); pass --max_length 3 or more")
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def small_model(tiny_bert, small_imdb, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("small_model")
    run_train(["--model_name_or_path", tiny_bert, "--dataset_name", small_imdb, "--output_dir", out,
               "--train_samples", 8, "--eval_samples", 8, "--num_train_epochs", 1, "--max_length", 32])
    return out


def test_predict_keeps_line_numbers_and_refuses_empty_input(small_model, caplog):
    import predict as predict_module
    from conftest import run_in_process

    lines = run_in_process(predict_module, [small_model], "one\fstill one\u2028and one\r\ntwo\n\nfour\n").stdout
    assert [__import__("json").loads(line)["index"] for line in lines.splitlines()] == [0, 1, 3]
    for args, stdin, message in (([], "", "stdin: no text to classify (empty input); give one text per line, --text "
                                          "or --input_file"),
                                 (["--text", " "], None, "--text number 0 (0-based) is empty; give it a text (train.py "
                                                         "refuses empty texts too)")):
        result = run_in_process(predict_module, [small_model, *args], stdin)
        assert result.returncode == 1 and result.stderr.strip().splitlines()[-1] == "error: " + message
    clamped = run_in_process(predict_module, [small_model, "--text", "fine", "--max_length", 1000])
    assert clamped.returncode == 0 and "--max_length 1000 is above the model's limit of 512 tokens: using 512" in \
        caplog.text  # train.py's clamp (the tiny BERT has 512 positions), not a size-mismatch traceback


@pytest.fixture(scope="module")
def checkpointed(uninterrupted, tmp_path_factory) -> tuple[list, Path]:
    """The uninterrupted run's twin with a checkpoint every 16 steps (step_16 .. step_64)."""
    args, _ = uninterrupted
    out = tmp_path_factory.mktemp("checkpointed")
    run_train(args + ["--output_dir", out, "--checkpointing_steps", 16])
    return args, out


@pytest.mark.parametrize("damage", ["truncated weights", "a missing RNG state", "an unreadable state file"])
def test_a_damaged_checkpoint_is_named_with_the_newest_intact_one(damage, checkpointed, tmp_path):
    import shutil

    args, source = checkpointed
    out = tmp_path / "run"
    shutil.copytree(source, out)
    latest = out / "checkpoints" / "step_64"
    if damage == "truncated weights":
        weights = latest / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
        what = "model.safetensors ("
    elif damage == "a missing RNG state":
        (latest / "random_states_0.pkl").unlink()
        what = "random_states_0.pkl (missing or empty)"
    else:
        (latest / "training_state.json").write_text('{"completed_st')
        what = "training_state.json (JSONDecodeError"
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    result = run_train(args + ["--output_dir", out, "--resume_from_checkpoint", "latest"], check=False)
    line = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1 and line.startswith(f"error: {latest}: {what}")
    assert line.endswith(f"cannot be read; the newest intact one is {out / 'checkpoints' / 'step_48'}: "
                         f"--resume_from_checkpoint {out / 'checkpoints' / 'step_48'}")
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before  # nothing touched


def test_a_run_resumed_after_its_last_evaluation_writes_every_output(checkpointed, tmp_path):
    """Resumed from the last epoch's end (after its evaluation): eval_predictions.jsonl and the confusion matrix too,
    and metrics.json's after as the uninterrupted run's."""
    import shutil

    args, source = checkpointed
    out = tmp_path / "resumed"
    shutil.copytree(source, out)
    for name in ("metrics.json", "eval_predictions.jsonl"):
        (out / name).unlink()
    run_train(args + ["--output_dir", out, "--resume_from_checkpoint", out / "checkpoints" / "step_64"])
    metrics, _ = read_outputs(out)
    full, _ = read_outputs(source)
    assert metrics["after"] == full["after"] and metrics["confusion_matrix"] == full["confusion_matrix"]
    assert (out / "eval_predictions.jsonl").read_text() == (source / "eval_predictions.jsonl").read_text()


def last_error_line(args: list) -> str:
    """train.py ARGS, which must fail with exit code 1: its last line on stderr."""
    result = run_train(args, check=False)
    assert result.returncode == 1, result.stderr[-3000:]
    return result.stderr.strip().splitlines()[-1]


def small_run_args(tiny_bert, small_imdb, out) -> list:
    return ["--model_name_or_path", tiny_bert, "--dataset_name", small_imdb, "--output_dir", out, "--train_samples", 32,
            "--eval_samples", 8, "--num_train_epochs", 1, "--max_length", 32, "--per_device_train_batch_size", 4]


def test_a_failed_checkpoint_save_keeps_the_earlier_ones_and_is_one_line(tiny_bert, small_imdb, tmp_path, monkeypatch):
    from accelerate import Accelerator

    from training.checkpoints import damaged_file

    save_state, calls = Accelerator.save_state, []

    def disk_full_at_the_second(self, output_dir=None, **kwargs):
        calls.append(output_dir)
        if len(calls) == 2:
            Path(output_dir).mkdir(parents=True, exist_ok=True)  # a half-written folder
            raise OSError(28, "No space left on device")
        return save_state(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", disk_full_at_the_second)
    out = tmp_path / "o"
    assert last_error_line(small_run_args(tiny_bert, small_imdb, out) + ["--checkpointing_steps", 4]) == (
        f"error: cannot write checkpoint {out / 'checkpoints' / 'step_8'} (No space left on device); the last good "
        f"checkpoint is {out / 'checkpoints' / 'step_4'}; free space (or pass another --output_dir) and resume with "
        "--resume_from_checkpoint")
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_4"]  # no .partial left
    assert damaged_file(out / "checkpoints" / "step_4", 1) is None


@pytest.mark.parametrize("phase", ["training", "evaluation"])
def test_out_of_memory_is_one_line_with_the_step_and_the_batch(phase, tiny_bert, small_imdb, tmp_path, monkeypatch):
    from transformers import BertForSequenceClassification

    forward, calls = BertForSequenceClassification.forward, []

    def out_of_memory_at_the_third_call(self, *args, **kwargs):
        if self.training == (phase == "training"):  # the third training step, or the third evaluation batch
            calls.append(1)
            if len(calls) == 3:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(BertForSequenceClassification, "forward", out_of_memory_at_the_third_call)
    out = tmp_path / "o"
    args = small_run_args(tiny_bert, small_imdb, out) + ["--checkpointing_steps", 2, "--per_device_eval_batch_size", 1,
                                                          "--eval_strategy", "steps", "--eval_steps", 2]
    line = last_error_line(args)
    where = ("at step 3 (epoch 1, a batch of 4 rows x " if phase == "training" else
             "in the evaluation after step 0 (epoch 1)")
    assert line.startswith(f"error: out of memory {where}")
    if phase == "evaluation":  # the evaluation before training: nothing trained, nothing saved
        assert line.endswith("no checkpoint was saved")
        return
    assert line.endswith("try a smaller --per_device_train_batch_size (with --gradient_accumulation_steps to keep the "
                         "step's rows), a smaller --max_length or --per_device_eval_batch_size; the last checkpoint is "
                         f"{out / 'checkpoints' / 'step_2'}")


def test_a_failing_tracker_does_not_end_the_run(tiny_bert, small_imdb, tmp_path, monkeypatch, caplog):
    from accelerate import Accelerator

    def broken(self, values, step=None, log_kwargs=None):
        raise RuntimeError("wandb: the service is gone")

    monkeypatch.setattr(Accelerator, "log", broken)
    out = tmp_path / "o"
    result = run_train(small_run_args(tiny_bert, small_imdb, out) + ["--report_to", "tensorboard"])
    metrics, log = read_outputs(out)
    assert result.returncode == 0 and metrics["after"]["rows"] == 8 and len(log) == 1
    assert (result.stderr + caplog.text).count("--report_to: a tracker failed (RuntimeError: wandb: the service is gone); training goes "
                             "on without trackers") == 1


def test_a_second_ctrl_c_stops_at_once(uninterrupted, tmp_path, monkeypatch):
    """Ctrl-C twice within a step: no waiting for the checkpoint (KeyboardInterrupt, as Python's own Ctrl-C)."""
    from training.telemetry import Telemetry

    args, _ = uninterrupted
    batch_loaded, batches = Telemetry.batch_loaded, []

    def twice_at_the_5th(self, batch):
        batches.append(1)
        if len(batches) == 5:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        batch_loaded(self, batch)

    monkeypatch.setattr(Telemetry, "batch_loaded", twice_at_the_5th)
    before = signal.getsignal(signal.SIGINT)  # default_int_handler; SIG_IGN in a shell's background job
    with pytest.raises(KeyboardInterrupt):
        run_train(args + ["--output_dir", tmp_path / "o"])
    assert list_checkpoints(tmp_path / "o") == [] and signal.getsignal(signal.SIGINT) is before  # restored


def test_the_final_model_failing_to_save_is_one_line(tiny_bert, small_imdb, tmp_path, monkeypatch):
    import train

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(train, "save_model", disk_full)
    out = tmp_path / "o"
    assert last_error_line(small_run_args(tiny_bert, small_imdb, out) + ["--checkpointing_steps", 4]) == (
        f"error: cannot save the final model to {out} (No space left on device); the last checkpoint, "
        f"{out / 'checkpoints' / 'step_8'}, is intact: resume from it once there is room")
    assert [p.name for p in list_checkpoints(out)] == ["step_4", "step_8"]  # what was saved is still there


BEST_ARGS = ["--eval_strategy", "steps", "--eval_steps", 8, "--metric_for_best_model", "loss",
             "--load_best_model_at_end"]  # best at step 48 of 64, never beaten after it


@pytest.fixture(scope="module")
def best_before_the_end(uninterrupted, tmp_path_factory) -> tuple[list, Path, Path]:
    """--load_best_model_at_end runs: uninterrupted (checkpoints at steps 32 and 64), and stopped by SIGUSR1 at step 53
    (after the best evaluation)."""
    args, _ = uninterrupted
    args = args + BEST_ARGS
    full, stopped = tmp_path_factory.mktemp("best_full"), tmp_path_factory.mktemp("best_stopped")
    run_train(args + ["--output_dir", full, "--checkpointing_steps", 32])
    metrics, _ = read_outputs(full)
    assert metrics["best"]["step"] == 48 and not (full / "best").exists()
    with pytest.MonkeyPatch.context() as monkeypatch:
        code, _ = signal_mid_run(signal.SIGUSR1, args, stopped, monkeypatch, at_batch=53)
    assert code == 128 + signal.SIGUSR1 and [p.name for p in list_checkpoints(stopped)] == ["step_53"]
    assert (stopped / "best" / "best_evaluation.json").is_file()
    return args, full, stopped


def same_final_model(out: Path, full: Path) -> None:
    """The final model, eval_predictions.jsonl, `after` and the confusion matrix are the uninterrupted run's."""
    metrics, _ = read_outputs(out)
    full_metrics, _ = read_outputs(full)
    assert load_file(out / "model.safetensors").keys() == load_file(full / "model.safetensors").keys()
    for name, tensor in load_file(full / "model.safetensors").items():
        assert torch.equal(load_file(out / "model.safetensors")[name], tensor), name
    assert metrics["after"] == full_metrics["after"] and metrics["best"] == full_metrics["best"]
    assert metrics["confusion_matrix"] == full_metrics["confusion_matrix"]
    assert (out / "eval_predictions.jsonl").read_text() == (full / "eval_predictions.jsonl").read_text()
    assert not (out / "best").exists() and not (out / "best_evaluation.json").exists()


@pytest.mark.parametrize("where", ["the same output_dir", "another output_dir"])
def test_a_run_resumed_after_its_best_evaluation_ends_with_that_model(where, best_before_the_end, tmp_path):
    """The best evaluation (step 48) came before the checkpoint (step 53): the final model is still it, with its
    eval predictions (kept in the checkpoint) and confusion matrix; resumed elsewhere, best/ comes along."""
    import shutil

    args, full, stopped = best_before_the_end
    source = tmp_path / "stopped"
    shutil.copytree(stopped, source)
    out = source if where == "the same output_dir" else tmp_path / "elsewhere"
    result = run_train(args + ["--output_dir", out, "--resume_from_checkpoint", source / "checkpoints" / "step_53"])
    assert "--load_best_model_at_end" not in result.stderr  # no warning: the best model was found
    same_final_model(out, full)
    if where == "another output_dir":
        assert (source / "best" / "model.safetensors").is_file()  # the stopped run's folder is left as it was


def test_a_finished_run_resumed_keeps_its_best_model(best_before_the_end, tmp_path):
    """Its best/ was removed at the end (the final model is the best): resuming `latest` (step 64) finds the best in
    the final model and leaves it, rather than saving the last step's over it."""
    import shutil

    args, full, _ = best_before_the_end
    out = tmp_path / "finished"
    shutil.copytree(full, out)
    (out / "eval_predictions.jsonl").unlink()
    run_train(args + ["--output_dir", out, "--resume_from_checkpoint", "latest"])
    same_final_model(out, full)


def test_the_best_model_gone_is_said_when_the_run_resumes(best_before_the_end, tmp_path, caplog):
    """best/ deleted: a warning at the resume, before any training (not at the end), and the last step's model."""
    import shutil

    args, full, stopped = best_before_the_end
    out = tmp_path / "stopped"
    shutil.copytree(stopped, out)
    shutil.rmtree(out / "best")
    result = run_train(args + ["--output_dir", out, "--resume_from_checkpoint", "latest"])
    warning = (f"--load_best_model_at_end: the best evaluation's model (step 48) is in neither {out / 'best'} nor "
               f"{out / 'best'}; unless a later evaluation is better, the final model will be the last step's")
    assert warning in result.stderr
    assert result.stderr.index(warning) < result.stderr.index("step 56: eval loss")  # up front, not at the end
    metrics, _ = read_outputs(out)
    last = metrics["evaluations"][-1]
    assert metrics["after"] == {k: v for k, v in last.items() if k not in ("epoch", "step", "seconds")}


def test_a_stop_signal_after_the_last_step_lets_the_run_finish(uninterrupted, tmp_path, monkeypatch):
    """SIGTERM during the final save: the run completes (exit 0, every output), and says the signal came."""
    import train

    args, full = uninterrupted
    write_results = train.write_results

    def signalled_while_writing(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)
        write_results(*a, **k)

    monkeypatch.setattr(train, "write_results", signalled_while_writing)
    result = run_train(args + ["--output_dir", tmp_path], check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "SIGTERM came after the last step; the run finished first and is complete" in result.stderr
    assert comparable(tmp_path) == comparable(full)
    assert not list_checkpoints(tmp_path)
