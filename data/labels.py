"""What the label column(s) hold, turned into what the loss takes, for each kind of job (metrics/tasks.py):

- single-label: class ids 0..n-1, the classes being the train split's label values in sorted order (as run_glue does);
- multi-label: a multi-hot row of 0.0/1.0 per label, from a column holding a list of labels per row (ids or names, as
  GoEmotions ships it; an empty list is a row with no label set: all zeros) or from one 0/1 column per label
  (--label_column anger joy fear ...: the columns are the labels);
- regression: the number itself, as float32.

Every split comes in with its label column(s) and leaves with one column `label`. A bad value is one line naming its
file and row, raised before anything is written.
"""

import logging

import datasets
from datasets import ClassLabel, DatasetDict

from metrics.tasks import MULTI_LABEL, REGRESSION, SINGLE_LABEL

# Datasets that store integer labels without names, by the dataset's own name (the Hub name's last part, or the folder
# of the files): IMDB's Hub copy calls 0 "neg" and 1 "pos". `data/my_imdb_spam` is not IMDB.
KNOWN_LABEL_NAMES = {"imdb": ["neg", "pos"]}
logger = logging.getLogger("data.loading")


def encode_labels(raw: DatasetDict, columns: list[str], problem_type: str | None, origins: dict,
                  dataset_id: str) -> tuple[DatasetDict, list[str], str]:
    """(the splits with one `label` column, the label names, the problem type: given, or detected from the data: a
    list per row or several label columns are multi-label, anything else single-label)."""
    listed = len(columns) == 1 and _is_list(raw["train"], columns[0], origins["train"])
    if len(columns) == 1 and _is_list(raw["eval"], columns[0], origins["eval"]) != listed:
        each = "a list of labels" if listed else "one label"
        raise ValueError(f"{origins['eval']}: column {columns[0]!r} does not hold {each} per row as the train split "
                         "does; give both splits the same kind of label")
    if len(columns) > 1 or (problem_type == MULTI_LABEL and not listed):
        if problem_type not in (None, MULTI_LABEL):
            raise ValueError(f"--label_column {' '.join(columns)}: one 0/1 column per label is multi-label data; "
                             f"pass --problem_type {MULTI_LABEL} (or one --label_column for {problem_type})")
        return (*_label_per_column(raw, columns, origins), MULTI_LABEL)
    if listed:
        if problem_type not in (None, MULTI_LABEL):
            raise ValueError(f"{origins['train']}: column {columns[0]!r} holds a list of labels per row, which is "
                             f"multi-label data; pass --problem_type {MULTI_LABEL} or another --label_column")
        return (*_label_lists(raw.rename_column(columns[0], "label"), origins, dataset_id), MULTI_LABEL)
    raw = raw.rename_column(columns[0], "label") if columns[0] != "label" else raw
    if problem_type == REGRESSION:
        return _scores(raw, origins), [columns[0]], REGRESSION
    return (*_label_classes(raw, origins, dataset_id), SINGLE_LABEL)


def _is_list(split, column: str, origin: str) -> bool:
    """A list column (Arrow list type), or a JSON column whose rows are lists; a column mixing lists and single
    values is an error naming the first row that differs."""
    feature = split.features[column]
    if isinstance(feature, (datasets.List, datasets.LargeList)):
        return True
    if type(feature).__name__ != "Json":  # datasets' type for a JSON column whose rows differ in type
        return False
    values = split[column][:]  # decoded: the Arrow column holds each row as JSON text
    kinds = [isinstance(value, list) for value in values]
    if all(kinds) or not any(kinds):
        return kinds[0]
    first = kinds.index(not kinds[0])
    raise ValueError(f"{origin}: row {first} (0-based) has label {values[first]!r} but row 0 has {values[0]!r}; give "
                     f"every row of column {column!r} a list of labels (multi-label) or every row one label")


