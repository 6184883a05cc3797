"""Progress reporting: a bar on a terminal, percentages in log files."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger("brightseg.progress")


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "") -> Iterator[T]:
    """Iterate with progress reporting.

    On an interactive terminal a tqdm bar is drawn on stderr.  Otherwise (a
    Snakemake log file, Slurm output) a line ``desc: 40% (4/10)`` is logged at
    every 10 % step, so progress is readable in plain text logs.
    """
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(iterable, total=total, desc=desc, leave=False)
        return
    last = -1
    for i, item in enumerate(iterable, 1):
        yield item
        if total:
            pct = int(100 * i / total)
            if pct // 10 > last // 10 or i == total:
                last = pct
                log.info("%s: %d%% (%d/%d)", desc or "progress", pct, i, total)
