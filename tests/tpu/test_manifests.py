"""Tests of tpu/manifests.py: what build_manifests checks and refuses, the command and payload of
a callable, secrets, YAML rendering, and every object against the official Kubernetes schemas.
(The shapes are in test_workloads.py, the pod and its env in test_pod_template.py.)

Pure: no Dask, no API server (kubernetes-validate's offline JSON schemas stand in for it).
"""

from __future__ import annotations

import base64
import dataclasses
import re
import threading

import cloudpickle
import kubernetes_validate
import pytest
import yaml

from fray_dask.types import (
    CpuConfig,
    Entrypoint,
    GpuConfig,
    ResourceConfig,
    TpuConfig,
    create_environment,
)
from tests.imports import heavy_modules_loaded
from tests.tpu.manifest_checks import (
    IMAGE,
    LABELS,
    JobSetInvalid,
    container,
    env_of,
    pod_template,
    request,
    validate_manifest,
    workload,
)
from tpu.manifests import (
    MAX_CONFIGMAP_PAYLOAD,
    build_manifests,
    callable_payload,
    render_yaml,
    secret_manifest,
)


def train(steps: int, out: str = "") -> int:
    return steps


# -- import boundary -------------------------------------------------------------------------------


def test_importing_tpu_manifests_does_not_import_dask_or_kubernetes():
    code = (
        "import tpu.manifests\n"
        "from fray_dask.types import Entrypoint, JobRequest, ResourceConfig, TpuConfig\n"
        "r = JobRequest(name='t', entrypoint=Entrypoint.from_binary('true'),\n"
        "               resources=ResourceConfig(device=TpuConfig(type='v4-16'), replicas=2))\n"
        "tpu.manifests.render_yaml(tpu.manifests.build_manifests(r, 'img'))\n"
    )
    heavy = heavy_modules_loaded(code, ("dask", "distributed", "kubernetes"))
    assert heavy == [], f"heavy modules imported: {heavy}"


# -- the command -----------------------------------------------------------------------------------


def test_binary_entrypoint_is_the_container_command():
    manifests = build_manifests(request(), IMAGE)
    assert container(manifests)["command"] == ["python", "train.py", "--steps", "10"]
    ep = Entrypoint(binary="bash -c 'echo hi'")
    assert container(build_manifests(request(entrypoint=ep), IMAGE))["command"] == [
        "bash",
        "-c",
        "echo hi",
    ]


# -- callables -------------------------------------------------------------------------------------


def test_callable_goes_into_a_configmap_mounted_for_tpu_run():
    ep = Entrypoint.from_callable(train, [10], {"out": "gs://b/o"})
    req = request("v5litepod-16", name="cb", entrypoint=ep)
    manifests = build_manifests(req, IMAGE)
    assert [m["kind"] for m in manifests] == ["ConfigMap", "Service", "Job"]
    cm = manifests[0]
    assert cm["metadata"]["name"] == "cb-payload"
    assert cm["metadata"]["labels"] == {**LABELS, "fray-dask/job": "cb"}
    blob = base64.b64decode(cm["binaryData"]["payload.pkl"])
    assert blob == callable_payload(req)
    fn, args, kwargs = cloudpickle.loads(blob)
    assert fn(*args, **kwargs) == 10 and kwargs == {"out": "gs://b/o"}
    c = container(manifests)
    assert c["command"] == ["python", "-m", "tpu.run", "/var/run/fray/payload.pkl"]
    assert c["volumeMounts"] == [
        {"name": "payload", "mountPath": "/var/run/fray", "readOnly": True}
    ]
    assert pod_template(manifests)["spec"]["volumes"] == [
        {"name": "payload", "configMap": {"name": "cb-payload"}}
    ]


def test_callable_with_payload_url_has_no_configmap():
    ep = Entrypoint.from_callable(train, [10])
    url = "gs://bucket/jobs/cb-1a2b3c4d/payload.pkl"
    manifests = build_manifests(request(entrypoint=ep), IMAGE, payload_url=url)
    assert [m["kind"] for m in manifests] == ["Job"]
    c = container(manifests)
    assert c["command"] == ["python", "-m", "tpu.run", url]
    assert "volumeMounts" not in c
    assert "volumes" not in pod_template(manifests)["spec"]


@pytest.mark.parametrize(
    "url",
    [
        "gs://b/p.pkl",
        "s3://b/p.pkl",
        "https://h/p.pkl",
        "http://h/p",
        "file:///mnt/p.pkl",
        "/mnt/p",
    ],
)
def test_payload_url_forms_the_bootstrap_can_read(url):
    ep = Entrypoint.from_callable(train, [1])
    assert (
        container(build_manifests(request(entrypoint=ep), IMAGE, payload_url=url))["command"][-1]
        == url
    )


@pytest.mark.parametrize("url", ["payload.pkl", "ftp://h/p.pkl", "memory://p", ""])
def test_payload_url_other_forms_are_refused(url):
    ep = Entrypoint.from_callable(train, [1])
    with pytest.raises(ValueError, match=r"payload_url .* is not one the pod can read: use gs://"):
        build_manifests(request(entrypoint=ep), IMAGE, payload_url=url)


