"""Classify texts (or sentence pairs, or score them) with a model saved by train.py (or any sequence-classification
model directory).

    python predict.py result --text "A wonderful film." --text "Dull and far too long."
    python predict.py result --input_file reviews.csv --output_file predictions.jsonl
    cat reviews.txt | python predict.py result --output_file predictions.csv
    python predict.py result --input_file ../shared/data/imdb/test.parquet --evaluate
    python predict.py mrpc_model --text "He left." --text_pair "He went away."    # a model trained on pairs

Input: --text (repeatable; with --text_pair for pairs), --input_file (txt: one text per line; csv/jsonl/json/parquet:
a text column, and a text pair column for a pair model), or stdin lines. Output, in input order, by the model's
problem_type: the label, its score and every class's probability (single-label); the labels at or above the threshold
and every label's probability (multi-label); the score (regression). JSONL (default, to stdout) or CSV.
Texts are batched in length order internally, so little compute goes to padding. Long texts are truncated the way the
model was trained (--max_length, --truncation_keep and --head_tokens saved by train.py). With --evaluate and
--output_file, each row also has its true_label, so two models' files can be compared with `python -m metrics.compare`.
"""

import argparse
import contextlib
import csv
import json
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from data import (
    FILE_FORMATS,
    KEEP_CHOICES,
    LABEL_COLUMNS,
    TEXT_COLUMNS,
    Columns,
    check_head_tokens,
    check_pair_room,
    check_rows,
    encode,
    eval_loader,
    find_columns,
    label_columns,
    looks_like_path,
    padding_collator,
    read_table,
    to_device,
)
from metrics import task_for
from model import (AUTOCAST_DTYPES, BUCKET_MULTIPLE, COMPILE_MODES, compile_classifier, prepare_tokenizer,
                   clamped_max_length, position_limit, prefer_fast_attention, prepare_attention_masks,
                   resolve_speed)
from training.cli import AT_LEAST_ONE, NON_NEGATIVE, Parser, Range, one_line_errors


def parse_args(argv=None):
    parser = Parser(prog="predict.py", description=__doc__)  # train.py's: no abbreviations, defaults in --help, one-line errors
    parser.add_argument("model_dir", help="a directory written by train.py (output_dir or output_dir/best)")
    parser.add_argument("--text", action="append", help="a text to classify; repeat for more")
    parser.add_argument("--text_pair", action="append", help="a pair model: the second text of each --text, in order")
    parser.add_argument("--input_file", help="txt (one text per line), csv, jsonl, json or parquet")
    parser.add_argument("--text_column", default=None, help="default: the column the model was trained on, a known "
                        "pair for a pair model, else the first of " + ", ".join(TEXT_COLUMNS))
    parser.add_argument("--text_pair_column", default=None, help="a pair model: the second text's column (default: "
                        "the one it was trained on, or a known pair's)")
    parser.add_argument("--label_column", nargs="+", default=None, help="with --evaluate; default: the first of "
                        + ", ".join(LABEL_COLUMNS) + "; several: one 0/1 column per label (multi-label)")
    parser.add_argument("--threshold", type=float, default=None, help="multi-label: print the labels whose "
                        "probability is at least this (default: the model's, saved by train.py, else 0.5)")
    parser.add_argument("--output_file", default=None, help=".jsonl or .csv; default: JSONL to stdout")
    parser.add_argument("--batch_size", type=int, default=None, help="default: 8 on a CPU, 64 on a GPU (as train.py "
                        "evaluates)")
    parser.add_argument("--max_length", type=int, default=None, help="default: the length the model was trained with")
    parser.add_argument("--truncation_keep", choices=KEEP_CHOICES, default=None,
                        help="which tokens of a long text to keep; default: what the model was trained with (or head)")
    parser.add_argument("--head_tokens", type=int, default=None, help="with head_tail; default: as trained (or 128)")
    parser.add_argument("--mixed_precision", choices=list(AUTOCAST_DTYPES), default="no",
                        help="autocast the forward pass (bf16 is several times faster on recent CPUs and GPUs)")
    parser.add_argument("--torch_compile", action=argparse.BooleanOptionalAction, default=None,
                        help="compile the model (default: on for a GPU, off on a CPU)")
    parser.add_argument("--torch_compile_mode", choices=COMPILE_MODES, default="default")
    parser.add_argument("--pad_to_multiple_of", type=int, default=None,
                        help=f"pad each batch to a multiple of N tokens (default: {BUCKET_MULTIPLE} with a CUDA-graph "
                             "--torch_compile_mode, else 1)")
    parser.add_argument("--evaluate", action="store_true", help="the input has labels: print the model's metrics")
    args = parser.parse_args(argv)
    if args.text and args.input_file:
        parser.error("give --text or --input_file, not both")
    if args.text_pair and len(args.text_pair) != len(args.text or []):
        parser.error(f"--text_pair: one for each --text, got {len(args.text_pair)} for {len(args.text or [])}")
    if args.threshold is not None and (problem := Range(0, 1, low_open=True, high_open=True).error(args.threshold)):
        parser.error(f"--threshold {problem}")
    for name, valid in (("batch_size", AT_LEAST_ONE), ("pad_to_multiple_of", AT_LEAST_ONE),
                        ("max_length", AT_LEAST_ONE), ("head_tokens", NON_NEGATIVE)):
        if getattr(args, name) is not None and (problem := valid.error(getattr(args, name))):
            parser.error(f"--{name} {problem}")
    if args.output_file and Path(args.output_file).suffix not in (".jsonl", ".csv"):
        parser.error(f"--output_file {args.output_file}: use a .jsonl or .csv name")
    if args.evaluate and not args.input_file:
        parser.error("--evaluate needs a labelled --input_file")
    return args


