"""Data: load the splits, pick the recipe's subset, tokenize without padding (keeping the head, the tail or both ends
of long texts), shard training batches by process, and build the loaders whose batches the loops move to the device."""

from data.loading import (
    FILE_FORMATS,
    LABEL_COLUMNS,
    TEXT_COLUMNS,
    check_rows,
    find_column,
    load_splits,
    looks_like_path,
    read_table,
    rename_classes,
    select_subset,
    tokenize,
)
from data.loaders import (eval_loader, length_order, on_device, padding_collator, pin_memory_for, to_device,
                          train_loader)
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
    "check_rows",
    "encode",
    "eval_loader",
    "length_order",
    "on_device",
    "padding_collator",
    "pin_memory_for",
    "train_loader",
    "LABEL_COLUMNS",
    "TEXT_COLUMNS",
    "find_column",
    "read_table",
    "rename_classes",
    "WeightedRows",
    "global_batches",
    "load_splits",
    "looks_like_path",
    "padding_efficiency",
    "process_batches",
    "rows_per_optimizer_step",
    "select_subset",
    "to_device",
    "tokenize",
]
