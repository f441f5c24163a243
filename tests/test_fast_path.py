"""The GPU fast path, checked on the CPU: length buckets and the NaN guard that needs no host sync give the eager loop's
per-step losses, stop before a bad update, and resume exactly; torch.compile's defaults and its fallback. (The compiled
run = the eager one: tests/test_host_sync.py, whose audited compiled run is the suite's one.)"""

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import train
from conftest import read_outputs, run_train
from data import padding_collator, padding_efficiency
from model import compile_classifier, resolve_speed
from training.nonfinite import NonFiniteGuard

FAST = ["--per_device_train_batch_size", 4, "--max_length", 64, "--logging_steps", 1, "--learning_rate", 1e-3]


def losses(output_dir) -> list[float]:
    return [record["loss"] for record in read_outputs(output_dir)[1]]


def test_defaults_per_device_compile_on_a_gpu_only_and_buckets_go_with_cuda_graphs():
    assert resolve_speed("cpu", None, "default", None, None) == (False, 1, 8)
    assert resolve_speed("cuda", None, "default", None, None) == (True, 1, 64)
    assert resolve_speed("cuda", None, "reduce-overhead", None, None) == (True, 64, 64)
    assert resolve_speed("cuda", False, "reduce-overhead", None, None) == (False, 1, 64)
    assert resolve_speed("cpu", True, "default", 16, 32) == (True, 16, 32)


def test_bucket_padding_pads_to_the_next_multiple_on_the_tokenizers_side(tiny_bert, gpt2_tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    rows = [{"input_ids": list(range(1, n + 1)), "attention_mask": [1] * n, "labels": 0} for n in (5, 17)]
    collate = padding_collator(tokenizer, 8, max_length=20)
    assert collate(rows[:1])["input_ids"].shape == (1, 8)
    batch = collate(rows)
    assert batch["input_ids"].shape == (2, 20)  # 17 -> 24 is past max_length 20: capped
    assert batch["attention_mask"].sum(dim=1).tolist() == [5, 17]
    assert padding_collator(tokenizer, 1, max_length=20)(rows)["input_ids"].shape == (2, 17)  # the longest row
    left = AutoTokenizer.from_pretrained(gpt2_tokenizer_dir, padding_side="left")
    left.pad_token = left.eos_token
    padded = padding_collator(left, 8, max_length=20)(rows[:1])
    assert padded["attention_mask"][0].tolist() == [0, 0, 0] + [1] * 5
    # What finish() reports for evaluation: real tokens / slots of the bucketed batches.
    assert padding_efficiency([[0, 1]], [5, 17], 8, 20) == pytest.approx(22 / 40)
    assert padding_efficiency([[0, 1]], [5, 17]) == pytest.approx(22 / 34)


def test_bucketed_batches_give_the_eager_per_step_losses(tiny_bert, small_imdb, tmp_path):
    common = ["--model_name_or_path", tiny_bert, "--dataset_name", small_imdb, "--train_samples", 0,
              "--eval_samples", 48, "--num_train_epochs", 1, *FAST, "--max_length", 256]  # rows of many lengths
    run_train(common + ["--output_dir", tmp_path / "eager"])
    run_train(common + ["--output_dir", tmp_path / "buckets", "--pad_to_multiple_of", 64])
    (eager, eager_log), (bucketed, bucketed_log) = read_outputs(tmp_path / "eager"), read_outputs(tmp_path / "buckets")
    # Masked padding changes only the summation order: float32 rounding, nothing more.
    assert losses(tmp_path / "buckets") == pytest.approx(losses(tmp_path / "eager"), abs=1e-5)
    assert bucketed["after"]["loss"] == pytest.approx(eager["after"]["loss"], abs=1e-5)
    assert bucketed["after"]["accuracy"] == eager["after"]["accuracy"]
    assert bucketed["config"]["pad_to_multiple_of"] == 64 and eager["config"]["pad_to_multiple_of"] == 1
    assert all(b["padding_efficiency"] <= e["padding_efficiency"] for b, e in zip(bucketed_log, eager_log))
    assert bucketed["speed"]["eval_padding_efficiency"] < eager["speed"]["eval_padding_efficiency"]


@pytest.mark.parametrize("asked_for", [False, True])
def test_a_compiler_failure_falls_back_to_eager_only_when_compiling_by_default(asked_for, monkeypatch):
    import torch._inductor.compile_fx

    def broken_compiler(*args, **kwargs):
        raise RuntimeError("no working compiler on this machine")

    monkeypatch.setattr(torch._inductor.compile_fx, "compile_fx", broken_compiler)
    torch._dynamo.reset()
    layer = torch.nn.Linear(3, 2)
    eager = layer(torch.ones(1, 3))
    with torch._dynamo.config.patch(suppress_errors=False):  # a process-wide setting: restored after the test
        compile_classifier(layer, "default", fall_back_to_eager=not asked_for)
        if asked_for:  # --torch_compile: the failure stops the run
            with pytest.raises(Exception, match="no working compiler on this machine"):
                layer(torch.ones(1, 3))
        else:  # the device's default: dynamo warns and runs eagerly
            assert torch.equal(layer(torch.ones(1, 3)), eager)
    torch._dynamo.reset()


def test_the_guard_skips_a_non_finite_update_and_every_later_one():
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.1, fused=True)

    class OneProcess:
        device, num_processes, scaler = torch.device("cpu"), 1, None

    guard = NonFiniteGuard(optimizer, OneProcess())
    assert not guard.must_check_every_step

    def step(number: int, loss: torch.Tensor) -> None:
        layer.zero_grad()
        (layer(torch.ones(1, 3)).sum() * loss).backward()
        guard.check(loss.detach(), torch.nn.utils.clip_grad_norm_(layer.parameters(), 1.0), number)
        optimizer.step()

    step(1, torch.tensor(1.0))
    good = [p.detach().clone() for p in layer.parameters()]
    step(2, torch.tensor(float("nan")))
    step(3, torch.tensor(1.0))  # finite again, but after a bad step: still skipped
    assert all(torch.equal(p, g) for p, g in zip(layer.parameters(), good))
    assert optimizer.state[layer.weight]["step"].item() == 1  # the moments and the step count too
    assert guard.first_bad_step() == 2


