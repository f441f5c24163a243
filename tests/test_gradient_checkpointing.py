"""--gradient_checkpointing (transformers' own, non-reentrant) changes memory and time, not the numbers: the same
per-step losses and weights with dropout on (the recomputation replays the RNG), and a checkpoint of a run with it
resumes without it exactly (a flag a resume may change)."""

import torch
from safetensors.torch import load_file

from conftest import read_outputs, run_train


def weights_equal(a, b) -> bool:
    first, second = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return first.keys() == second.keys() and all(torch.equal(first[name], second[name]) for name in first)


def test_gradient_checkpointing_changes_no_number_and_resumes_exactly(tiny_bert_dropout, small_imdb, tmp_path,
                                                                      monkeypatch):
    """It is on (each of the 2 layers checkpointed in each of the 16 training forwards, none in evaluations), and
    changes no loss, metric or weight."""
    import transformers.modeling_utils

    checkpoint, calls = transformers.modeling_utils.checkpoint, []

    def counted(*args, **kwargs):
        calls.append(kwargs.get("use_reentrant"))
        return checkpoint(*args, **kwargs)

    monkeypatch.setattr(transformers.modeling_utils, "checkpoint", counted)
    args = ["--model_name_or_path", tiny_bert_dropout, "--dataset_name", small_imdb, "--train_samples", 0,
            "--eval_samples", 32, "--num_train_epochs", 1, "--max_length", 64, "--logging_steps", 1,
            "--per_device_train_batch_size", 4, "--learning_rate", 1e-3]
    run_train(args + ["--output_dir", tmp_path / "plain"])
    assert calls == []
    run_train(args + ["--output_dir", tmp_path / "checkpointed", "--gradient_checkpointing",
                      "--checkpointing_steps", 8])
    assert calls == [False] * 2 * 16  # non-reentrant
    run_train(args + ["--output_dir", tmp_path / "resumed", "--resume_from_checkpoint",
                      tmp_path / "checkpointed" / "checkpoints" / "step_8"])
    (plain, plain_log), (with_it, log) = read_outputs(tmp_path / "plain"), read_outputs(tmp_path / "checkpointed")
    assert with_it["config"]["gradient_checkpointing"] is True
    assert "| gradient checkpointing | on" in (tmp_path / "checkpointed" / "README.md").read_text()  # the model card
    assert len(log) == 16 and [r["loss"] for r in log] == [r["loss"] for r in plain_log]
    assert with_it["after"] == plain["after"] and weights_equal(tmp_path / "checkpointed", tmp_path / "plain")
    resumed, resumed_log = read_outputs(tmp_path / "resumed")
    assert [r["loss"] for r in resumed_log] == [r["loss"] for r in plain_log[8:]]  # (another folder: after step 8)
    assert resumed["after"] == plain["after"]
    assert weights_equal(tmp_path / "resumed", tmp_path / "plain")
