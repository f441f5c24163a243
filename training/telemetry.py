"""What the loop measures but does not need: log.jsonl, the trackers (TensorBoard, W&B), the progress bar, the
profiler, the phase timer, tokens, padding efficiency and MFU. The loop calls it at four points: each phase of a step
(`lap`), each micro-batch (`batch_loaded`), each optimizer step (`step_done`) and each evaluation (`evaluated`).

Token counts stay on the device and are summed over processes only at logging steps: no host sync per step.
"""

import json
import logging

import torch
from accelerate.utils import is_tensorboard_available, is_wandb_available
from tqdm.auto import tqdm

from metrics import ALL_METRICS
from metrics.throughput import (PhaseTimer, measure_peak_tflops, model_flops_utilization, profile_sort_key,
                                training_flop_rates)

logger = logging.getLogger("train")
TRACKED_TRAIN_KEYS = ("loss", "learning_rate", "grad_norm", "samples_per_second", "tokens_per_second")


def installed_trackers() -> list[str]:
    return [name for name, present in (("tensorboard", is_tensorboard_available()), ("wandb", is_wandb_available()))
            if present]


def missing_trackers(report_to: str) -> str | None:
    """What --report_to asks for that is not installed (with what to install), or None."""
    if report_to == "all" and not installed_trackers():
        return "neither tensorboard nor wandb is installed; pip install tensorboard (or wandb), or pass --report_to none"
    if report_to not in ("all", "none") and report_to not in installed_trackers():
        return f"{report_to} is not installed; pip install {report_to}, or pass --report_to none"
    return None


def trackers_for(report_to: str) -> list[str]:
    """The accelerate trackers --report_to asks for (checked with the flag: see missing_trackers)."""
    return installed_trackers() if report_to == "all" else [] if report_to == "none" else [report_to]


def flop_rate(tflops: float) -> str:
    """A peak a reader can see: a CPU's 0.04 TFLOP/s reads as 40.0 GFLOP/s, not 0.0 TFLOP/s."""
    return f"{tflops:.1f} TFLOP/s" if tflops >= 1 else f"{tflops * 1000:.1f} GFLOP/s"


def tracked(metrics: dict, prefix: str) -> dict:
    """The scalars of an evaluation for the trackers: eval/accuracy, eval/f1, ..."""
    return {f"{prefix}/{k}": v for k, v in metrics.items() if k in ALL_METRICS}