def check_model_dir(model_dir: str) -> None:
    """A folder without a saved model (a checkpoint, a typo) is one line, not a Hub lookup's error; Hub names pass."""
    path = Path(model_dir)
    if path.is_dir() and not (path / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir}: no saved model here (no config.json); pass train.py's --output_dir (or "
                                "its best/), not a checkpoint folder")
    if not path.exists() and looks_like_path(model_dir):
        raise FileNotFoundError(f"{model_dir}: no such directory (relative to {Path.cwd()}); pass train.py's "
                                "--output_dir")


class Inputs(NamedTuple):
    texts: list[str]
    text_pairs: list[str] | None  # a pair model's second texts
    labels: list | None  # with --evaluate: each row's label (a value, a list of labels, or a number)
    positions: list[int]  # each text's position in the input


def read_inputs(args, model_config) -> Inputs:
    """The texts (and pairs), their labels when --evaluate asks for them, and each text's position in the input (its
    line number in a text file or stdin, whose blank lines are skipped with a notice). A model trained on pairs
    (train.py saves its text_pair_column) needs pairs."""
    trained_pair = getattr(model_config, "text_pair_column", None)
    if args.text:
        for flag, texts in (("--text", args.text), ("--text_pair", args.text_pair or [])):
            empty = next((i for i, text in enumerate(texts) if not text.strip()), None)
            if empty is not None:
                raise ValueError(f"{flag} number {empty} (0-based) is empty; give it a text (train.py refuses empty "
                                 "texts too)")
        inputs = Inputs(args.text, args.text_pair, None, list(range(len(args.text))))
    elif args.input_file is None:
        inputs = non_blank_lines(sys.stdin.read(), "stdin")
    else:
        inputs = read_file(args, model_config)
    if trained_pair and inputs.text_pairs is None:
        raise ValueError(f"{args.model_dir} was trained on sentence pairs ({model_config.text_column}, {trained_pair}):"
                         " give each --text a --text_pair, or an --input_file with both columns")
    return inputs


