"""Weight transfer from a trainer to rollout workers: the trainer's WeightTransferServer publishes
`(step, pytree)`, each rollout's WeightTransferClient asks for a newer step and fetches it. A named
WeightCoordinator actor knows only the latest step and where to fetch it; the bytes go from the
trainer's process to each rollout directly over Arrow Flight, or through checkpoint files.

No Dask import: actors through the job context; Flight and files in flight.py and checkpoint.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

from fray_dask.context import JobContext
from fray_dask.rl import checkpoint
from fray_dask.rl.flight import WeightsFlightServer, WeightsUnavailable, fetch
from fray_dask.rl.layout import Flattened, rebuild
from fray_dask.rl.singleton import SingletonActor

logger = logging.getLogger("fray_dask.rl")


@dataclass(frozen=True)
class WeightTransferConfig:
    """Where weights go and how long waits last; trainer and rollouts use the same one.

    - `coordinator_name`: the name of the WeightCoordinator actor; one per training run.
    - `flight`: serve over Arrow Flight from the trainer's process (the fast path).
    - `checkpoint_path`: an fsspec folder (local or `gs://`); when set, every `checkpoint_every`-th
      publication is also written there (keeping the newest `keep_checkpoints`), for rollouts that
      start later, live on another cluster, or find the trainer gone.
    - `host`/`port`: the address rollouts reach the Flight server by (default: this machine's
      address on the route to the Dask scheduler, or 127.0.0.1 off Dask) and the port (0: any).
    - `poll_timeout`: seconds one call to the coordinator may take; `fetch_timeout`: one fetch.
    """

    coordinator_name: str = "weight_transfer"
    flight: bool = True
    checkpoint_path: str | None = None
    checkpoint_every: int = 1
    keep_checkpoints: int = 2
    host: str | None = None
    port: int = 0
    poll_timeout: float = 30.0
    fetch_timeout: float = 600.0

    def __post_init__(self) -> None:
        if not self.flight and self.checkpoint_path is None:
            raise ValueError(
                "WeightTransferConfig(flight=False) with no checkpoint_path leaves nothing to "
                "carry the weights; pass checkpoint_path='gs://bucket/run/weights' or flight=True"
            )
        for field, value, least in (
            ("checkpoint_every", self.checkpoint_every, 1),
            ("keep_checkpoints", self.keep_checkpoints, 1),
        ):
            if value < least:
                raise ValueError(f"WeightTransferConfig.{field} must be >= {least}, got {value}")
        for field, value in (
            ("poll_timeout", self.poll_timeout),
            ("fetch_timeout", self.fetch_timeout),
        ):
            if not value > 0:
                raise ValueError(f"WeightTransferConfig.{field} must be > 0 seconds, got {value}")


@dataclass(frozen=True)
class WeightsInfo:
    """What the coordinator knows of a publication: its step, the server that made it, and where
    its bytes are (a Flight URI, a checkpoint file, or both). No weights."""

    step: int
    server_id: str
    flight_uri: str | None
    checkpoint: str | None
    nbytes: int
    published_at: float


class WeightCoordinator:
    """The actor that knows the latest published step and where to fetch it; metadata only.

    Every method is `async def`: on Dask it runs on the worker's event loop, not on the one thread
    all actors of a worker share, so a rollout waiting in `wait_newer` holds up no other actor
    (a curriculum on the same worker) and no other call.

    Rules: a publication older than the latest is ignored (`publish` returns False); one of the
    same step is taken only from another server (a restarted trainer), to point at where the
    bytes now are."""

    def __init__(self) -> None:
        self._latest: WeightsInfo | None = None
        self._changed: asyncio.Event | None = None  # made on the loop that awaits it

    async def publish(self, info: WeightsInfo) -> bool:
        latest = self._latest
        if latest is not None and (
            info.step < latest.step
            or (info.step == latest.step and info.server_id == latest.server_id)
        ):
            return False
        self._latest = info
        if self._changed is not None:
            self._changed.set()
            self._changed = None
        return True

    async def latest(self) -> WeightsInfo | None:
        return self._latest

    async def newer(self, step: int) -> WeightsInfo | None:
        """The latest publication if its step is above `step`, else None."""
        latest = self._latest
        return latest if latest is not None and latest.step > step else None

    async def wait_newer(self, step: int, timeout: float) -> WeightsInfo | None:
        """Like `newer`, but waits up to `timeout` seconds for a publication above `step`."""
        deadline = time.monotonic() + timeout
        while (found := await self.newer(step)) is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if self._changed is None:
                self._changed = asyncio.Event()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                return None
        return found

    async def withdraw(self, server_id: str) -> None:
        """The server `server_id` stopped: its Flight URI is no longer announced (its checkpoint
        file, if any, still is)."""
        latest = self._latest
        if latest is not None and latest.server_id == server_id:
            self._latest = replace(latest, flight_uri=None)


def _coordinator(config: WeightTransferConfig, ctx: JobContext | None) -> SingletonActor:
    return SingletonActor(WeightCoordinator, name=config.coordinator_name, ctx=ctx)


def _flight_address(config: WeightTransferConfig, ctx: JobContext) -> tuple[str, str]:
    """(the interface to bind, the host to announce) for the Flight server."""
    if config.host is not None:
        return (
            "127.0.0.1" if config.host in ("127.0.0.1", "localhost") else "0.0.0.0"
        ), config.host
    client = getattr(ctx, "client", None)  # a DaskContext: reach rollouts where the scheduler is
    if client is None:
        return "127.0.0.1", "127.0.0.1"
    from distributed.comm import get_address_host
    from distributed.utils import get_ip

    scheduler = get_address_host(client.scheduler.address)
    if scheduler in ("127.0.0.1", "localhost"):
        return "127.0.0.1", "127.0.0.1"
    return "0.0.0.0", get_ip(scheduler)


class WeightTransferServer:
    """The trainer's side: `serve_weights(step, weights)` publishes a JAX pytree (or numpy arrays).

    The weights are held in this process and announced only once whole (served over Flight, and
    written to `checkpoint_path` when configured), so a rollout never sees half a step. This
    process keeps only the latest publication, plus an older one while a rollout still streams
    it. JAX arrays are served without a copy; numpy arrays are copied once (see `Flattened`).
    Use it as a context manager, or call `close()`."""

    def __init__(self, config: WeightTransferConfig | None = None, ctx: JobContext | None = None):
        self.config = config or WeightTransferConfig()
        self.server_id = uuid.uuid4().hex
        self._coordinator = _coordinator(self.config, ctx)
        self._flight: WeightsFlightServer | None = None
        self._published = 0
        self.step: int | None = None  # the last step accepted here

    def serve_weights(self, step: int, weights: Any) -> bool:
        """Publishes `weights` as `step`; returns whether rollouts will see it. A step not above
        this server's last one, or older than the coordinator's latest, is ignored (False)."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"a weights step is an int >= 0, got {step!r}")
        if self.step is not None and step <= self.step:
            logger.warning("weights of step %d ignored: step %d was published", step, self.step)
            return False
        flat = Flattened(step, weights)
        uri = None
        if self.config.flight:
            server = self._server()
            server.publish(flat)  # held here before anyone is told where it is
            uri = server.uri
        path = None
        if self.config.checkpoint_path and self._published % self.config.checkpoint_every == 0:
            path = checkpoint.write(self.config.checkpoint_path, flat, self.config.keep_checkpoints)
        info = WeightsInfo(step, self.server_id, uri, path, flat.nbytes, time.time())
        self.step = step
        self._published += 1
        accepted = self._coordinator.call("publish", info, timeout=self.config.poll_timeout)
        if not accepted:
            latest = self._coordinator.call("latest", timeout=self.config.poll_timeout)
            logger.warning(
                "weights of step %d ignored by coordinator %r: it has step %s; publish steps "
                "above it (resume the step count from the training checkpoint)",
                step,
                self.config.coordinator_name,
                None if latest is None else latest.step,
            )
        return bool(accepted)

    def _server(self) -> WeightsFlightServer:
        if self._flight is None:
            bind, host = _flight_address(self.config, self._coordinator.ctx)
            self._flight = WeightsFlightServer(bind, self.config.port, advertise=host)
        return self._flight

    def held_steps(self) -> list[int]:
        """The steps whose weights this process holds: the latest, plus any still being read."""
        return [] if self._flight is None else self._flight.held_steps()

    def close(self) -> None:
        """Stops serving and tells the coordinator (best effort: it may be gone)."""
        if self._flight is None:
            return
        try:
            self._coordinator.call("withdraw", self.server_id, timeout=self.config.poll_timeout)
        except Exception as e:  # noqa: BLE001 - closing must not fail on a lost coordinator
            logger.info(
                "could not withdraw from coordinator %r: %s", self.config.coordinator_name, e
            )
        self._flight.close()
        self._flight = None

    def __enter__(self) -> WeightTransferServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WeightTransferClient:
    """A rollout's side: `check_for_update()` returns `(step, weights)` when a step newer than the
    last one it returned is published, else None; the weights have the publisher's tree
    structure, each leaf placed with `jax.device_put` on this process's default device (numpy
    arrays with `device_put=False`). JAX's dtype rules apply: 64-bit leaves become 32-bit unless
    `jax_enable_x64` is set.

    If the announced weights cannot be fetched (the trainer died; no checkpoint holds them), the
    poll returns None, keeps the current weights, and says why in `last_error` and a log line;
    the next publication is picked up as usual. A lost coordinator is created again (empty: polls
    return None until the trainer publishes again)."""

    def __init__(
        self,
        config: WeightTransferConfig | None = None,
        ctx: JobContext | None = None,
        device_put: bool = True,
    ):
        self.config = config or WeightTransferConfig()
        self.device_put = device_put
        self._coordinator = _coordinator(self.config, ctx)
        self.step: int | None = None  # the step of the weights last returned
        self.last_error: str | None = None
        self.fetched_bytes = 0
        self.fetch_seconds = 0.0

    def latest_step(self) -> int | None:
        """The latest published step the coordinator knows (None: nothing published yet)."""
        info = self._coordinator.call("latest", timeout=self.config.poll_timeout)
        return None if info is None else info.step

    def check_for_update(self) -> tuple[int, Any] | None:
        """One short poll; fetches and returns `(step, weights)` if a newer step is published."""
        mine = -1 if self.step is None else self.step
        info = self._coordinator.call("newer", mine, timeout=self.config.poll_timeout)
        return None if info is None else self._fetch(info)

    def wait_for_update(self, timeout: float) -> tuple[int, Any] | None:
        """Like `check_for_update`, but waits up to `timeout` seconds for a newer step (on the
        coordinator's event loop: it holds up no other actor)."""
        mine = -1 if self.step is None else self.step
        wait = timeout + self.config.poll_timeout
        info = self._coordinator.call("wait_newer", mine, timeout, timeout=wait)
        return None if info is None else self._fetch(info)

    def _fetch(self, info: WeightsInfo) -> tuple[int, Any] | None:
        started = time.perf_counter()
        errors: list[str] = []
        for _ in range(3):  # the trainer may move on while we ask; follow it a few times
            try:
                layout, leaves = self._fetch_once(info, errors)
            except WeightsUnavailable:
                newer = self._coordinator.call("newer", info.step, timeout=self.config.poll_timeout)
                if newer is None:
                    break
                info = newer
                continue
            self.fetch_seconds += time.perf_counter() - started
            self.fetched_bytes += info.nbytes
            self.step = layout.step
            self.last_error = None
            return layout.step, rebuild(layout, leaves, self.device_put)
        message = f"weights of step {info.step} unavailable, keeping step {self.step}: " + (
            "; ".join(errors) or "the coordinator announces no source for them"
        )
        if message != self.last_error:
            logger.warning("%s", message)
        self.last_error = message
        return None

    def _fetch_once(self, info: WeightsInfo, errors: list[str]) -> tuple[Any, Any]:
        if self.config.flight and info.flight_uri is not None:
            try:
                return fetch(info.flight_uri, info.step, self.config.fetch_timeout)
            except WeightsUnavailable as e:
                errors.append(str(e))
        if info.checkpoint is not None:
            try:
                return checkpoint.read(info.checkpoint)
            except (OSError, ValueError) as e:
                errors.append(f"could not read {info.checkpoint}: {e}")
        raise WeightsUnavailable("; ".join(errors))