def _label_lists(raw: DatasetDict, origins: dict, dataset_id: str) -> tuple[DatasetDict, list[str]]:
    """A list of labels per row: the labels are the train split's values (sorted), as for single-label."""
    feature = raw["train"].features["label"].feature
    rows = {split: rows.data.column("label").to_pylist() for split, rows in raw.items()}
    if isinstance(feature, ClassLabel):
        names, values = list(feature.names), list(range(len(feature.names)))
    else:
        found = {value for row in rows["train"] for value in row}
        if len({type(value) for value in found}) > 1 or None in found:
            raise ValueError(f"{origins['train']}: the label lists mix {', '.join(sorted({type(v).__name__ for v in found}))}"
                             " values; give every label as an id or every label as a name")
        values = sorted(found)
        names = _names(values, dataset_id)
    index = {value: i for i, value in enumerate(values)}
    for split, labels in rows.items():
        for row, row_labels in enumerate(labels):
            unknown = [value for value in row_labels if value not in index]
            if unknown:
                raise ValueError(f"{origins[split]}: row {row} (0-based) has label {unknown[0]!r}, which no train row "
                                 f"has (train labels: {_shown(values)}); fix or remove that row")
    encoded = {split: _multi_hot([[index[v] for v in row] for row in labels], len(values))
               for split, labels in rows.items()}
    logger.info(f"multi-label: {len(values)} labels, a list of them per row ({_no_label_rows(encoded['train'])} train "
                "rows have none: all zeros)")
    return DatasetDict({split: _with_labels(raw[split], encoded[split]) for split in raw}), names


def _label_per_column(raw: DatasetDict, columns: list[str], origins: dict) -> tuple[DatasetDict, list[str]]:
    """One 0/1 column per label (bool, integer or whole-float values): the column names are the label names."""
    encoded = {}
    for split, rows in raw.items():
        table = label_columns(rows, columns, origins[split])
        encoded[split] = [[float(table[column][row]) for column in columns] for row in range(len(rows))]
    logger.info(f"multi-label: {len(columns)} labels, one 0/1 column each ({_no_label_rows(encoded['train'])} train "
                "rows have none)")
    return DatasetDict({split: _with_labels(raw[split].remove_columns(columns), encoded[split]) for split in raw}), \
        list(columns)


def label_columns(rows, columns: list[str], origin: str) -> dict[str, list]:
    """One 0/1 column per label (train.py's data, predict.py --evaluate's file): {column: its values}; a value other
    than 0/1 (bool or whole float too) is an error naming its row and column."""
    table = {column: rows.data.column(column).to_pylist() for column in columns}
    for column, values in table.items():
        bad = next((row for row, value in enumerate(values) if value not in (0, 1)), None)
        if bad is not None:
            raise ValueError(f"{origin}: row {bad} (0-based) has {values[bad]!r} in label column {column!r}; each "
                             "label column holds 0 or 1 (multi-label, one column per label)")
    return table


def _scores(raw: DatasetDict, origins: dict) -> DatasetDict:
    """Regression: every label a finite number."""
    for split, rows in raw.items():
        for row, value in enumerate(rows["label"][:]):  # decoded (a JSON column holds text)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or abs(value) == float("inf"):
                raise ValueError(f"{origins[split]}: row {row} (0-based) has label {value!r}, not a number; "
                                 "--problem_type regression needs a number in every row")
    return raw.cast_column("label", datasets.Value("float32"))


