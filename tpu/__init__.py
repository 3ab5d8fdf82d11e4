"""tpu: GKE TPU job manifests and launcher behind the fray_dask Cluster API (built in issue #5;
nothing public yet)."""

__all__: list[str] = []
