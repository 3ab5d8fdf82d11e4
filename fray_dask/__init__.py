"""fray_dask: the Fray job, job-context and actor API on Dask (built in issue #4; nothing public yet)."""

__all__: list[str] = []
