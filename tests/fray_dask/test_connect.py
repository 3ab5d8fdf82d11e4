"""fray_dask.connect: one way into a Dask cluster for zephyr and fray_dask, one cache of clients per
process (counted, closed by the last user), one error for a scheduler that does not answer."""

from __future__ import annotations

import logging
import socket

import distributed
import pytest

from fray_dask import DaskCluster, DaskContext
from fray_dask.connect import connect
from fray_dask.connection import ClusterUnreachable, refusing_clusters
from fray_dask.embedded import running_embedded
from tests.imports import heavy_modules_loaded
from zephyr import Dataset, ZephyrError
from zephyr.backends.dask import DaskBackend

pytestmark = pytest.mark.dask


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def scheduler():
    """A scheduler with one worker, reached by its address."""
    with distributed.LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        protocol="tcp://",
        host="127.0.0.1",
        dashboard_address=":0",
        silence_logs=logging.CRITICAL,
    ) as cluster:
        yield cluster.scheduler_address


def test_an_unreachable_scheduler_is_one_error_whoever_asks():
    address = f"tcp://127.0.0.1:{_closed_port()}"
    messages = {}
    for name, attempt in {
        "connect": lambda: connect(address, timeout=1),
        "DaskCluster": lambda: DaskCluster(address, timeout=1),
        "DaskContext": lambda: DaskContext(address, timeout=1),
        "DaskBackend": lambda: list(
            DaskBackend(address, connect_timeout=1).execute(Dataset.from_list([1]))
        ),
    }.items():
        with pytest.raises(ClusterUnreachable) as error:
            attempt()
        assert isinstance(error.value, ConnectionError)
        messages[name] = str(error.value)
    assert len(set(messages.values())) == 1, messages
    assert f"cannot reach the Dask scheduler at {address!r} within 1 s" in messages["connect"]


def test_through_zephyr_the_error_is_also_a_zephyr_error():
    address = f"tcp://127.0.0.1:{_closed_port()}"
    with pytest.raises(ZephyrError, match="cannot reach the Dask scheduler"):
        list(DaskBackend(address, connect_timeout=1).execute(Dataset.from_list([1])))


def test_zephyr_and_fray_share_one_client_per_address_closed_by_its_last_user(scheduler):
    backend = DaskBackend(scheduler)
    assert list(backend.execute(Dataset.from_list([1, 2]).map(str))) == ["1", "2"]
    cluster = DaskCluster(scheduler)
    context = DaskContext(scheduler)
    client = backend.client
    assert cluster.client is client and context.client is client
    backend.close()
    cluster.close()
    assert client.status == "running", "one user (the context) still holds it"
    assert context.get(context.run(sum, [1, 2])) == 3
    context.close()
    assert client.status in ("closing", "closed")


def test_the_embedded_cluster_outlives_its_users(dask_backend):
    embedded = running_embedded()
    assert embedded is not None
    conn = connect()
    assert conn is embedded
    conn.release()
    assert embedded.running


def test_refusing_clusters_refuses_every_way_in(scheduler):
    class Refused(Exception):
        pass

    with refusing_clusters(lambda what: Refused(what)):
        for address in (None, scheduler, "kube?name=x"):
            with pytest.raises(Refused):
                connect(address)
    connect(scheduler).release()  # allowed again after the block


def test_importing_the_refusal_and_the_error_loads_no_dask():
    code = "import fray_dask.connection\n"
    assert heavy_modules_loaded(code, ("dask", "distributed")) == []


def test_a_pipeline_inside_a_job_runs_on_the_job_s_dask_cluster(fray_dask_cluster):
    """A job launched on a Dask cluster that runs a zephyr pipeline with the default backend uses
    the job's cluster (FRAY_CLUSTER_SPEC in its environment), not an embedded one of its own."""
    from fray_dask import Entrypoint, JobRequest
    from tests.fray_dask import jobs

    job = fray_dask_cluster.launch(
        JobRequest("pipeline-in-job", Entrypoint.from_callable(jobs.pipeline_cluster))
    )
    ((address, started_its_own, doubled),) = fray_dask_cluster.result(job, timeout=120)
    assert address == fray_dask_cluster.address
    assert not started_its_own
    assert doubled == [2, 4, 6]
