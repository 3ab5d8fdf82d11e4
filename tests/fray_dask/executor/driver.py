"""A driver process for the executor tests: runs `dag_steps.four_steps` on FRAY_CLUSTER_SPEC's
cluster with short heartbeats, and prints one `OUTCOME name action` line per step.

    python -m tests.fray_dask.executor.driver PREFIX CALLS [--gate FILE] [--copies N]
"""

from __future__ import annotations

import argparse
import logging

from fray_dask.executor import Executor
from tests.fray_dask.executor.dag_steps import four_steps

HEARTBEAT = 0.2
STALE_AFTER = 1.5


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("prefix")
    parser.add_argument("calls")
    parser.add_argument("--gate")
    parser.add_argument("--copies", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    executor = Executor(
        args.prefix, heartbeat_interval=HEARTBEAT, stale_after=STALE_AFTER, poll_interval=0.1
    )
    steps = four_steps(args.calls, copies=args.copies, gate=args.gate)
    for outcome in executor.run(steps):
        print(f"OUTCOME {outcome.name} {outcome.action}", flush=True)


if __name__ == "__main__":
    main()
