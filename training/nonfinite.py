"""The NaN/inf guard: a step whose loss or gradient norm is not finite must not touch the weights.

Fused AdamW (the loop's optimizer) takes a `found_inf` tensor, as GradScaler uses it: when it is 1 the kernel leaves
the weights, the moments and the step count as they were. The guard keeps that flag on the device and latches it, so
the bad step and every step after it are skipped without the host waiting for the GPU; the loop asks `first_bad_step`
(one sync) only where it syncs anyway or must not go on: logging steps, evaluations, checkpoints, the end.

An optimizer without `found_inf` support (sharded FSDP/DeepSpeed ones, or fp16, whose GradScaler owns the flag)
falls back to one sync per step: `must_check_every_step`.
"""

import torch


class NonFiniteGuard:
    def __init__(self, optimizer, accelerator):
        self.accelerator = accelerator
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps the torch one
        self.on_device = getattr(inner, "_step_supports_amp_scaling", False) and accelerator.scaler is None
        device = accelerator.device
        self.found_inf = torch.zeros((), device=device)  # 1.0 from the first bad step on
        self.bad_step = torch.zeros((), dtype=torch.long, device=device)  # that step's number (1-based); 0: none
        if self.on_device:
            inner.found_inf = self.found_inf  # read by every fused AdamW step from now on

    @property
    def must_check_every_step(self) -> bool:
        return not self.on_device

    def check(self, step_loss: torch.Tensor, grad_norm: torch.Tensor, step: int) -> None:
        """Before the optimizer step `step` (1-based): flag it if its loss or gradient norm is NaN/inf, on every
        process alike (DDP's processes must all skip or all update). Queued on the device: no sync. Under fp16 an inf
        gradient is the scaler's business (it skips the step and lowers the scale): only the loss counts there."""
        bad = ~torch.isfinite(step_loss)
        if self.accelerator.scaler is None:
            bad = bad | ~torch.isfinite(grad_norm)
        bad = bad.float()
        if self.accelerator.num_processes > 1:
            bad = self.accelerator.reduce(bad, reduction="sum").clamp(max=1)
        self.bad_step.copy_(torch.where((self.found_inf == 0) & (bad > 0), step, self.bad_step))
        self.found_inf.copy_(torch.maximum(self.found_inf, bad))  # in place: the optimizer holds this tensor

    def first_bad_step(self) -> int:
        """The first step that was not finite, 0 if none (a host sync)."""
        return int(self.bad_step.item())
