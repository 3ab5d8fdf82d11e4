"""Serving weights over Arrow Flight from the trainer's process, and fetching them: the server
holds the latest publication (and any a reader is still streaming), never more.

Imports pyarrow.flight; no Dask.
"""

from __future__ import annotations

import json
import threading
import weakref
from typing import Any

import numpy as np
import pyarrow.flight as flight

from fray_dask.rl.layout import Flattened, Layout, assemble

# Seconds `close()` waits for streams in progress before it stops the server anyway.
SHUTDOWN_SECONDS = 10.0


class WeightsUnavailable(RuntimeError):
    """The weights of a step could not be fetched from where they were announced (the trainer's
    server is gone, or it has moved on to a newer step)."""


class WeightsFlightServer(flight.FlightServerBase):
    """A Flight server in this process serving the latest `Flattened` publication by step.

    `do_get(ticket)` streams the step the ticket names if this server still holds it: the latest,
    or an older one whose stream is still being read (the stream's generator keeps it alive; once
    the last reader finishes, Python frees it). Requests for any other step fail with an error
    naming the step the server has, so the client asks the coordinator again."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, advertise: str | None = None):
        super().__init__(f"grpc://{host}:{port}")
        self.uri = f"grpc://{advertise or host}:{self.port}"
        self._lock = threading.Lock()
        self._latest: Flattened | None = None
        # Every publication still alive, by step: the latest and those being streamed.
        self._alive: weakref.WeakValueDictionary[int, Flattened] = weakref.WeakValueDictionary()

    def publish(self, weights: Flattened) -> None:
        with self._lock:
            self._latest = weights
            self._alive[weights.layout.step] = weights

    def held_steps(self) -> list[int]:
        """The steps whose weights this process still holds (the latest, plus any being read)."""
        with self._lock:
            return sorted(self._alive.keys())

    def do_get(self, context: Any, ticket: flight.Ticket) -> flight.FlightDataStream:
        step = int(json.loads(ticket.ticket)["step"])
        with self._lock:
            weights = self._alive.get(step)
            latest = None if self._latest is None else self._latest.layout.step
        if weights is None:
            raise flight.FlightUnavailableError(
                f"step {step} is no longer served here; this server's latest step is {latest}"
            )
        return flight.GeneratorStream(weights.layout.schema(), weights.batches())

    def close(self) -> None:
        """Stops serving; waits at most SHUTDOWN_SECONDS for streams in progress."""
        with self._lock:
            self._latest = None
        stopper = threading.Thread(target=self.shutdown, name="fray-weights-flight-stop")
        stopper.daemon = True
        stopper.start()
        stopper.join(SHUTDOWN_SECONDS)


def fetch(uri: str, step: int, timeout: float) -> tuple[Layout, list[np.ndarray]]:
    """The layout and leaves of `step` from the Flight server at `uri`, within `timeout` seconds;
    raises WeightsUnavailable naming the server and the cause when it cannot."""
    options = flight.FlightCallOptions(timeout=timeout)
    try:
        with flight.connect(uri) as client:
            reader = client.do_get(flight.Ticket(json.dumps({"step": step}).encode()), options)
            layout = Layout.from_schema(reader.schema)
            if layout.step != step:
                raise WeightsUnavailable(f"{uri} sent step {layout.step} for step {step}")
            leaves = assemble(layout, (chunk.data for chunk in reader))
    except (flight.FlightError, OSError, ValueError) as e:
        cause = str(e).split(". Detail:")[0]  # gRPC appends its debug context
        raise WeightsUnavailable(f"could not fetch step {step} from {uri}: {cause}") from e
    return layout, leaves
