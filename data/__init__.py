"""Data: load the splits, pick the recipe's subset, tokenize without padding, and shard training batches by process."""

from data.loading import load_splits, select_subset, tokenize
from data.sampling import WeightedRows, global_batches, process_batches, rows_per_optimizer_step

__all__ = [
    "WeightedRows",
    "global_batches",
    "load_splits",
    "process_batches",
    "rows_per_optimizer_step",
    "select_subset",
    "tokenize",
]
