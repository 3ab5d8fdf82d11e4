"""fray_dask.kube and fray_dask.kube_spec: the kube? spec, the worker resources its DaskCluster
advertises (checked against what zephyr and fray_dask request, and by running the manifest's own
`dask worker` command), and how starting a cluster fails without Kubernetes.

No Kubernetes API server runs here. A missing kubeconfig is real (KUBECONFIG names a file that
does not exist); for "operator not installed" and "operator not running", a small in-process HTTP
server answering the few REST calls KubeCluster makes stands in for the API server, and records
the DaskCluster it is sent.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import distributed
import pytest
import yaml

from fray_dask import kube
from fray_dask.connect import connect
from fray_dask.connection import ClusterStartError, ClusterUnreachable
from fray_dask.current import cluster_from_spec
from fray_dask.kube import (
    DEFAULT_IMAGE,
    KubeSpec,
    dask_cluster_manifest,
    in_cluster_address,
    parse_kube_spec,
)
from fray_dask.resources import check_placeable, dask_resources, unplaceable
from fray_dask.types import GpuConfig, ResourceConfig
from tests.imports import heavy_modules_loaded
from zephyr import Dataset, ZephyrError
from zephyr.backends.dask import DaskBackend

# -- the spec ------------------------------------------------------------------------------------


def test_defaults():
    spec = parse_kube_spec("kube")
    assert spec == KubeSpec() == parse_kube_spec({})
    assert (spec.name, spec.workers, spec.memory, spec.cpu, spec.gpu) == ("zephyr", 2, 8e9, 1, 0)
    assert (spec.namespace, spec.timeout, spec.preemptible) == ("default", 300, True)
    # The stock image of the installed distributed (or latest, for a development version) and
    # of this Python.
    assert DEFAULT_IMAGE == spec.image
    tag = DEFAULT_IMAGE.removeprefix("ghcr.io/dask/dask:")
    assert tag.split("-py")[0] in (distributed.__version__, "latest")
    assert tag.endswith(f"-py{sys.version_info.major}.{sys.version_info.minor}")


def test_a_full_spec():
    spec = parse_kube_spec(
        "kube?name=etl&workers=16&image=us-docker.pkg.dev/p/r/zephyr:1.0&memory=16Gi&cpu=4"
        "&namespace=data&timeout=60&gpu=1&preemptible=false"
    )
    assert spec == KubeSpec(
        name="etl",
        workers=16,
        image="us-docker.pkg.dev/p/r/zephyr:1.0",
        memory=16 * 2**30,
        cpu=4,
        namespace="data",
        timeout=60,
        gpu=1,
        preemptible=False,
    )
    assert parse_kube_spec("kube?memory=8g").memory == parse_kube_spec("kube?memory=8GB").memory
    assert parse_kube_spec({"name": "x", "workers": "3"}) == KubeSpec(name="x", workers=3)


@pytest.mark.parametrize(
    "spec",
    [KubeSpec(), KubeSpec(memory=8 * 2**30 + 1, timeout=2.5), KubeSpec(preemptible=False, gpu=2)],
)
def test_the_canonical_text_parses_back(spec):
    assert parse_kube_spec(spec.text) == spec
    assert spec.text.startswith("kube?name=")


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("kube?bogus=1", r"does not take bogus \(its parameters: name, workers, image, memory"),
        ("kube?workers=two", r"workers='two' is not a whole number; write e.g. workers=2"),
        ("kube?workers=0", r"workers=0 is not a whole number >= 1"),
        ("kube?cpu=0.5", r"cpu='0.5' is not a whole number"),
        ("kube?gpu=-1", r"gpu=-1 is not a whole number >= 0"),
        ("kube?memory=8", r"memory='8' has no unit.*did you mean '8g'"),
        ("kube?memory=8 bananas", r"memory='8 bananas' is not a size"),
        ("kube?memory=100m", r"memory='100MB' is less than a Dask worker needs \(256MB\)"),
        ("kube?name=My_Cluster", r"name='My_Cluster' is not a DNS-1123 label.*name=zephyr"),
        ("kube?name=" + "a" * 54, r"at most 53 characters"),
        ("kube?namespace=Data", r"namespace='Data' is not a Kubernetes namespace name"),
        ("kube?image=", r"image='' is not a container image reference"),
        ("kube?timeout=-1", r"timeout=-1.0 is not > 0 seconds"),
        ("kube?timeout=soon", r"timeout='soon' is not a number of seconds"),
        ("kube?preemptible=maybe", r"preemptible='maybe' is not true or false"),
        ("kube?workers=2&workers=3", r"gives workers more than once"),
        ("dask?address=tcp://h:8786", r"is not a kube spec; write kube\?name=NAME"),
    ],
)
def test_bad_specs_name_the_value_and_the_fix(text, fragment):
    with pytest.raises(ValueError, match=fragment):
        parse_kube_spec(text)


def test_bad_specs_fail_before_any_kubernetes_call(monkeypatch, tmp_path):
    """With no kubeconfig, a spec error still comes out as the spec error (ValueError), not as
    the credentials error a Kubernetes call would raise."""
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="does not take bogus"):
        cluster_from_spec("kube?bogus=1")
    with pytest.raises(ValueError, match="workers='two'"):
        connect("kube?workers=two", timeout=5)
    with pytest.raises(ValueError, match="memory='8'"):
        list(DaskBackend("kube?memory=8").execute(Dataset.from_list([1]).map(str)))


def test_the_spec_and_manifest_need_no_kubernetes_packages():
    code = (
        "from fray_dask.kube import KubeSpec, dask_cluster_manifest, render_yaml\n"
        "render_yaml(KubeSpec(workers=3))\n"
    )
    heavy = ("kubernetes", "dask_kubernetes", "kr8s", "kopf")
    assert heavy_modules_loaded(code, heavy) == []


def test_the_render_command_prints_the_manifest_of_a_spec():
    text = "kube?name=etl&workers=16&cpu=4&memory=32GB"
    result = subprocess.run(
        [sys.executable, "-m", "fray_dask.kube", "--render", text],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert yaml.safe_load(result.stdout) == dask_cluster_manifest(parse_kube_spec(text))
    bad = subprocess.run(
        [sys.executable, "-m", "fray_dask.kube", "--render", "kube?workers=0"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and "workers=0 is not a whole number >= 1" in bad.stderr


# -- worker resources ----------------------------------------------------------------------------


def _worker(spec: KubeSpec) -> dict:
    """The worker container of the spec's DaskCluster."""
    [container] = dask_cluster_manifest(spec)["spec"]["worker"]["spec"]["containers"]
    return container


