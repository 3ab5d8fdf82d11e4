"""deploy/k8s: DaskCluster manifests (the rendered file and generated ones) against the CRD shipped
inside the installed dask-kubernetes, and rbac.yaml against the Kubernetes schemas.

No Kubernetes API server runs here. Standing in for its admission: the CRD's openAPIV3Schema with
unknown fields refused (what `kubectl apply`'s default strict field validation does), and
kubernetes-validate's strict schemas for core kinds and for the PodSpec/ServiceSpec the CRD
source refers to.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from fray_dask import kube, kube_spec
from fray_dask.kube import KubeSpec, dask_cluster_manifest, parse_kube_spec, render_yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
K8S_VERSION = "1.31.0"  # the Kubernetes schemas every core object is checked against
OPERATOR = importlib.resources.files("dask_kubernetes") / "operator"
# Where the CRD comes from: the helm chart's copy (the dask project resolved every $ref in it; it
# is what `helm install ... dask-kubernetes-operator` applies), and the source CRD whose $refs we
# resolve ourselves.
HELM_CRD = "deployment/helm/dask-kubernetes-operator/crds/daskcluster.yaml"
SOURCE_CRD = "customresources/daskcluster.yaml"
K8S_DEFINITIONS = "https://kubernetes.io/api/_definitions.json"
OBJECT_META = f"{K8S_DEFINITIONS}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


@functools.cache
def _k8s_definitions() -> dict[str, Any]:
    schemas = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    text = (schemas / f"v{K8S_VERSION}-local-strict" / "_definitions.json").read_text()
    return json.loads(text)["$defs"]


def _closed(node: Any) -> Any:
    """A copy of a CRD schema in which every object with `properties` refuses other keys (as the
    API server does for a structural schema under strict field validation)."""
    if isinstance(node, list):
        return [_closed(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: v if k in ("enum", "default") else _closed(v) for k, v in node.items()}
    if "properties" in out and "additionalProperties" not in out:
        if not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    return out


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(_refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node))
    return set()


def _load(path: str) -> Any:
    return yaml.safe_load((OPERATOR / path).read_text())


def _registry(crd: dict) -> tuple[Registry, dict[str, str]]:
    """The documents the CRD's `python://` $refs name, and what stands in for each:
    `python://dask_kubernetes/<path>` is that file of the installed package; the PodSpec and
    ServiceSpec of `python://k8s_crd_resolver/schemata/k8s-1.21.1.json` (a build-time tool that is
    not installed) are kubernetes-validate's strict definitions of K8S_VERSION."""
    definitions = _k8s_definitions()
    k8s = Resource.from_contents({"definitions": definitions, "$defs": definitions}, DRAFT202012)
    resources = [(K8S_DEFINITIONS, k8s)]
    sources: dict[str, str] = {}
    pending, seen = {r.split("#")[0] for r in _refs(crd)}, set()
    while pending:
        uri = pending.pop()
        seen.add(uri)
        if uri.startswith("python://dask_kubernetes/operator/"):
            document = _load(uri.removeprefix("python://dask_kubernetes/operator/"))
            resources.append((uri, Resource.from_contents(_closed(document), DRAFT202012)))
            sources[uri] = "the installed dask_kubernetes package"
            pending |= {r.split("#")[0] for r in _refs(document)} - seen
        elif re.fullmatch(r"python://k8s_crd_resolver/schemata/k8s-[\d.]+\.json", uri):
            resources.append((uri, k8s))
            sources[uri] = f"kubernetes-validate {K8S_VERSION} strict definitions"
        else:
            raise AssertionError(f"the CRD refers to {uri}, which this test cannot resolve")
    return Registry().with_resources(resources), sources


@functools.cache
def _validator(which: str) -> jsonschema.Draft202012Validator:
    """A validator of whole DaskCluster objects: apiVersion and kind as the CRD declares them,
    metadata as ObjectMeta, spec as the CRD's schema (closed), nothing else."""
    crd = _load(HELM_CRD if which == "helm chart CRD" else SOURCE_CRD)
    version = crd["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    registry, _ = _registry(crd)
    if "$ref" in schema:  # the source CRD: its root is a reference into templates.yaml
        spec_schema = {"$ref": schema["$ref"] + "/properties/spec"}
    else:
        spec_schema = _closed(schema["properties"]["spec"])
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    wrapper = {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": f"{group}/{version['name']}"},
            "kind": {"const": kind},
            "metadata": {"$ref": OBJECT_META},
            "spec": spec_schema,
        },
        "additionalProperties": False,
    }
    return jsonschema.Draft202012Validator(wrapper, registry=registry)


CRDS = ["helm chart CRD", "source CRD"]
SPECS = [
    KubeSpec(),
    KubeSpec(name="big", workers=8, cpu=4, memory="16Gi", gpu=1, namespace="data"),
    KubeSpec(preemptible=False, timeout=60),
    parse_kube_spec("kube?name=a&workers=1&image=us-docker.pkg.dev/p/r/zephyr:1.0&memory=512m"),
]


def _errors(which: str, manifest: dict) -> list[str]:
    return [
        f"{list(e.absolute_path)}: {e.message}" for e in _validator(which).iter_errors(manifest)
    ]


