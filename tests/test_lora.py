"""LoRA (--lora_r, through peft): only the adapters and the head train; the saved model is the adapter merged (what
pipeline and predict.py load), adapter/ holds the adapter alone; exact resume, 2 processes, bf16; bad input is one
line before --output_dir is touched."""

import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import ForkedTrain, finish_launch, read_outputs, run_train, save_tiny
from test_train import evaluate_saved, without_predictions

peft = pytest.importorskip("peft", reason="LoRA needs peft (pip install peft)")

ROWS = ["--train_samples", 0, "--eval_samples", 48, "--num_train_epochs", 1, "--max_length", 64, "--logging_steps", 1,
        "--learning_rate", 1e-2]  # 64 rows: 16 steps of 4


def lora_args(model, data) -> list:
    return ["--model_name_or_path", model, "--dataset_name", data, *ROWS, "--lora_r", 4]


@pytest.fixture(scope="module")
def lora_runs(tiny_bert, small_imdb, tmp_path_factory) -> dict:
    """One process x 4 rows with a checkpoint at step 8, and 2 processes x 2 rows (started alongside)."""
    out = tmp_path_factory.mktemp("lora")
    args = lora_args(tiny_bert, small_imdb)
    two = ForkedTrain(args + ["--output_dir", out / "two", "--per_device_train_batch_size", 2], 2)
    one = run_train(args + ["--output_dir", out / "one", "--per_device_train_batch_size", 4,
                            "--checkpointing_steps", 8])
    finish_launch(two, check=True)
    return {"args": args, "one": out / "one", "two": out / "two", "stderr": one.stderr}


def test_only_the_adapters_and_the_head_train(lora_runs, tiny_bert):
    """2 layers x (query, value) x r 4 x (32 in + 32 out) + the head's 32 x 2 + 2 = 1,090 trainable parameters; in the
    merged model every other weight is the base model's, bit for bit."""
    assert "LoRA: 1,090 of 1,012,516 parameters train (0.11%)" in lora_runs["stderr"]
    base, merged = load_file(tiny_bert / "model.safetensors"), load_file(lora_runs["one"] / "model.safetensors")
    assert merged.keys() == base.keys()
    adapted = [name for name in base if name.endswith(("query.weight", "value.weight")) or "classifier" in name]
    assert len(adapted) == 2 * 2 + 2
    for name, tensor in base.items():
        assert torch.equal(merged[name], tensor) == (name not in adapted), name


def test_the_saved_model_is_the_adapter_merged(lora_runs, tiny_bert, small_imdb):
    """pipeline-style loading gives train.py's "after"; peft loading adapter/ onto the base gives the same logits."""
    from transformers import AutoModelForSequenceClassification

    out = lora_runs["one"]
    metrics, _ = read_outputs(out)
    assert abs(metrics["after"]["loss"] - metrics["before"]["loss"]) > 1e-3  # the adapter changed the model
    assert without_predictions(evaluate_saved(out, small_imdb, 48, 64)) == pytest.approx(metrics["after"], rel=1e-5)
    merged = AutoModelForSequenceClassification.from_pretrained(out).eval()
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    adapter = peft.PeftModel.from_pretrained(base, out / "adapter").eval()
    ids = torch.randint(1000, 2000, (3, 12))
    with torch.no_grad():
        torch.testing.assert_close(adapter(input_ids=ids).logits, merged(input_ids=ids).logits, rtol=0, atol=1e-5)


def test_a_lora_run_resumes_exactly(lora_runs, tmp_path):
    full = lora_runs["one"]
    run_train(lora_runs["args"] + ["--output_dir", tmp_path, "--per_device_train_batch_size", 4,
                                   "--resume_from_checkpoint", full / "checkpoints" / "step_8"])
    (resumed, log), (whole, full_log) = read_outputs(tmp_path), read_outputs(full)
    assert resumed["after"] == whole["after"] and [r["loss"] for r in log] == [r["loss"] for r in full_log[8:]]
    weights, full_weights = load_file(tmp_path / "model.safetensors"), load_file(full / "model.safetensors")
    assert all(torch.equal(weights[name], full_weights[name]) for name in full_weights)


def test_two_processes_take_one_processs_steps(lora_runs):
    (two, two_log), (one, one_log) = read_outputs(lora_runs["two"]), read_outputs(lora_runs["one"])
    assert two["config"]["num_processes"] == 2
    assert [r["loss"] for r in two_log] == pytest.approx([r["loss"] for r in one_log], abs=1e-4)
    assert two["after"]["loss"] == pytest.approx(one["after"]["loss"], abs=1e-4)


def test_bf16_follows_fp32(lora_runs, tmp_path):
    run_train(lora_runs["args"] + ["--output_dir", tmp_path, "--per_device_train_batch_size", 4,
                                   "--mixed_precision", "bf16"])
    (bf16, log), (fp32, full_log) = read_outputs(tmp_path), read_outputs(lora_runs["one"])
    assert [r["loss"] for r in log] == pytest.approx([r["loss"] for r in full_log], abs=0.02)
    assert bf16["after"]["loss"] == pytest.approx(fp32["after"]["loss"], abs=0.02)


@pytest.fixture(scope="module")
def tiny_distilbert(minilm_dir, tmp_path_factory):
    """A family peft has no default LoRA modules for."""
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    config = DistilBertConfig(vocab_size=tokenizer.vocab_size, dim=32, n_layers=1, n_heads=2, hidden_dim=64)
    return save_tiny(DistilBertForSequenceClassification(config), tokenizer, tmp_path_factory.mktemp("tiny_distilbert"))