def test_nan_stops_at_the_next_logging_step_with_one_sync_per_logging_step(tiny_bert, small_imdb, tmp_path,
                                                                          monkeypatch):
    checks = []
    real = NonFiniteGuard.first_bad_step
    monkeypatch.setattr(NonFiniteGuard, "first_bad_step", lambda self: checks.append(1) or real(self))
    out = tmp_path / "out"
    # lr 1e30: step 1 blows the weights up to ~1e30 (finite); step 2's loss is NaN/inf; logged every 3rd step.
    result = run_train(["--model_name_or_path", tiny_bert, "--dataset_name", small_imdb, "--output_dir", out,
                        "--max_length", 32, "--train_samples", 32, "--eval_samples", 16,
                        "--per_device_train_batch_size", 4, "--learning_rate", 1e30, "--logging_steps", 3],
                       check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: the training loss is NaN or infinite at step 2 (epoch 1); stopped before updating the weights, no "
        "checkpoint had been saved. Try a lower --learning_rate, --max_grad_norm 1.0, or bf16 instead of fp16")
    assert checks == [1]  # at step 3, the first logging step: not at steps 1 and 2
    assert (out / "log.jsonl").read_text() == "" and not (out / "metrics.json").exists()


def test_resume_with_buckets_equals_the_uninterrupted_run(tiny_bert, small_imdb, tmp_path):
    common = ["--model_name_or_path", tiny_bert, "--dataset_name", small_imdb, "--train_samples", 0,
              "--eval_samples", 16, "--num_train_epochs", 2, "--pad_to_multiple_of", 16, *FAST]
    run_train(common + ["--output_dir", tmp_path / "a", "--checkpointing_steps", 5])
    run_train(common + ["--output_dir", tmp_path / "b", "--resume_from_checkpoint",
                        tmp_path / "a" / "checkpoints" / "step_15"])
    full, resumed = read_outputs(tmp_path / "a"), read_outputs(tmp_path / "b")
    assert [r["loss"] for r in resumed[1]] == [r["loss"] for r in full[1]][15:]
    assert resumed[0]["after"] == full[0]["after"]


def test_compile_flags_from_a_config_file(tmp_path):
    (tmp_path / "run.yaml").write_text("torch_compile: false\npad_to_multiple_of: 32\n")
    config = train.parse_args(["--config", tmp_path / "run.yaml"])
    assert (config.torch_compile, config.pad_to_multiple_of, config.per_device_eval_batch_size) == (False, 32, None)
    assert train.parse_args([]).torch_compile is None  # decided per device
    assert train.parse_args(["--torch_compile", "--torch_compile_mode", "reduce-overhead"]).torch_compile is True


def test_predict_with_buckets_gives_the_same_probabilities(tiny_bert):
    import predict

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert).eval()
    texts = ["A wonderful film.", "Dull, and far too long for what it had to say.", "Fine."]
    plain = predict.predict(model, tokenizer, texts, batch_size=2, max_length=64)
    bucketed = predict.predict(model, tokenizer, texts, batch_size=2, max_length=64, pad_to_multiple_of=16)
    assert torch.allclose(plain, bucketed, atol=1e-6)
    assert json.dumps(plain.argmax(-1).tolist()) == json.dumps(bucketed.argmax(-1).tolist())
