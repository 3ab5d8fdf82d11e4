"""The device of a job's replicas: CpuConfig, GpuConfig or TpuConfig (a slice of the TPU table).

Plain frozen data, re-exported by fray_dask.types; imports no Dask, Kubernetes, zephyr or tpu.
"""

from __future__ import annotations

from dataclasses import InitVar, dataclass

from fray_dask.topology import TpuTopology, check_topology

__all__ = ["CpuConfig", "DeviceConfig", "GpuConfig", "TpuConfig"]


@dataclass(frozen=True)
class CpuConfig:
    """No accelerator: the job needs only CPU cores and memory."""

    kind = "cpu"


@dataclass(frozen=True)
class GpuConfig:
    """`count` GPUs of `type` ("A100", "H100", or "auto" for any) per replica; `variant=` is an
    alias of `type`."""

    type: str = "auto"
    count: int = 1
    variant: InitVar[str | None] = None

    kind = "gpu"

    def __post_init__(self, variant: str | None) -> None:
        if variant is not None:
            object.__setattr__(self, "type", variant)
        if not isinstance(self.type, str) or not self.type.strip():
            raise ValueError(f"GpuConfig type must be a GPU name such as 'A100', got {self.type!r}")
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
            raise ValueError(
                f"GpuConfig count must be a whole number >= 1, got {self.count!r}; "
                "use CpuConfig() for a job without GPUs"
            )


@dataclass(frozen=True)
class TpuConfig:
    """One TPU slice of `type` (e.g. "v5litepod-16", "v4-8"); `variant=` is an alias of `type`.

    `topology` defaults to the type's own ("4x4" for v5litepod-16); a different one is an error.
    `chip_count()` is the chips of one slice, `vm_count()` its hosts.
    """

    type: str | None = None
    topology: str | None = None
    variant: InitVar[str | None] = None

    kind = "tpu"

    def __post_init__(self, variant: str | None) -> None:
        if variant is not None:
            if self.type is not None and self.type != variant:
                raise ValueError(
                    f"TpuConfig got type={self.type!r} and variant={variant!r}; "
                    "variant is an alias of type, give one of them"
                )
            object.__setattr__(self, "type", variant)
        if self.type is None:
            raise ValueError("TpuConfig needs a TPU type, e.g. TpuConfig(type='v5litepod-16')")
        spec = check_topology(self.type, self.topology)
        object.__setattr__(self, "type", spec.name)
        object.__setattr__(self, "topology", spec.topology)

    @property
    def spec(self) -> TpuTopology:
        """The slice's row in the TPU table (accelerator label, topology, chips, hosts)."""
        return check_topology(self.type, self.topology)

    def chip_count(self) -> int:
        """Chips in one slice (v5litepod-16 -> 16, v4-8 -> 4)."""
        return self.spec.chips

    def vm_count(self) -> int:
        """Hosts (VMs) in one slice (v5litepod-16 -> 4, v4-8 -> 1)."""
        return self.spec.hosts


DeviceConfig = CpuConfig | GpuConfig | TpuConfig
