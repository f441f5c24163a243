"""Classify texts with a model saved by train.py (or any sequence-classification model directory).

    python predict.py result --text "A wonderful film." --text "Dull and far too long."
    python predict.py result --input_file reviews.csv --output_file predictions.jsonl
    cat reviews.txt | python predict.py result --output_file predictions.csv
    python predict.py result --input_file ../shared/data/imdb/test.parquet --evaluate

Input: --text (repeatable), --input_file (txt: one text per line; csv/jsonl/json/parquet: a text column), or stdin
lines. Output, in input order: label, score and the probability of every class, as JSONL (default, to stdout) or CSV.
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

import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from data import (
    FILE_FORMATS,
    KEEP_CHOICES,
    LABEL_COLUMNS,
    TEXT_COLUMNS,
    check_head_tokens,
    check_rows,
    encode,
    eval_loader,
    find_column,
    looks_like_path,
    padding_collator,
    read_table,
    to_device,
)
from metrics import classification_metrics, format_report
from model import (AUTOCAST_DTYPES, BUCKET_MULTIPLE, COMPILE_MODES, compile_classifier, pad_with_eos,
                   prefer_fast_attention, prepare_attention_masks, resolve_speed)
from training.cli import AT_LEAST_ONE, NON_NEGATIVE, Parser, one_line_errors


def parse_args(argv=None):
    parser = Parser(prog="predict.py", description=__doc__)  # train.py's: no abbreviations, defaults in --help, one-line errors
    parser.add_argument("model_dir", help="a directory written by train.py (output_dir or output_dir/best)")
    parser.add_argument("--text", action="append", help="a text to classify; repeat for more")
    parser.add_argument("--input_file", help="txt (one text per line), csv, jsonl, json or parquet")
    parser.add_argument("--text_column", default=None, help="default: the first of " + ", ".join(TEXT_COLUMNS))
    parser.add_argument("--label_column", default=None, help="with --evaluate; default: the first of "
                        + ", ".join(LABEL_COLUMNS))
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
    parser.add_argument("--evaluate", action="store_true", help="the input has labels: print the four metrics")
    args = parser.parse_args(argv)
    if args.text and args.input_file:
        parser.error("give --text or --input_file, not both")
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


def read_inputs(args) -> tuple[list[str], list | None, list[int]]:
    """The texts, their labels when --evaluate asks for them, and each text's position in the input (its line number
    in a text file or stdin, whose blank lines are skipped with a notice)."""
    if args.text:
        return args.text, None, list(range(len(args.text)))
    if args.input_file is None:
        return non_blank_lines(sys.stdin.read(), "stdin")
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
    text = find_column(table, args.text_column, TEXT_COLUMNS, "--text_column", str(path))
    label = find_column(table, args.label_column, LABEL_COLUMNS, "--label_column", str(path)) if args.evaluate else None
    check_rows(table, text, label, str(path))  # train.py's one line for a row without a text (or label)
    return list(table[text][:]), list(table[label][:]) if label else None, list(range(len(table)))


def non_blank_lines(content: str, source: str) -> tuple[list[str], None, list[int]]:
    lines = content.splitlines()
    kept = [number for number, line in enumerate(lines) if line.strip()]
    if len(kept) < len(lines):
        blank = [number for number, line in enumerate(lines) if not line.strip()]
        print(f"{source}: skipped {len(blank)} blank line(s) (0-based: {', '.join(map(str, blank[:10]))}"
              f"{', ...' if len(blank) > 10 else ''}); the output keeps the input's line numbers", file=sys.stderr)
    return [lines[number] for number in kept], None, kept


@torch.no_grad()
def predict(model, tokenizer, texts: list[str], batch_size: int, max_length: int, keep: str = "head",
            head_tokens: int = 128, mixed_precision: str = "no", pad_to_multiple_of: int = 1) -> torch.Tensor:
    """Class probabilities, one row per text in input order; batches are formed in length order and padded as in
    train.py's evaluation (to their longest row, or to a bucket length)."""
    encoded = Dataset.from_dict(encode(texts, tokenizer, max_length, keep, head_tokens))
    device = next(model.parameters()).device
    collator = padding_collator(tokenizer, pad_to_multiple_of, max_length)
    loader = eval_loader(encoded, batch_size, collator, 0, device)
    probabilities = torch.empty(len(texts), model.config.num_labels)
    autocast = (torch.autocast(device.type, dtype=AUTOCAST_DTYPES[mixed_precision]) if mixed_precision != "no"
                else contextlib.nullcontext())
    for batch in loader:
        rows = batch.pop("row")  # input positions: they stay on the CPU
        batch = to_device(batch, device)  # pinned, asynchronous copies on CUDA
        with autocast:  # one read per batch: its probabilities
            probabilities[rows] = model(**batch).logits.float().softmax(dim=-1).cpu()
    return probabilities