def test_the_source_crd_refs_resolve_to_the_package_and_the_kubernetes_definitions():
    """Every $ref of the source CRD (transitively) is one of the two documents we resolve."""
    _, sources = _registry(_load(SOURCE_CRD))
    assert sources == {
        "python://dask_kubernetes/operator/customresources/templates.yaml": (
            "the installed dask_kubernetes package"
        ),
        "python://k8s_crd_resolver/schemata/k8s-1.21.1.json": (
            f"kubernetes-validate {K8S_VERSION} strict definitions"
        ),
    }


@pytest.mark.parametrize("which", CRDS)
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name + ("-gpu" if s.gpu else ""))
def test_generated_manifests_are_valid_daskclusters(which, spec):
    assert _errors(which, dask_cluster_manifest(spec)) == []


@pytest.mark.parametrize("which", CRDS)
def test_the_deploy_file_is_a_valid_daskcluster(which):
    documents = list(yaml.safe_load_all((DEPLOY / "daskcluster.yaml").read_text()))
    assert len(documents) == 1
    assert _errors(which, documents[0]) == []


def _break_replicas(m: dict) -> None:
    m["spec"]["worker"]["replicas"] = "two"


def _misspell_a_container_field(m: dict) -> None:
    m["spec"]["worker"]["spec"]["containers"][0]["imagee"] = m["spec"]["worker"]["spec"][
        "containers"
    ][0].pop("image")


def _drop_the_service(m: dict) -> None:
    del m["spec"]["scheduler"]["service"]


def _wrong_kind(m: dict) -> None:
    m["kind"] = "DaskClusters"


def _stray_top_level_key(m: dict) -> None:
    m["sepc"] = {}


@pytest.mark.parametrize("which", CRDS)
@pytest.mark.parametrize(
    "damage, fragment",
    [
        (_break_replicas, "'two' is not of type 'integer'"),
        (_misspell_a_container_field, "'imagee' was unexpected"),
        (_drop_the_service, "'service' is a required property"),
        (_wrong_kind, "'DaskCluster' was expected"),
        (_stray_top_level_key, "'sepc' was unexpected"),
    ],
    ids=lambda v: getattr(v, "__name__", "")[1:] or None,
)
def test_broken_manifests_are_rejected(which, damage, fragment):
    manifest = dask_cluster_manifest(KubeSpec())
    damage(manifest)
    errors = _errors(which, manifest)
    assert any(fragment in e for e in errors), errors


def test_the_deploy_file_is_the_rendered_default_spec():
    """deploy/k8s/daskcluster.yaml never drifts from the code: it is DEPLOY_SPEC rendered (every
    default but a fixed image)."""
    spec = parse_kube_spec(kube_spec.DEPLOY_SPEC)
    assert spec == KubeSpec(image=spec.image)
    text = (DEPLOY / "daskcluster.yaml").read_text()
    assert text == render_yaml(spec), f"out of date; run `{kube_spec.RENDER_COMMAND}`"
    assert yaml.safe_load(text) == dask_cluster_manifest(spec)


# -- rbac.yaml -----------------------------------------------------------------------------------

ROLE_RULES = {
    ("", "services"): {"create", "get", "list", "watch", "delete"},
    ("", "configmaps"): {"create", "get", "list", "watch", "delete"},
    ("", "secrets"): {"create", "get", "list", "watch", "delete"},
    ("", "pods"): {"get", "list", "watch"},
    ("", "pods/log"): {"get", "list"},
    ("batch", "jobs"): {"create", "get", "list", "watch", "delete"},
    ("jobset.x-k8s.io", "jobsets"): {"create", "get", "list", "watch", "delete"},
}


@pytest.fixture(scope="module")
def rbac() -> dict[str, dict]:
    objects = list(yaml.safe_load_all((DEPLOY / "rbac.yaml").read_text()))
    return {o["kind"]: o for o in objects}


def test_rbac_objects_are_valid_kubernetes_objects(rbac):
    assert sorted(rbac) == ["Role", "RoleBinding", "ServiceAccount"]
    for obj in rbac.values():
        assert kubernetes_validate.validate(obj, K8S_VERSION, strict=True) == "1.31"


def test_rbac_is_limited_to_one_namespace_and_the_launchers_resources(rbac):
    assert sorted(rbac) == ["Role", "RoleBinding", "ServiceAccount"]  # no cluster-wide kinds
    assert {o["metadata"]["namespace"] for o in rbac.values()} == {"default"}
    assert "*" not in json.dumps(rbac["Role"]["rules"])
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in rbac["Role"]["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}  # no resourceNames, no URLs
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    assert granted == ROLE_RULES


def test_rbac_binds_the_role_to_the_launchers_service_account(rbac):
    binding = rbac["RoleBinding"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": rbac["Role"]["metadata"]["name"],
    }
    account = rbac["ServiceAccount"]["metadata"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}
    ]
    assert account["name"] == "fray-launcher"


def test_the_readme_gives_the_commands_the_code_and_errors_refer_to():
    readme = (DEPLOY / "README.md").read_text()
    for command in (
        kube.OPERATOR_INSTALL,
        kube_spec.RENDER_COMMAND,
        "kubectl apply -f deploy/k8s/rbac.yaml -f deploy/k8s/daskcluster.yaml",
        "kubectl apply --server-side -f https://github.com/kubernetes-sigs/jobset/releases/download/",
    ):
        assert command in readme, command
