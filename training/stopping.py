"""Stop signals: clusters preempt jobs with SIGTERM (then kill them after a grace period), SLURM's `--signal` sends
SIGUSR1 before a job's time is up, people press Ctrl-C (SIGINT). Each makes the loop finish the optimizer step it is
in, save a checkpoint at that step and exit with 128 + the signal's number (143, 138, 130: what a shell reports for a
process killed by it, so schedulers and requeue scripts see "stopped", not "failed"). A second Ctrl-C stops at once.

One process checks its flag after every step (a Python bool: no sync). Several processes must stop at the same step
although a signal may reach only one of them, so they agree where the loop syncs anyway: at logging steps,
evaluations and checkpoints, one gather of the signal numbers. The stop then comes at most --logging_steps
optimizer steps (and an evaluation or a save in progress) after the signal.
"""

import signal

import torch

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class StopSignals:
    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.received = 0  # the first stop signal's number; 0: none
        self.previous = {}

    def install(self) -> None:
        """From here on a stop signal is a request, not an exception (main thread only: where train.py runs)."""
        for number in STOP_SIGNALS:
            self.previous[number] = signal.signal(number, self._handle)

    def restore(self) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        self.previous = {}

    def _handle(self, number: int, frame) -> None:
        if self.received and number == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C again: the user does not want to wait for the checkpoint
        self.received = self.received or number

    def requested(self, sync_point: bool) -> int:
        """The signal every process stops for now (its number), or 0. Several processes decide only at sync points."""
        if self.accelerator.num_processes == 1:
            return self.received
        if not sync_point:
            return 0
        flag = torch.tensor([self.received], device=self.accelerator.device)
        return int(self.accelerator.gather(flag).max().item())  # the step's sync point: one small read


def exit_code(number: int) -> int:
    return 128 + number


def signal_name(number: int) -> str:
    return signal.Signals(number).name