def read_file(args, model_config) -> Inputs:
    path = Path(args.input_file)
    if not path.is_file():
        raise FileNotFoundError(f"--input_file {path}: no such file")
    if path.suffix == ".txt":
        if args.evaluate:
            raise ValueError(f"--input_file {path}: a txt file has no labels; use csv, jsonl or parquet to --evaluate")
        return non_blank_lines(path.read_text(encoding="utf-8"), str(path))
    if path.suffix not in FILE_FORMATS:
        raise ValueError(f"--input_file {path}: unsupported file type; use txt, csv, tsv, jsonl, json or parquet")
    table = read_table(FILE_FORMATS[path.suffix], [path])
    trained = [getattr(model_config, name, None) for name in ("text_column", "text_pair_column", "label_column")]
    trained[2] = [trained[2]] if isinstance(trained[2], str) else trained[2]
    # The columns the model was trained on, where the file has them; a pair only for a model trained on pairs.
    text, pair = (given or (name if name in table.column_names else None)
                  for given, name in zip((args.text_column, args.text_pair_column), trained))
    labels = args.label_column or (trained[2] if set(trained[2] or [None]) <= set(table.column_names) else None)
    columns = find_columns(table, Columns(text, pair, labels), str(path), detect_pairs=bool(trained[1]),
                           labels=args.evaluate)
    texts = [column for column in (columns.text, columns.text_pair) if column]
    check_rows(table, texts, columns.labels, str(path))  # train.py's one line for a row without a text (or label)
    if len(columns.labels) > 1:  # one 0/1 column per label: each row's list of the labels set
        values = label_columns(table, list(columns.labels), str(path))
        labels = [[name for name in columns.labels if values[name][row]] for row in range(len(table))]
    else:
        labels = list(table[columns.labels[0]][:]) if columns.labels else None
    pairs = list(table[columns.text_pair][:]) if columns.text_pair else None
    return Inputs(list(table[columns.text][:]), pairs, labels, list(range(len(table))))


def non_blank_lines(content: str, source: str) -> Inputs:
    """Lines split on \n and \r\n only (str.splitlines also splits on form feeds, U+2028, \x85...: line numbers
    would drift); blank ones skipped with a notice; none left is one line."""
    lines = [line.removesuffix("\r") for line in content.removesuffix("\n").split("\n")] if content else []
    kept = [number for number, line in enumerate(lines) if line.strip()]
    if not kept:
        raise ValueError(f"{source}: no text to classify (empty input); give one text per line, --text or "
                         "--input_file")
    if len(kept) < len(lines):
        blank = [number for number, line in enumerate(lines) if not line.strip()]
        print(f"{source}: skipped {len(blank)} blank line(s) (0-based: {', '.join(map(str, blank[:10]))}"
              f"{', ...' if len(blank) > 10 else ''}); the output keeps the input's line numbers", file=sys.stderr)
    return Inputs([lines[number] for number in kept], None, None, kept)


@torch.no_grad()
def predict(model, tokenizer, texts: list[str], batch_size: int, max_length: int, keep: str = "head",
            head_tokens: int = 128, mixed_precision: str = "no", pad_to_multiple_of: int = 1,
            text_pairs: list[str] | None = None) -> torch.Tensor:
    """The model's scores, one row per text (or pair) in input order: class probabilities (softmax), label
    probabilities (sigmoid) or the number, by its problem_type, as pipeline() gives them. Batches are formed in length
    order and padded as in train.py's evaluation (to their longest row, or to a bucket length)."""
    task = task_for(getattr(model.config, "problem_type", None), getattr(model.config, "threshold", None),
                    model.config.num_labels)
    encoded = Dataset.from_dict(encode(texts, tokenizer, max_length, keep, head_tokens, text_pairs))
    device = next(model.parameters()).device
    collator = padding_collator(tokenizer, pad_to_multiple_of, max_length)
    loader = eval_loader(encoded, batch_size, collator, 0, device)
    scores = torch.empty(len(texts), model.config.num_labels)
    autocast = (torch.autocast(device.type, dtype=AUTOCAST_DTYPES[mixed_precision]) if mixed_precision != "no"
                else contextlib.nullcontext())
    for batch in loader:
        rows = batch.pop("row")  # input positions: they stay on the CPU
        batch = to_device(batch, device)  # pinned, asynchronous copies on CUDA
        with autocast:  # one read per batch: its scores
            scores[rows] = task.scores(model(**batch).logits).cpu()
    return scores


