"""What train.py and predict.py share on the command line: the parser (no abbreviations, defaults in --help, a bad
flag is one line), a flag's declaration (its default, help, range and whether a resume must repeat it), and one-line
errors for bad input found while running. Nothing here loads a model or touches a device."""

import argparse
import contextlib
import dataclasses
import math

# Whether a resumed run must be given a flag's value again: REPEAT for everything that decides which rows are trained
# on, in which batches, with which update (a different value would start another run from the middle); MAY_CHANGE for
# where outputs go, how often they are written, and how fast the same computation runs.
REPEAT, MAY_CHANGE = "repeat", "may change"


@dataclasses.dataclass(frozen=True)
class Range:
    """A numeric flag's valid values: low <= value (or low < value), value <= high (or < high), finite."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    words: str = ""  # how the error says it ("positive"); default: the interval

    def error(self, value) -> str | None:
        """None if the value is in range, else what is wrong (NaN and infinities never are)."""
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        if above and below and math.isfinite(value):
            return None
        return f"must be {self}{'' if math.isfinite(value) else ' and finite'}, got {value}"

    def __str__(self) -> str:
        if self.words:
            return self.words
        low, high = (f"{bound:g}" if isinstance(bound, float) else str(bound) for bound in (self.low, self.high))
        if self.high == math.inf:
            return f"{'>' if self.low_open else '>='} {low}"
        return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"


POSITIVE = Range(0, low_open=True, words="positive")
AT_LEAST_ONE = Range(1, words="positive")  # integers
NON_NEGATIVE = Range(0)
SEED = Range(0, 2**32 - 1)  # what numpy's and datasets' seeding accept


def flag(default, help: str = "", *, group: str | None, resume: str, choices=None, valid: Range | None = None,
         check=None):
    """A dataclass field that is also a command-line flag `--NAME`: its default, its help (in --help's `group`; None:
    at the top), whether a resume must repeat it (REPEAT or MAY_CHANGE: every flag says), its choices or numeric
    range, and an optional `check(value) -> error or None` for anything else. Checked before anything is loaded."""
    if resume not in (REPEAT, MAY_CHANGE):
        raise ValueError(f"resume must be REPEAT or MAY_CHANGE, got {resume!r}")
    return dataclasses.field(default=default, metadata={"help": help, "group": group, "choices": choices,
                                                        "resume": resume, "valid": valid, "check": check})


def flag_errors(config_class, values: dict) -> list[str]:
    """`--NAME must be ..., got V` for every value outside its flag's range; `--NAME V: PROBLEM` for every value its
    flag's check refuses."""
    errors = []
    for field in dataclasses.fields(config_class):
        value, valid, check = values[field.name], field.metadata["valid"], field.metadata["check"]
        if value is None or isinstance(value, bool):
            continue
        if valid is not None and isinstance(value, (int, float)) and (problem := valid.error(value)):
            errors.append(f"--{field.name} {problem}")
        elif check is not None and (problem := check(value)):
            errors.append(f"--{field.name} {value}: {problem}")
    return errors


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and every flag's default in --help."""


class Parser(argparse.ArgumentParser):
    """No abbreviations (`--learning_rat` is an error, not --learning_rate); a bad flag is one line on stderr, with
    argparse's exit code 2, instead of the whole usage."""

    def __init__(self, **kwargs):
        super().__init__(allow_abbrev=False, formatter_class=HelpFormatter, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (python {self.prog} --help lists the flags)\n")


class RunError(SystemExit):
    """A failure found while running (not a flag): `error: MESSAGE` and exit code 1."""

    def __init__(self, message: str):
        super().__init__(f"error: {message}")


@contextlib.contextmanager
def one_line_errors(debug: bool = False):
    """Bad input (ValueError, OSError) becomes one `error:` line and exit code 1, or stays the full traceback under
    --debug."""
    try:
        yield
    except (ValueError, OSError) as error:
        if debug:
            raise
        raise RunError(str(error)) from None