def _advertised(spec: KubeSpec) -> dict[str, float]:
    """The worker's --resources, parsed as `dask worker` parses it."""
    args = _worker(spec)["args"]
    text = args[args.index("--resources") + 1]
    return {k: float(v) for k, v in (pair.split("=") for pair in text.replace(",", " ").split())}


def test_worker_args_and_container_resources_agree():
    spec = KubeSpec(cpu=4, memory="16GB", gpu=1)
    container = _worker(spec)
    args = container["args"]
    assert args[:2] == ["dask", "worker"]
    assert args[args.index("--nthreads") + 1] == "4"
    assert args[args.index("--memory-limit") + 1] == "16000000000"
    assert _advertised(spec) == {"CPU": 4, "MEMORY": 16e9, "GPU": 1}
    amounts = {"cpu": "4", "memory": "16000000000", "nvidia.com/gpu": "1"}
    assert container["resources"] == {"requests": amounts, "limits": amounts}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    pod = dask_cluster_manifest(spec)["spec"]["worker"]["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0


@pytest.mark.parametrize(
    "spec, backend, job",
    [
        (KubeSpec(), DaskBackend(memory="8GB"), ResourceConfig(cpu=1, ram="8g")),
        (KubeSpec(), DaskBackend(memory="8GB", num_cpus=1), ResourceConfig(ram=8 * 10**9)),
        (
            KubeSpec(cpu=4, memory="16Gi", gpu=2),
            DaskBackend(memory="16GiB", num_cpus=4, num_gpus=2),
            ResourceConfig(cpu=4, ram="16Gi", device=GpuConfig(count=2)),
        ),
        (KubeSpec(preemptible=False), DaskBackend(), ResourceConfig(preemptible=False)),
    ],
)
def test_what_zephyr_and_fray_request_fits_a_worker_of_the_spec(spec, backend, job):
    workers = [{"resources": _advertised(spec)}]
    assert unplaceable("task", backend._requested_resources(), workers) is None
    check_placeable("job", dask_resources(job), lambda: workers)


def test_more_than_a_worker_holds_does_not_fit():
    workers = [{"resources": _advertised(KubeSpec(memory="8GB"))}]
    wanted = DaskBackend(memory="9GB")._requested_resources()
    assert "MEMORY=9GB" in unplaceable("task", wanted, workers)
    with pytest.raises(ValueError, match="NON_PREEMPTIBLE"):
        check_placeable("job", dask_resources(ResourceConfig(preemptible=False)), lambda: workers)
    with pytest.raises(ValueError, match="needs CPU=2"):
        check_placeable("job", dask_resources(ResourceConfig(cpu=2)), lambda: workers)


def test_in_cluster_address_is_the_one_the_operator_gives_worker_pods():
    from dask_kubernetes.operator.controller.controller import build_worker_deployment_spec

    spec = KubeSpec(name="etl", namespace="data")
    pod_spec = dask_cluster_manifest(spec)["spec"]["worker"]["spec"]
    deployment = build_worker_deployment_spec("etl-default", "data", "etl", "u1", pod_spec, {}, {})
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["DASK_SCHEDULER_ADDRESS"] == in_cluster_address(spec)
    assert "DASK_WORKER_NAME" in env  # what $(DASK_WORKER_NAME) in our args expands from


@pytest.mark.dask
def test_the_manifests_worker_command_joins_a_scheduler_and_runs_zephyr_tasks():
    """The worker container's args, run as they are (the scheduler named by the environment
    variable the operator sets), give a worker that zephyr tasks annotated MEMORY=8e9 run on."""
    spec = KubeSpec()
    args = [a.replace("$(DASK_WORKER_NAME)", "kube-test-worker") for a in _worker(spec)["args"]]
    with (
        distributed.LocalCluster(
            n_workers=0, host="127.0.0.1", dashboard_address=":0", silence_logs=logging.CRITICAL
        ) as cluster,
        distributed.Client(cluster, set_as_default=False) as client,
    ):
        env = {**os.environ, "DASK_SCHEDULER_ADDRESS": cluster.scheduler_address}
        worker = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", *args[2:]],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            client.wait_for_workers(1, timeout=60)
            [info] = client.scheduler_info()["workers"].values()
            assert info["resources"] == {"CPU": 1, "MEMORY": 8e9}
            assert info["nthreads"] == 1 and info["name"] == "kube-test-worker"
            backend = DaskBackend(client, memory="8GB", num_cpus=1)
            assert list(backend.execute(Dataset.from_list([1, 2, 3]).map(str))) == ["1", "2", "3"]
            with pytest.raises(
                ZephyrError, match="needs MEMORY=9GB, but none of the 1 Dask workers"
            ):
                DaskBackend(client, memory="9GB").execute(Dataset.from_list([1]).map(str))
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=30)


