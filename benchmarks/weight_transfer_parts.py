"""The child processes of benchmarks/weight_transfer.py: the trainer (or raw TCP sender) that builds
and publishes a model-shaped JAX pytree, the receivers that fetch it when released, and the busy
actor of the poll-latency check. Each reports to the driver through a queue, never by printing.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import resource
import socket
import threading
import time
import traceback
from collections.abc import Iterator
from typing import Any

import numpy as np
import psutil

STEP = 1  # the one step every row publishes


# --- the weights ---------------------------------------------------------------------------------


def model_shapes(gb: float, leaves: int) -> dict[str, Any]:
    """A nested dict of float32 shapes that looks like a transformer: embed, pos_embed, unembed,
    final_norm and (leaves - 4) // 8 layers of 8 leaves (4 attention matrices, 2 MLP matrices, 2
    norms), the remainder as MLP biases of the first layers; exactly `leaves` leaves, the width
    chosen (a multiple of 8) so the total is as close as it gets to `gb` GB."""
    if leaves < 12:
        raise SystemExit(f"--leaves must be at least 12 (one layer of 8 plus 4), got {leaves}")
    layers, extra = divmod(leaves - 4, 8)

    def shapes(d: int) -> dict[str, Any]:
        vocab, ffn = 4 * d, 4 * d
        tree: dict[str, Any] = {
            "embed": (vocab, d),
            "pos_embed": (1024, d),
            "final_norm": (d,),
            "unembed": (d, vocab),
            "layers": {},
        }
        for i in range(layers):
            mlp: dict[str, Any] = {"w_in": (d, ffn), "w_out": (ffn, d)}
            if i < extra:
                mlp["b_in"] = (ffn,)
            tree["layers"][f"layer_{i:02d}"] = {
                "attn": {"wq": (d, d), "wk": (d, d), "wv": (d, d), "wo": (d, d)},
                "attn_norm": (d,),
                "mlp": mlp,
                "mlp_norm": (d,),
            }
        return tree

    target = gb * 1e9
    d = 8
    while abs(tree_bytes(shapes(d + 8)) - target) < abs(tree_bytes(shapes(d)) - target):
        d += 8
    return shapes(d)


def _shape_leaves(tree: Any) -> Iterator[tuple[int, ...]]:
    if isinstance(tree, dict):
        for key in sorted(tree):
            yield from _shape_leaves(tree[key])
    else:
        yield tree


def tree_bytes(shapes: dict[str, Any]) -> int:
    return sum(4 * int(np.prod(s)) for s in _shape_leaves(shapes))


def build_tree(gb: float, leaves: int, seed: int = 0) -> Any:
    """The weights: `model_shapes(gb, leaves)` filled with N(0, 0.02) float32 as JAX arrays on
    CPU, built one leaf at a time (the only transient copy is one leaf)."""
    import jax

    rng = np.random.default_rng(seed)

    def fill(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: fill(node[key]) for key in sorted(node)}
        host = rng.standard_normal(node, dtype=np.float32)
        host *= 0.02
        return jax.device_put(host)

    tree = fill(model_shapes(gb, leaves))
    return jax.block_until_ready(tree)


def fingerprints(tree: Any) -> list[tuple[tuple[int, ...], float]]:
    """Per leaf in tree order: its shape and the float64 sum of every 1009th element (cheap, and
    equal on both sides only if the bytes landed in the right leaves)."""
    import jax

    out = []
    for leaf in jax.tree_util.tree_leaves(tree):
        host = np.asarray(leaf)
        out.append((tuple(host.shape), float(host.reshape(-1)[::1009].astype(np.float64).sum())))
    return out


def host_leaves(tree: Any) -> tuple[list[np.ndarray], Any]:
    """The leaves as numpy views of the JAX arrays (no copy on CPU), and the tree structure."""
    import jax

    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return [np.asarray(leaf) for leaf in leaves], treedef


def _jax_ready() -> None:
    """Imports JAX and starts its CPU backend, so neither is timed nor counted as weights."""
    import jax
    import jax.numpy as jnp

    jax.block_until_ready(jnp.zeros(8) + 1)


# --- reporting -----------------------------------------------------------------------------------


class PeakRSS:
    """This process's RSS: `idle` when made, the peak sampled every 20 ms in a thread (and the
    kernel's ru_maxrss) until `stop()`."""

    def __init__(self) -> None:
        self._proc = psutil.Process()
        self.idle = self._proc.memory_info().rss
        self.peak = self.idle
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(0.02)

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join(timeout=5)
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        return {"idle": self.idle, "peak": max(self.peak, maxrss)}


@contextlib.contextmanager
def reporting(results: Any, who: str) -> Iterator[None]:
    """Sends any exception to the driver as ("error", who, traceback) instead of dying silently."""
    try:
        yield
    except BaseException:
        results.put(("error", who, traceback.format_exc()))
        raise


