"""Data: load the splits, pick the recipe's subset, tokenize without padding (keeping the head, the tail or both ends
of long texts), and shard training batches by process."""

from data.loading import (
    FILE_FORMATS,
    LABEL_COLUMNS,
    TEXT_COLUMNS,
    find_column,
    load_splits,
    read_table,
    select_subset,
    tokenize,
)
from data.truncation import KEEP_CHOICES, check_head_tokens, encode
from data.sampling import (
    WeightedRows,
    global_batches,
    padding_efficiency,
    process_batches,
    rows_per_optimizer_step,
)

__all__ = [
    "FILE_FORMATS",
    "KEEP_CHOICES",
    "check_head_tokens",
    "encode",
    "LABEL_COLUMNS",
    "TEXT_COLUMNS",
    "find_column",
    "read_table",
    "WeightedRows",
    "global_batches",
    "load_splits",
    "padding_efficiency",
    "process_batches",
    "rows_per_optimizer_step",
    "select_subset",
    "tokenize",
]
