"""Load a text-classification dataset as a `train` and an `eval` split with a `text` and a `label` column.

Sources: a Hub name (`stanfordnlp/imdb`), a local directory of parquet/CSV/JSON(L) files named by split, one such file
(its split partner is looked up beside it), or the raw Stanford `aclImdb/` folder. Errors are one line saying what to pass.
"""

import logging
import os
import re
from pathlib import Path

import datasets
from datasets import ClassLabel, Dataset, DatasetDict

from data.truncation import encode

TEXT_COLUMNS = ("text", "sentence", "review", "content")
LABEL_COLUMNS = ("label", "labels", "sentiment")
EVAL_SPLITS = ("test", "validation")  # first found is the eval split
FILE_FORMATS = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "json"}
# How datasets reads each format: TSV is CSV split on tabs, with quotes as plain characters (as GLUE ships it).
READERS = {"parquet": ("parquet", {}), "csv": ("csv", {}), "tsv": ("csv", {"delimiter": "\t", "quoting": 3}),
           "json": ("json", {})}
SPLIT_FILE = re.compile(r"(?P<split>[a-z]+)(-\d+-of-\d+)?")  # train.csv, or a Hub shard train-00000-of-00002.parquet
# Datasets that store integer labels without names, by the dataset's own name (the Hub name's last part, or the folder
# of the files): IMDB's Hub copy calls 0 "neg" and 1 "pos". `data/my_imdb_spam` is not IMDB.
KNOWN_LABEL_NAMES = {"imdb": ["neg", "pos"]}
NO_ROWS = "no rows (only a header?); every split needs labelled texts"
logger = logging.getLogger(__name__)


def load_splits(name: str, text_column: str | None = None, label_column: str | None = None,
                validation_split_percentage: int | None = None, seed: int = 42):
    """Return (DatasetDict with `train` and `eval`, each with columns `text` and `label`; the label names). Data with a
    train split only gets its eval split from `validation_split_percentage` % of the train rows (seeded)."""
    path = Path(name).expanduser()
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
        raw = _load_hub(name)
        origins = {split: f"{name} ({split} split)" for split in raw}
    if validation_split_percentage:
        raw, origins = _hold_out(raw, origins, validation_split_percentage, seed)
    return _normalize(raw, name, origins, text_column, label_column)


def _hold_out(raw: DatasetDict, origins: dict, percentage: int, seed: int) -> tuple[DatasetDict, dict]:
    """An eval split of `percentage` % of the train rows, as the Hugging Face examples make one; only where the data
    has no test or validation split of its own."""
    if any(split in raw for split in ("eval", *EVAL_SPLITS)):
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
    """Token ids truncated to max_length (keeping the head, tail or both ends of long texts) and *not* padded: the
    collator pads each batch to its own longest row."""
    tokenized = split.map(
        lambda rows: encode(rows["text"], tokenizer, max_length, keep, head_tokens),
        batched=True,
        remove_columns=["text"],
        desc="Tokenizing",
    )
    return tokenized.rename_column("label", "labels")


def dataset_id(name: str) -> str:
    """`stanfordnlp/imdb` -> imdb; `../shared/data/imdb` and `../shared/data/imdb/train.parquet` -> imdb."""
    path = Path(name)
    return (path.parent if path.suffix in FILE_FORMATS else path).name.lower()


def looks_like_path(name: str) -> bool:
    # Hub ids are "name" or "owner/name"; anything else that does not exist is a mistyped local path.
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(name).suffix in FILE_FORMATS


def _hub_is_off() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _load_hub(name: str) -> DatasetDict:
    try:
        return datasets.load_dataset(name)
    except (ConnectionError, OSError) as error:
        raise ConnectionError(
            f"--dataset_name {name}: cannot load it from the Hugging Face Hub ({type(error).__name__}); "
            f"check your network, or pass a local directory or file (no path {name} exists in {Path.cwd()})"
        ) from error


def _split_of(file: Path) -> str | None:
    """`train.parquet`, `train-00000-of-00001.parquet` -> "train"; any other name (train_small.csv) -> None."""
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
    for split in EVAL_SPLITS:
        files = [p for p in candidates if _split_of(p) == split]
        if files:
            splits["eval"] = files
            break
    else:
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


def find_column(split: Dataset, given: str | None, candidates: tuple, flag: str, source: str) -> str:
    if given is not None:
        if given not in split.column_names:
            raise ValueError(f"{source}: no column {given!r} ({flag}); columns are {split.column_names}")
        return given
    for name in candidates:
        if name in split.column_names:
            return name
    raise ValueError(f"{source}: none of the columns {split.column_names} is a known {flag[2:]}; pass {flag}")


def check_rows(rows: Dataset, text: str, label: str | None, origin: str) -> None:
    """Every row has a non-blank text and (when labels are used) a label; the first bad row is named."""
    for index, value in enumerate(rows.data.column(text).to_pylist()):
        if not isinstance(value, str) or not value.strip():
            what = "no text" if value is None else f"an empty text {value!r}" if isinstance(value, str) else \
                f"a {type(value).__name__} instead of a text"
            raise ValueError(f"{origin}: row {index} (0-based) has {what} in column {text!r}; fill or remove that row")
    if label is not None:
        missing = rows.data.column(label).is_null().to_pylist()
        if any(missing):
            raise ValueError(f"{origin}: row {missing.index(True)} (0-based) has no label in column {label!r}; "
                             "fill or remove that row")


