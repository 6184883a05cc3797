"""Exceptions raised for bad input.

Every error a user can cause with their data or configuration is raised as
:class:`InputError`, whose message names the offending file (or config key)
and what is wrong with it.  The command line turns it into a one-line message
without a traceback.
"""

from __future__ import annotations

import os


class InputError(ValueError):
    """Bad input data or configuration.

    Parameters
    ----------
    path : str or os.PathLike or None
        The file (or config key) at fault.
    message : str
        What is wrong with it.
    """

    def __init__(self, path: str | os.PathLike | None, message: str):
        self.path = None if path is None else os.fspath(path)
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path else message)
