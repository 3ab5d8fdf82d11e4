"""tpu.local_pods: build_manifests' pod env resolved for each local pod as Kubernetes would, then
pointed at this machine. Pure: starts no process."""

from __future__ import annotations

import pytest

from fray_dask import (
    Entrypoint,
    JobRequest,
    ResourceConfig,
    TpuConfig,
)
from tests.tpu.jax_jobs import noop, tpu_request
from tpu.local_pods import LOCALHOST, expand, local_pods, resolve_env

# -- env wiring (no processes) --------------------------------------------------------------------


def test_single_host_pod_env():
    (pod,) = local_pods(tpu_request("one", noop, tpu="v6e-8"), name="one")
    assert (pod.slice_index, pod.host) == (0, 0)
    assert pod.env["TPU_WORKER_ID"] == "0"
    assert pod.env["TPU_WORKER_HOSTNAMES"] == LOCALHOST
    assert pod.env["FRAY_JOB_NAME"] == "one"
    assert pod.env["JAX_PLATFORMS"] == "cpu"
    assert int(pod.env["JAX_COORDINATOR_PORT"]) > 0
    assert not [k for k in pod.env if k.startswith("MEGASCALE_")]


def test_multi_host_pods_get_their_worker_ids_and_one_coordinator_port():
    pods = local_pods(tpu_request("multi", noop, tpu="v5litepod-16"), name="multi")
    assert [(p.slice_index, p.host) for p in pods] == [(0, h) for h in range(4)]
    assert [p.env["TPU_WORKER_ID"] for p in pods] == ["0", "1", "2", "3"]
    for pod in pods:
        assert pod.env["TPU_WORKER_HOSTNAMES"] == ",".join([LOCALHOST] * 4)
        assert "MEGASCALE_SLICE_ID" not in pod.env
    assert len({p.env["JAX_COORDINATOR_PORT"] for p in pods}) == 1


def test_jobset_pods_get_slice_ids_and_a_megascale_coordinator():
    pods = local_pods(tpu_request("ms", noop, tpu="v4-16", replicas=3), name="ms")
    layout = [(p.slice_index, p.host) for p in pods]
    assert layout == [(s, h) for s in range(3) for h in range(2)]
    for pod in pods:
        assert pod.env["MEGASCALE_SLICE_ID"] == str(pod.slice_index)
        assert pod.env["TPU_WORKER_ID"] == str(pod.host)
        assert pod.env["MEGASCALE_NUM_SLICES"] == "3"
        assert pod.env["TPU_WORKER_HOSTNAMES"] == f"{LOCALHOST},{LOCALHOST}"
    coordinator = {p.env["MEGASCALE_COORDINATOR_ADDRESS"] for p in pods}
    megascale_port = {p.env["MEGASCALE_PORT"] for p in pods}
    jax_port = {p.env["JAX_COORDINATOR_PORT"] for p in pods}
    assert len(coordinator) == len(megascale_port) == len(jax_port) == 1
    # The manifests give the coordinator MEGASCALE_PORT; the local ports keep that relation.
    assert coordinator == {f"{LOCALHOST}:{megascale_port.pop()}"}
    assert coordinator != {f"{LOCALHOST}:{jax_port.pop()}"}


def test_secrets_and_user_env_vars_reach_the_pods():
    env = {"HF_TOKEN": "hf_abcdef123", "DATA_PATH": "gs://bucket/data", "JAX_PLATFORMS": "tpu"}
    pods = local_pods(tpu_request("sec", noop, env_vars=env), name="sec")
    for pod in pods:
        assert pod.env["HF_TOKEN"] == "hf_abcdef123"  # from the Secret, through secretKeyRef
        assert pod.env["DATA_PATH"] == "gs://bucket/data"
        assert pod.env["JAX_PLATFORMS"] == "tpu"  # the request's own choice wins


