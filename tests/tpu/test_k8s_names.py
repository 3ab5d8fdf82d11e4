"""Tests of tpu/k8s_names.py: k8s_name turns job ids into short DNS labels, and the names derived
from them (pod hostnames of the largest JobSet) stay valid. Pure: no Dask, no API server.
"""

from __future__ import annotations

import re

import pytest

from tests.tpu.manifest_checks import (
    COMPLETION_INDEX,
    DNS_LABEL,
    IMAGE,
    JOBSET_INDEX,
    container,
    expand_env,
    request,
)
from tpu.k8s_names import K8S_NAME_MAX, k8s_name
from tpu.manifests import build_manifests


@pytest.mark.parametrize(
    "job_id, expected",
    [
        ("train", "train"),
        ("Train-Model-1a2b3c4d", "train-model-1a2b3c4d"),
        ("my.job_v2-1a2b3c4d", "my-job-v2-1a2b3c4d"),
        ("a__b..c--d", "a-b-c-d"),
        ("-edge-", "edge"),
        ("7b-finetune-1a2b3c4d", "job-7b-finetune-1a2b3c4d"),
        ("x" * 60 + "-1a2b3c4d", "x" * 31 + "-1a2b3c4d"),
        ("a" * 30 + "." * 5 + "b" * 30 + "-deadbeef", "a" * 30 + "-deadbeef"),
    ],
)
def test_k8s_name(job_id, expected):
    assert k8s_name(job_id) == expected


@pytest.mark.parametrize(
    "job_id",
    ["A" * 63, "Long.Name_" * 6 + "-0123abcd", "9" * 50, "ümlaut-job", "a-" * 30 + "b"],
)
def test_k8s_name_is_a_short_dns_label(job_id):
    name = k8s_name(job_id)
    assert len(name) <= K8S_NAME_MAX
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name), name


def test_long_names_without_suffix_stay_distinct():
    a, b = k8s_name("p" * 50 + "a"), k8s_name("p" * 50 + "b")
    assert a != b and len(a) == len(b) == K8S_NAME_MAX


def test_k8s_name_of_nothing_usable_is_an_error():
    with pytest.raises(ValueError, match=r"no letters or digits"):
        k8s_name("._-")


def test_bad_name_argument_is_refused():
    with pytest.raises(ValueError, match=r"'Bad_Name' must be a DNS-1035 label .*k8s_name"):
        build_manifests(request(), IMAGE, name="Bad_Name")


def test_longest_names_fit_every_derived_name():
    """Pod hostnames `<name>-slice-<j>-<i>` and Job names are DNS labels (<= 63)."""
    name = k8s_name("n" * 80 + "-0123abcd")
    req = request("v5litepod-256", 4)  # 64 hosts per slice
    (js,) = build_manifests(req, IMAGE, name=name)
    hosts = expand_env(container([js])["env"], {JOBSET_INDEX: "3", COMPLETION_INDEX: "63"})
    for host in hosts["TPU_WORKER_HOSTNAMES"].split(","):
        hostname = host.split(".")[0]
        assert len(hostname) <= 63 and DNS_LABEL.match(hostname)
