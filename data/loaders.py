"""The DataLoaders the loop and predict.py use, and the move of their batches to the model's device.

Batches are built on the CPU (tokenized rows, padded by the collator) and moved by `on_device`, which the loops call
where they iterate, so a reader of the hot path sees the copy. On CUDA the loaders pin their batches in page-locked
memory and the copy is asynchronous (`non_blocking`): the GPU need not wait for the host between steps.
"""

import dataclasses

import torch
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding

from data.sampling import WeightedRows, padded_length


def pin_memory_for(device: torch.device) -> bool:
    """Page-locked batches only help (and only work) for copies to a CUDA device."""
    return torch.device(device).type == "cuda"


def to_device(batch, device: torch.device) -> dict:
    """Every tensor of a batch on `device` (an asynchronous copy from pinned memory on CUDA)."""
    device = torch.device(device)
    non_blocking = pin_memory_for(device)
    return {name: value.to(device, non_blocking=non_blocking) for name, value in batch.items()}


def on_device(loader, device: torch.device):
    """The loader's batches with every tensor on `device`."""
    for batch in loader:
        yield to_device(batch, device)


def padding_collator(tokenizer, pad_to_multiple_of: int, max_length: int):
    """DataCollatorWithPadding: each batch padded to its longest row, or with `pad_to_multiple_of` > 1 up to the next
    multiple of it (at most max_length), so batches come in a few shapes that compiled graphs reuse."""
    collator = DataCollatorWithPadding(tokenizer)
    return collator if pad_to_multiple_of <= 1 else BucketPadding(collator, pad_to_multiple_of, max_length)


@dataclasses.dataclass
class BucketPadding:
    """Pads a batch to min(the next multiple of `multiple` above its longest row, max_length), on the tokenizer's
    padding side. (DataCollatorWithPadding's own pad_to_multiple_of could pass max_length, and the model's limit.)"""

    collator: DataCollatorWithPadding
    multiple: int
    max_length: int

    def __call__(self, features: list[dict]) -> dict:
        length = padded_length(max(len(feature["input_ids"]) for feature in features), self.multiple, self.max_length)
        return dataclasses.replace(self.collator, padding="max_length", max_length=length)(features)


def train_loader(rows, batches: list[list[int]], collator, num_workers: int, device: torch.device) -> DataLoader:
    """This process's training batches (row indices from data.sampling; stand-in rows get loss_weight 0), on the CPU.
    Its own generator: a DataLoader draws a seed from the global RNG each epoch, which would shift dropout on resume."""
    return DataLoader(WeightedRows(rows), batch_sampler=batches, collate_fn=collator, num_workers=num_workers,
                      pin_memory=pin_memory_for(device), generator=torch.Generator())


def length_order(lengths: list[int]) -> list[int]:
    """Row indices longest first: batches of neighbours pad little (the longest batch first: out-of-memory shows at
    once)."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


def eval_loader(rows, batch_size: int, collator, num_workers: int, device: torch.device,
                lengths: list[int] | None = None) -> DataLoader:
    """Tokenized rows (a datasets.Dataset) in length order, each with its input position as `row`, so predictions can
    be put back in input order. `lengths`: the rows' token counts, when the caller has them already."""
    order = length_order(lengths if lengths is not None else [len(ids) for ids in rows["input_ids"]])
    ordered = rows.add_column("row", list(range(len(rows)))).select(order)
    return DataLoader(ordered, batch_size=batch_size, collate_fn=collator, num_workers=num_workers,
                      pin_memory=pin_memory_for(device), generator=torch.Generator())
