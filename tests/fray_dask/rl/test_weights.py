"""Weight transfer (fray_dask/rl/weights.py, flight.py, checkpoint.py, layout.py): pytrees from a
trainer to rollouts through a metadata-only coordinator actor, over Arrow Flight or files."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import time
import uuid

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pyarrow.flight as flight
import pytest

from fray_dask import DaskContext, SyncContext, ThreadContext
from fray_dask.rl import (
    WeightsUnavailable,
    WeightTransferClient,
    WeightTransferConfig,
    WeightTransferServer,
    checkpoint,
    layout,
)
from fray_dask.rl.flight import WeightsFlightServer
from tests.fray_dask import jobs
from tests.fray_dask.rl import rollouts
from tests.fray_dask.rl.trainer_process import weights as trainer_weights

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))


def config(**kwargs) -> WeightTransferConfig:
    return WeightTransferConfig(coordinator_name=f"weights-{uuid.uuid4().hex[:8]}", **kwargs)


def model(step: float) -> dict:
    """Leaves of several dtypes and shapes, nested in dicts, lists and tuples."""
    return {
        "layers": [
            {"w": jnp.full((8, 4), step, jnp.float32), "b": jnp.full(4, step, jnp.bfloat16)},
            {"w": np.full((4, 2), step, np.float32), "scale": np.float32(step)},
        ],
        "embed": (np.full((3, 5), step, np.int8), jnp.zeros((0, 7))),
    }


def same_tree(a, b) -> bool:
    if jax.tree_util.tree_structure(a) != jax.tree_util.tree_structure(b):
        return False
    pairs = zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True)
    return all(
        np.asarray(x).shape == np.asarray(y).shape and np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in pairs
    )


# -- bytes: layout, Flight, files ---------------------------------------------------------------
def test_a_pytree_round_trips_through_its_batches_with_structure_dtypes_and_values():
    tree = model(3)
    flat = layout.Flattened(7, tree)
    batches = list(flat.batches())
    got = layout.Layout.from_schema(batches[0].schema)
    assert got == flat.layout and got.step == 7
    out = layout.rebuild(got, layout.assemble(got, batches), device_put=False)
    assert same_tree(out, tree)
    assert out["layers"][0]["b"].dtype == ml_dtypes.bfloat16
    assert out["embed"][0].dtype == np.int8


def test_a_leaf_larger_than_a_batch_is_split_and_joined(monkeypatch):
    monkeypatch.setattr(layout, "MAX_BATCH_BYTES", 24)
    tree = {"big": np.arange(50, dtype=np.float32), "small": np.ones(2, np.float32)}
    flat = layout.Flattened(1, tree)
    batches = list(flat.batches())
    assert len(batches) == 9 + 1  # 200 bytes in 24-byte batches, then the small leaf
    assert same_tree(
        layout.rebuild(flat.layout, layout.assemble(flat.layout, batches), False), tree
    )


def test_a_stream_cut_short_is_an_error_never_a_partial_tree():
    flat = layout.Flattened(4, model(4))
    batches = list(flat.batches())
    with pytest.raises(ValueError, match=r"step 4 ended inside leaf \d+ after 0 of \d+ bytes"):
        layout.assemble(flat.layout, batches[:-2])
    with pytest.raises(ValueError, match="more batches than their 6 leaves"):
        layout.assemble(flat.layout, batches + batches[-1:])


def test_published_numpy_arrays_are_copied_and_jax_arrays_are_not():
    """Changing a numpy array in place after publishing must not change what rollouts get; JAX
    arrays are immutable, so they are served as they are (no second copy of the weights)."""
    weights = {"np": np.zeros(4, np.float32), "jax": jnp.arange(1 << 16, dtype=jnp.float32)}
    flat = layout.Flattened(1, weights)
    weights["np"][:] = 9
    leaves = dict(zip(["jax", "np"], flat.leaves, strict=True))
    assert not leaves["np"].any()
    assert leaves["jax"].ctypes.data == weights["jax"].unsafe_buffer_pointer()


def test_the_flight_server_holds_the_latest_step_and_one_still_being_read():
    server = WeightsFlightServer()
    try:
        # 64 MB in 64 leaves: more than gRPC buffers, so the server streams as the reader reads.
        layers = {f"w{i}": np.ones((256, 1024), np.float32) for i in range(64)}
        server.publish(layout.Flattened(1, layers))
        assert server.held_steps() == [1]
        client = flight.connect(server.uri)
        reader = client.do_get(flight.Ticket(json.dumps({"step": 1}).encode()))
        reader.read_chunk()  # a rollout part-way through step 1
        server.publish(layout.Flattened(2, {"w": np.full((256, 1024), 2, np.float32)}))
        assert server.held_steps() == [1, 2]
        reader.read_all()
        del reader
        client.close()
        assert server.held_steps() == [2]
        server.publish(layout.Flattened(3, {"w": np.full((256, 1024), 3, np.float32)}))
        assert server.held_steps() == [3]
        with pytest.raises(
            WeightsUnavailable, match="step 2 is no longer served here.*latest step is 3"
        ):
            from fray_dask.rl.flight import fetch

            fetch(server.uri, 2, timeout=10)
    finally:
        server.close()


def test_checkpoint_files_are_whole_and_only_the_newest_are_kept(tmp_path):
    folder = str(tmp_path / "weights")
    for step in range(4):
        path = checkpoint.write(folder, layout.Flattened(step, model(step)), keep=2)
    assert sorted(os.listdir(folder)) == ["step-000000000002.weights", "step-000000000003.weights"]
    got, leaves = checkpoint.read(path)
    assert same_tree(layout.rebuild(got, leaves, device_put=False), model(3))
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) - 100])
    with pytest.raises(ValueError, match="is damaged"):
        checkpoint.read(path)


def test_config_refuses_a_setup_that_carries_nothing():
    with pytest.raises(
        ValueError, match="leaves nothing to carry the weights; pass checkpoint_path"
    ):
        WeightTransferConfig(flight=False)
    with pytest.raises(ValueError, match="keep_checkpoints must be >= 1, got 0"):
        WeightTransferConfig(checkpoint_path="x", keep_checkpoints=0)
    with pytest.raises(ValueError, match="poll_timeout must be > 0 seconds"):
        WeightTransferConfig(poll_timeout=0)


# -- the coordinator's rules, in one process -----------------------------------------------------
@pytest.mark.parametrize("make_ctx", [SyncContext, ThreadContext], ids=["sync", "threads"])
def test_rollouts_get_only_newer_whole_steps_and_stale_ones_are_ignored(make_ctx, caplog):
    with make_ctx() as ctx:
        cfg = config()
        client = WeightTransferClient(cfg, ctx)
        assert client.check_for_update() is None  # nothing published
        with WeightTransferServer(cfg, ctx) as server:
            assert server.serve_weights(1, model(1))
            step, tree = client.check_for_update()
            assert step == 1 and same_tree(tree, model(1))
            leaf = jax.tree_util.tree_leaves(tree)[0]
            assert isinstance(leaf, jax.Array) and leaf.devices() == {jax.devices()[0]}
            assert client.check_for_update() is None  # nothing newer
            assert not server.serve_weights(0, model(0))  # older: ignored
            assert not server.serve_weights(1, model(1))  # the same step again: ignored
            assert client.check_for_update() is None and client.step == 1
            assert server.serve_weights(5, model(5))
            assert client.check_for_update()[0] == 5
            with pytest.raises(ValueError, match="a weights step is an int >= 0, got -1"):
                server.serve_weights(-1, model(0))


def test_a_second_trainer_behind_the_coordinator_is_ignored_and_says_why(caplog):
    with ThreadContext() as ctx:
        cfg = config()
        with WeightTransferServer(cfg, ctx) as first, WeightTransferServer(cfg, ctx) as second:
            assert first.serve_weights(10, model(10))
            assert not second.serve_weights(3, model(3))
            assert "ignored by coordinator" in caplog.text and "it has step 10" in caplog.text
            client = WeightTransferClient(cfg, ctx)
            assert client.check_for_update()[0] == 10


def test_the_coordinator_wait_returns_on_publication_or_deadline():
    with ThreadContext() as ctx:
        cfg = config()
        client = WeightTransferClient(cfg, ctx)
        assert client.wait_for_update(timeout=0.2) is None
        with (
            WeightTransferServer(cfg, ctx) as server,
            concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="test-wait") as pool,
        ):
            waiting = pool.submit(client.wait_for_update, 60)
            server.serve_weights(2, model(2))
            step, tree = waiting.result(timeout=30)
            assert step == 2 and same_tree(tree, model(2))


def test_when_the_trainer_stops_a_checkpoint_still_serves_and_without_one_polls_return_none(
    tmp_path,
):
    with ThreadContext() as ctx:
        for folder in (str(tmp_path / "ckpt"), None):
            cfg = config(checkpoint_path=folder)
            late = WeightTransferClient(cfg, ctx)
            with WeightTransferServer(cfg, ctx) as server:
                server.serve_weights(4, model(4))
            update = late.check_for_update()  # the server is closed
            if folder is None:
                assert update is None and late.step is None
                assert "weights of step 4 unavailable" in late.last_error
            else:
                assert update[0] == 4 and same_tree(update[1], model(4))


# -- across processes on Dask --------------------------------------------------------------------
@pytest.mark.dask
def test_rollouts_in_worker_processes_see_only_whole_steps_in_order(dask_backend):
    """Two rollouts (Dask tasks in the two worker processes) poll while the trainer publishes 30
    steps as fast as it can: each update they get is one whole step (every value equals its step),
    steps only go up, and both end on the last step, as JAX arrays."""
    cfg = config()
    with DaskContext() as ctx, WeightTransferServer(cfg, ctx) as server:
        server.serve_weights(0, trainer_weights(0))
        polls = [ctx.run(rollouts.follow, cfg, 30, 60) for _ in range(2)]
        for step in range(1, 31):
            assert server.serve_weights(step, trainer_weights(step))
        for seen in ctx.get(polls, timeout=90):
            steps = [step for step, _, _ in seen]
            assert steps == sorted(set(steps)) and steps[-1] == 30
            assert all(whole for _, whole, _ in seen)
            assert {kind for _, _, kind in seen} == {"ArrayImpl"}
        assert server.held_steps() == [30]


def _start_trainer(address: str, coordinator: str, step: int, folder: str | None = None):
    args = [address, coordinator, str(step)] + ([folder] if folder else [])
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fray_dask.rl.trainer_process", *args],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()  # the trainer prints once it has published
    assert line.split() == ["published", str(step), "True"], line
    return proc


@pytest.mark.dask
@pytest.mark.parametrize("with_checkpoint", [False, True], ids=["flight-only", "with-checkpoint"])
def test_a_dead_trainer_leaves_rollouts_their_weights_and_its_successor_is_followed(
    dask_backend, tmp_path, with_checkpoint
):
    """SIGKILL the trainer's process: a rollout holding its step keeps it and polls None; a rollout
    that had nothing gets None and a reason at once (no hang), or the step from the checkpoint
    when one was written; when a new trainer publishes, both follow it."""
    folder = str(tmp_path / "ckpt") if with_checkpoint else None
    cfg = config(checkpoint_path=folder)
    with DaskContext() as ctx:
        address = ctx.client.scheduler.address
        first = _start_trainer(address, cfg.coordinator_name, 1, folder)
        early, late = WeightTransferClient(cfg, ctx), WeightTransferClient(cfg, ctx)
        assert early.check_for_update()[0] == 1
        first.kill()
        first.wait(timeout=30)
        assert early.check_for_update() is None and early.step == 1
        started = time.monotonic()
        update = late.check_for_update()
        assert time.monotonic() - started < 20  # an answer, not a hang
        if with_checkpoint:
            assert update[0] == 1 and same_tree(update[1], trainer_weights(1))
        else:
            assert update is None and late.step is None
            assert "weights of step 1 unavailable" in late.last_error
            assert "could not fetch step 1 from grpc://" in late.last_error
        second = _start_trainer(address, cfg.coordinator_name, 2, folder)
        try:
            for client in (early, late):
                step, tree = client.check_for_update()
                assert step == 2 and same_tree(tree, trainer_weights(2))
        finally:
            second.stdin.close()
            second.wait(timeout=30)


@pytest.mark.dask
def test_a_lost_coordinator_is_created_again_and_the_next_publication_restores_the_flow(
    private_dask,
):
    first = private_dask.add_worker("CPU=1,MEMORY=2e9,NON_PREEMPTIBLE=1")
    cfg = config()
    with DaskContext(private_dask.address) as ctx, WeightTransferServer(cfg, ctx) as server:
        client = WeightTransferClient(cfg, ctx)
        server.serve_weights(1, model(1))
        assert client.check_for_update()[0] == 1
        private_dask.kill_worker(first)
        private_dask.add_worker("CPU=1,MEMORY=2e9,NON_PREEMPTIBLE=1")
        assert client.check_for_update() is None  # a new, empty coordinator
        assert client.latest_step() is None
        assert server.serve_weights(2, model(2))
        step, tree = client.check_for_update()
        assert step == 2 and same_tree(tree, model(2))


@pytest.mark.dask
def test_the_coordinator_and_another_actor_on_one_worker_do_not_stall_each_other(private_dask):
    """Dask runs all actors of a worker on one thread. A rollout waiting for the next step must
    not hold up a curriculum on the same worker, and a curriculum busy in a long call must not
    hold up polls: the coordinator's methods run on the worker's event loop."""
    private_dask.add_worker("CPU=1,MEMORY=2e9,NON_PREEMPTIBLE=1")  # the only worker: one thread
    cfg = config()
    with DaskContext(private_dask.address) as ctx, WeightTransferServer(cfg, ctx) as server:
        other = ctx.create_actor(jobs.Counter, preemptible=False, num_cpus=0)
        client = WeightTransferClient(cfg, ctx)
        assert client.latest_step() is None  # the coordinator exists, on the same worker
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="test-wait") as pool:
            waiting = pool.submit(client.wait_for_update, 120)
            assert ctx.get(other.incr.remote(), timeout=30) == 1
            assert not waiting.done()  # the other actor answered while the rollout waits
            server.serve_weights(1, model(1))
            assert waiting.result(timeout=30)[0] == 1
        busy = other.slow.remote(4)
        server.serve_weights(2, model(2))
        assert client.check_for_update()[0] == 2
        assert not busy.done()  # the poll was answered while the other actor is busy
        assert ctx.get(busy, timeout=30) == 1