def test_payload_url_with_a_binary_entrypoint_is_refused():
    with pytest.raises(ValueError, match=r"runs the binary .*payload_url carries a callable"):
        build_manifests(request(), IMAGE, payload_url="gs://b/p.pkl")


def test_unpicklable_callable_names_the_job_and_the_cause():
    lock = threading.Lock()
    ep = Entrypoint.from_callable(lambda: lock.acquire())
    req = request(name="locked", entrypoint=ep)
    with pytest.raises(ValueError, match=r"job 'locked': .*cannot be pickled \(TypeError: .*lock"):
        build_manifests(req, IMAGE)
    with pytest.raises(ValueError, match=r"job 'locked'.*open locks, sockets and clients inside"):
        callable_payload(req)


def test_callable_payload_of_a_binary_is_an_error():
    with pytest.raises(ValueError, match=r"runs the binary 'python train.py --steps 10'"):
        callable_payload(request())


def test_payload_too_big_for_a_configmap_suggests_payload_url():
    ep = Entrypoint.from_callable(train, [b"x" * (MAX_CONFIGMAP_PAYLOAD + 1)])
    req = request(name="big", entrypoint=ep)
    with pytest.raises(ValueError, match=r"job 'big': .* bytes, more than .*payload_url='gs://"):
        build_manifests(req, IMAGE)
    # the same callable fits through object storage
    assert len(build_manifests(req, IMAGE, payload_url="gs://b/p.pkl")) == 1


# -- env vars and secrets --------------------------------------------------------------------------

SECRET = "hf_verysecretvalue123"


@pytest.mark.parametrize("shape", [("v6e-8", 1), ("v5litepod-16", 1), ("v4-16", 2)])
def test_secret_env_is_only_a_secret_reference(shape):
    req = request(*shape, name="sec", env={"HF_TOKEN": SECRET, "PLAIN": "visible"})
    manifests = build_manifests(req, IMAGE)
    env = env_of(manifests)
    assert env["HF_TOKEN"] == {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "sec-env", "key": "HF_TOKEN"}},
    }
    text = render_yaml(manifests)
    assert SECRET not in text and SECRET not in repr(manifests)
    assert "visible" in text
    secret = secret_manifest(req, "sec", namespace="ml")
    assert secret == {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "sec-env",
            "namespace": "ml",
            "labels": {**LABELS, "fray-dask/job": "sec"},
        },
        "type": "Opaque",
        "stringData": {"HF_TOKEN": SECRET},
    }
    validate_manifest(secret)


def test_a_secret_value_written_into_the_command_is_refused():
    ep = Entrypoint.from_binary("curl", ["-H", f"Authorization: Bearer {SECRET}", "https://hf.co"])
    with pytest.raises(
        ValueError, match=r"command contains the value of the secret HF_TOKEN.*\$\("
    ):
        build_manifests(request(entrypoint=ep, env={"HF_TOKEN": SECRET}), IMAGE)
    # the Kubernetes way: $(HF_TOKEN) is expanded in the pod from the secret-backed env var
    ep = Entrypoint.from_binary("curl", ["-H", "Authorization: Bearer $(HF_TOKEN)"])
    text = render_yaml(build_manifests(request(entrypoint=ep, env={"HF_TOKEN": SECRET}), IMAGE))
    assert SECRET not in text


def test_a_secret_value_pickled_into_the_configmap_is_refused():
    ep = Entrypoint.from_callable(train, [1], {"out": SECRET})
    req = request(entrypoint=ep, env={"HF_TOKEN": SECRET})
    with pytest.raises(ValueError, match=r"contain the value of the secret HF_TOKEN.*os.environ"):
        build_manifests(req, IMAGE)


def test_env_vars_may_not_override_the_wiring():
    with pytest.raises(ValueError, match=r"sets TPU_WORKER_ID in env_vars.*remove them"):
        build_manifests(request(env={"TPU_WORKER_ID": "3"}), IMAGE)


# -- bad requests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("device", [CpuConfig(), GpuConfig("A100", 2)])
def test_non_tpu_request_is_refused(device):
    req = request(resources=ResourceConfig(device=device))
    with pytest.raises(ValueError, match=r"job 'train' asks for device .* need a TPU; use"):
        build_manifests(req, IMAGE)


@pytest.mark.parametrize("image", ["", "  ", None])
def test_missing_image_is_refused(image):
    with pytest.raises(ValueError, match=r"no container image .*pass image= or EnvironmentConfig"):
        build_manifests(request(), image)  # type: ignore[arg-type]


def test_without_an_image_argument_the_environments_docker_image_is_used():
    env = create_environment(docker_image="registry/train:2")
    req = dataclasses.replace(request(), environment=env)
    assert container(build_manifests(req, None))["image"] == "registry/train:2"  # type: ignore[arg-type]
    assert container(build_manifests(req, "registry/other:1"))["image"] == "registry/other:1"


