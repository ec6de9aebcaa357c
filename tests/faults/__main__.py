"""python -m tests.faults: the fault-injection suite from the command line."""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
from pathlib import Path

from tests.faults import cluster as cluster_module
from tests.faults.harness import FAULTS, run


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.faults",
        description="Drive a real cluster (Temporal, broker, paybridge worker and bridge "
        "processes) with payments while injecting faults; check none is lost or duplicated.",
    )
    parser.add_argument("--seed", type=int, default=1, help="repeat a run exactly by its seed")
    parser.add_argument("--payments", type=int, default=1000)
    parser.add_argument(
        "--faults",
        type=int,
        default=len(FAULTS),
        help=f"how many of (in a seeded order, each kind once per round): {', '.join(FAULTS)}",
    )
    parser.add_argument(
        "--kinds",
        default=",".join(FAULTS),
        help="comma-separated kinds of fault to draw from (default: all)",
    )
    parser.add_argument("--rate", type=float, default=25.0, help="payments produced per second")
    parser.add_argument("--long", action="store_true", help="5,000 payments, every kind 3 times")
    parser.add_argument(
        "--keep", type=Path, default=None, help="keep data and logs in this new directory"
    )
    args = parser.parse_args()
    kinds = {kind.strip() for kind in args.kinds.split(",") if kind.strip()}
    if not kinds or kinds - set(FAULTS):
        parser.error(f"--kinds: choose from {', '.join(FAULTS)}")
    if args.long:
        args.payments, args.faults = 5000, 3 * len(kinds)
    if args.keep:
        cluster_module.TEMPORAL_IN_MEMORY = False  # keep Temporal's database with the logs
    with tempfile.TemporaryDirectory(prefix="paybridge-faults-") as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        verdict = asyncio.run(
            run(
                root,
                seed=args.seed,
                payments=args.payments,
                faults=args.faults,
                rate=args.rate,
                kinds=frozenset(kinds),
            )
        )
    print()
    print(
        f"seed {verdict.seed}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{verdict.seconds:.0f}s, statuses {verdict.statuses}, "
        f"re-published copies (same event id) {verdict.republished}, "
        f"input records lost by the broker and sent again {len(verdict.broker_lost_inputs)}"
    )
    print(
        "| faults injected | payments | lost | duplicated | same-id copies | double debits "
        "| worst recovery |"
    )
    print("|---|---|---|---|---|---|---|")
    print(verdict.table_row())
    if not verdict.ok:
        print(verdict.problems(), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
