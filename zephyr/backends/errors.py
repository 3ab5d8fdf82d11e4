"""What a backend hook raises when the cluster, not user code, stops a run: the driver loop
(zephyr.backends.base) turns each into a ZephyrError naming the stage and how far it got."""

from __future__ import annotations

__all__ = ["ClusterLost", "ClusterStalled", "TaskLost"]


class TaskLost(Exception):
    """Internal: a task was lost (its worker died); the driver may resubmit it."""


class ClusterStalled(Exception):
    """Raised by a backend hook when no current worker can run the remaining work and none has
    for the backend's stall timeout. The message says why (0 workers, resources no worker has);
    the driver loop adds which stage and how many shards are unfinished."""


class ClusterLost(Exception):
    """Raised by a backend hook when the connection to the cluster's scheduler is gone. The
    message names the scheduler; the driver loop adds the stage and how far it got."""