# -- starting a cluster --------------------------------------------------------------------------


@pytest.fixture
def no_kubeconfig(monkeypatch, tmp_path):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing-kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)


NO_CREDENTIALS = r"no Kubernetes credentials \(KUBECONFIG='.*missing-kubeconfig' does not exist.*"


def test_without_a_kubeconfig_every_entry_point_names_the_fix(no_kubeconfig):
    fix = NO_CREDENTIALS + "get-credentials.*helm install --repo https://helm.dask.org"
    with pytest.raises(ClusterStartError, match=fix):
        connect("kube?name=x&workers=1", timeout=5)
    with pytest.raises(ZephyrError, match=fix):
        list(DaskBackend("kube?name=x&workers=1").execute(Dataset.from_list([1]).map(str)))
    with pytest.raises(ClusterStartError, match=fix):
        cluster_from_spec("kube?name=x&workers=1")


class _StandInApiServer:
    """Answers the REST calls KubeCluster makes for a DaskCluster: /version, create, get, list
    by name and delete of daskclusters. `crd=False` answers 404 for daskclusters, as an API
    server without the operator's CRD does. No operator acts on what is created."""

    def __init__(self, crd: bool):
        self.crd = crd
        self.created: list[dict] = []
        self.clusters: dict[str, dict] = {}
        self.lock = threading.Lock()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _handler(self) -> type:
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.send_response(code)  # (a watch that KubeCluster cancels hangs up)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)

            def _route(self) -> None:
                path = self.path.split("?")[0].rstrip("/")
                if path == "/version":
                    return self._reply(200, {"major": "1", "minor": "31", "gitVersion": "v1.31.0"})
                match = re.fullmatch(
                    r"/apis/kubernetes\.dask\.org/v1/namespaces/([^/]+)/daskclusters(?:/(.+))?",
                    path,
                )
                if not match or not api.crd:
                    return self._reply(404, _status(404, "NotFound", "could not find resource"))
                name = match.group(2)
                with api.lock:
                    if self.command == "POST":
                        length = int(self.headers["Content-Length"])
                        body = json.loads(self.rfile.read(length))
                        api.created.append(body)
                        api.clusters[body["metadata"]["name"]] = body
                        return self._reply(201, body)
                    if self.command == "GET" and name is None:
                        items = list(api.clusters.values())
                        return self._reply(200, {"kind": "DaskClusterList", "items": items})
                    if name in api.clusters and self.command == "GET":
                        return self._reply(200, api.clusters[name])
                    if name in api.clusters and self.command == "DELETE":
                        return self._reply(200, api.clusters.pop(name))
                self._reply(404, _status(404, "NotFound", f"daskclusters {name!r} not found"))

            do_GET = do_POST = do_DELETE = do_PATCH = _route

        return Handler

    def kubeconfig(self, path: Path) -> Path:
        port = self.server.server_address[1]
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "stand-in", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [{"name": "c", "context": {"cluster": "stand-in", "user": "u"}}],
            "current-context": "c",
        }
        path.write_text(yaml.safe_dump(config))
        return path

    def __enter__(self) -> _StandInApiServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def _status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
            "reason": reason, "message": message}  # fmt: skip