def label_ids(labels: list, label2id: dict, source: str) -> list[int]:
    """Labels given as ids (0..num_labels-1) or as the model's label names. A model whose classes are integer values
    (trained on labels 1/2, say: id2label {0: "1", 1: "2"}) takes the values themselves."""
    by_value = all(name.lstrip("-").isdigit() for name in label2id)
    ids = []
    for row, label in enumerate(labels):
        if label is None:
            raise ValueError(f"{source}: row {row} (0-based) has no label; fill or remove that row")
        if isinstance(label, float) and label.is_integer():  # 0.0/1.0, as pandas writes a column that held a NaN
            label = int(label)
        if isinstance(label, int) and not by_value:
            if not 0 <= label < len(label2id):
                raise ValueError(f"{source}: row {row} (0-based) has label {label}, outside the model's "
                                 f"0..{len(label2id) - 1} ({', '.join(label2id)})")
            ids.append(label)
        elif str(label) in label2id:
            ids.append(label2id[str(label)])
        else:
            raise ValueError(f"{source}: row {row} (0-based) has label {label!r}, not one of the model's "
                             f"{sorted(label2id)}")
    return ids


def write_predictions(probabilities: torch.Tensor, id2label: dict, output_file: str | None,
                      true_labels: list[int] | None = None, positions: list[int] | None = None) -> None:
    """One row per text: index (its position in the input), label, score, per-class probabilities, and the true label
    when evaluating."""
    names = [id2label[i] for i in range(probabilities.shape[1])]
    rows = []
    for index, probs in enumerate(probabilities.tolist()):
        best = max(range(len(probs)), key=probs.__getitem__)
        rows.append({"index": positions[index] if positions else index, "label": names[best], "score": probs[best],
                     "probabilities": dict(zip(names, probs))})
        if true_labels is not None:
            rows[-1]["true_label"] = names[true_labels[index]]
    if output_file and output_file.endswith(".csv"):
        with open(output_file, "w", newline="") as handle:
            writer = csv.writer(handle)
            truth = ["true_label"] if true_labels is not None else []
            writer.writerow(["index", "label", "score", *[f"prob_{name}" for name in names], *truth])
            for row in rows:
                writer.writerow([row["index"], row["label"], row["score"], *row["probabilities"].values(),
                                 *([row["true_label"]] if truth else [])])
        return
    with open(output_file, "w") if output_file else contextlib.nullcontext(sys.stdout) as handle:  # stdout stays open
        handle.writelines(json.dumps(row) + "\n" for row in rows)


def main(args) -> None:
    with one_line_errors():
        check_model_dir(args.model_dir)
        texts, labels, positions = read_inputs(args)
        # A GPT-2 model not saved by train.py has no pad token.
        tokenizer = pad_with_eos(AutoTokenizer.from_pretrained(args.model_dir), args.model_dir)
        model = AutoModelForSequenceClassification.from_pretrained(args.model_dir).eval()
        if labels is not None:
            labels = label_ids(labels, model.config.label2id, args.input_file)
        # train.py saves its --max_length as the tokenizer's model_max_length and its truncation choice in the config.
        max_length = args.max_length or tokenizer.model_max_length
        keep = args.truncation_keep or getattr(model.config, "truncation_keep", "head")
        head_tokens = args.head_tokens if args.head_tokens is not None else getattr(model.config, "head_tokens", 128)
        check_head_tokens(keep, head_tokens, max_length, tokenizer)
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
    probabilities = predict(model, tokenizer, texts, batch_size, max_length, keep, head_tokens, args.mixed_precision,
                            multiple)
    if args.output_file or not args.evaluate:
        write_predictions(probabilities, model.config.id2label, args.output_file, labels, positions)
    if labels is not None:
        names = [model.config.id2label[i] for i in range(model.config.num_labels)]
        print(format_report(classification_metrics(labels, probabilities.argmax(-1).numpy(), names)))


if __name__ == "__main__":
    main(parse_args())
