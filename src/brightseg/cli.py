"""The ``brightseg`` command line."""

from __future__ import annotations

import click


@click.group()
def main() -> None:
    """brightseg: segmentation of unstained live-cell microscopy plates."""