@pytest.fixture
def stand_in_api(no_kubeconfig, monkeypatch, tmp_path, request):
    with _StandInApiServer(crd=request.param) as api:
        monkeypatch.setenv("KUBECONFIG", str(api.kubeconfig(tmp_path / "kubeconfig")))
        yield api


@pytest.mark.parametrize("stand_in_api", [False], indirect=True)
def test_a_missing_operator_crd_names_the_helm_install(stand_in_api):
    spec = KubeSpec(name="nocrd", workers=1, timeout=30)
    with pytest.raises(
        ClusterStartError,
        match=r"DaskCluster 'nocrd'.*operator \(its DaskCluster CRD\) is not installed.*"
        r"helm install --repo https://helm.dask.org",
    ):
        kube.start_kube_cluster(spec)


@pytest.mark.parametrize("stand_in_api", [True], indirect=True)
def test_kubecluster_sends_our_manifest_and_a_silent_operator_times_out(stand_in_api):
    """What KubeCluster creates is exactly dask_cluster_manifest(spec); with no operator acting
    on it, the start fails within the spec's timeout naming the operator, and the DaskCluster
    it created is deleted again."""
    spec = KubeSpec(name="silent", workers=3, cpu=2, memory="4GB", timeout=3)
    with pytest.raises(ClusterStartError, match=r"cannot start the DaskCluster 'silent'") as error:
        connect(spec.text, timeout=5)
    assert "operator" in str(error.value) and "timeout=3" in str(error.value)
    # KubeCluster gives up first (its waits end before ours); if ours ended first, the start
    # thread finishes the clean-up.
    for thread in threading.enumerate():
        if thread.name == "fray-kube-start":
            thread.join(timeout=30)
    assert stand_in_api.created == [dask_cluster_manifest(spec)]
    assert stand_in_api.clusters == {}


def test_inside_a_pod_of_the_cluster_the_operators_scheduler_address_is_used(
    no_kubeconfig, monkeypatch
):
    """In a worker pod (where a fray job launched on the cluster runs) the spec connects to the
    scheduler the operator named, without Kubernetes credentials; here that name resolves to
    nothing, so the error names it."""
    spec = KubeSpec(name="inpod", timeout=2)
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", in_cluster_address(spec))
    with pytest.raises(
        ClusterUnreachable,
        match=r"cannot reach this pod's Dask scheduler "
        r"tcp://inpod-scheduler\.default\.svc\.cluster\.local:8786 within 2 s",
    ):
        connect(spec.text, timeout=5)
