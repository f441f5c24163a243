"""Where a run stands: `TrainState` is what a checkpoint saves (as training_state.json, beside accelerate's model,
optimizer, scheduler and RNG states) and what a resume restores. A new field is one edit, its line in the dataclass:
state_dict/load_state_dict go over every field. `BestTracker` is the best evaluation so far and the early-stopping
count."""

from dataclasses import dataclass, field, fields

import torch

from metrics.history import History
from metrics.tasks import LOWER_IS_BETTER


class BestTracker:
    """The best evaluation so far by one metric, and how many evaluations have passed without beating it."""

    def __init__(self, metric: str, patience: int | None = None):
        self.metric, self.patience = metric, patience
        self.best: dict | None = None  # {"metric", "value", "epoch", "step"}
        self.evaluations_without_improvement = 0

    def update(self, metrics: dict, epoch: int, step: int) -> bool:
        """Record an evaluation; True if it is the new best."""
        value = metrics[self.metric]
        if self.best is None:
            improved = True
        elif self.metric in LOWER_IS_BETTER:
            improved = value < self.best["value"]
        else:
            improved = value > self.best["value"]
        if improved:
            self.best = {"metric": self.metric, "value": value, "epoch": epoch, "step": step}
            self.evaluations_without_improvement = 0
        else:
            self.evaluations_without_improvement += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.evaluations_without_improvement >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "evaluations_without_improvement": self.evaluations_without_improvement}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.evaluations_without_improvement = state["best"], state["evaluations_without_improvement"]


@dataclass
class TrainState:
    """The loop's counters and sums. Loss sums live on the device, per process (adding to them needs no sync); a
    checkpoint stores each process's share (and their totals), and a resume gives each process its share back."""

    tracker: BestTracker
    device: torch.device
    epoch: int = 0  # the epoch in progress (0-based)
    batches_done: int = 0  # micro-batches of that epoch trained by this process (what a resume skips)
    completed_steps: int = 0  # optimizer steps taken
    epoch_rows: int = 0  # rows (all processes) trained this epoch
    window_rows: int = 0  # rows since the last log.jsonl line
    history: History = field(default_factory=History)
    epoch_loss: torch.Tensor | float = 0.0  # sums of per-row losses (this process's, on the device)
    window_loss: torch.Tensor | float = 0.0
    step_loss: torch.Tensor | float = 0.0  # the optimizer step in progress: checked for NaN/inf before the update

    NOT_SAVED = ("tracker", "device", "history")  # these two save themselves; the device is this process's

    def __post_init__(self):
        for name in self._sums():
            setattr(self, name, torch.tensor(float(getattr(self, name)), device=self.device))

    def _sums(self) -> list[str]:
        return [f.name for f in fields(self) if f.type == torch.Tensor | float]

    def micro_batch_done(self, row_losses: torch.Tensor) -> None:
        """Its losses added to the sums (on the device), and one more micro-batch of the epoch trained."""
        total = row_losses.detach().sum()
        self.epoch_loss += total
        self.window_loss += total
        self.step_loss += total
        self.batches_done += 1

    def step_taken(self, rows: int) -> None:
        self.completed_steps += 1
        self.epoch_rows += rows
        self.window_rows += rows

    def next_epoch(self) -> None:
        """After an epoch's end (its loss reported): the next one starts from nothing."""
        self.epoch += 1
        self.batches_done = 0
        self.epoch_loss.zero_()
        self.epoch_rows = 0

    def reset_window(self) -> None:
        self.window_loss.zero_()
        self.window_rows = 0

    def state_dict(self, accelerator) -> dict:
        """Every field as JSON (training_state.json); every process must call it (the loss sums are gathered): the
        sums over all processes, and each process's own share, so a resume adds them up in the same order."""
        sums = self._sums()
        shares = accelerator.gather(torch.stack([getattr(self, name) for name in sums])[None]).tolist()
        totals = [sum(share[i] for share in shares) for i in range(len(sums))]
        plain = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in (*sums, *self.NOT_SAVED)}
        return {**plain, **dict(zip(sums, totals)), "process_sums": shares, "tracker": self.tracker.state_dict(),
                "history": self.history.to_dict()}

    def load_state_dict(self, saved: dict, process_index: int) -> None:
        saved = saved | saved.get("running", {})  # checkpoints from before TrainState kept the sums under "running"
        self.tracker.load_state_dict(saved["tracker"])
        self.history = History.from_dict(saved["history"])
        sums = self._sums()
        shares = saved.get("process_sums")  # older checkpoints: the totals only, put back on the main process
        for f in fields(self):
            if f.name in sums:
                value = (shares[process_index][sums.index(f.name)] if shares else
                         saved.get(f.name, 0.0) if process_index == 0 else 0.0)
                setattr(self, f.name, torch.tensor(value, device=self.device))
            elif f.name not in self.NOT_SAVED:
                setattr(self, f.name, saved[f.name])
