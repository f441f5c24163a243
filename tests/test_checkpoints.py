"""Checkpoints, exact resume after SIGKILL, best model, early stopping, step evaluation, output protection."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import kill_after_checkpoint, read_outputs, run_train
from training.checkpoints import list_checkpoints
from training.state import BestTracker
from test_train import TINY, evaluate_saved, without_predictions


def common(model, data):
    return ["--model_name_or_path", model, "--dataset_name", data, "--train_samples", 0, "--eval_samples", 48,
            "--per_device_train_batch_size", 4, "--num_train_epochs", 2, "--learning_rate", 1e-3, *TINY]


def comparable(output_dir):
    """metrics.json and log.jsonl without what depends on the clock or on how the run was started."""
    metrics, log = read_outputs(output_dir)
    for timing in ("runtime_seconds", "speed"):
        metrics.pop(timing)
    for evaluation in [metrics["before"], *metrics["evaluations"]]:
        evaluation.pop("seconds")
    for key in ("resume_from_checkpoint", "output_dir"):
        metrics["config"].pop(key)
    kept = ("step", "epoch", "loss", "learning_rate", "padding_efficiency")  # not the timings
    return metrics, [{k: record[k] for k in kept} for record in log]


def test_killed_run_resumed_from_latest_equals_the_uninterrupted_run(tiny_bert_dropout, small_imdb, tmp_path):
    args = common(tiny_bert_dropout, small_imdb) + ["--checkpointing_steps", 5]  # 16 steps per epoch: all mid-epoch
    run_train(args + ["--output_dir", tmp_path / "a"])

    # Run B: SIGKILL as soon as its first checkpoint is complete, mid-epoch.
    b = tmp_path / "b"
    killed_at = kill_after_checkpoint(args, b, "step_5")
    assert killed_at and killed_at[-1] != "step_30"

    result = run_train(args + ["--output_dir", b, "--resume_from_checkpoint", "latest"], report_png=True)
    assert f"Resumed from {b / 'checkpoints' / killed_at[-1]}" in result.stderr
    assert comparable(b) == comparable(tmp_path / "a")
    a_weights, b_weights = load_file(tmp_path / "a" / "model.safetensors"), load_file(b / "model.safetensors")
    assert all(torch.equal(a_weights[name], b_weights[name]) for name in a_weights)
    print(f"A vs B (killed after {killed_at[-1]}, resumed): after = {read_outputs(b)[0]['after']}")


def test_resume_without_a_checkpoint_says_so_in_one_line(tiny_bert, small_imdb, tmp_path):
    result = run_train(common(tiny_bert, small_imdb) + ["--output_dir", tmp_path, "--resume_from_checkpoint", "latest"],
                       check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: --resume_from_checkpoint latest: no checkpoint in {tmp_path / 'checkpoints'}; start without "
        "--resume_from_checkpoint (use --checkpointing_steps to write checkpoints)")


@pytest.fixture(scope="module")
def checkpointed_run(tiny_bert, small_imdb, tmp_path_factory):
    out = tmp_path_factory.mktemp("checkpointed")
    run_train(common(tiny_bert, small_imdb) + ["--output_dir", out, "--checkpointing_steps", 5,
                                               "--save_total_limit", 2, "--metric_for_best_model", "loss",
                                               "--save_best_model"])
    return out


def test_save_total_limit_keeps_the_newest_and_the_best(checkpointed_run):
    metrics, _ = read_outputs(checkpointed_run)
    names = [p.name for p in list_checkpoints(checkpointed_run)]
    assert names[-2:] == ["step_25", "step_30"]
    best_step = metrics["best"]["step"]
    assert names[:-2] == ([f"step_{best_step}"] if best_step % 5 == 0 and best_step < 25 else [])


def resume_checkpointed(model, data, checkpointed_run, changed: list):
    """Resume the checkpointed run with its own flags (the MAY_CHANGE ones left out) and `changed` after them."""
    return run_train(common(model, data) + ["--metric_for_best_model", "loss", "--save_best_model", "--output_dir",
                                            checkpointed_run, "--resume_from_checkpoint",
                                            checkpointed_run / "checkpoints" / "step_30", *changed], check=False)


def test_resume_with_other_settings_is_refused_naming_them(tiny_bert, small_imdb, checkpointed_run):
    result = resume_checkpointed(tiny_bert, small_imdb, checkpointed_run, ["--per_device_train_batch_size", 8])
    assert result.returncode == 1
    # The flag, and what it changes in the plan.
    assert "was made with other settings (per_device_train_batch_size: 4 -> 8; max_train_steps: 32 -> 16)" in result.stderr


def test_resume_names_every_setting_that_would_change_the_run(tiny_bert, small_imdb, checkpointed_run):
    """Batches (grouping), clipping, precision, class names and the best model's metric: each would make the resumed
    run another run (a best loss compared with accuracies). All five named in one line, nothing written."""
    before = sorted((checkpointed_run / "log.jsonl").read_text().splitlines())
    result = resume_checkpointed(tiny_bert, small_imdb, checkpointed_run, [
        "--no-group_by_length", "--max_grad_norm", 0, "--mixed_precision", "bf16", "--label_names", "bad", "good",
        "--metric_for_best_model", "accuracy"])
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {checkpointed_run / 'checkpoints' / 'step_30'} was made with other settings (label_names: "
        "['neg', 'pos'] -> ['bad', 'good']; group_by_length: True -> False; max_grad_norm: 1.0 -> 0.0; "
        "mixed_precision: 'no' -> 'bf16'; metric_for_best_model: 'loss' -> 'accuracy'); resume with the same flags, "
        "or start a new --output_dir")
    assert sorted((checkpointed_run / "log.jsonl").read_text().splitlines()) == before


def test_resume_may_change_where_and_how_often_outputs_are_written(tiny_bert, small_imdb, checkpointed_run, tmp_path):
    """MAY_CHANGE flags (output dir, logging, checkpointing, eval batch size) do not stop a resume."""
    result = resume_checkpointed(tiny_bert, small_imdb, checkpointed_run, [
        "--output_dir", tmp_path / "elsewhere", "--logging_steps", 3, "--checkpointing_steps", 7,
        "--per_device_eval_batch_size", 16])
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"Resumed from {checkpointed_run / 'checkpoints' / 'step_30'}: epoch 2, step 30" in result.stderr


def test_best_model_is_saved_with_where_it_came_from(checkpointed_run, small_imdb):
    metrics, _ = read_outputs(checkpointed_run)
    losses = [e["loss"] for e in metrics["evaluations"]]
    best = metrics["evaluations"][losses.index(min(losses))]  # loss: lower is better
    assert metrics["best"] == {"metric": "loss", "value": best["loss"], "epoch": best["epoch"], "step": best["step"]}
    # best/ is kept only when it is not the final model (then the final model is the best's).
    saved = checkpointed_run / "best" if best["step"] != metrics["epochs"][-1]["step"] else checkpointed_run
    assert (checkpointed_run / "best").is_dir() == (saved != checkpointed_run)
    reloaded = without_predictions(evaluate_saved(saved, small_imdb, 48, 64))
    assert reloaded == pytest.approx({k: v for k, v in best.items() if k not in ("epoch", "step", "seconds")}, rel=1e-5)


def test_load_best_model_at_end_makes_the_best_the_final_model(tiny_bert, small_imdb, tmp_path):
    run_train(common(tiny_bert, small_imdb) + ["--output_dir", tmp_path, "--num_train_epochs", 3,
                                               "--metric_for_best_model", "loss", "--learning_rate", 5e-3,
                                               "--load_best_model_at_end"])
    metrics, _ = read_outputs(tmp_path)
    best = next(e for e in metrics["evaluations"] if e["step"] == metrics["best"]["step"])
    assert metrics["after"] == {k: v for k, v in best.items() if k not in ("epoch", "step", "seconds")}
    # The final model is the best one, so no second copy of it is kept; it reproduces the best evaluation.
    assert not (tmp_path / "best").exists()
    reloaded = without_predictions(evaluate_saved(tmp_path, small_imdb, 48, 64))
    assert reloaded == pytest.approx(metrics["after"], rel=1e-5)


def test_early_stopping_on_step_evaluations(tiny_bert, small_imdb, tmp_path):
    # This tiny model's accuracy on these rows does not move at this learning rate: no evaluation beats the first.
    run_train(common(tiny_bert, small_imdb) + ["--output_dir", tmp_path, "--learning_rate", 1e-5,
                                               "--eval_strategy", "steps", "--eval_steps", 3,
                                               "--early_stopping_patience", 2])
    metrics, log = read_outputs(tmp_path)
    assert [e["step"] for e in metrics["evaluations"]] == [3, 6, 9]
    assert len({e["accuracy"] for e in metrics["evaluations"]}) == 1
    assert metrics["stopped_early"] == {"epoch": 1, "step": 9, "reason": (
        f"accuracy did not improve in 2 evaluations (best {metrics['best']['value']:.4f} at step 3)")}
    assert log[-1]["step"] == 9 and metrics["epochs"][-1]["step"] == 9
    last = metrics["evaluations"][-1]
    assert metrics["after"] == {k: v for k, v in last.items() if k not in ("epoch", "step", "seconds")}
    assert (tmp_path / "model.safetensors").is_file()


def test_best_tracker_directions_and_patience():
    tracker = BestTracker("loss", patience=2)
    assert tracker.update({"loss": 0.5}, 1, 10) and not tracker.update({"loss": 0.6}, 2, 20)
    assert not tracker.should_stop and tracker.update({"loss": 0.4}, 3, 30)
    assert not tracker.update({"loss": 0.4}, 4, 40) and not tracker.update({"loss": 0.9}, 5, 50)
    assert tracker.should_stop and tracker.best == {"metric": "loss", "value": 0.4, "epoch": 3, "step": 30}
    accuracy = BestTracker("accuracy")
    assert accuracy.update({"accuracy": 0.5}, 1, 1) and accuracy.update({"accuracy": 0.6}, 2, 2)
    assert not accuracy.should_stop


def test_existing_output_dir_is_not_overwritten_without_the_flag(tiny_bert, small_imdb, tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    args = common(tiny_bert, small_imdb) + ["--output_dir", tmp_path, "--max_train_steps", 2]
    result = run_train(args, check=False)
    assert result.returncode == 1
    assert f"--output_dir {tmp_path} is not empty: pass --overwrite_output_dir" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    run_train(args + ["--overwrite_output_dir"])
    assert json.loads((tmp_path / "metrics.json").read_text())["config"]["max_train_steps"] == 2


def test_the_not_empty_message_advises_resuming_only_when_a_checkpoint_exists(tiny_bert, small_imdb, tmp_path):
    """A run interrupted before its first checkpoint leaves nothing to resume: do not advise it."""
    args = common(tiny_bert, small_imdb) + ["--output_dir", tmp_path, "--max_train_steps", 2]
    (tmp_path / "log.jsonl").write_text('{"step": 1, "loss": 0.7}\n')
    last_line = run_train(args, check=False).stderr.strip().splitlines()[-1]
    assert last_line == (f"error: --output_dir {tmp_path} is not empty: pass --overwrite_output_dir to replace it, or "
                         "another --output_dir (it holds no checkpoint to resume from)")
    run_train(args + ["--overwrite_output_dir", "--checkpointing_steps", 1])
    last_line = run_train(args, check=False).stderr.strip().splitlines()[-1]
    assert last_line == (f"error: --output_dir {tmp_path} is not empty: pass --overwrite_output_dir to replace it, or "
                         "--resume_from_checkpoint latest to continue the run in it")


def test_partial_checkpoints_are_never_latest(tmp_path):
    for name, complete in (("step_5", True), ("step_10", True), (".step_15.partial", False)):
        (tmp_path / "checkpoints" / name).mkdir(parents=True)
        if complete:
            (tmp_path / "checkpoints" / name / "training_state.json").write_text(
                json.dumps({"completed_steps": int(name.split("_")[1])}))
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_5", "step_10"]


def test_resume_from_an_epoch_checkpoint_matches_the_full_run(tiny_bert, small_imdb, tmp_path):
    args = common(tiny_bert, small_imdb) + ["--checkpointing_steps", "epoch"]
    run_train(args + ["--output_dir", tmp_path / "a"])
    assert [p.name for p in list_checkpoints(tmp_path / "a")] == ["epoch_1", "epoch_2"]
    state = json.loads((tmp_path / "a" / "checkpoints" / "epoch_1" / "training_state.json").read_text())
    assert (state["epoch"], state["batches_done"], state["completed_steps"]) == (1, 0, 16)
    result = run_train(args + ["--output_dir", tmp_path / "b", "--resume_from_checkpoint",
                               tmp_path / "a" / "checkpoints" / "epoch_1"])
    assert "epoch 2, step 16" in result.stderr
    metrics_a, log_a = comparable(tmp_path / "a")
    metrics_b, _ = comparable(tmp_path / "b")
    assert metrics_b == metrics_a
    # A fresh output_dir holds only what the resumed run logged: steps 17 to 32.
    assert [r["step"] for r in read_outputs(tmp_path / "b")[1]] == list(range(17, 33))


def test_best_is_written_only_when_asked_for(tiny_bert, small_imdb, tmp_path):
    """A second full copy of the model (440 MB for bert-base) only with --save_best_model or --load_best_model_at_end."""
    args = common(tiny_bert, small_imdb) + ["--eval_strategy", "steps", "--eval_steps", 4, "--max_train_steps", 8,
                                            "--metric_for_best_model", "loss", "--learning_rate", 5e-2]
    run_train(args + ["--output_dir", tmp_path / "plain"])
    assert not (tmp_path / "plain" / "best").exists()
    run_train(args + ["--output_dir", tmp_path / "kept", "--save_best_model"])
    metrics, _ = read_outputs(tmp_path / "kept")
    assert (tmp_path / "kept" / "best").is_dir() == (metrics["best"]["step"] != 8)


def test_a_checkpoint_state_from_before_train_state_still_loads():
    """The sums used to sit under "running" (and there was no step_loss): such a checkpoint still resumes."""
    from training.state import TrainState

    old = {"epoch": 1, "batches_done": 3, "completed_steps": 19, "history": {"before": {"accuracy": 0.5}},
           "tracker": {"best": None, "evaluations_without_improvement": 0}, "settings": {},
           "running": {"epoch_loss": 2.5, "epoch_rows": 12, "window_loss": 0.75, "window_rows": 4}}
    state = TrainState(BestTracker("accuracy"), torch.device("cpu"))
    state.load_state_dict(old, process_index=0)
    assert (state.epoch, state.batches_done, state.completed_steps, state.epoch_rows, state.window_rows) == (1, 3, 19,
                                                                                                          12, 4)
    assert (state.epoch_loss.item(), state.window_loss.item(), state.step_loss.item()) == (2.5, 0.75, 0.0)


def test_a_checkpoint_whose_settings_were_saved_as_given_still_resumes():
    """Checkpoints before the resolved settings were saved hold the flags as given (None: decided by the run): a resume
    with the same flags matches them; a real difference is still named."""
    from training.checkpoints import config_differences

    given = {"text_column": None, "label_column": None, "num_train_epochs": 3, "max_train_steps": 20,
             "mixed_precision": None, "label_names": None, "per_device_train_batch_size": 4, "num_processes": 1}
    resolved = given | {"text_column": "text", "label_column": "label", "num_train_epochs": 2, "mixed_precision": "no",
                        "label_names": ["neg", "pos"]}
    assert config_differences(given, resolved, given) == []
    assert config_differences(resolved, resolved, given) == []  # as this version saves them
    assert config_differences(given, resolved | {"per_device_train_batch_size": 8},
                              given | {"per_device_train_batch_size": 8}) == ["per_device_train_batch_size: 4 -> 8"]


def test_each_process_gets_its_own_loss_sums_back():
    """A resume restores each process's share of the loss sums (not the total on the main process), so the epoch's
    reduction adds the same numbers in the same order as the uninterrupted run (the 8th digit of train_loss)."""
    from types import SimpleNamespace

    from training.state import TrainState

    states = [TrainState(BestTracker("accuracy"), torch.device("cpu")) for _ in range(2)]
    for state, losses in zip(states, ([0.1, 0.7], [0.3])):
        for loss in losses:
            state.micro_batch_done(torch.tensor([loss]))
    own = torch.stack([torch.stack([getattr(s, name) for name in s._sums()]) for s in states])
    gather_all = SimpleNamespace(gather=lambda tensor: own)  # what accelerate's gather returns on every process
    saved = json.loads(json.dumps(states[0].state_dict(gather_all)))
    assert saved["epoch_loss"] == pytest.approx(1.1) and len(saved["process_sums"]) == 2
    for index, before in enumerate(states):
        resumed = TrainState(BestTracker("accuracy"), torch.device("cpu"))
        resumed.load_state_dict(saved, process_index=index)
        assert resumed.epoch_loss.item() == before.epoch_loss.item() and resumed.batches_done == states[0].batches_done
