"""TensorFlow's start-up notices kept out of a normal run's terminal and logs.

TensorFlow 2.21 prints, from C++ at import time and before ``TF_CPP_MIN_LOG_LEVEL`` is
honoured, ``WARNING: All log messages before absl::InitializeLog() is called are written
to STDERR`` and an ``oneDNN custom operations are on`` notice (and, on some machines, CPU
feature and CUDA factory notices).  :func:`install` adds an import hook: the first import
of ``tensorflow`` runs with the process's stderr (file descriptor 2) sent to a temporary
file; afterwards the known notices are dropped and every other line is written to stderr
as it was, so a real error at import still shows.  ``BRIGHTSEG_TF_NOTICES=1`` turns the
filter off.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import re
import sys
import tempfile

#: Lines TensorFlow prints at import that say nothing about the run.
NOTICES = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called"
    r"|oneDNN custom operations are on"
    r"|This TensorFlow binary is optimized to use available CPU instructions"
    r"|To enable the following instructions: .* rebuild TensorFlow"
    r"|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|computation placer already registered"
    r"|could not open file to read NUMA node"
)


@contextlib.contextmanager
def filtered_stderr(pattern: re.Pattern = NOTICES):
    """Run the block with fd 2 captured; re-emit the lines that do not match ``pattern``."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (embedded interpreters): leave it be
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [
                line
                for line in tmp.read().decode("utf-8", "replace").splitlines(keepends=True)
                if not pattern.search(line)
            ]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        with filtered_stderr():
            self._loader.exec_module(module)

    def __getattr__(self, name):  # get_resource_reader, is_package, ...: the real loader's
        return getattr(self._loader, name)


class _QuietFinder(importlib.abc.MetaPathFinder):
    """Wraps the loader of ``tensorflow`` (the top-level package, once)."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def install() -> None:
    """Filter TensorFlow's import-time notices (once per process; no-op if imported)."""
    if os.environ.get("BRIGHTSEG_TF_NOTICES") == "1" or "tensorflow" in sys.modules:
        return
    if not any(isinstance(f, _QuietFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietFinder())
