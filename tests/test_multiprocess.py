"""Real 2-process launches on the CPU (gloo): the same metrics, losses and schedule as one process, one writer, with DDP +
torch.compile (what several GPUs run by default). Eager 2-process runs (the CPU's default): a real launch stopped by a
signal in test_faults.py; forked processes (conftest.ForkedTrain) for its resume, test_tasks.py and test_lora.py."""

import pytest

from conftest import read_outputs, run_train
from test_train import TINY, evaluate_saved, without_predictions


@pytest.fixture(scope="module")
def one_and_two(tiny_bert, small_imdb, tmp_path_factory):
    """1 eager process x batch 8, and 2 processes x batch 4 with DDP + torch.compile: the same global batches. 101 eval
    rows do not divide by 2 x 8."""
    out = tmp_path_factory.mktemp("one_and_two")
    common = ["--model_name_or_path", tiny_bert, "--dataset_name", small_imdb, "--train_samples", 60,
              "--eval_samples", 0, "--per_device_eval_batch_size", 8, "--num_train_epochs", 2,
              "--learning_rate", 1e-3, *TINY]
    run_train(common + ["--output_dir", out / "one", "--per_device_train_batch_size", 8])
    compiled = run_train(common + ["--output_dir", out / "two", "--per_device_train_batch_size", 4,
                                   "--torch_compile"], processes=2)
    return read_outputs(out / "one"), read_outputs(out / "two"), out, compiled.stderr


def test_eval_metrics_are_identical_under_two_processes(one_and_two):
    (one, _), (two, _), _, _ = one_and_two
    assert two["config"]["num_processes"] == 2
    assert two["before"]["rows"] == one["before"]["rows"] == 101  # no row duplicated or dropped
    for key in ("accuracy", "f1", "precision", "recall"):
        assert two["before"][key] == one["before"][key]
    assert two["before"]["loss"] == pytest.approx(one["before"]["loss"], abs=1e-6)


def test_training_is_the_same_steps_as_one_process(one_and_two):
    (one, one_log), (two, two_log), _, _ = one_and_two
    assert [r["step"] for r in two_log] == [r["step"] for r in one_log] == list(range(1, 17))  # one writer
    assert [r["loss"] for r in two_log] == pytest.approx([r["loss"] for r in one_log], abs=1e-4)
    assert [r["learning_rate"] for r in two_log] == pytest.approx([r["learning_rate"] for r in one_log], rel=1e-6)
    assert two["epochs"][-1]["train_loss"] == pytest.approx(one["epochs"][-1]["train_loss"], abs=1e-4)
    assert two["after"]["loss"] == pytest.approx(one["after"]["loss"], abs=1e-4)
    assert two["after"]["accuracy"] == one["after"]["accuracy"]


def test_two_process_model_reloads_in_one_process_with_its_metrics(one_and_two, small_imdb):
    _, (two, _), out, _ = one_and_two
    assert without_predictions(evaluate_saved(out / "two", small_imdb, 0, 64)) == pytest.approx(two["after"], rel=1e-5)


def test_compiled_under_two_processes_compiles_the_inner_model_whole(one_and_two):
    """DDP + torch.compile: the inner model's forward is compiled, so DDP's own forward (buffer broadcasts) does not
    break the graph (the steps are the eager single process's: the tests above)."""
    _, (two, _), _, stderr = one_and_two
    assert two["config"]["torch_compile"] is True and two["speed"]["compile_seconds"] > 0
    assert "does not know how to trace" not in stderr and "Graph break" not in stderr


def test_processes_that_do_not_form_a_group_fail_loudly(tiny_bert, small_imdb, tmp_path):
    result = run_train(["--model_name_or_path", tiny_bert, "--dataset_name", small_imdb, "--output_dir", tmp_path / "o",
                        "--train_samples", 16, "--eval_samples", 16, *TINY], processes=2, use_cpu_group=False,
                       check=False)
    assert result.returncode != 0
    # The command that works (the tests run it so); the launcher adds its own report after the processes' lines.
    assert ("did not join one group, so each would train alone; on a CPU set ACCELERATE_USE_CPU=1: ACCELERATE_USE_CPU=1 "
            "accelerate launch --multi_gpu --num_processes 2 train.py ...\n") in result.stderr
    assert not (tmp_path / "o").exists()
