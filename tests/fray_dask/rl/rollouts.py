"""Rollout-side functions the weight-transfer tests run as Dask tasks (in worker processes).
Pickled by value, so workers need not import `tests`."""

from __future__ import annotations

import sys
import time

import cloudpickle

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def follow(config, last_step: int, seconds: float) -> list[tuple[int, bool, str]]:
    """Polls until it holds `last_step` (or `seconds` pass); for every update returns its step,
    whether every value of every leaf equals the step (a whole publication, not a mix), and the
    leaves' type."""
    import jax

    from fray_dask.rl import WeightTransferClient

    client = WeightTransferClient(config)
    seen: list[tuple[int, bool, str]] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and (not seen or seen[-1][0] < last_step):
        update = client.check_for_update()
        if update is None:
            time.sleep(0.005)
            continue
        step, tree = update
        leaves = jax.tree_util.tree_leaves(tree)
        whole = all(bool((leaf == step).all()) for leaf in leaves)
        seen.append((step, whole, type(leaves[0]).__name__))
    return seen