def test_bad_lora_input_is_one_line_before_any_output(tiny_bert, tiny_distilbert, small_imdb, tmp_path, monkeypatch):
    out = tmp_path / "out"

    def last_line(model, extra: list, code: int) -> str:
        result = run_train(lora_args(model, small_imdb) + ["--output_dir", out, *extra], check=False)
        assert result.returncode == code, result.stderr[-2000:]
        assert not out.exists()
        return result.stderr.strip().splitlines()[-1]

    assert last_line(tiny_distilbert, [], 1) == (
        "error: --lora_r: peft has no default target modules for distilbert; pass --lora_target_modules, a few of "
        "its linear layers: classifier k_lin lin1 lin2 out_lin pre_classifier q_lin v_lin")
    assert last_line(tiny_bert, ["--lora_target_modules", "q_lin"], 1).startswith("error: --lora_target_modules: ")
    no_r = lora_args(tiny_bert, small_imdb)[:-2]  # without --lora_r 4
    result = run_train(no_r + ["--output_dir", out, "--lora_alpha", 16, "--lora_dropout", 0.1], check=False)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == (
        "train.py: error: --lora_alpha, --lora_dropout set LoRA's adapters: give --lora_r too (python train.py --help "
        "lists the flags)")
    monkeypatch.setitem(sys.modules, "peft", None)  # as if not installed: `import peft` raises ImportError
    assert last_line(tiny_bert, [], 2).startswith("train.py: error: --lora_r 4: needs peft: pip install peft")


def test_mfu_counts_no_weight_gradient_for_frozen_weights(tiny_bert):
    """Under LoRA the base matrices cost 4 FLOPs per element and token (forward, the input's gradient), not 6; the
    adapters 6, as trained weights do."""
    from transformers import AutoModelForSequenceClassification

    from metrics.throughput import training_flop_rates
    from model.lora import add_lora

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert)
    full, per_pair = training_flop_rates(model)
    lora = add_lora(model, 4, None, 0.0, None)
    frozen = sum(p.numel() for n, p in lora.named_parameters()  # (not the original head peft keeps, never run)
                 if p.ndim == 2 and "embeddings" not in n and not p.requires_grad and "original_module" not in n)
    adapters = sum(p.numel() for n, p in lora.named_parameters() if "lora_" in n)
    assert frozen and adapters and training_flop_rates(model) == (full - 2 * frozen + 6 * adapters, per_pair)


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_the_merged_weights_are_peft_merge_and_unload(family, tiny_bert, tiny_gpt2):
    """merged_state_dict (built on the CPU, the trained model untouched) equals peft's merge_and_unload on a copy, bit
    for bit: names, the head's trained copy, GPT-2's transposed Conv1D deltas."""
    import copy

    from transformers import AutoModelForSequenceClassification

    from model.lora import add_lora, merged_state_dict

    torch.manual_seed(0)
    model = add_lora(AutoModelForSequenceClassification.from_pretrained(tiny_bert if family == "bert" else tiny_gpt2),
                     4, None, 0.0, None)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                parameter.normal_()  # (lora_B starts at zero: no delta to merge)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    expected = copy.deepcopy(model).merge_and_unload().state_dict()
    merged = merged_state_dict(model)
    assert merged.keys() == expected.keys() and all(torch.equal(merged[k], expected[k]) for k in expected)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_best_lora_model_comes_with_its_adapter_and_a_full_run_over_it_drops_it(lora_runs, small_imdb, tmp_path):
    """--load_best_model_at_end: the final model and adapter/ are the best evaluation's (copied from best/); a full
    fine-tuning run with --overwrite_output_dir leaves no stale adapter/ beside its model."""
    from transformers import AutoModelForSequenceClassification

    args = lora_runs["args"] + ["--output_dir", tmp_path, "--per_device_train_batch_size", 4, "--eval_strategy",
                                "steps", "--eval_steps", 4, "--metric_for_best_model", "accuracy",
                                "--load_best_model_at_end"]
    run_train(args)
    metrics, _ = read_outputs(tmp_path)
    assert metrics["best"]["step"] < 16 and metrics["after"]["loss"] != metrics["evaluations"][-1]["loss"]  # not last
    assert without_predictions(evaluate_saved(tmp_path, small_imdb, 48, 64)) == pytest.approx(metrics["after"],
                                                                                              rel=1e-5)
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    adapter = peft.PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(
        lora_runs["args"][1], num_labels=2), tmp_path / "adapter").eval()
    ids = torch.randint(1000, 2000, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(adapter(input_ids=ids).logits, merged(input_ids=ids).logits, rtol=0, atol=1e-5)
    at = args.index("--lora_r")
    run_train(args[:at] + args[at + 2 :] + ["--overwrite_output_dir"])  # full fine-tuning
    assert (tmp_path / "model.safetensors").is_file() and not (tmp_path / "adapter").exists()


def test_the_saved_weights_are_as_readable_as_the_other_outputs(lora_runs):
    """safetensors writes owner-only files: the model and the adapter get the umask's mode, as config.json has."""
    out = lora_runs["one"]
    mode = (out / "config.json").stat().st_mode & 0o777  # (0644 under the usual umask; safetensors wrote 0600)
    for weights in (out / "model.safetensors", out / "adapter" / "adapter_model.safetensors"):
        assert weights.stat().st_mode & 0o777 == mode, weights


def test_the_model_card_states_the_lora_settings(lora_runs):
    card = (lora_runs["one"] / "README.md").read_text()
    assert ("| LoRA | rank 4, alpha 8, dropout 0, on peft's default modules (merged into the saved weights; adapter/ "
            "alone) |") in card
