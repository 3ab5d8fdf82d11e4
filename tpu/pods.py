"""What the GKE launcher reads from pods: which replica a pod is, whether it ended preempted or
failed, and its log lines (followed in a thread). Pure logic over pod JSON; no Kubernetes import.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from fray_dask.cluster import JobRecord
from fray_dask.secrets import mask
from tpu.kube_api import GkeApiError, KubeApi

__all__ = ["JobState", "LogFollower", "PodState", "classify"]

logger = logging.getLogger("fray_dask")

COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
JOB_INDEX = "jobset.sigs.k8s.io/job-index"
RESTART_ATTEMPT = "jobset.sigs.k8s.io/restart-attempt"
CONTROLLER_UID = ("batch.kubernetes.io/controller-uid", "controller-uid")
# Pod status reasons of a node going away (GKE spot reclaim, maintenance, node shutdown).
NODE_REASONS = {"Evicted", "NodeLost", "Shutdown", "NodeShutdown", "Terminated", "Preempting"}


# -- pods -------------------------------------------------------------------------------------


def container(pod: dict) -> dict:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return next((c for c in statuses if c.get("name") == "main"), statuses[0] if statuses else {})


def ran(pod: dict) -> bool:
    """True once the pod's container has started (its log exists)."""
    state = container(pod).get("state") or {}
    return pod["status"].get("phase") == "Running" or "running" in state or "terminated" in state


def terminal(pod: dict) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def classify(pod: dict | None, name: str, tail: list[str]) -> tuple[str, str]:
    """("succeeded" | "preempted" | "failed", message) for a pod that ended (None: it vanished).

    Preempted: the DisruptionTarget condition (preemption, eviction, taint manager, pod GC), a
    node-level status reason (spot reclaim, shutdown), or a pod gone while running. Failed: any
    other end, named with the exit code and the termination message or the last log lines."""
    if pod is None:
        return "preempted", f"pod {name} disappeared while running (its node was lost or deleted)"
    status = pod.get("status") or {}
    if status.get("phase") == "Succeeded":
        return "succeeded", ""
    for c in status.get("conditions") or []:
        if c.get("type") == "DisruptionTarget" and c.get("status") == "True":
            return "preempted", f"pod {name} was preempted ({c.get('reason')}: {c.get('message')})"
    if status.get("reason") in NODE_REASONS:
        reason, why = status["reason"], status.get("message")
        return "preempted", f"pod {name} lost its node ({reason}: {why})"
    term = (container(pod).get("state") or {}).get("terminated") or {}
    detail = (term.get("message") or "").strip() or " | ".join(tail)
    if term.get("exitCode"):
        text = f"pod {name} exited with code {term['exitCode']} ({term.get('reason')})"
    else:
        text = f"pod {name} failed ({status.get('reason') or 'Failed'}: {status.get('message')})"
    return "failed", text + (f"; last lines: {detail}" if detail else "")


def condition(obj: dict | None, *types: str) -> dict | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") in types and c.get("status") == "True":
            return c
    return None


class LogFollower:
    """Streams one pod's log into the job's record, from its first line; a stream broken while
    the pod runs is reopened and the lines already delivered are skipped."""

    def __init__(self, api: KubeApi, record: JobRecord, pod: str, replica: int, stopped: Any):
        self.api, self.record, self.pod, self.replica = api, record, pod, replica
        self._tail: deque[str] = deque(maxlen=5)
        self._tail_lock = threading.Lock()
        self.done = threading.Event()
        self._stop = threading.Event()
        self._cluster_closed = stopped
        self._response: Any = None
        self.thread = threading.Thread(target=self._run, name=f"fray-gke-log-{pod}", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(Exception):
            if self._response is not None:
                self._response.close()

    def _stopped(self) -> bool:
        return self._stop.is_set() or self._cluster_closed.is_set()

    def tail(self) -> list[str]:
        """The pod's last few log lines (for an error message)."""
        with self._tail_lock:
            return list(self._tail)

    def _emit(self, lines: list[str]) -> None:
        lines = [mask(line.rstrip("\r"), self.record.secrets) for line in lines]
        with self._tail_lock:
            self._tail.extend(lines)
        self.record.add_lines(self.replica, lines)

    def _run(self) -> None:
        delivered = 0
        try:
            while not self._stopped():
                skip, buffer, ended = delivered, b"", False
                try:
                    self._response = self.api.log_stream(self.pod)
                    for chunk in self._response.stream(65536):
                        *complete, buffer = (buffer + chunk).split(b"\n")
                        lines = [c.decode("utf-8", "replace") for c in complete]
                        fresh, skip = lines[skip:], max(0, skip - len(lines))
                        delivered += len(fresh)
                        if fresh:
                            self._emit(fresh)
                    ended = True
                except GkeApiError as e:
                    if e.status == 404:
                        return  # the pod is gone, and its log with it
                except Exception:  # unreachable, or the stream broke (read timeout, stop())
                    pass  # tried again below while the pod lives (the watcher stops us at last)
                pod = None
                with contextlib.suppress(Exception):
                    pod = self.api.read("Pod", self.pod)
                if ended and (pod is None or terminal(pod)):
                    if buffer and not skip:
                        self._emit([buffer.decode("utf-8", "replace")])
                    return
                self._stop.wait(1.0)
        finally:
            self.done.set()


@dataclass
class PodState:
    name: str
    uid: str
    replica: int
    attempt: int
    obj: dict = field(default_factory=dict)  # as last listed
    gone: bool = False  # no longer listed
    ended_at: float | None = None
    started: bool = False  # reported to the record
    closed: bool = False  # its end is accounted for
    follower: LogFollower | None = None

    @property
    def vanished(self) -> bool:
        """Gone without having been seen to end (node lost, or deleted by a controller)."""
        return self.gone and not terminal(self.obj)

    def outcome(self) -> tuple[str, str]:
        tail = self.follower.tail() if self.follower else []
        return classify(None if self.vanished else self.obj, self.name, tail)


@dataclass
class JobState:
    record: JobRecord
    name: str
    kind: str  # "job" (one host), "indexed" (one multi-host slice), "jobset"
    hosts: int
    objects: list[dict]  # created, in order: Secret, ConfigMap, Service, the workload
    uid: str = ""
    attempt: int = 0  # gang attempt: Indexed Job recreations, JobSet restarts
    preemptions: int = 0
    failures: int = 0
    pods: dict[str, PodState] = field(default_factory=dict)
    gang_end_at: float | None = None  # when the current attempt was seen to fail
    recreate_at: float | None = None  # an Indexed Job restart waits for the old Job to go
    done: bool = False

    @property
    def workload(self) -> dict:
        return self.objects[-1]