class Splits(DatasetDict):
    """`train` and `eval`, each with a `text` and a `label` column; `columns` names the source's columns they are."""

    def __init__(self, splits: DatasetDict, columns: dict):
        super().__init__(splits)
        self.columns = columns


def _normalize(raw: DatasetDict, source: str, origins: dict, text_column: str | None, label_column: str | None):
    if "train" not in raw:
        raise ValueError(f"--dataset_name {source}: no train split (splits: {list(raw)})")
    if "eval" not in raw:
        eval_split = next((s for s in EVAL_SPLITS if s in raw), None)
        if eval_split is None:
            raise ValueError(f"--dataset_name {source}: no test or validation split (splits: {list(raw)}); pass "
                             "--validation_split_percentage 10 to hold out 10% of the train rows")
        raw = DatasetDict(train=raw["train"], eval=raw[eval_split])
        origins = origins | {"eval": origins[eval_split]}
    raw = DatasetDict(train=raw["train"], eval=raw["eval"])
    for split, rows in raw.items():
        if len(rows) == 0:
            raise ValueError(f"{origins[split]}: {NO_ROWS}")
    text = find_column(raw["train"], text_column, TEXT_COLUMNS, "--text_column", source)
    label = find_column(raw["train"], label_column, LABEL_COLUMNS, "--label_column", source)
    logger.info(f"text column {text!r}, label column {label!r} (--text_column / --label_column to choose others)")
    for split in raw.values():
        for column in (text, label):
            if column not in split.column_names:
                raise ValueError(f"{source}: the eval split has no column {column!r}; columns are {split.column_names}")
    for split, rows in raw.items():
        check_rows(rows, text, label, origins[split])
    raw = raw.select_columns([text, label])
    if (text, label) != ("text", "label"):
        raw = raw.rename_columns({text: "text", label: "label"})

    splits, names = _label_classes(raw, source, origins)
    return Splits(splits, columns={"text": text, "label": label}), names


def _label_classes(raw: DatasetDict, source: str, origins: dict) -> tuple[DatasetDict, list[str]]:
    """The classes are the label values of the train split, in sorted order, as ids 0..n-1 (as run_glue does): labels
    1/2 train a 2-class model, not a 3-class one with an empty class 0. Names: a ClassLabel's, the strings themselves,
    IMDB's neg/pos, LABEL_i when the values already are 0..n-1, else the values (id2label {0: "1", 1: "2"}). An eval
    label the train split does not have is an error naming its row."""
    feature = raw["train"].features["label"]
    if isinstance(feature, ClassLabel):
        return raw, list(feature.names)
    text_labels = feature.dtype in ("string", "large_string")
    if not text_labels:
        raw = DatasetDict({split: _whole_numbers(rows, origins[split]) for split, rows in raw.items()})
    values = sorted(raw["train"].unique("label"))
    known = set(values)
    eval_labels = raw["eval"].data.column("label").to_pylist()
    unseen = next(((row, value) for row, value in enumerate(eval_labels) if value not in known), None)
    if unseen is not None:
        shown = ", ".join(map(str, values[:20])) + (", ..." if len(values) > 20 else "")
        raise ValueError(f"{origins['eval']}: row {unseen[0]} (0-based) has label {unseen[1]!r}, which no train row "
                         f"has (train labels: {shown}); fix or remove that row")
    if text_labels:
        return raw.cast_column("label", ClassLabel(names=values)), values
    if values == list(range(len(values))):  # already ids
        named = KNOWN_LABEL_NAMES.get(dataset_id(source))
        return raw, named if named and len(named) >= len(values) else [f"LABEL_{i}" for i in values]
    ids = {value: i for i, value in enumerate(values)}
    logger.info(f"labels {', '.join(map(str, values))} are classes 0..{len(values) - 1} in that order (saved as the "
                "model's id2label)")
    return raw.map(lambda rows: {"label": [ids[v] for v in rows["label"]]}, batched=True), [str(v) for v in values]


def _whole_numbers(rows: Dataset, origin: str) -> Dataset:
    """Integer labels; floats too when they are whole (pandas writes 0.0/1.0 once a column held a NaN)."""
    if not rows.features["label"].dtype.startswith("float"):
        return rows
    for index, value in enumerate(rows.data.column("label").to_pylist()):
        if not float(value).is_integer():
            raise ValueError(f"{origin}: row {index} (0-based) has label {value!r}, not a whole number; labels are "
                             "classes: integers or names")
    return rows.cast_column("label", datasets.Value("int64"))


def rename_classes(given: list[str] | None, found: list[str]) -> list[str]:
    """--label_names in place of the names found, one per class in id order."""
    if not given:
        return found
    if len(given) != len(found):
        raise ValueError(f"--label_names gives {len(given)} names ({', '.join(given)}) but the train split has "
                         f"{len(found)} classes ({', '.join(found)}); give one name per class, in this order")
    return list(given)
