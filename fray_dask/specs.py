"""The syntax of cluster specs: the FRAY_CLUSTER_SPEC variable and `parse_spec`, shared by
fray_dask.schemes (what each spec builds) and fray_dask.connect (which cluster a job's own
pipelines reach). Pure: the standard library only.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

SPEC_VARIABLE = "FRAY_CLUSTER_SPEC"


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """`"dask?address=tcp://h:8786"` -> `("dask", {"address": "tcp://h:8786"})`."""
    parts = urlsplit(spec.strip())
    scheme = parts.path or parts.scheme
    if parts.scheme and parts.netloc:  # "dask://..." is not a form we take
        scheme = spec
    params = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    return scheme, params
