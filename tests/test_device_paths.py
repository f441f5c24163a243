"""What only a GPU would expose, checked on the CPU: every batch the loops and predict.py use reaches the device they
are given (a `meta` device stands in for CUDA: it takes `.to()` but is not where the loader builds batches), pinned
memory on CUDA, CUDA RNG state in checkpoints, the profiler's sort key, the MFU denominator, and no tensor created on
the default device in the loop."""

import ast
import warnings
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator
from transformers import AutoTokenizer, DataCollatorWithPadding

import predict as predict_module
from conftest import ROOT
from data import eval_loader, global_batches, on_device, process_batches, tokenize, train_loader
from metrics.throughput import measure_peak_tflops, profile_sort_key
from training.checkpoints import save_checkpoint

META, CUDA = torch.device("meta"), torch.device("cuda")


@pytest.fixture(scope="module")
def rows(small_imdb, tiny_bert):
    from data import load_splits, select_subset

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    splits, _ = load_splits(str(small_imdb))
    return tokenize(select_subset(splits["train"], 20, 42), tokenizer, 32), DataCollatorWithPadding(tokenizer)


def tensors_of(batch: dict) -> dict:
    return {name: value for name, value in batch.items() if isinstance(value, torch.Tensor)}


def test_training_batches_reach_the_given_device(rows):
    tokens, collator = rows
    shard = process_batches(global_batches(len(tokens), 8, 42, 0), len(tokens), 1, 0)
    batches = list(on_device(train_loader(tokens, shard, collator, 0, META), META))
    assert len(batches) == 3 and [b["input_ids"].shape[0] for b in batches] == [8, 8, 4]
    for batch in batches:
        assert set(batch) >= {"input_ids", "attention_mask", "labels", "loss_weight"}
        assert {value.device for value in tensors_of(batch).values()} == {META}


def test_eval_batches_reach_the_given_device_in_length_order(rows):
    tokens, collator = rows
    batches = list(on_device(eval_loader(tokens, 8, collator, 0, META), META))
    assert {value.device for batch in batches for value in tensors_of(batch).values()} == {META}
    # On the CPU the same loader gives the rows longest first, each with its input position.
    plain = list(eval_loader(tokens, 8, collator, 0, torch.device("cpu")))
    order = torch.cat([batch["row"] for batch in plain]).tolist()
    lengths = [len(ids) for ids in tokens["input_ids"]]
    assert sorted(order) == list(range(20)) and [lengths[i] for i in order] == sorted(lengths, reverse=True)


def test_loaders_pin_memory_only_for_cuda(rows):
    tokens, collator = rows
    shard = [[0, 1]]
    assert train_loader(tokens, shard, collator, 0, CUDA).pin_memory
    assert eval_loader(tokens, 8, collator, 0, CUDA).pin_memory
    assert not train_loader(tokens, shard, collator, 0, torch.device("cpu")).pin_memory
    assert not eval_loader(tokens, 8, collator, 0, torch.device("cpu")).pin_memory


def test_predict_sends_every_batch_to_the_models_device(tiny_bert):
    """A stand-in model whose parameters live on `meta`: predict.py must move each batch there."""
    seen = []

    class OnMeta(torch.nn.Module):
        config = SimpleNamespace(num_labels=2)

        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.empty(1, device=META))

        def forward(self, **batch):
            seen.append({name: value.device for name, value in batch.items()})
            rows = batch["input_ids"].shape[0]
            return SimpleNamespace(logits=torch.arange(rows * 2, dtype=torch.float32).reshape(rows, 2))

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    texts = ["short", "a somewhat longer text than that", "mid length text", "x"]
    probabilities = predict_module.predict(OnMeta(), tokenizer, texts, batch_size=3, max_length=16)
    assert len(seen) == 2 and all(set(devices.values()) == {META} for devices in seen)
    assert probabilities.shape == (4, 2)


def test_checkpoints_carry_the_cuda_rng_state(tmp_path, monkeypatch):
    """accelerate saves torch.cuda's RNG state (dropout on a GPU) when CUDA is there: checkpoints go through it."""
    import accelerate.checkpointing as checkpointing

    cuda_state = [torch.arange(16, dtype=torch.uint8)]
    monkeypatch.setattr(checkpointing, "is_cuda_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: cuda_state)
    accelerator = Accelerator(cpu=True)
    accelerator.prepare(torch.nn.Linear(2, 2))
    checkpoint = save_checkpoint(accelerator, tmp_path, "step_1", {"completed_steps": 1})
    states = torch.load(checkpoint / "random_states_0.pkl", weights_only=False)  # torch.save'd despite the name
    assert torch.equal(states["torch_cuda_manual_seed"][0], cuda_state[0])


def test_profiler_sorts_by_device_time_on_a_gpu_without_the_deprecated_key():
    assert profile_sort_key(CUDA) == "self_device_time_total"
    assert profile_sort_key(torch.device("cpu")) == "self_cpu_time_total"
    with torch.profiler.profile() as profile:
        torch.ones(8, 8) @ torch.ones(8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the old key `self_cuda_time_total` warns that it is deprecated
        assert "aten::mm" in profile.key_averages().table(sort_by=profile_sort_key(CUDA), row_limit=5)


def test_mfu_denominator_is_one_peak_per_device_whatever_the_precision():
    peak = measure_peak_tflops(torch.device("cpu"))
    assert peak > 0 and measure_peak_tflops(torch.device("cpu")) == peak  # measured once per process, then cached


FACTORIES = {"tensor", "zeros", "ones", "empty", "full", "arange", "zeros_like", "ones_like", "randn", "rand"}


def test_train_creates_no_tensor_on_the_default_device():
    """In train.py every tensor factory names its device (the default is the CPU, not where the model is)."""
    tree = ast.parse((ROOT / "train.py").read_text())
    undeviced = [
        f"line {node.lineno}: torch.{node.func.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in FACTORIES
        and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"
        and not node.func.attr.endswith("_like") and not any(k.arg == "device" for k in node.keywords)
    ]
    assert undeviced == []
