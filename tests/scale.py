"""How large the acceptance runs are: small counts in CI, the issues' full counts in long mode.

CI (the default) runs each acceptance scenario with the smallest counts that still prove its
property: the faults still land while payments are in flight (the tests assert that they did),
every kind of fault still happens. The long mode runs the counts the issues name (2,000
payments through three ``kill -9``, 1,000 through a Temporal outage, ...):

    bash scripts/test --long                      # or: PAYBRIDGE_TEST_SCALE=long bash scripts/test
    .venv/bin/python -m pytest --long tests/test_bridge_faults.py

Tests read the mode at run time with :func:`pick`; ``tests/conftest.py`` sets it from
``--long`` or ``PAYBRIDGE_TEST_SCALE`` (``ci`` or ``long``).
"""

from __future__ import annotations

import os
from typing import TypeVar

T = TypeVar("T")

MODES = ("ci", "long")


def mode_from_env() -> str:
    value = os.environ.get("PAYBRIDGE_TEST_SCALE", "ci").strip().lower() or "ci"
    if value not in MODES:
        raise ValueError(f"PAYBRIDGE_TEST_SCALE={value!r}: use one of {', '.join(MODES)}")
    return value


LONG = mode_from_env() == "long"


def pick(*, ci: T, long: T) -> T:
    """The CI value, or the long mode's."""
    return long if LONG else ci
