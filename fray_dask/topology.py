"""The table of Google Cloud TPU slice types: chips, hosts and the GKE node-label values of each.

Pure data, standard library only: imports nothing from zephyr or tpu, and no Dask or Kubernetes.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "TPU_TYPES",
    "TpuTopology",
    "all_topologies",
    "check_multislice",
    "check_topology",
    "get_topology",
]


@dataclass(frozen=True, slots=True)
class TpuTopology:
    """One TPU slice type: `hosts` VMs of `chips_per_host` chips each, `chips` in all.

    `accelerator` and `topology` are the values GKE expects in the node labels
    `cloud.google.com/gke-tpu-accelerator` and `cloud.google.com/gke-tpu-topology`.
    """

    name: str
    generation: str
    accelerator: str
    topology: str
    chips: int
    chips_per_host: int
    hosts: int

    @property
    def multi_host(self) -> bool:
        """True when the slice spans more than one VM (a job needs one pod per host)."""
        return self.hosts > 1

    @property
    def multislice(self) -> bool:
        """True when several slices of this type can train together over the data-center network
        (MEGASCALE). The smallest single-host slices cannot: v4/v5p 2x2x1 and v5e/v6e 1x1 and 2x2.
        """
        return self.multi_host or self.chips >= 8

    def chip_count(self) -> int:
        """Chips in the whole slice."""
        return self.chips

    def vm_count(self) -> int:
        """VMs (hosts) in the slice."""
        return self.hosts


# v4 and v5p names count TensorCores (2 per chip): "v4-N" has N // 2 chips, on 3-D topologies.
_3D_TOPOLOGIES = {
    8: "2x2x1",
    16: "2x2x2",
    32: "2x2x4",
    64: "2x4x4",
    128: "4x4x4",
    256: "4x4x8",
    512: "4x8x8",
    1024: "8x8x8",
    2048: "8x8x16",
    4096: "8x16x16",
    8192: "16x16x16",
}
# v5e and v6e names count chips, on 2-D topologies; sizes 1, 4 and 8 are single-host.
_2D_TOPOLOGIES = {
    1: "1x1",
    4: "2x2",
    8: "2x4",
    16: "4x4",
    32: "4x8",
    64: "8x8",
    128: "8x16",
    256: "16x16",
}
_SINGLE_HOST_2D = (1, 4, 8)

# generation -> (name prefix, GKE accelerator label, sizes in the name). Order is table order.
# A full v4 pod is v4-4096; only v5p goes up to 8192.
_GENERATIONS = {
    "v4": ("v4", "tpu-v4-podslice", tuple(n for n in _3D_TOPOLOGIES if n <= 4096)),
    "v5e": ("v5litepod", "tpu-v5-lite-podslice", tuple(_2D_TOPOLOGIES)),
    "v5p": ("v5p", "tpu-v5p-slice", tuple(_3D_TOPOLOGIES)),
    "v6e": ("v6e", "tpu-v6e-slice", tuple(_2D_TOPOLOGIES)),
}
# Name prefixes accepted for a generation's canonical one: "v5e-16" resolves to "v5litepod-16".
_PREFIX_ALIASES = {"v5e": "v5litepod"}


def _build_table() -> tuple[TpuTopology, ...]:
    entries = []
    for generation, (prefix, accelerator, sizes) in _GENERATIONS.items():
        for n in sizes:
            if generation in ("v4", "v5p"):
                topology, chips, per_host = _3D_TOPOLOGIES[n], n // 2, 4
            else:
                topology, chips = _2D_TOPOLOGIES[n], n
                per_host = n if n in _SINGLE_HOST_2D else 4
            entries.append(
                TpuTopology(
                    name=f"{prefix}-{n}",
                    generation=generation,
                    accelerator=accelerator,
                    topology=topology,
                    chips=chips,
                    chips_per_host=per_host,
                    hosts=chips // per_host,
                )
            )
    return tuple(entries)


_TABLE = _build_table()
_BY_NAME = {t.name: t for t in _TABLE} | {
    f"{alias}-{t.name.rpartition('-')[2]}": t
    for alias, canonical in _PREFIX_ALIASES.items()
    for t in _TABLE
    if t.name.rpartition("-")[0] == canonical
}

TPU_TYPES: tuple[str, ...] = tuple(t.name for t in _TABLE)


def all_topologies() -> tuple[TpuTopology, ...]:
    """Every known slice type, grouped by generation (v4, v5e, v5p, v6e), smallest first."""
    return _TABLE


def get_topology(tpu_type: str) -> TpuTopology:
    """Return the table entry for `tpu_type`, e.g. "v5litepod-16" or its alias "v5e-16".

    Case and surrounding whitespace are ignored. An unknown name raises ValueError listing the valid
    names (and the sizes of its generation when the prefix is known); a non-string raises TypeError.
    """
    if not isinstance(tpu_type, str):
        raise TypeError(
            f"TPU type must be a str such as 'v4-8', got {type(tpu_type).__name__} {tpu_type!r}; "
            "pass the slice type name"
        )
    key = tpu_type.strip().lower()
    if key in _BY_NAME:
        return _BY_NAME[key]
    prefix = key.rpartition("-")[0]
    prefix = _PREFIX_ALIASES.get(prefix, prefix)
    hint = ""
    for gen_prefix, _, sizes in _GENERATIONS.values():
        if prefix == gen_prefix:
            hint = f"; {gen_prefix} sizes are {', '.join(map(str, sizes))}"
    raise ValueError(f"unknown TPU type {tpu_type!r}{hint}; valid types: {', '.join(TPU_TYPES)}")


def check_topology(tpu_type: str, topology: str | None) -> TpuTopology:
    """Return the entry for `tpu_type`, checking that `topology` (when not None) agrees with it.

    Topologies compare after stripping and lowercasing ("2X2X2" equals "2x2x2"). A mismatch raises
    ValueError naming the expected topology and the same-generation type that has the given one.
    """
    entry = get_topology(tpu_type)
    if topology is None:
        return entry
    if not isinstance(topology, str):
        raise TypeError(
            f"topology must be a str such as {entry.topology!r} or None, "
            f"got {type(topology).__name__} {topology!r}"
        )
    given = topology.strip().lower()
    if given == entry.topology:
        return entry
    matches = [t.name for t in _TABLE if t.generation == entry.generation and t.topology == given]
    fix = (
        f"pick the type whose topology is {given!r} ({', '.join(matches)})"
        if matches
        else f"pass topology={entry.topology!r}"
    )
    raise ValueError(
        f"TPU type {entry.name!r} has topology {entry.topology!r}, not {topology!r}; "
        f"omit topology= or {fix}"
    )


def check_multislice(entry: TpuTopology, slices: int) -> None:
    """Raises ValueError when `slices` > 1 slices of `entry` cannot run as one multi-slice job."""
    if slices > 1 and not entry.multislice:
        larger = [
            t.name
            for t in _TABLE
            if t.generation == entry.generation and t.multislice and t.chips > entry.chips
        ][:2]
        raise ValueError(
            f"TPU type {entry.name!r} (topology {entry.topology}) cannot run multi-slice, but "
            f"{slices} slices (replicas) were requested; use replicas=1, or a type that can "
            f"({' or '.join(larger)})"
        )
