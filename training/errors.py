"""Bad input ends a command with one line a user can act on: `error: …` on stderr and exit code 1 (argparse's own
errors keep its exit code 2). train.py and predict.py both use this."""

import contextlib


class RunError(SystemExit):
    """A failure found while running (not a flag): `error: MESSAGE` and exit code 1."""

    def __init__(self, message: str):
        super().__init__(f"error: {message}")


@contextlib.contextmanager
def one_line_errors(debug: bool = False):
    """Bad input (ValueError, OSError) becomes one `error:` line, or stays the full traceback under --debug."""
    try:
        yield
    except (ValueError, OSError) as error:
        if debug:
            raise
        raise RunError(str(error)) from None
