"""Throughput: where a training step's time goes, how much of each batch is padding, and model FLOPs utilization."""

import functools
import time

import torch
from torch import nn

PHASES = ("data", "forward", "backward", "optimizer")


class PhaseTimer:
    """Wall time per phase of the step, accumulated until read. On a GPU, kernels run asynchronously, so the split is
    only true when `synchronize` is on (with --profile_steps); on a CPU it always is."""

    def __init__(self, device: torch.device, synchronize: bool):
        self.synchronize = synchronize and device.type == "cuda"
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.total = 0.0  # every lap since the start, read or not
        self.mark = time.perf_counter()

    def lap(self, phase: str) -> None:
        if self.synchronize:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.seconds[phase] += now - self.mark
        self.total += now - self.mark
        self.mark = now

    def restart(self) -> None:
        """Skip what happened since the last lap (an evaluation, a checkpoint)."""
        self.mark = time.perf_counter()

    def read(self) -> dict:
        seconds, self.seconds = self.seconds, dict.fromkeys(PHASES, 0.0)
        return {f"time_{phase}_s": round(value, 4) for phase, value in seconds.items()}


def training_flop_rates(model: nn.Module) -> tuple[float, float]:
    """Forward + backward FLOPs per real token and per pair of tokens in a sequence, as matrix products count them
    (the measured peak is a matmul rate): 6 per element of every weight matrix outside the embeddings (2 forward, 4
    backward; 4 for a frozen one, LoRA's base: no weight gradient), plus attention scores and values, 12 x layers x
    attention width per pair (Kaplan et al. 2020; PaLM's MFU); gradient checkpointing's recomputation is not counted.
    Count once per run: training FLOPs = per_token x tokens + per_pair x sum of squared lengths.

    Left out, as elementwise work: embedding lookups, biases, norm scales, activations, softmax, masking. Counted per
    token though applied once per row: a classification head on the pooled vector (BERT's pooler and classifier:
    ~0.7% of bert-base's weights). GQA needs nothing special (fewer K/V weights are fewer weights; scores run over
    every query head); gated MLPs (Llama, ModernBERT) are their matrices. DeBERTa-v2's relative attention adds, per
    token and layer, each row's queries (c2p) and keys (p2c) against 2 x span relative positions; its projections of
    the relative embeddings run once per forward, not per token, and are left out (~3.5% of deberta-v3-base's FLOPs at
    8 x 256 tokens). tests/test_architectures.py checks all this against torch's FlopCounterMode per family."""
    config = model.config
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    # (peft keeps the original head beside the trained copy, never run: not counted)
    matrices = [p for name, p in model.named_parameters()
                if p.ndim >= 2 and id(p) not in embeddings and ".original_module." not in name]
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", 0)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", 0)
    heads, head_dim = getattr(config, "num_attention_heads", None), getattr(config, "head_dim", None)
    width = heads * head_dim if heads and head_dim else hidden  # query heads x head size (Qwen3, Gemma: not hidden)
    per_token = sum((6 if p.requires_grad else 4) * p.numel() for p in matrices)  # frozen (LoRA): no weight gradient
    if getattr(config, "model_type", None) == "deberta-v2" and getattr(config, "relative_attention", False):
        span = _deberta_relative_span(config)
        per_token += 12 * layers * width * span * sum(kind in (config.pos_att_type or []) for kind in ("c2p", "p2c"))
    return per_token, 12 * layers * width


def _deberta_relative_span(config) -> int:
    """DeBERTa-v2's relative positions on each side (its `pos_ebd_size`): the buckets, else the largest distance."""
    buckets = getattr(config, "position_buckets", -1)
    if buckets > 0:
        return buckets
    distance = getattr(config, "max_relative_positions", -1)
    return distance if distance >= 1 else config.max_position_embeddings


def model_flops_utilization(flop_rates: tuple[float, float], real_tokens: float, squared_lengths: float,
                            seconds: float, peak_tflops: float) -> float:
    """MFU: training FLOPs on the real tokens (`training_flop_rates` x tokens and x squared lengths) / time / the peak
    (in TFLOP/s, summed over the processes that did the work)."""
    per_token, per_pair = flop_rates
    return (per_token * real_tokens + per_pair * squared_lengths) / seconds / (peak_tflops * 1e12)


@functools.cache
def measure_peak_tflops(device: torch.device) -> float:
    """The fastest dense matmul rate this device reaches, in TFLOP/s: the denominator of MFU (unless --peak_tflops).

    One denominator per device whatever the run's precision (bf16 on a GPU; the faster of fp32 and bf16 on a CPU), so an
    fp32 run's MFU shows how much of the chip it leaves unused. On CUDA: 8192^3 bf16 products after a warm-up, timed
    with CUDA events (a host clock around five small products, as before, read far below an H100's rate and overstated
    MFU); a datasheet peak is higher still (H100 SXM: ~989 dense bf16), pass it with --peak_tflops to compare with one.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return _matmul_tflops(device, torch.bfloat16, size=8192, repeats=20)
    # A CPU without bf16 instructions runs bf16 products ~50x slower than fp32 (an AVX2 EPYC here): a small probe
    # picks the dtype, so the full-size measurement never takes minutes.
    probe = {dtype: _matmul_tflops(device, dtype, size=256, repeats=3) for dtype in (torch.float32, torch.bfloat16)}
    return _matmul_tflops(device, max(probe, key=probe.get), size=2048, repeats=3)


def _matmul_tflops(device: torch.device, dtype: torch.dtype, size: int, repeats: int) -> float:
    generator = torch.Generator().manual_seed(0)  # not the global RNG: that one drives dropout, resumes included
    a = torch.randn(size, size, generator=generator).to(device, dtype)
    b = torch.randn(size, size, generator=generator).to(device, dtype)
    for _ in range(2):  # warm up: kernel selection, clocks
        a @ b
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            a @ b
        end.record()
        end.synchronize()
        seconds = start.elapsed_time(end) / 1000
    else:
        begin = time.perf_counter()
        for _ in range(repeats):
            a @ b
        seconds = time.perf_counter() - begin
    return 2 * size**3 * repeats / seconds / 1e12


def profile_sort_key(device: torch.device) -> str:
    """The profiler table's column to sort by: time on the accelerator where there is one (`self_cuda_time_total` is
    deprecated), else CPU time."""
    return "self_cpu_time_total" if torch.device(device).type == "cpu" else "self_device_time_total"
