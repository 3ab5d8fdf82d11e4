"""A stand-in for a real Kubernetes API server, which cannot run on our machines: an in-process
HTTP server with only the REST endpoints tpu.launcher calls, a minimal Job/JobSet controller, and
a record of every request. Tests drive the pods themselves (run, succeed, crash, preempt).

Simplifications, stated plainly: no auth, no validation, no watch; deletes cascade at once; a
JobSet's pods are made directly (its child Jobs are not materialised); a pod's log is a list of
lines that the test appends to. Status bodies (404, 409, 403) have the real server's shape.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

_PATH = re.compile(
    r"^/(?:api/v1|apis/(?P<group>[^/]+/[^/]+))/namespaces/(?P<ns>[^/]+)/(?P<plural>[^/]+)"
    r"(?:/(?P<name>[^/]+))?(?P<log>/log)?$"
)
_CORE = ("secrets", "configmaps", "services", "pods")  # /api/v1; the others under /apis/<group>
_GROUPS = {**dict.fromkeys(_CORE), "jobs": "batch/v1", "jobsets": "jobset.x-k8s.io/v1alpha2"}
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
JOB_INDEX = "jobset.sigs.k8s.io/job-index"
RESTART_ATTEMPT = "jobset.sigs.k8s.io/restart-attempt"


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _status(code: int, message: str) -> dict:
    """The Status body the real server sends with an error."""
    reason = HTTPStatus(code).phrase.replace(" ", "")  # NotFound, Forbidden, Conflict, ...
    reason = "AlreadyExists" if code == 409 else reason
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure"}
    return {**body, "code": code, "reason": reason, "message": message}


def _matches(obj: dict, selector: str | None) -> bool:
    labels = obj["metadata"].get("labels") or {}
    pairs = [p.split("=", 1) for p in (selector or "").split(",") if p]
    return all(labels.get(k) == v for k, v in pairs)


class KubeStandIn:
    """The server (`url`) plus the test-side controls. Pods are keyed by name."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.objects: dict[tuple[str, str], dict] = {}  # (plural, name) -> object
        self.logs: dict[str, list[str]] = {}
        self.requests: list[Request] = []
        self._failures: list[tuple[str, str, int]] = []
        self._vanished: list[dict] = []  # pods removed by vanish(), seen once by the controller
        self._closing = False
        self._drops = 0  # drop_log_streams() calls
        self._connections: set[socket.socket] = set()
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                with standin.cond:
                    standin._connections.add(self.connection)

            def do_GET(self) -> None:
                standin._handle(self, "GET")

            def do_POST(self) -> None:
                standin._handle(self, "POST")

            def do_DELETE(self) -> None:
                standin._handle(self, "DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, args=(0.02,), name="k8s-standin"
        )
        self._thread.start()

    def close(self) -> None:
        with self.cond:
            self._closing = True
            self.cond.notify_all()
        self.server.shutdown()
        self.server.server_close()
        with self.cond:
            for conn in self._connections:  # kept-alive connections end too, as on a dead host
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=10)

    # -- HTTP ---------------------------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(h.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        length = int(h.headers.get("Content-Length") or 0)
        body = json.loads(h.rfile.read(length)) if length else None
        with self.cond:
            self.requests.append(Request(method, parts.path, query, body))
            failure = next(
                (f for f in self._failures if f[0] == method and parts.path.endswith(f[1])), None
            )
            if failure:
                self._failures.remove(failure)
                return _send(h, failure[2], _status(failure[2], "injected by the test"))
        if parts.path.rstrip("/") == "/version":
            return _send(h, 200, {"major": "1", "minor": "31", "gitVersion": "v1.31.0-standin"})
        m = _PATH.match(parts.path)
        if not m or _GROUPS.get(m["plural"], "?") != m["group"]:
            return _send(h, 404, _status(404, f"the server could not find {h.path}"))
        plural, name = m["plural"], m["name"]
        if m["log"]:
            return self._log(h, name)
        with self.cond:
            if method == "POST":
                code, out = self._create(plural, m["ns"], body)
            elif name is None:
                items = [o for (p, _), o in self.objects.items() if p == plural]
                items = [o for o in items if _matches(o, query.get("labelSelector"))]
                code, out = 200, {"kind": "List", "apiVersion": "v1", "items": items}
            elif (plural, name) not in self.objects:
                code, out = 404, _status(404, f'{plural} "{name}" not found')
            elif method == "GET":
                code, out = 200, self.objects[(plural, name)]
            else:
                code, out = 200, self._delete(plural, name)
            out = copy.deepcopy(out)
        _send(h, code, out)

    def _log(self, h: BaseHTTPRequestHandler, pod: str) -> None:
        """follow=true: the log from its first line, chunk by chunk, until the pod ends."""
        with self.cond:
            obj, generation = self.objects.get(("pods", pod)), self._drops
            if obj is None:
                return _send(h, 404, _status(404, f'pods "{pod}" not found'))
            if obj["status"]["phase"] == "Pending":
                msg = f'container "main" in pod "{pod}" is waiting to start: ContainerCreating'
                return _send(h, 400, _status(400, msg))
        h.send_response(200)
        h.send_header("Content-Type", "text/plain")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        sent = 0
        while True:
            with self.cond:
                if self._drops != generation:  # cut without the closing chunk
                    h.close_connection = True
                    return
                obj = self.objects.get(("pods", pod))
                lines = self.logs[pod][sent:]
                done = obj is None or obj["status"]["phase"] in ("Succeeded", "Failed")
                if not lines and not done and not self._closing:
                    self.cond.wait(timeout=1.0)
                    continue
            sent += len(lines)
            data = "".join(f"{line}\n" for line in lines).encode()
            if data:
                h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                h.wfile.flush()
            if (done or self._closing) and not lines:
                h.wfile.write(b"0\r\n\r\n")
                return

    # -- objects and the controller -----------------------------------------------------------
    def _create(self, plural: str, ns: str, body: dict) -> tuple[int, dict]:
        name = body["metadata"]["name"]
        if (plural, name) in self.objects:
            return 409, _status(409, f'{plural} "{name}" already exists')
        obj = copy.deepcopy(body)
        meta = obj["metadata"]
        meta.update(namespace=ns, uid=str(uuid.uuid4()), creationTimestamp=_now())
        if plural == "secrets" and "stringData" in obj:  # the server stores data, base64
            data = {k: base64.b64encode(v.encode()).decode() for k, v in obj["stringData"].items()}
            obj["data"] = {**obj.get("data", {}), **data}
            del obj["stringData"]
        self.objects[(plural, name)] = obj
        if plural in ("jobs", "jobsets"):
            obj["status"] = (
                {"restarts": 0, "restartsCountTowardsMax": 0} if plural == "jobsets" else {}
            )
            self._start_pods(obj)
        return 201, obj

    def _delete(self, plural: str, name: str) -> dict:
        obj = self.objects.pop((plural, name))
        if plural in ("jobs", "jobsets"):
            for pod in self._pods_of(obj):
                del self.objects[("pods", pod["metadata"]["name"])]
        self.cond.notify_all()
        return obj

    def _pods_of(self, owner: dict) -> list[dict]:
        uid = owner["metadata"]["uid"]
        pods = [o for (p, _), o in self.objects.items() if p == "pods"] + self._vanished
        return [p for p in pods if p["metadata"]["labels"].get("controller-uid") == uid]

    def _start_pods(self, owner: dict) -> None:
        """Every index of a Job, or every host of every slice of a JobSet, as Pending pods."""
        if owner["kind"] == "JobSet":
            rj = owner["spec"]["replicatedJobs"][0]
            for j in range(rj["replicas"]):
                for i in range(rj["template"]["spec"].get("completions", 1)):
                    self._new_pod(owner, rj["template"]["spec"], i, j, rj["name"])
        else:
            indexed = owner["spec"].get("completionMode") == "Indexed"
            for i in range(owner["spec"].get("completions", 1) if indexed else 1):
                self._new_pod(owner, owner["spec"], i if indexed else None)

    def _new_pod(
        self, owner: dict, spec: dict, index: int | None, job: int | None = None, rjob: str = ""
    ) -> None:
        owner_name = owner["metadata"]["name"]
        template = copy.deepcopy(spec["template"])
        labels = {
            **template["metadata"].get("labels", {}),
            "controller-uid": owner["metadata"]["uid"],
        }
        annotations: dict[str, str] = {}
        job_name = owner_name if job is None else f"{owner_name}-{rjob}-{job}"
        labels["job-name"] = labels["batch.kubernetes.io/job-name"] = job_name
        if index is not None:
            labels[COMPLETION_INDEX] = annotations[COMPLETION_INDEX] = str(index)
        if job is not None:
            labels[JOB_INDEX] = annotations[JOB_INDEX] = str(job)
            labels[RESTART_ATTEMPT] = str(owner["status"]["restarts"])
        name = "-".join(str(x) for x in (job_name, index, uuid.uuid4().hex[:5]) if x is not None)
        meta = {"name": name, "namespace": owner["metadata"]["namespace"], "labels": labels}
        meta |= {"annotations": annotations, "uid": str(uuid.uuid4()), "creationTimestamp": _now()}
        waiting = {"name": "main", "state": {"waiting": {"reason": "ContainerCreating"}}}
        status = {"phase": "Pending", "conditions": [], "containerStatuses": [waiting]}
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template["spec"]}
        self.objects[("pods", name)] = {**pod, "status": status}
        self.logs[name] = []

    def _sync(self, owner_plural: str, owner_name: str) -> None:
        """The Job / JobSet controller's reaction to a pod change, after the documented rules:
        podFailurePolicy (Ignore / FailJob on DisruptionTarget), backoffLimit, and the JobSet
        failurePolicy (RestartJobSetAndIgnoreMaxRestarts on PodFailurePolicy, maxRestarts)."""
        owner = self.objects.get((owner_plural, owner_name))
        if owner is None or owner["status"].get("conditions"):
            return
        pods = self._pods_of(owner)
        phases = [p["status"]["phase"] for p in pods]
        failed = [p for p in pods if p["status"]["phase"] == "Failed"]
        disrupted = [p for p in failed if _disrupted(p) or p in self._vanished]
        if owner_plural == "jobs":
            done = {
                p["metadata"]["labels"].get(COMPLETION_INDEX)
                for p in pods
                if p["status"]["phase"] == "Succeeded"
            }
            indexed = owner["spec"].get("completionMode") == "Indexed"
            complete = len(done) >= (owner["spec"]["completions"] if indexed else 1)
        else:
            complete = all(ph == "Succeeded" for ph in phases)
        if complete:
            kind = "Completed" if owner_plural == "jobsets" else "Complete"
            return self._condition(owner, kind, "AllDone", "all pods succeeded")
        if owner_plural == "jobs" and not indexed:
            counted = [p for p in failed if p not in disrupted]  # the Ignore rule
            owner["status"]["failed"] = len(counted)
            if len(counted) > owner["spec"]["backoffLimit"]:
                return self._condition(owner, "Failed", "BackoffLimitExceeded", "backoff limit")
            if all(ph == "Failed" for ph in phases):  # no pod active: make the next one
                self._new_pod(owner, owner["spec"], None)
            return
        if not failed:
            return
        reason = "PodFailurePolicy" if disrupted else "BackoffLimitExceeded"
        if owner_plural == "jobs":
            return self._fail(owner, pods, reason, f"Job failed: {reason}")
        policy, status = owner["spec"]["failurePolicy"], owner["status"]
        ignore = reason in policy["rules"][0]["onJobFailureReasons"]
        if not ignore and status["restartsCountTowardsMax"] >= policy["maxRestarts"]:
            return self._fail(owner, pods, "ReachedMaxRestarts", "jobset failed")
        status["restarts"] += 1
        status["restartsCountTowardsMax"] += 0 if ignore else 1
        for p in pods:
            self.objects.pop(("pods", p["metadata"]["name"]), None)
        self._start_pods(owner)

    def _fail(self, owner: dict, pods: list[dict], reason: str, message: str) -> None:
        """A failed Job (or JobSet) has its active pods (child Jobs) deleted: the gang goes."""
        for p in pods:
            if p["status"]["phase"] not in ("Failed", "Succeeded"):
                self.objects.pop(("pods", p["metadata"]["name"]), None)
        self._condition(owner, "Failed", reason, message)

    def _condition(self, owner: dict, kind: str, reason: str, message: str) -> None:
        owner["status"]["conditions"] = [
            {"type": kind, "status": "True", "reason": reason, "message": message}
        ]

    # -- test-side controls -------------------------------------------------------------------
    def pods(self, job: str | None = None) -> list[str]:
        """Names of the current pods (of the fray job `job`), oldest first."""
        with self.cond:
            pods = [o for (p, _), o in self.objects.items() if p == "pods"]
            sel = f"fray-dask/job={job}" if job else None
            return [p["metadata"]["name"] for p in pods if _matches(p, sel)]

    def requests_of(self, method: str, path_part: str = "") -> list[Request]:
        with self.cond:
            return [r for r in self.requests if r.method == method and path_part in r.path]

    def fail_next(self, method: str, path_suffix: str, status: int) -> None:
        """The next `method` request whose path ends with `path_suffix` answers `status`."""
        with self.cond:
            self._failures.append((method, path_suffix, status))

    def drop_log_streams(self) -> None:
        """Cuts every open log stream mid-way, as a broken connection does."""
        with self.cond:
            self._drops += 1
            self.cond.notify_all()

    def get(self, plural: str, name: str) -> dict | None:
        with self.cond:
            return copy.deepcopy(self.objects.get((plural, name)))

    def run(self, pod: str, logs: tuple[str, ...] = ()) -> None:
        self._set(pod, "Running", {"running": {"startedAt": _now()}}, logs)

    def log(self, pod: str, *lines: str) -> None:
        self._set(pod, None, None, lines)

    def succeed(self, pod: str, logs: tuple[str, ...] = ()) -> None:
        self._set(pod, "Succeeded", _terminated(0, "Completed"), logs)

    def crash(self, pod: str, exit_code: int = 1, logs: tuple[str, ...] = ()) -> None:
        self._set(pod, "Failed", _terminated(exit_code, "Error"), logs)

    def preempt(self, pod: str, reason: str = "PreemptionByScheduler") -> None:
        """The pod is killed (SIGTERM, exit 143) with the DisruptionTarget condition."""
        condition = {
            "type": "DisruptionTarget",
            "status": "True",
            "reason": reason,
            "message": f"{reason}: the pod was stopped",
        }
        self._set(pod, "Failed", _terminated(143, "Error"), (), condition)

    def vanish(self, pod: str) -> None:
        """The pod's node is gone: pod GC deletes the pod (the controllers see a disruption)."""
        with self.cond:
            obj = self.objects.pop(("pods", pod))
            obj["status"]["phase"] = "Failed"
            self._vanished.append(obj)
            self._sync_owner(obj)
            self._vanished.remove(obj)
            self.cond.notify_all()

    def _set(
        self,
        pod: str,
        phase: str | None,
        state: dict | None,
        logs: tuple[str, ...],
        condition: dict | None = None,
    ) -> None:
        with self.cond:
            obj = self.objects[("pods", pod)]
            self.logs[pod].extend(logs)
            if phase:
                obj["status"]["phase"] = phase
                obj["spec"].setdefault("nodeName", "gke-tpu-node-1")
                obj["status"]["containerStatuses"][0]["state"] = state
            if condition:
                obj["status"]["conditions"].append(condition)
            self._sync_owner(obj)
            self.cond.notify_all()

    def _sync_owner(self, pod: dict) -> None:
        for (plural, name), o in list(self.objects.items()):
            if plural in ("jobs", "jobsets"):
                if o["metadata"]["uid"] == pod["metadata"]["labels"].get("controller-uid"):
                    self._sync(plural, name)


def _terminated(code: int, reason: str) -> dict:
    return {"terminated": {"exitCode": code, "reason": reason, "startedAt": _now()}}


def _disrupted(pod: dict) -> bool:
    return any(
        c["type"] == "DisruptionTarget" and c["status"] == "True"
        for c in pod["status"]["conditions"]
    )


def _send(h: BaseHTTPRequestHandler, code: int, body: Any) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    h.send_response(code)
    h.send_header("Content-Type", "text/plain" if isinstance(body, bytes) else "application/json")
    h.send_header("Content-Length", str(len(data)))
    h.end_headers()
    h.wfile.write(data)
