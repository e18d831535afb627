"""The `atlas-fast` command.

atlas-fast info     what this installation can do (same as python -m atlas_fast.info)
atlas-fast smoke    the info report, then a quick end-to-end check of every capability
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import numpy as np

from atlas_fast import info
from atlas_fast.index import merge_topk


def _check_merge_topk() -> str:
    rng = np.random.default_rng(0)
    shards = [rng.standard_normal((4, 10)).astype(np.float32) for _ in range(3)]
    ids = [np.arange(10 * s, 10 * (s + 1)).repeat(4).reshape(10, 4).T.copy() for s in range(3)]
    scores, merged_ids = merge_topk(shards, ids, k=5)
    everything = np.concatenate(shards, axis=1)
    expected = -np.sort(-everything, axis=1)[:, :5]
    if not np.array_equal(scores, expected):
        raise AssertionError("merge_topk disagrees with a full sort")
    return f"merge_topk of 3 shards -> top-5 ids {merged_ids[0].tolist()}"


SMOKE_CHECKS: dict[str, Callable[[], str]] = {"index.merge_topk (C++)": _check_merge_topk}


def smoke() -> int:
    """Print the info report, run every smoke check; returns the number of failures."""
    print(info.report())
    print()
    failures = 0
    for name, check in SMOKE_CHECKS.items():
        try:
            print(f"ok    {name}: {check()}")
        except Exception as error:  # report every failing check, not just the first
            failures += 1
            print(f"FAIL  {name}: {type(error).__name__}: {error}")
    print(f"\nsmoke: {len(SMOKE_CHECKS) - failures} passed, {failures} failed")
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="atlas-fast", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="print versions, devices, native build and backends")
    sub.add_parser("smoke", help="info report plus a quick check of every capability")
    args = parser.parse_args(argv)
    if args.command == "info":
        print(info.report())
        return 0
    return 1 if smoke() else 0


if __name__ == "__main__":
    sys.exit(main())