def _label_classes(raw: DatasetDict, origins: dict, dataset_id: str) -> tuple[DatasetDict, list[str]]:
    """Single-label: the classes are the label values of the train split, in sorted order, as ids 0..n-1 (as run_glue
    does): labels 1/2 train a 2-class model, not a 3-class one with an empty class 0. Names: a ClassLabel's, the
    strings themselves, IMDB's neg/pos, LABEL_i when the values already are 0..n-1, else the values (id2label {0: "1",
    1: "2"}). An eval label the train split does not have is an error naming its row."""
    feature = raw["train"].features["label"]
    if isinstance(feature, ClassLabel):
        return raw, list(feature.names)
    text_labels = feature.dtype in ("string", "large_string")
    if text_labels:
        listed = next((v for v in raw["train"].data.column("label").to_pylist() if v.startswith("[") and v.endswith("]")),
                      None)
        if listed is not None:
            raise ValueError(f"{origins['train']}: label {listed!r} is a list written as text (CSV and TSV cells hold "
                             "no lists); save the data as JSONL or parquet, or give one 0/1 column per label "
                             "(--label_column NAME ...)")
    else:
        raw = DatasetDict({split: _whole_numbers(rows, origins[split]) for split, rows in raw.items()})
    values = sorted(raw["train"].unique("label"))
    known = set(values)
    eval_labels = raw["eval"].data.column("label").to_pylist()
    unseen = next(((row, value) for row, value in enumerate(eval_labels) if value not in known), None)
    if unseen is not None:
        raise ValueError(f"{origins['eval']}: row {unseen[0]} (0-based) has label {unseen[1]!r}, which no train row "
                         f"has (train labels: {_shown(values)}); fix or remove that row")
    if text_labels:
        return raw.cast_column("label", ClassLabel(names=values)), values
    names = _names(values, dataset_id)
    if values != list(range(len(values))):
        ids = {value: i for i, value in enumerate(values)}
        logger.info(f"labels {', '.join(map(str, values))} are classes 0..{len(values) - 1} in that order (saved as the "
                    "model's id2label)")
        raw = raw.map(lambda rows: {"label": [ids[v] for v in rows["label"]]}, batched=True)
    return raw, names


def _names(values: list, dataset_id: str) -> list[str]:
    """Names for sorted label values: strings are their own; ids 0..n-1 are LABEL_i (or a known dataset's names);
    other numbers are named by their value."""
    if values == list(range(len(values))):
        named = KNOWN_LABEL_NAMES.get(dataset_id)
        return named if named and len(named) >= len(values) else [f"LABEL_{i}" for i in values]
    return [str(value) for value in values]


def _whole_numbers(rows, origin: str):
    """Integer labels; booleans as 0/1; floats too when they are whole (pandas writes 0.0/1.0 once a column held a
    NaN)."""
    dtype = rows.features["label"].dtype
    if dtype == "bool":
        return rows.cast_column("label", datasets.Value("int64"))
    if not dtype.startswith("float"):
        return rows
    for index, value in enumerate(rows.data.column("label").to_pylist()):
        if not float(value).is_integer():
            raise ValueError(f"{origin}: row {index} (0-based) has label {value!r}, not a whole number; labels are "
                             f"classes (integers or names): for scores pass --problem_type {REGRESSION}")
    return rows.cast_column("label", datasets.Value("int64"))


def _multi_hot(rows: list[list[int]], size: int) -> list[list[float]]:
    encoded = []
    for ids in rows:
        row = [0.0] * size
        for i in ids:
            row[i] = 1.0
        encoded.append(row)
    return encoded


def _with_labels(rows, labels: list[list[float]]):
    """The split with its multi-hot rows as the `label` column (float32: what the loss takes)."""
    rows = rows.remove_columns("label") if "label" in rows.column_names else rows
    return rows.add_column("label", labels, feature=datasets.List(datasets.Value("float32")))


def _no_label_rows(multi_hot: list[list[float]]) -> int:
    return sum(not any(row) for row in multi_hot)


def _shown(values: list) -> str:
    return ", ".join(map(str, values[:20])) + (", ..." if len(values) > 20 else "")


def rename_classes(given: list[str] | None, found: list[str]) -> list[str]:
    """--label_names in place of the names found, one per class (or label) in id order."""
    if not given:
        return found
    if len(given) != len(found):
        raise ValueError(f"--label_names gives {len(given)} names ({', '.join(given)}) but the train split has "
                         f"{len(found)} classes ({', '.join(found)}); give one name per class, in this order")
    return list(given)
