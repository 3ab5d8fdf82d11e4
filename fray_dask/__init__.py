"""fray_dask: the Fray job, job-context and actor API on Dask (issue #4; nothing public yet)."""

__all__: list[str] = []
