"""`paybridge` commands for the load area; registered on the main group by `bridge.cli`."""

from __future__ import annotations

import click


def register(group: click.Group) -> None:
    """Add this module's commands to ``group``."""
