"""Whether a resource request fits any Dask worker, and why not: pure checks on the workers' info
dicts (as `Client.scheduler_info()` gives them). No Dask import."""

from __future__ import annotations


def unsatisfiable(wanted: dict, workers: list[dict]) -> str | None:
    """Why no worker can run a task restricted to `wanted` resources, or None if one can."""
    offers = [w.get("resources", {}) for w in workers]
    if any(all(offer.get(k, 0) >= v for k, v in wanted.items()) for offer in offers):
        return None
    best = {k: max(offer.get(k, 0) for offer in offers) for k in wanted}
    asked = ", ".join(f"{k}={format_resource(k, v)}" for k, v in wanted.items())
    has = ", ".join(f"{k}={format_resource(k, v)}" for k, v in best.items())
    return (
        f"resource request {asked} cannot be satisfied by any of the {len(workers)} Dask "
        f"workers (the largest offer {has}); lower --memory/--num-cpus/--num-gpus, or add "
        'workers that advertise enough (dask worker --resources "MEMORY=...,CPU=...,GPU=...")'
    )


def format_resource(name: str, value: float) -> str:
    """MEMORY in decimal units, as users write it (--memory 8GB is 8e9 bytes)."""
    if name == "MEMORY":
        for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
            if value >= size:
                return f"{value / size:.3g}{unit}"
        return f"{value:.0f}B"
    return f"{value:g}"
