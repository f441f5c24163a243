"""Load a text-classification dataset as a `train` and an `eval` split with a `text` column (and `text_pair` for
sentence pairs) and a `label` column (data/labels.py: class ids, multi-hot rows or numbers).

Sources: a Hub name (`stanfordnlp/imdb`; `nyu-mll/glue` with a configuration), a local directory of parquet/CSV/JSON(L)
files named by split (in a configuration's subfolder for a local copy of such a dataset), one such file (its split
partner is looked up beside it), or the raw Stanford `aclImdb/` folder. Errors are one line saying what to pass.
"""

import hashlib
import logging
import os
import re
from pathlib import Path
from typing import NamedTuple

import datasets
from datasets import ClassLabel, Dataset, DatasetDict

from data import truncation
from data.labels import encode_labels
from data.truncation import encode

TEXT_COLUMNS = ("text", "sentence", "review", "content")
LABEL_COLUMNS = ("label", "labels", "sentiment")
EVAL_SPLITS = ("test", "validation")  # the first found with labels is the eval split
FILE_FORMATS = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "json"}
# How datasets reads each format: TSV is CSV split on tabs, with quotes as plain characters (as GLUE ships it).
READERS = {"parquet": ("parquet", {}), "csv": ("csv", {}), "tsv": ("csv", {"delimiter": "\t", "quoting": 3}),
           "json": ("json", {})}
# train.csv, a Hub shard train-00000-of-00002.parquet, MNLI's validation_matched.parquet
SPLIT_FILE = re.compile(r"(?P<split>[a-z]+(_[a-z]+)?)(-\d+-of-\d+)?")
NO_ROWS = "no rows (only a header?); every split needs labelled texts"
logger = logging.getLogger(__name__)


def load_splits(name: str, text_column: str | None = None, label_columns: tuple[str, ...] | None = None,
                validation_split_percentage: int | None = None, seed: int = 42, text_pair_column: str | None = None,
                config_name: str | None = None, problem_type: str | None = None):
    """Return (Splits: `train` and `eval`, each with columns `text`, `text_pair` for sentence pairs, and `label`; the
    label names). Data with a train split only gets its eval split from `validation_split_percentage` % of the train
    rows (seeded). `config_name`: the Hub dataset's configuration (GLUE's mrpc), or a local folder's subfolder."""
    path = Path(name).expanduser()
    if config_name and path.is_dir():  # a local copy of a Hub dataset with configurations: one folder each
        if not (path / config_name).is_dir():
            found = sorted(p.name for p in path.iterdir() if p.is_dir())
            raise FileNotFoundError(f"--dataset_config_name {config_name}: no folder {path / config_name} (folders: "
                                    f"{', '.join(found) or 'none'})")
        path = path / config_name
    if path.is_dir() and _aclimdb_root(path) is not None:
        root = _aclimdb_root(path)
        raw, origins = _load_aclimdb(root), {"train": f"{root}/train", "eval": f"{root}/test"}
    elif path.exists():
        raw, origins = _load_files(path, need_eval=not validation_split_percentage)
    elif looks_like_path(name) or _hub_is_off():
        where = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
        hub = "" if looks_like_path(name) else ("; the Hub is off (HF_HUB_OFFLINE), so it was not looked up there: "
                                                  "pass a local directory or file, or go online")
        raise FileNotFoundError(f"--dataset_name {name}: no such file or directory{where}{hub}")
    else:
        raw = _load_hub(name, config_name)
        origins = {split: f"{name} ({split} split)" for split in raw}
    if validation_split_percentage:
        raw, origins = _hold_out(raw, origins, validation_split_percentage, seed)
    return _normalize(raw, name, origins, Columns(text_column, text_pair_column, label_columns), problem_type)


