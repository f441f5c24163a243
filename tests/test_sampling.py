"""Training order: shards per process, stand-in rows, and the rows behind each optimizer step."""

import pytest
import torch
from datasets import Dataset

from data import WeightedRows, global_batches, padding_efficiency, process_batches, rows_per_optimizer_step


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


def grouped_shards(lengths, batch_size, processes, accumulation=1, seed=42, epoch=0):
    batches = global_batches(len(lengths), batch_size * processes, seed, epoch, lengths, accumulation)
    return batches, [process_batches(batches, len(lengths), processes, p) for p in range(processes)]


def test_grouped_batches_keep_every_row_once_and_repeat_for_a_seed():
    lengths = [int(x) for x in torch.randint(5, 500, (1003,), generator=torch.Generator().manual_seed(0))]
    batches, _ = grouped_shards(lengths, 8, 1)
    assert sorted(i for batch in batches for i in batch) == list(range(1003))
    assert batches == grouped_shards(lengths, 8, 1)[0]
    assert batches != grouped_shards(lengths, 8, 1, epoch=1)[0]
    assert max(lengths[i] for i in batches[0]) == max(lengths)  # the longest step first: OOM shows at once
    assert len(batches[-1]) == 1003 % 8  # the short step stays last


@pytest.fixture(scope="module")
def imdb_lengths(imdb_dir, minilm_dir):
    """WordPiece lengths (truncated at 512) of 2,000 real IMDB reviews."""
    import pandas as pd
    from transformers import AutoTokenizer

    texts = pd.read_parquet(imdb_dir / "train.parquet").text.sample(2000, random_state=0).tolist()
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    return [len(ids) for ids in tokenizer(texts, truncation=True, max_length=512)["input_ids"]]


def test_grouping_makes_real_imdb_batches_almost_free_of_padding(imdb_lengths):
    grouped = global_batches(len(imdb_lengths), 8, 42, 0, imdb_lengths)
    shuffled = global_batches(len(imdb_lengths), 8, 42, 0)
    assert padding_efficiency(grouped, imdb_lengths) >= 0.97
    assert padding_efficiency(shuffled, imdb_lengths) < 0.65


def test_grouped_steps_do_not_depend_on_processes_or_accumulation(imdb_lengths):
    one, _ = grouped_shards(imdb_lengths, 8, 1)
    _, two = grouped_shards(imdb_lengths, 4, 2)
    accumulated, _ = grouped_shards(imdb_lengths, 2, 1, accumulation=4)
    assert [sorted(a + b) for a, b in zip(*two)] == [sorted(batch) for batch in one]
    assert [sorted(sum(accumulated[i : i + 4], [])) for i in range(0, len(accumulated), 4)] == [sorted(b) for b in one]
    # Each process's half of a sorted global batch has nearly the same padded length: the same batch shapes.
    assert padding_efficiency(two[0] + two[1], imdb_lengths) >= 0.97
