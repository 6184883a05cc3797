"""The rule layer: one function per Snakemake rule, named after the rule.

Layers (imports point down only)::

    workflow/rules/<stage>.smk     wiring: inputs, declared outputs, params, log, benchmark
    scripts/<rule>.py              unpack snakemake.input/output/params, call one function
    brightseg.rules.<stage>        one function per rule; typed config blocks (brightseg.config)
    brightseg.<domain>             ensemble, tiling, instances, illumination, cvat, metrics, ...
    brightseg.io / config / errors reading and atomic writing; the config; InputError

Each function takes plain paths and the rule's params (config blocks as the dicts the
rules pass, turned into their dataclasses with ``Block.coerce``), so the command line and
the tests run exactly what the workflow runs.  :func:`log_to` wraps every script.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path

import pandas as pd

from ..errors import EXIT_BAD_INPUT, InputError
from ..io import atomic_path, write_text

log = logging.getLogger(__name__)

SKIPPED_COLUMNS = ["stage", "plate", "file", "reason"]


@contextlib.contextmanager
def log_to(path: str | os.PathLike | None, level: int = logging.INFO):
    """Send ``logging`` output to ``path`` (and stderr) for the duration of a rule.

    An :class:`InputError` is logged as one clean line and turned into exit status
    :data:`~brightseg.errors.EXIT_BAD_INPUT` (as on the command line), so Snakemake
    reports the rule as failed with the message in its log, without a traceback.
    """
    root = logging.getLogger()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(path, mode="w", encoding="utf-8"))
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)
    old_level = root.level
    root.setLevel(level)
    try:
        yield
    except InputError as exc:
        log.error("%s: %s", exc.kind, exc)
        print(f"brightseg: {exc.kind}: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT) from None
    finally:
        for h in handlers:
            root.removeHandler(h)
            h.close()
        root.setLevel(old_level)


def write_skipped(
    rows: list[tuple[str, str]], path: str | os.PathLike, *, stage: str, plate: str
) -> None:
    """Write the items a rule skipped (``on_bad_input: skip``) as a TSV (possibly empty)."""
    df = pd.DataFrame([(stage, plate, f, r) for f, r in rows], columns=SKIPPED_COLUMNS)
    write_text(df.to_csv(sep="\t", index=False), path)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike):
    """A directory output built under a temporary name and renamed into place."""
    with atomic_path(path, is_dir=True) as tmp:
        Path(tmp).mkdir(parents=True)
        yield Path(tmp)


def instances_for_rule(instances, tuned) -> dict:
    """A splitting rule's ``instances`` params with the pair chosen on validation merged in.

    ``tuned`` is the rule's ``instances.json`` input (empty without ``instances.tune:
    validation``); see :func:`brightseg.tuning.tuned_instances`.
    """
    from ..tuning import tuned_instances

    return tuned_instances(dict(instances), str(tuned) if tuned else None)