def _hold_out(raw: DatasetDict, origins: dict, percentage: int, seed: int) -> tuple[DatasetDict, dict]:
    """An eval split of `percentage` % of the train rows, as the Hugging Face examples make one; only where the data
    has no test or validation split of its own."""
    if "eval" in raw or eval_splits(raw):
        logger.info(f"--validation_split_percentage {percentage} not used: the data has its own eval split")
        return raw, origins
    parts = raw["train"].train_test_split(test_size=percentage / 100, seed=seed)
    logger.info(f"eval split: {len(parts['test']):,} rows ({percentage}%) held out of the {len(raw['train']):,} train "
                f"rows (seed {seed}); training on the other {len(parts['train']):,}")
    held_out = f"{origins['train']} (the {percentage}% held out)"
    return DatasetDict(train=parts["train"], eval=parts["test"]), origins | {"eval": held_out}


def select_subset(split: Dataset, num_rows: int, seed: int) -> Dataset:
    """The recipe's subset: `shuffle(seed).select(range(num_rows))`; num_rows <= 0 keeps the whole split."""
    if num_rows <= 0 or num_rows >= len(split):
        return split
    return split.shuffle(seed=seed).select(range(num_rows))


def tokenize(split: Dataset, tokenizer, max_length: int, keep: str = "head", head_tokens: int = 128) -> Dataset:
    """Token ids truncated to max_length (keeping the head, tail or both ends of long texts; pairs longest first) and
    *not* padded: the collator pads each batch to its own longest row."""
    texts = [column for column in ("text", "text_pair") if column in split.column_names]
    tokenized = split.map(
        lambda rows: encode(rows["text"], tokenizer, max_length, keep, head_tokens, rows.get("text_pair")),
        batched=True,
        remove_columns=texts,
        desc="Tokenizing",
        new_fingerprint=tokenized_fingerprint(split, tokenizer, max_length, keep, head_tokens),
    )
    return tokenized.rename_column("label", "labels")


