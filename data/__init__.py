"""Data: load the splits (texts or sentence pairs; class, multi-label or score labels), pick the recipe's subset, tokenize without padding (keeping the head, the tail or both ends
of long texts), shard training batches by process, and build the loaders whose batches the loops move to the device."""

from data.loading import (
    FILE_FORMATS,
    LABEL_COLUMNS,
    TEXT_COLUMNS,
    check_rows,
    Columns,
    find_column,
    find_columns,
    load_splits,
    looks_like_path,
    read_table,
    select_subset,
    tokenize,
)
from data.labels import label_columns, rename_classes
from data.loaders import (eval_loader, length_order, on_device, padding_collator, pin_memory_for, to_device,
                          train_loader)
from data.truncation import KEEP_CHOICES, add_pair_separator, check_head_tokens, check_pair_room, encode
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
    "add_pair_separator",
    "check_head_tokens",
    "check_pair_room",
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
    "Columns",
    "find_column",
    "label_columns",
    "find_columns",
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