class Telemetry:
    def __init__(self, accelerator, config, plan, classifier, output_dir, log_file, tracker_config: dict | None,
                 start_step: int):
        self.accelerator, self.config, self.output_dir, self.log_file = accelerator, config, output_dir, log_file
        device = accelerator.device
        self.window_tokens = torch.zeros(3, device=device)  # real tokens, token slots, sum of squared lengths
        self.window_grad_norm = torch.zeros(1, device=device)  # summed over the window's optimizer steps
        self.window_steps = 0
        self.run_tokens = torch.zeros(3, device=device)  # the same over the whole run (this process)
        self.run_rows = 0  # trained in this process's lifetime (a resumed run counts from its checkpoint)
        self.timer = PhaseTimer(device, synchronize=config.profile_steps > 0)
        self.peak_tflops = config.peak_tflops or measure_peak_tflops(device)
        source = "--peak_tflops" if config.peak_tflops else f"the dense matmul rate measured on {device}"
        logger.info(f"MFU is relative to {flop_rate(self.peak_tflops)} per process ({source})")
        self.flop_rates = training_flop_rates(classifier)
        self.trackers_on = True
        if tracker_config is not None:  # every process calls it; only the main process writes
            accelerator.init_trackers("text-classification", config=tracker_config)
        self.profiler = start_profiler(config.profile_steps, output_dir, accelerator.is_main_process, device)
        self.progress = tqdm(total=plan.max_train_steps, initial=start_step, desc="train",
                             disable=not accelerator.is_local_main_process)

    def lap(self, phase: str) -> None:
        self.timer.lap(phase)

    def restart(self) -> None:
        """What happens next (an evaluation, a checkpoint) is not training time."""
        self.timer.restart()

    def batch_loaded(self, batch: dict) -> None:
        """A training micro-batch is on the device: the data phase ends; its tokens are counted."""
        self.timer.lap("data")
        self.batch_shape = tuple(batch["input_ids"].shape)  # metadata, no sync: for an out-of-memory message
        self.count_tokens(batch["attention_mask"])

    def count_tokens(self, attention_mask: torch.Tensor) -> None:
        lengths = attention_mask.sum(dim=1)  # real tokens per row (no .item(): no GPU sync)
        self.window_tokens[0] += lengths.sum()
        self.window_tokens[1] += attention_mask.numel()  # a Python number: a kernel argument, not a copy
        self.window_tokens[2] += (lengths * lengths).sum()

    def add_grad_norm(self, norm: torch.Tensor) -> None:
        """The step's gradient norm (before clipping), kept on the device until a logging step."""
        self.window_grad_norm += norm.detach().float()
        self.window_steps += 1

    def step_done(self, state, step_rows: int, epoch_position: float, learning_rate: float, log: bool) -> None:
        """After an optimizer step: the progress bar, the profiler, and at logging steps a log.jsonl line and the
        trackers (the loss is the mean over the rows of the steps since the previous line, all processes)."""
        self.run_rows += step_rows
        self.progress.update(1)
        if self.profiler is not None:
            self.profiler.step()
        if not log:
            return
        window = torch.cat([state.window_loss[None], self.window_tokens, self.window_grad_norm])
        totals = self.accelerator.reduce(window, reduction="sum").tolist()  # one sync per logging step
        loss, (real_tokens, token_slots, squared_lengths) = totals[0] / state.window_rows, totals[1:4]
        grad_norm = totals[4] / max(self.window_steps, 1) / self.accelerator.num_processes  # the same on every process
        times = self.timer.read()
        seconds = sum(times.values())  # training time only: evaluations and checkpoints are not in it
        record = {"step": state.completed_steps, "epoch": round(epoch_position, 4), "loss": loss,
                  "learning_rate": learning_rate, "grad_norm": grad_norm, "samples_per_second": state.window_rows / seconds,
                  "tokens_per_second": real_tokens / seconds, "padding_efficiency": real_tokens / token_slots, **times,
                  "mfu": self.mfu(real_tokens, squared_lengths, seconds)}
        if self.log_file is not None:
            self.log_file.write(json.dumps(record) + "\n")
            self.log_file.flush()
        self.to_trackers({f"train/{key}": record[key] for key in TRACKED_TRAIN_KEYS}, record["step"])
        self.progress.set_postfix(loss=f"{loss:.4f}", lr=f"{learning_rate:.2e}")
        state.reset_window()
        self.run_tokens += self.window_tokens
        self.window_tokens.zero_()
        self.window_grad_norm.zero_()
        self.window_steps = 0

    def mfu(self, real_tokens: float, squared_lengths: float, seconds: float) -> float:
        """Tokens summed over all processes, so the peak is every process's."""
        return model_flops_utilization(self.flop_rates, real_tokens, squared_lengths, seconds,
                                       self.peak_tflops * self.accelerator.num_processes)

    def evaluated(self, metrics: dict, step: int) -> None:
        self.to_trackers(tracked(metrics, "eval"), step)

    def to_trackers(self, values: dict, step: int) -> None:
        """TensorBoard/W&B; one that fails (a full disk, W&B's service gone) is dropped with a warning, and the run goes
        on: its own log.jsonl and metrics.json hold every figure anyway."""
        if not self.trackers_on:
            return
        try:
            self.accelerator.log(values, step=step)
        except Exception as error:  # noqa: BLE001 - any tracker's failure: it must not end the training
            self.trackers_on = False
            logger.warning(f"--report_to: a tracker failed ({type(error).__name__}: {str(error).splitlines()[0]}); "
                           "training goes on without trackers (log.jsonl and metrics.json are written as usual)")

    def close(self) -> dict:
        """The run's speed figures for metrics.json (train padding efficiency over all processes)."""
        self.progress.close()
        if self.profiler is not None:
            self.profiler.stop()
        totals = self.accelerator.reduce(self.run_tokens + self.window_tokens, "sum").tolist()
        real_tokens, token_slots, squared_lengths = totals
        if self.log_file is not None:
            self.log_file.close()
        seconds = max(self.timer.total, 1e-9)
        device = self.accelerator.device
        return {"train_seconds": round(self.timer.total, 3), "peak_tflops": self.peak_tflops,
                "train_samples_per_second": round(self.run_rows / seconds, 3),
                "train_mfu": self.mfu(real_tokens, squared_lengths, seconds),
                "train_padding_efficiency": real_tokens / max(token_slots, 1),
                "peak_gpu_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}


def start_profiler(steps: int, output_dir, is_main: bool, device: torch.device):
    """torch.profiler over `steps` optimizer steps after one to wait and one to warm up; writes a Chrome/Perfetto
    trace (profile_trace.json) and the top operators (profile_top_ops.txt) into output_dir."""
    if steps <= 0:
        return None

    def write(profile) -> None:
        if is_main:
            profile.export_chrome_trace(str(output_dir / "profile_trace.json"))
            table = profile.key_averages().table(sort_by=profile_sort_key(device), row_limit=30)
            (output_dir / "profile_top_ops.txt").write_text(table)
            logger.info(f"Wrote the profile of {steps} steps to {output_dir}/profile_trace.json and profile_top_ops.txt")

    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    profiler = torch.profiler.profile(activities=activities, on_trace_ready=write,
                                      schedule=torch.profiler.schedule(wait=1, warmup=1, active=steps, repeat=1))
    profiler.start()
    return profiler