def _wait(event: Any, seconds: float, what: str) -> None:
    if not event.wait(seconds):
        raise TimeoutError(f"{what} did not happen within {seconds:g} s")


def _config(spec: dict[str, Any]) -> Any:
    from fray_dask.rl import WeightTransferConfig

    if spec["kind"] == "checkpoint":
        return WeightTransferConfig(
            coordinator_name=spec["coordinator"], flight=False, checkpoint_path=spec["folder"]
        )
    return WeightTransferConfig(coordinator_name=spec["coordinator"], flight=True)


# --- the trainer ---------------------------------------------------------------------------------


def trainer(spec: dict[str, Any], results: Any, finish: Any) -> None:
    """Builds the weights, publishes them the row's way, reports ("published", ...), holds them
    until `finish` is set, then reports its RSS ("rss", ...) and cleans up."""
    with reporting(results, "trainer"):
        _jax_ready()
        kind, timeout = spec["kind"], spec["timeout"]
        cleanup: list[Any] = []
        if kind in ("flight", "checkpoint"):
            from fray_dask import DaskContext
            from fray_dask.rl import WeightTransferServer

            server = WeightTransferServer(_config(spec), DaskContext(spec["address"]))
            cleanup.append(server.close)
        elif kind == "dask":
            import distributed

            client = distributed.Client(spec["address"], set_as_default=False, timeout=60)
            cleanup.append(client.close)
        rss = PeakRSS()  # from here on: the weights and what publishing them costs
        tree = build_tree(spec["gb"], spec["leaves"])
        info: dict[str, Any] = {"prints": fingerprints(tree), "pid": os.getpid()}
        started = time.perf_counter()
        if kind == "tcp":
            leaves, _ = host_leaves(tree)
            info["port"] = _serve_tcp(leaves, spec["receivers"], timeout)
        elif kind in ("flight", "checkpoint"):
            if not server.serve_weights(STEP, tree):
                raise RuntimeError(f"the coordinator {spec['coordinator']!r} refused step {STEP}")
        else:
            before = _worker_rss(client, spec["worker"])
            leaves, treedef = host_leaves(tree)
            futures = client.scatter(leaves, workers=[spec["worker"]], hash=False, timeout=timeout)
            name = spec["coordinator"]
            client.publish_dataset(**{name: futures, f"{name}-treedef": pickle.dumps(treedef)})
            cleanup.insert(0, lambda: client.unpublish_dataset(name))
            cleanup.insert(0, lambda: client.unpublish_dataset(f"{name}-treedef"))
            info["worker_grew"] = _worker_rss(client, spec["worker"]) - before
        info["publish_seconds"] = time.perf_counter() - started
        info["nbytes"] = sum(int(np.asarray(x).nbytes) for x in host_leaves(tree)[0])
        results.put(("published", "trainer", info))
        _wait(finish, timeout, "the end of the row")
        results.put(("rss", "trainer", rss.stop()))
        for close in cleanup:
            close()


def _worker_rss(client: Any, worker: str) -> int:
    return client.run(lambda: psutil.Process().memory_info().rss, workers=[worker])[worker]