def test_unknown_tpu_type_is_refused_when_building_the_request():
    with pytest.raises(ValueError, match=r"unknown TPU type 'v9-8'; valid types: v4-8"):
        request("v9-8")


def test_mismatched_topology_is_refused_when_building_the_request():
    with pytest.raises(ValueError, match=r"'v4-16' has topology '2x2x2', not '4x4'"):
        request(resources=ResourceConfig(device=TpuConfig(type="v4-16", topology="4x4")))


@pytest.mark.parametrize("tpu_type", ["v4-8", "v5litepod-4"])
def test_multislice_of_a_small_single_host_type_is_refused(tpu_type):
    with pytest.raises(ValueError, match=rf"'{tpu_type}' .* cannot run multi-slice"):
        request(tpu_type, 2)


# -- names -----------------------------------------------------------------------------------------


def test_name_defaults_to_k8s_name_of_the_request_name():
    manifests = build_manifests(request(name="My_Train.v2"), IMAGE)
    assert workload(manifests)["metadata"]["name"] == "my-train-v2"
    manifests = build_manifests(request(name="My_Train.v2"), IMAGE, name="my-train-v2-0a1b2c3d")
    assert workload(manifests)["metadata"]["name"] == "my-train-v2-0a1b2c3d"


# -- YAML ------------------------------------------------------------------------------------------


def test_render_yaml_is_stable_and_keeps_insertion_order():
    ep = Entrypoint.from_callable(train, [3])
    req = request("v5litepod-16", entrypoint=ep, env={"HF_TOKEN": SECRET, "Z": "1", "A": "2"})
    first = render_yaml(build_manifests(req, IMAGE))
    assert render_yaml(build_manifests(req, IMAGE)) == first
    docs = first.split("---\n")
    assert len(docs) == 3
    for doc in docs:
        assert re.match(r"apiVersion: .*\nkind: .*\nmetadata:\n", doc), doc[:80]
    keys = [line.split(":")[0] for line in docs[2].splitlines() if not line.startswith(" ")]
    assert keys == ["apiVersion", "kind", "metadata", "spec"]
    assert docs[2].index("completionMode") < docs[2].index("template")
    assert list(yaml.safe_load_all(first)) == build_manifests(req, IMAGE)
    assert "&id" not in first and "*id" not in first


def test_render_yaml_writes_shared_dicts_out_in_full():
    labels = {"a": "b"}
    text = render_yaml([{"kind": "X", "metadata": {"labels": labels}, "spec": {"labels": labels}}])
    assert text == "kind: X\nmetadata:\n  labels:\n    a: b\nspec:\n  labels:\n    a: b\n"


# -- schema validation -----------------------------------------------------------------------------

SHAPES = [("v6e-8", 1), ("v5litepod-8", 1), ("v5litepod-16", 1), ("v4-16", 2), ("v6e-8", 2)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("kind", ["binary", "callable", "payload_url"])
def test_every_manifest_passes_the_kubernetes_schemas(shape, kind):
    env = {"HF_TOKEN": SECRET, "PLAIN": "1"}
    if kind == "binary":
        req = request(*shape, env=env)
        manifests = build_manifests(req, IMAGE, namespace="ml")
    else:
        req = request(*shape, env=env, entrypoint=Entrypoint.from_callable(train, [1]))
        url = "gs://b/p.pkl" if kind == "payload_url" else None
        manifests = build_manifests(req, IMAGE, namespace="ml", payload_url=url)
    for m in manifests:
        validate_manifest(m)
    validate_manifest(secret_manifest(req, "train", "ml"))


def _job_manifests() -> list[dict]:
    return build_manifests(request("v5litepod-16"), IMAGE)


def test_validation_rejects_a_misspelt_pod_field():
    job = _job_manifests()[-1]
    job["spec"]["template"]["spec"]["restartPolicyy"] = "Never"
    with pytest.raises(kubernetes_validate.ValidationError, match="restartPolicyy"):
        validate_manifest(job)


def test_validation_rejects_a_wrong_type_in_a_service():
    service = _job_manifests()[0]
    service["spec"]["publishNotReadyAddresses"] = "yes"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_manifest(service)


def test_validation_rejects_a_misspelt_jobset_field_and_a_bad_job_template():
    (js,) = build_manifests(request("v4-16", 2), IMAGE)
    validate_manifest(js)
    js["spec"]["replicatedJob"] = js["spec"].pop("replicatedJobs")
    with pytest.raises(JobSetInvalid, match=r"unknown JobSet field\(s\) \['replicatedJob'\]"):
        validate_manifest(js)
    (js,) = build_manifests(request("v4-16", 2), IMAGE)
    js["spec"]["failurePolicy"]["rules"][0]["action"] = "RestartJobSetIgnoringMaxRestarts"
    with pytest.raises(JobSetInvalid, match="unknown failure rule action"):
        validate_manifest(js)
    (js,) = build_manifests(request("v4-16", 2), IMAGE)
    js["spec"]["replicatedJobs"][0]["template"]["spec"]["completionsMode"] = "Indexed"
    with pytest.raises(kubernetes_validate.ValidationError, match="completionsMode"):
        validate_manifest(js)
