"""Training order: shards per process, stand-in rows, and the rows behind each optimizer step."""

import pytest
import torch
from datasets import Dataset

from data import WeightedRows, global_batches, process_batches, rows_per_optimizer_step


@pytest.mark.parametrize("num_rows, batch_size, processes", [(64, 8, 1), (101, 8, 2), (17, 8, 2), (50, 4, 3)])
def test_each_epoch_shards_are_disjoint_and_cover_the_subset(num_rows, batch_size, processes):
    batches = global_batches(num_rows, batch_size * processes, seed=42, epoch=0)
    shards = [process_batches(batches, num_rows, processes, p) for p in range(processes)]
    real = [[i for batch in shard for i in batch if i < num_rows] for shard in shards]
    assert sorted(i for rows in real for i in rows) == list(range(num_rows))  # each row exactly once
    assert len({len(shard) for shard in shards}) == 1  # same number of steps on every process
    assert all(1 <= len(batch) <= batch_size for shard in shards for batch in shard)


def test_n_processes_take_the_same_global_batches_as_one():
    batches = global_batches(37, 8, seed=1, epoch=0)
    one = process_batches(batches, 37, 1, 0)
    two = [process_batches(batches, 37, 2, p) for p in range(2)]
    assert [sorted(a + b) for a, b in zip(*two)] == [sorted(batch) for batch in one]


def test_order_changes_between_epochs_and_repeats_for_a_seed():
    assert global_batches(100, 8, seed=42, epoch=0) == global_batches(100, 8, seed=42, epoch=0)
    assert global_batches(100, 8, seed=42, epoch=0) != global_batches(100, 8, seed=42, epoch=1)
    assert global_batches(100, 8, seed=42, epoch=0) != global_batches(100, 8, seed=7, epoch=0)


def test_a_process_without_a_real_row_gets_a_weight_zero_stand_in():
    batches = global_batches(17, 16, seed=0, epoch=0)  # the last global batch holds 1 row for 2 processes
    last = [process_batches(batches, 17, 2, p)[-1] for p in range(2)]
    assert last[0] == batches[-1] and last[1] == [batches[-1][0] + 17]
    rows = WeightedRows(Dataset.from_dict({"input_ids": [[i] for i in range(17)], "labels": [0] * 17}))
    items = rows.__getitems__([3, 3 + 17])
    assert [item["input_ids"] for item in items] == [[3], [3]]
    assert [item["loss_weight"] for item in items] == [1.0, 0.0]


def test_rows_per_optimizer_step_closes_a_short_final_group():
    batches = global_batches(30, 4, seed=0, epoch=0)  # 7 batches of 4 and one of 2
    assert rows_per_optimizer_step(batches, 3) == [12, 12, 6]
    assert rows_per_optimizer_step(batches, 1) == [4] * 7 + [2]
    assert sum(rows_per_optimizer_step(batches, 5)) == 30
