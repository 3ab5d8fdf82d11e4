"""A trainer as its own process for the weight-transfer tests: connects to a Dask scheduler,
publishes one step of known weights (every leaf filled with the step), prints `published <step>`
and serves until its stdin closes or it is killed.

    python -m tests.fray_dask.rl.trainer_process <scheduler> <coordinator> <step> [<checkpoints>]
"""

from __future__ import annotations

import sys

import numpy as np

from fray_dask import DaskContext
from fray_dask.rl import WeightTransferConfig, WeightTransferServer


def weights(step: int) -> dict:
    """A small model whose every value is `step` (a reader can tell a whole step from a mix)."""
    return {
        "dense": {"w": np.full((64, 32), step, np.float32), "b": np.full(32, step, np.float32)},
        "head": [np.full((32, 4), step, np.float32)],
    }


def main(address: str, coordinator: str, step: int, checkpoints: str | None) -> None:
    config = WeightTransferConfig(coordinator_name=coordinator, checkpoint_path=checkpoints)
    with DaskContext(address) as ctx, WeightTransferServer(config, ctx) as server:
        accepted = server.serve_weights(step, weights(step))
        print(f"published {step} {accepted}", flush=True)
        sys.stdin.read()  # serve until the test closes our stdin (or kills us)


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0], args[1], int(args[2]), args[3] if len(args) > 3 else None)