def write_predictions(records: list[dict], output_file: str | None) -> None:
    """One row per text, as JSONL (to stdout without a file) or CSV (a dict becomes a column per key, prob_NAME; a
    list of labels one cell, joined by `;`)."""
    if not (output_file and output_file.endswith(".csv")):
        with open(output_file, "w") if output_file else contextlib.nullcontext(sys.stdout) as handle:  # stdout stays
            handle.writelines(json.dumps(row) + "\n" for row in records)
        return
    rows = []
    for record in records:
        row = {}
        for key, value in record.items():
            if isinstance(value, dict):
                row |= {f"prob_{name}": p for name, p in value.items()}
            else:
                row[key] = ";".join(value) if isinstance(value, list) else value
        rows.append(row)
    with open(output_file, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["index"])
        writer.writeheader()
        writer.writerows(rows)


def main(args) -> None:
    with one_line_errors():
        check_model_dir(args.model_dir)
        # A GPT-2 model not saved by train.py has no pad token.
        tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(args.model_dir), args.model_dir)
        model = AutoModelForSequenceClassification.from_pretrained(args.model_dir).eval()
        task = task_for(model.config.problem_type, args.threshold or getattr(model.config, "threshold", None),
                        model.config.num_labels)
        if args.threshold is not None and task.threshold is None:
            raise ValueError(f"--threshold: {args.model_dir} is a {task.problem_type} model; --threshold applies to "
                             "multi-label models")
        inputs = read_inputs(args, model.config)
        truth = None if inputs.labels is None else task.truth(inputs.labels, model.config.label2id, args.input_file)
        # train.py saves its --max_length as the tokenizer's model_max_length and its truncation choice in the config.
        # above the model's position limit: clamped with a warning, as train.py does
        max_length = (clamped_max_length(args.max_length, position_limit(model.config)) if args.max_length else
                      tokenizer.model_max_length)
        keep = args.truncation_keep or getattr(model.config, "truncation_keep", "head")
        head_tokens = args.head_tokens if args.head_tokens is not None else getattr(model.config, "head_tokens", 128)
        if inputs.text_pairs is None:
            check_head_tokens(keep, head_tokens, max_length, tokenizer)
        else:
            check_pair_room(keep, max_length, tokenizer)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    # train.py's evaluation path: the same defaults per device, buckets when compiling, no cuDNN attention on a GPU.
    compiled, multiple, batch_size = resolve_speed(device, args.torch_compile, args.torch_compile_mode,
                                                   args.pad_to_multiple_of, args.batch_size)
    prefer_fast_attention(device)
    if compiled:
        compile_classifier(model, args.torch_compile_mode, fall_back_to_eager=args.torch_compile is None)
    else:  # train.py's eager path: the 4D attention mask built on the device, no host read in each forward
        prepare_attention_masks(model)
    scores = predict(model, tokenizer, inputs.texts, batch_size, max_length, keep, head_tokens, args.mixed_precision,
                     multiple, inputs.text_pairs)
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if args.output_file or not args.evaluate:
        records = [{"index": position} | task.predict_record(row, names, None if truth is None else truth[i])
                   for i, (position, row) in enumerate(zip(inputs.positions, scores.tolist()))]
        write_predictions(records, args.output_file)
    if truth is not None:
        print(task.format_report(task.evaluate(np.asarray(truth), task.predicted(scores).numpy(), names)))


if __name__ == "__main__":
    main(parse_args())
