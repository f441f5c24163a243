"""Which training rows each process sees, in which batches, and how many rows each optimizer step covers.

We shard the training set ourselves instead of letting accelerate wrap a sampler, for two reasons:
- accelerate's `even_batches` fills the last batches with rows from the start of the epoch, so some rows are trained on
  twice; here every row is seen exactly once per epoch and a stand-in row, when one is needed, has weight 0;
- process p takes the p-th slice of every *global* batch, so N processes with batch size b take exactly the optimizer
  steps of one process with batch size N * b: results do not depend on how many GPUs ran them.
"""

import math

import torch
from torch.utils.data import Dataset


MEGA_BATCH_STEPS = 50  # length grouping sorts 50 optimizer steps' worth of rows at a time, as transformers does


def _cut(rows: list[int], size: int) -> list[list[int]]:
    return [rows[start : start + size] for start in range(0, len(rows), size)]


def global_batches(num_rows: int, global_batch_size: int, seed: int, epoch: int, lengths: list[int] | None = None,
                   accumulation: int = 1) -> list[list[int]]:
    """The epoch's shuffled row order cut into global batches; the same on every process for the same seed and epoch.

    With `lengths`, rows of similar length share a batch, so dynamic padding wastes little: the shuffled order is cut
    into mega-batches, each sorted by length and cut into optimizer steps (global batch x accumulation rows, so the
    steps do not depend on how they are split into micro-batches or processes), and the steps are shuffled. The short
    last step stays last; the step with the longest row goes first, so running out of memory shows at once.
    """
    generator = torch.Generator().manual_seed(seed + epoch)
    order = torch.randperm(num_rows, generator=generator).tolist()
    if lengths is None:
        return _cut(order, global_batch_size)
    step_size = global_batch_size * accumulation
    mega_size = step_size * MEGA_BATCH_STEPS
    order = [row for mega in _cut(order, mega_size) for row in sorted(mega, key=lambda i: -lengths[i])]
    steps = _cut(order, step_size)
    last = [steps.pop()] if len(steps[-1]) < step_size else []
    steps = [steps[i] for i in torch.randperm(len(steps), generator=generator).tolist()]
    if steps:
        longest = max(range(len(steps)), key=lambda k: lengths[steps[k][0]])
        steps[0], steps[longest] = steps[longest], steps[0]
    return [batch for step in steps + last for batch in _cut(step, global_batch_size)]


def process_batches(batches: list[list[int]], num_rows: int, num_processes: int, process_index: int) -> list[list[int]]:
    """This process's share of each global batch: a contiguous slice, sizes differing by at most one row.

    A process whose share of the (short) last global batch is empty gets that batch's first row as a stand-in, encoded as
    `index + num_rows` so that `WeightedRows` gives it weight 0: every process must run the same number of steps, or the
    gradient all-reduce would wait forever.
    """
    shares = []
    for batch in batches:
        share = [part.tolist() for part in torch.tensor(batch).tensor_split(num_processes)][process_index]
        shares.append(share if share else [batch[0] + num_rows])
    return shares


def padded_length(longest: int, multiple: int, max_length: int | None) -> int:
    """The length a batch whose longest row has `longest` tokens is padded to: itself, or with `multiple` > 1 the next
    multiple of it, at most max_length (the length buckets of data.loaders.BucketPadding)."""
    return longest if multiple <= 1 else min(math.ceil(longest / multiple) * multiple, max_length or math.inf)


def padding_efficiency(batches: list[list[int]], lengths: list[int], multiple: int = 1,
                       max_length: int | None = None) -> float:
    """Real tokens / padded token slots of these batches, each padded by `padded_length`."""
    return (sum(lengths[i] for b in batches for i in b)
            / sum(len(b) * padded_length(max(lengths[i] for i in b), multiple, max_length) for b in batches))


def rows_per_optimizer_step(batches: list[list[int]], gradient_accumulation_steps: int) -> list[int]:
    """Real rows (all processes) behind each optimizer step; the last step of an epoch may close a short group."""
    sizes = [len(batch) for batch in batches]
    steps = math.ceil(len(sizes) / gradient_accumulation_steps)
    return [sum(sizes[s * gradient_accumulation_steps : (s + 1) * gradient_accumulation_steps]) for s in range(steps)]


class WeightedRows(Dataset):
    """Tokenized rows with a `loss_weight`: 1.0 for a real row, 0.0 for a stand-in (index >= len(rows))."""

    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[dict]:
        columns = self.rows[[i % len(self.rows) for i in indices]]  # one Arrow read for the whole batch
        return [
            {**{name: values[j] for name, values in columns.items()}, "loss_weight": float(i < len(self.rows))}
            for j, i in enumerate(indices)
        ]