def tokenized_fingerprint(split: Dataset, tokenizer, *settings) -> str | None:
    """datasets' cache key for the tokenized rows (what the other processes read after the main one): the rows, the
    tokenizer as serialized (vocabulary, templates; not its truncation and padding state, which each call changes),
    its Python-side settings, ours, and this code. By default datasets pickles the tokenizer object to hash it: GPT-2's
    keeps a Python copy of its 50k vocabulary, ~1 s a call in a long test process. The serialized form is hashed as a
    string, not parsed: parsing and re-sorting a vocabulary cost 0.1-0.3 s a call. None (datasets' own hashing) for a
    tokenizer without a serialized form."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    serialized = backend.to_str()
    # tokenizers writes version, truncation, padding, then added_tokens and the rest: skip to added_tokens (if that
    # order ever changed, the key would change with each call's truncation: cache misses, never a wrong hit).
    serialized = serialized[max(serialized.find('"added_tokens":'), 0):]
    python_side = (type(tokenizer).__name__, tokenizer.truncation_side, tokenizer.padding_side,
                   tokenizer.model_input_names, tokenizer.special_tokens_map, settings)
    digest = hashlib.sha256(split._fingerprint.encode())
    for part in (serialized, repr(python_side), Path(truncation.__file__).read_text(),
                 Path(__file__).read_text()):
        digest.update(part.encode())
    return digest.hexdigest()[:32]


def dataset_id(name: str) -> str:
    """`stanfordnlp/imdb` -> imdb; `../shared/data/imdb` and `../shared/data/imdb/train.parquet` -> imdb."""
    path = Path(name)
    return (path.parent if path.suffix in FILE_FORMATS else path).name.lower()


def looks_like_path(name: str) -> bool:
    # Hub ids are "name" or "owner/name"; anything else that does not exist is a mistyped local path.
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(name).suffix in FILE_FORMATS


def _hub_is_off() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _load_hub(name: str, config_name: str | None) -> DatasetDict:
    try:
        return datasets.load_dataset(name, config_name)
    except ValueError as error:  # a dataset with configurations, loaded without one (or with a wrong one)
        if "config" not in str(error).lower():
            raise
        raise ValueError(f"--dataset_name {name}: {str(error).splitlines()[0]} (pass --dataset_config_name)") from None
    except (ConnectionError, OSError) as error:
        raise ConnectionError(
            f"--dataset_name {name}: cannot load it from the Hugging Face Hub ({type(error).__name__}); "
            f"check your network, or pass a local directory or file (no path {name} exists in {Path.cwd()})"
        ) from error


def _split_of(file: Path) -> str | None:
    """`train.parquet`, `train-00000-of-00001.parquet` -> "train", `validation_matched.parquet` ->
    "validation_matched"; any other name -> None."""
    match = SPLIT_FILE.fullmatch(file.name[: -len(file.suffix)].lower())
    return match["split"] if match else None


def _load_files(path: Path, need_eval: bool = True) -> tuple[DatasetDict, dict]:
    """The split files: exactly `SPLIT.EXT` (or the Hub's shards of it), one folder per split; other files are left
    out, and said so. A single file is the train split; its test or validation partner is found beside it."""
    if path.is_file():
        if path.suffix not in FILE_FORMATS:
            raise ValueError(f"--dataset_name {path}: unsupported file type; use parquet, csv, tsv, json or jsonl")
        candidates = [p for p in path.parent.iterdir() if p.suffix == path.suffix and p != path]
        splits = {"train": [path]}
    else:
        candidates = sorted(p for p in path.rglob("*") if p.suffix in FILE_FORMATS)
        splits = {"train": [p for p in candidates if _split_of(p) == "train"]}
        if not splits["train"]:
            raise FileNotFoundError(
                f"--dataset_name {path}: no train file found; expected train.parquet, train.csv, train.tsv or "
                "train.jsonl (or the aclImdb/ folder)"
            )
    for split in eval_splits({_split_of(p) for p in candidates} - {None}):  # a test split may hide its labels (GLUE)
        splits[split] = [p for p in candidates if _split_of(p) == split]
    if len(splits) == 1:
        if need_eval:
            raise FileNotFoundError(
                f"--dataset_name {path}: no test or validation split found beside the train data; add a "
                f"test{splits['train'][0].suffix} or validation{splits['train'][0].suffix} file, or pass "
                "--validation_split_percentage 10 to hold out 10% of the train rows"
            )
    for split, files in splits.items():
        if len({f.parent for f in files}) > 1:
            raise ValueError(f"--dataset_name {path}: {len(files)} files for the {split} split in different folders "
                             f"({', '.join(map(str, files))}); point --dataset_name at one of the folders")
    formats = {FILE_FORMATS[f.suffix] for files in splits.values() for f in files}
    if len(formats) > 1:
        raise ValueError(f"--dataset_name {path}: mixed file types {sorted(formats)}; keep one format per dataset")
    used = {f for files in splits.values() for f in files}
    if path.is_dir() and len(used) < len(candidates):
        left_out = [str(p.relative_to(path)) for p in candidates if p not in used]
        logger.info(f"Left out of {path}: {', '.join(left_out)} (not a train/test/validation split file)")
    for split, files in splits.items():
        logger.info(f"{split} split: {', '.join(map(str, files))}")
    fmt = formats.pop()
    # One load per split: splits may differ in extra columns, which one multi-split load refuses.
    origins = {split: ", ".join(map(str, files)) for split, files in splits.items()}
    return DatasetDict({split: read_table(fmt, files) for split, files in splits.items()}), origins


def read_table(fmt: str, files: list[Path]) -> Dataset:
    builder, options = READERS[fmt]
    try:
        return datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train", **options)
    except ValueError as error:
        if "corresponds to no data" not in str(error):  # what datasets says of a file with a header and no rows
            raise
        raise ValueError(f"{', '.join(map(str, files))}: {NO_ROWS}") from None
    except datasets.exceptions.DatasetGenerationError as error:
        cause = str(error.__cause__ or error).strip().splitlines()[-1]
        advice = "re-save it as UTF-8" if "codec can't decode" in cause else f"check that it is valid {fmt}"
        raise ValueError(f"{', '.join(map(str, files))}: cannot read it as {fmt} ({cause}); {advice}") from error


def _aclimdb_root(path: Path) -> Path | None:
    for root in (path, path / "aclImdb"):
        if all((root / split / label).is_dir() for split in ("train", "test") for label in ("pos", "neg")):
            return root
    return None


def _load_aclimdb(root: Path) -> DatasetDict:
    """The Stanford folder: {train,test}/{neg,pos}/ID_RATING.txt, one review per file (neg = 0, pos = 1)."""
    if (root / "train" / "unsup").is_dir():
        logger.info(f"Left out {root / 'train' / 'unsup'} (unlabelled reviews)")
    splits = {}
    for split, name in (("train", "train"), ("test", "eval")):
        texts, labels = [], []
        for label, sentiment in enumerate(("neg", "pos")):
            files = sorted((root / split / sentiment).glob("*.txt"), key=lambda f: int(f.stem.split("_")[0]))
            for file in files:
                try:
                    texts.append(file.read_text(encoding="utf-8"))
                except UnicodeDecodeError as error:
                    raise ValueError(f"{file}: not valid UTF-8 (byte {error.start}); fix or remove the file") from None
                labels.append(label)
        features = datasets.Features({"text": datasets.Value("string"), "label": ClassLabel(names=["neg", "pos"])})
        splits[name] = Dataset.from_dict({"text": texts, "label": labels}, features=features)
    return DatasetDict(splits)


# Sentence-pair columns detected when --text_column is not given (GLUE, SNLI/MNLI, QQP, SICK, QNLI, ...): the first
# pair present is the text and the text pair, tokenized together as the tokenizer's pair template puts them.
KNOWN_PAIRS = (("sentence1", "sentence2"), ("question1", "question2"), ("premise", "hypothesis"),
               ("question", "sentence"), ("sentence_A", "sentence_B"), ("sentence_a", "sentence_b"),
               ("text", "text_pair"), ("query", "passage"), ("question", "passage"))


class Columns(NamedTuple):
    """The source's columns: the text, the second text of a pair (or None), the label column(s)."""

    text: str | None
    text_pair: str | None
    labels: tuple[str, ...] | None


def find_column(split: Dataset, given: str | None, candidates: tuple, flag: str, source: str) -> str:
    if given is not None:
        if given not in split.column_names:
            raise ValueError(f"{source}: no column {given!r} ({flag}); columns are {split.column_names}")
        return given
    for name in candidates:
        if name in split.column_names:
            return name
    raise ValueError(f"{source}: none of the columns {split.column_names} is a known {flag[2:]}; pass {flag}")


def find_columns(split: Dataset, given: Columns, source: str, detect_pairs: bool = True,
                 labels: bool = True) -> Columns:
    """The given columns (each checked), or the detected ones: a known pair of text columns (with `detect_pairs`)
    before a single one; no label columns without `labels`."""
    pair = next((p for p in KNOWN_PAIRS if set(p) <= set(split.column_names)), None) if detect_pairs else None
    if given.text is None and given.text_pair is None and pair is not None:
        text, text_pair = pair
    else:
        text = find_column(split, given.text, TEXT_COLUMNS, "--text_column", source)
        text_pair = given.text_pair and find_column(split, given.text_pair, (), "--text_pair_column", source)
    if not labels:
        return Columns(text, text_pair, ())
    label_columns = [find_column(split, label, (), "--label_column", source) for label in given.labels or []] or [
        find_column(split, None, LABEL_COLUMNS, "--label_column", source)]
    return Columns(text, text_pair, tuple(label_columns))


def check_rows(rows: Dataset, texts: list[str], labels: list[str], origin: str) -> None:
    """Every row has a non-blank text in each text column and (when labels are used) a label in each label column;
    the first bad row is named."""
    for text in texts:
        for index, value in enumerate(rows.data.column(text).to_pylist()):
            if not isinstance(value, str) or not value.strip():
                what = "no text" if value is None else f"an empty text {value!r}" if isinstance(value, str) else \
                    f"a {type(value).__name__} instead of a text"
                raise ValueError(f"{origin}: row {index} (0-based) has {what} in column {text!r}; fill or remove that "
                                 "row")
    for label in labels:
        missing = rows.data.column(label).is_null().to_pylist()
        if any(missing):
            raise ValueError(f"{origin}: row {missing.index(True)} (0-based) has no label in column {label!r}; "
                             "fill or remove that row")


class Splits(DatasetDict):
    """`train` and `eval`, each with `text`, `text_pair` (pairs only) and `label` columns; `columns` names the source's
    columns they are (text, text_pair, label: one name, or a list of them), `problem_type` the kind of job."""

    def __init__(self, splits: DatasetDict, columns: dict, problem_type: str):
        super().__init__(splits)
        self.columns, self.problem_type = columns, problem_type


def _normalize(raw: DatasetDict, source: str, origins: dict, given: Columns, problem_type: str | None):
    if "train" not in raw:
        raise ValueError(f"--dataset_name {source}: no train split (splits: {list(raw)})")
    columns = find_columns(raw["train"], given, source)
    if "eval" not in raw:
        eval_split = _labelled_eval_split(raw, columns.labels, source)
        raw = DatasetDict(train=raw["train"], eval=raw[eval_split])
        origins = origins | {"eval": origins[eval_split]}
    raw = DatasetDict(train=raw["train"], eval=raw["eval"])
    for split, rows in raw.items():
        if len(rows) == 0:
            raise ValueError(f"{origins[split]}: {NO_ROWS}")
    texts = [column for column in (columns.text, columns.text_pair) if column]
    pair = f", text pair column {columns.text_pair!r}" if columns.text_pair else ""
    logger.info(f"text column {columns.text!r}{pair}, label column {', '.join(map(repr, columns.labels))} "
                "(--text_column / --text_pair_column / --label_column to choose others)")
    for split in raw.values():
        for column in (*texts, *columns.labels):
            if column not in split.column_names:
                raise ValueError(f"{source}: the eval split has no column {column!r}; columns are {split.column_names}")
    for split, rows in raw.items():
        check_rows(rows, texts, columns.labels, origins[split])
    raw = raw.select_columns([*texts, *columns.labels])
    raw = raw.rename_columns({old: new for old, new in zip(texts, ("text", "text_pair")) if old != new})
    raw, names, problem_type = encode_labels(raw, list(columns.labels), problem_type, origins, dataset_id(source))
    label = columns.labels[0] if len(columns.labels) == 1 else list(columns.labels)
    return Splits(raw, {"text": columns.text, "text_pair": columns.text_pair, "label": label}, problem_type), names


def eval_splits(names) -> list[str]:
    """The splits that can be the eval split, in the order they are tried: test, then validation; where neither
    exists, their variants (MNLI's test_matched, ..., validation_matched, validation_mismatched)."""
    exact = [split for split in EVAL_SPLITS if split in names]
    return exact or sorted((n for n in names if n.startswith(tuple(f"{s}_" for s in EVAL_SPLITS))),
                           key=lambda n: (not n.startswith("test"), n))


def _labelled_eval_split(raw: DatasetDict, labels: tuple[str, ...], source: str) -> str:
    """The first of test/validation whose labels are known: GLUE's test splits hide theirs (every label -1)."""
    found = eval_splits(raw)
    if not found:
        raise ValueError(f"--dataset_name {source}: no test or validation split (splits: {list(raw)}); pass "
                         "--validation_split_percentage 10 to hold out 10% of the train rows")
    for split in found:
        values = raw[split].data.column(labels[0]).to_pylist() if labels[0] in raw[split].column_names else [None]
        if not all(value in (-1, None) for value in values):
            if len(found) > 1:
                logger.info(f"evaluating on the {split} split ({', '.join(s for s in found if s != split)} left out)")
            return split
        logger.info(f"the {split} split has no labels (all -1 or empty): not evaluated on")
    return found[-1]