def test_process_addresses_get_a_distinct_port_per_host():
    addresses = ",".join(f"pa-{i}.pa:8471" for i in range(4))
    request = tpu_request(
        "pa", noop, tpu="v5litepod-16", env_vars={"TPU_PROCESS_ADDRESSES": addresses}
    )
    pods = local_pods(request, name="pa")
    values = {p.env["TPU_PROCESS_ADDRESSES"] for p in pods}
    assert len(values) == 1  # every host of the slice sees the same list
    entries = values.pop().split(",")
    assert [e.split(":")[0] for e in entries] == [LOCALHOST] * 4
    ports = {int(e.split(":")[1]) for e in entries}
    assert len(ports) == 4 and int(pods[0].env["JAX_COORDINATOR_PORT"]) not in ports


def test_hostnames_that_name_no_pod_or_the_wrong_host_are_refused():
    wrong_order = ",".join(f"wo-{i}.wo:8471" for i in (1, 0, 2, 3))
    request = tpu_request(
        "wo", noop, tpu="v5litepod-16", env_vars={"TPU_PROCESS_ADDRESSES": wrong_order}
    )
    with pytest.raises(ValueError, match="position 0; entry i must be host i"):
        local_pods(request, name="wo")
    request = tpu_request("un", noop, tpu="v5litepod-16", env_vars={"TPU_PROCESS_ADDRESSES": "x:1"})
    with pytest.raises(ValueError, match="names 'x', which is no pod of this IndexedJob"):
        local_pods(request, name="un")


def test_binary_commands_are_expanded_with_the_pod_env():
    request = JobRequest(
        name="bin",
        entrypoint=Entrypoint(binary="echo", args=["w$(TPU_WORKER_ID)", "$$(TPU_WORKER_ID)"]),
        resources=ResourceConfig(device=TpuConfig("v4-16")),
    )
    assert [p.command for p in local_pods(request, name="bin")] == [
        ("echo", "w0", "$(TPU_WORKER_ID)"),
        ("echo", "w1", "$(TPU_WORKER_ID)"),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$(A)", "1"),
        ("x$(A)y$(A)", "x1y1"),
        ("$(B)", "$(B)"),  # unknown: stays literal
        ("$$(A)", "$(A)"),  # escaped
        ("$$", "$"),
        ("$x", "$x"),
        ("a$", "a$"),
        ("$(A", "$(A"),  # unclosed
        ("$(A)$$$(A)", "1$1"),
        ("", ""),
    ],
)
def test_expand_follows_kubernetes_rules(text, expected):
    assert expand(text, {"A": "1"}) == expected


def test_resolve_env_expands_only_earlier_entries():
    entries = [
        {"name": "A", "value": "a-$(B)"},
        {"name": "IDX", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['k']"}}},
        {"name": "B", "value": "b-$(IDX)-$(A)"},
        {"name": "S", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "S"}}},
        {"name": "C", "value": "$(S)"},
        {"name": "O", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "O", "optional": True}}},
    ]
    env = resolve_env(entries, {"k": "7"}, {"sec": {"S": "s3cret"}})
    assert env == {"A": "a-$(B)", "IDX": "7", "B": "b-7-a-$(B)", "S": "s3cret", "C": "s3cret"}


@pytest.mark.parametrize(
    ("source", "match"),
    [
        ({"fieldRef": {"fieldPath": "status.podIP"}}, "fieldRef 'status.podIP'"),
        ({"fieldRef": {"fieldPath": "metadata.annotations['other']"}}, "annotation 'other'"),
        ({"secretKeyRef": {"name": "nope", "key": "K"}}, "Secret 'nope'"),
        ({"configMapKeyRef": {"name": "cm", "key": "K"}}, "valueFrom configMapKeyRef"),
    ],
)
def test_resolve_env_refuses_what_it_cannot_emulate(source, match):
    with pytest.raises(ValueError, match=match):
        resolve_env([{"name": "X", "valueFrom": source}], {"k": "0"}, {})