def _serve_tcp(leaves: list[np.ndarray], connections: int, timeout: float) -> int:
    """Listens on 127.0.0.1 (returns the port); each of `connections` receivers gets a thread that
    waits for its one-byte go, then sendall()s every leaf's buffer in order."""
    views = [memoryview(leaf.reshape(-1).view(np.uint8)) for leaf in leaves]
    listener = socket.create_server(("127.0.0.1", 0), backlog=connections)
    listener.settimeout(timeout)

    def send(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(timeout)
            conn.recv(1)
            for view in views:
                conn.sendall(view)

    def accept() -> None:
        with listener:
            for _ in range(connections):
                conn, _ = listener.accept()
                threading.Thread(target=send, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, name="tcp-accept", daemon=True).start()
    return listener.getsockname()[1]


# --- the receivers -------------------------------------------------------------------------------


def receiver(spec: dict[str, Any], rank: int, results: Any, go: Any, busy_on: Any) -> None:
    """Connects, reports ("ready", rank), fetches once `go` is set and reports ("fetched", rank,
    ...). With spec["polls"], rank 0 then times that many polls with nothing newer, twice: as
    soon as it is done ("polls", "quiet") and once `busy_on` is set ("polls", "busy")."""
    with reporting(results, f"receiver {rank}"):
        _jax_ready()
        kind, timeout = spec["kind"], spec["timeout"]
        fetch, client = _connect(spec, timeout)
        results.put(("ready", rank, {}))
        _wait(go, timeout, "the release")
        start, begun = time.time(), time.perf_counter()
        tree, extra = fetch()
        seconds = time.perf_counter() - begun
        end = time.time()
        if kind == "tcp":  # the raw bytes, cut into the leaves they are
            tree = _split(tree, model_shapes(spec["gb"], spec["leaves"]))
        info = {"start": start, "end": end, "seconds": seconds, **extra}
        info["prints"] = fingerprints(tree)
        results.put(("fetched", rank, info))
        if rank == 0 and spec.get("polls"):
            results.put(("polls", "quiet", _poll(client, spec["polls"])))
            _wait(busy_on, timeout, "the busy actor's start")
            results.put(("polls", "busy", _poll(client, spec["polls"])))


def _connect(spec: dict[str, Any], timeout: float) -> tuple[Any, Any]:
    """Everything a receiver does before the clock starts; returns the timed fetch, which gives
    (the weights, extra facts to report), and the WeightTransferClient if there is one."""
    import jax

    kind = spec["kind"]
    if kind == "tcp":
        buffer = np.empty(spec["nbytes"], dtype=np.uint8)
        if not spec.get("fresh"):
            buffer.fill(0)  # preallocated and paged in
        conn = socket.create_connection(("127.0.0.1", spec["port"]), timeout=timeout)

        def fetch_tcp() -> tuple[Any, dict[str, Any]]:
            nonlocal buffer
            if spec.get("fresh"):  # new memory, paged in as the bytes arrive (as a library does)
                buffer = np.empty(spec["nbytes"], dtype=np.uint8)
            with conn:
                conn.sendall(b"g")
                view, got = memoryview(buffer), 0
                while got < len(buffer):
                    n = conn.recv_into(view[got:])
                    if n == 0:
                        raise ConnectionError(f"the sender stopped after {got} bytes")
                    got += n
            return buffer, {}

        return fetch_tcp, None
    if kind in ("flight", "checkpoint"):
        from fray_dask import DaskContext
        from fray_dask.rl import WeightTransferClient

        client = WeightTransferClient(_config(spec), DaskContext(spec["address"]), device_put=True)
        if client.latest_step() != STEP:  # finds the coordinator; the trainer has published
            raise RuntimeError(f"the coordinator does not announce step {STEP}")

        def fetch_library() -> tuple[Any, dict[str, Any]]:
            got = client.check_for_update()
            if got is None:
                raise RuntimeError(f"check_for_update() found no weights: {client.last_error}")
            tree = jax.block_until_ready(got[1])
            return tree, {"fetch_seconds": client.fetch_seconds}

        return fetch_library, client
    import distributed

    dask_client = distributed.Client(spec["address"], set_as_default=False, timeout=60)
    name = spec["coordinator"]

    def fetch_dask() -> tuple[Any, dict[str, Any]]:
        futures = dask_client.get_dataset(name, callback_timeout=timeout)
        treedef = pickle.loads(dask_client.get_dataset(f"{name}-treedef", callback_timeout=timeout))
        leaves = dask_client.gather(futures, direct=True)
        placed = time.perf_counter()
        tree = jax.block_until_ready(jax.tree_util.tree_unflatten(treedef, jax.device_put(leaves)))
        return tree, {"device_put_seconds": time.perf_counter() - placed}

    return fetch_dask, None


def _split(buffer: np.ndarray, shapes: dict[str, Any]) -> list[np.ndarray]:
    """Views of `buffer` as the float32 leaves `shapes` lists, in tree order."""
    leaves, offset = [], 0
    for shape in _shape_leaves(shapes):
        size = 4 * int(np.prod(shape))
        leaves.append(buffer[offset : offset + size].view(np.float32).reshape(shape))
        offset += size
    return leaves


def _poll(client: Any, calls: int) -> list[float]:
    """Seconds of each of `calls` check_for_update() calls that must find nothing newer."""
    times = []
    for _ in range(calls):
        begun = time.perf_counter()
        got = client.check_for_update()
        times.append(time.perf_counter() - begun)
        if got is not None:
            raise RuntimeError(f"a poll found step {got[0]}, but nothing newer was published")
    return times


# --- the busy actor ------------------------------------------------------------------------------


class Busy:
    """A Dask actor whose `busy` is a long synchronous method: it holds the worker's one actor
    thread (sleeping in slices so `stop` can end it); `is_busy`/`stop` are async, so they run on
    the worker's event loop while `busy` runs."""

    def __init__(self) -> None:
        self._busy = False
        self._stop = False

    def busy(self, seconds: float) -> float:
        self._busy, begun = True, time.monotonic()
        while not self._stop and time.monotonic() - begun < seconds:
            time.sleep(0.05)
        self._busy = False
        return time.monotonic() - begun

    async def is_busy(self) -> bool:
        return self._busy

    async def stop(self) -> None:
        self._stop = True
