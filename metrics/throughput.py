"""Throughput: where a training step's time goes, how much of each batch is padding, and model FLOPs utilization."""

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
    """Forward + backward FLOPs per real token and per pair of tokens in a sequence: 6 per non-embedding weight per
    token, plus attention scores and values, 12 x layers x hidden per pair (Kaplan et al. 2020). Count once per run:
    training FLOPs = per_token x tokens + per_pair x sum of squared lengths."""
    config = model.config
    embedding_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding))
    weights = sum(p.numel() for p in model.parameters()) - embedding_weights
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", 0)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", 0)
    return 6 * weights, 12 * layers * hidden


def measure_peak_tflops(device: torch.device, dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """Dense matmul TFLOP/s this device reaches in this dtype: the denominator of MFU when --peak_tflops is not given."""
    generator = torch.Generator().manual_seed(0)  # not the global RNG: that one drives dropout, resumes included
    a = torch.randn(size, size, generator=generator).to(device, dtype)
    b = torch.randn(size, size, generator=generator).to(device, dtype)
    a @ b  # warm up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12
