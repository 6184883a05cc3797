"""Exceptions raised for bad input, and the error-or-skip collector.

Every error a user can cause with their data or configuration is raised as
:class:`InputError`, whose message names the offending file (or config key)
and what is wrong with it.  The command line and the workflow's rules turn it into a
one-line message without a traceback and exit status :data:`EXIT_BAD_INPUT`.
"""

from __future__ import annotations

import logging
import os

import pandas as pd

log = logging.getLogger(__name__)

#: Exit status of a command or rule stopped by bad input (the CLI and every rule).
EXIT_BAD_INPUT = 2

ON_BAD_INPUT = ("error", "skip")


class InputError(ValueError):
    """Bad input data or configuration.

    Parameters
    ----------
    path : str or os.PathLike or None
        The file (or config key) at fault.
    message : str
        What is wrong with it.
    """

    #: How the message is introduced to the user (``brightseg: bad input: ...``).
    kind = "bad input"

    def __init__(self, path: str | os.PathLike | None, message: str):
        self.path = None if path is None else os.fspath(path)
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


class MissingDownload(InputError):
    """A file the run needs that has to be downloaded first (e.g. ImageNet encoder weights
    on an offline node): not bad data, so the message says what to download and where to
    put it."""

    kind = "missing download"


class Problems:
    """Per-item problems under ``on_bad_input``: raised (``"error"``) or recorded (``"skip"``).

    Parameters
    ----------
    on_bad_input : {"error", "skip"}

    Attributes
    ----------
    items : list of (str, str)
        ``(file, reason)`` of every skipped item, in order.
    """

    def __init__(self, on_bad_input: str):
        if on_bad_input not in ON_BAD_INPUT:
            raise InputError("on_bad_input", f"must be 'error' or 'skip', got {on_bad_input!r}")
        self.mode = on_bad_input
        self.items: list[tuple[str, str]] = []

    def report(self, err: InputError, item: str | os.PathLike | None = None) -> None:
        """Raise ``err`` (``"error"``), or log it and record ``item`` (default its path)."""
        if self.mode == "error":
            raise err
        item = err.path if item is None else item
        log.warning("skipped %s: %s", item, err)
        self.items.append((str(item), str(err)))

    def frame(self):
        """The skipped items as a DataFrame with columns ``file`` and ``reason``."""

        return pd.DataFrame(self.items, columns=["file", "reason"])
