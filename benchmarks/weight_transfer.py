"""Weight transfer (issue 15): publish a model-shaped pytree of float32 JAX arrays (--gb GB, default
1.0, in --leaves leaves, default 100) in a trainer process and fetch it in --receivers rollout
processes (default 4), each way fray_dask.rl could carry it, against a raw TCP socket, in one run.

A LocalCluster (2 worker processes, 1 thread each) in this process hosts the WeightCoordinator
actor (and, for the Dask row, the data). Per row, the trainer is a spawned process that builds the
tree (JAX arrays on CPU) and publishes it; its RSS is sampled every 20 ms from just before the tree
is built (reported above that idle RSS and absolute, as multiples of the weights' size). The
receivers, spawned, connected and warmed up (JAX and imports loaded) beforehand, are released
together by an Event; each fetches the weights once and reports its bytes and seconds; total GB/s =
receivers x bytes / wall time from the release to the last receiver done. Every row checks every
leaf's shape and a sample sum against the trainer's. Rows (--rows, default all):
  tcp         raw tcp 1->1: one sender process sendall()s every leaf's buffer, one receiver
              recv_into()s a preallocated, paged-in buffer (the baseline: the practical limit
              here); raw tcp 1->4: the sender serves the receivers at once, a thread per
              connection; and both again "(fresh memory)": the receiver allocates its buffer
              inside the timed part, so its pages fault in as bytes arrive, as they must for any
              receiver that keeps the weights it already holds while new ones arrive
  flight      WeightTransferServer / WeightTransferClient(device_put=True), the library default:
              Arrow Flight from the trainer's process, the tree lands as JAX arrays
  checkpoint  the same with flight=False, checkpoint_path=<a local temporary folder>: the trainer
              writes one Arrow IPC file (its publish time), receivers memory-map it (page cache)
  dask        the trainer scatters the leaves to one worker (hash=False) and publish_dataset()s
              them; receivers get_dataset() then gather(direct=True) worker-to-worker, device_put
Poll latency: in the first flight (else checkpoint) row, receiver 0, holding the latest step, times
500 check_for_update() calls; then 500 more while a Busy actor pinned to the coordinator's worker
sleeps in a synchronous method (the worker's one actor thread is taken; the async coordinator
should not notice). Targets: flight total >= 0.5x raw tcp 1->1; poll median <= 5 ms; trainer peak
RSS <= 2.5x the weights. Exits 0 whether targets pass or FAIL (it is a report).

Run:  PYTHONPATH=. python benchmarks/weight_transfer.py [--gb 1.0] [--receivers 4] [--leaves 100]
      PYTHONPATH=. python benchmarks/weight_transfer.py --gb 0.1 --rows flight,tcp   # quick
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import queue
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import weight_transfer_parts as parts

HERE = Path(__file__).resolve().parent
GB = 1e9
POLLS = 500
ROWS = ("tcp", "flight", "checkpoint", "dask")
SETUP_SECONDS = 180.0  # to start a row's processes, build the weights and connect
TCP_1, TCP_N = "raw tcp 1->1", "raw tcp 1->{n}"
FRESH = " (fresh memory)"
LABELS = {"flight": "flight", "checkpoint": "checkpoint (local disk)", "dask": "dask data transfer"}
PUBLISH = {
    "flight": "publish (serve_weights)",
    "checkpoint": "publish (serve_weights: the checkpoint write)",
    "dask": "scatter + publish_dataset",
}


@dataclass
class Row:
    """What one row measured."""

    name: str
    kind: str
    nbytes: int = 0
    wall: float = 0.0
    per_receiver: list[float] = field(default_factory=list)  # GB/s
    rss: dict[str, int] = field(default_factory=dict)
    publish_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    polls: dict[str, list[float]] = field(default_factory=dict)
    still_busy: bool = False  # the Busy actor still held its thread when the busy polls ended

    @property
    def total(self) -> float:
        return len(self.per_receiver) * self.nbytes / self.wall / GB


class Mailbox:
    """The driver's end of the children's queue: `take(tag, count)` waits (with a deadline) for
    that many messages of a tag, keeping others for later; a child's error or death ends it."""

    def __init__(self, results: Any, procs: list[Any]):
        self.results, self.procs = results, procs
        self.kept: list[tuple[str, Any, Any]] = []

    def take(self, tag: str, count: int, seconds: float) -> list[tuple[Any, Any]]:
        deadline = time.monotonic() + seconds
        while True:
            got = [(who, data) for t, who, data in self.kept if t == tag]
            if len(got) >= count:
                self.kept = [m for m in self.kept if m[0] != tag]
                return got
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{len(got)} of {count} {tag!r} reports within {seconds:g} s")
            try:
                message = self.results.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                dead = [p for p in self.procs if p.exitcode not in (None, 0)]
                if dead:
                    proc = dead[0]
                    raise RuntimeError(f"{proc.name} exited with code {proc.exitcode}") from None
                continue
            if message[0] == "error":
                raise RuntimeError(f"{message[1]} failed:\n{message[2]}")
            self.kept.append(message)


def run_row(name: str, spec: dict[str, Any], receivers: int, busy: Any = None) -> Row:
    """Starts the trainer, then `receivers` receivers; releases them together; collects their
    reports, the poll timings (if spec["polls"]) and the trainer's RSS; stops every child."""
    mp = multiprocessing.get_context("spawn")
    results, go, finish, busy_on = mp.Queue(), mp.Event(), mp.Event(), mp.Event()
    row = Row(name, spec["kind"])
    trainer = mp.Process(target=parts.trainer, args=(spec, results, finish), name="trainer")
    procs = [trainer]
    box = Mailbox(results, procs)
    try:
        trainer.start()
        ((_, published),) = box.take("published", 1, SETUP_SECONDS)
        row.nbytes, row.publish_seconds = published["nbytes"], published["publish_seconds"]
        if "worker_grew" in published:
            grew = published["worker_grew"] / GB
            row.notes.append(f"the holding worker's RSS grew {grew:.2f} GB")
        spec = {**spec, "nbytes": row.nbytes, "port": published.get("port")}
        for rank in range(receivers):
            args = (spec, rank, results, go, busy_on)
            procs.append(mp.Process(target=parts.receiver, args=args, name=f"receiver {rank}"))
            procs[-1].start()
        box.take("ready", receivers, SETUP_SECONDS)
        released = time.time()
        go.set()
        fetched = sorted(box.take("fetched", receivers, spec["timeout"]), key=lambda m: m[0])
        row.wall = max(info["end"] for _, info in fetched) - released
        row.per_receiver = [row.nbytes / info["seconds"] / GB for _, info in fetched]
        bad = [rank for rank, info in fetched if info["prints"] != published["prints"]]
        if bad:
            row.notes.append(f"!!! WRONG WEIGHTS at receivers {bad}")
        _fetch_notes(row, [info for _, info in fetched])
        if spec.get("polls"):
            row.polls["quiet"] = box.take("polls", 1, spec["timeout"])[0][1]
            row.polls["busy"], row.still_busy = _busy_polls(box, busy, busy_on, spec["timeout"])
        finish.set()
        ((_, row.rss),) = box.take("rss", 1, spec["timeout"])
        return row
    finally:
        finish.set()
        deadline = time.monotonic() + 30  # for all of them: a failed row leaves some waiting
        for proc in procs:
            proc.join(timeout=max(deadline - time.monotonic(), 0.1))
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=10)


def _fetch_notes(row: Row, infos: list[dict[str, Any]]) -> None:
    if "fetch_seconds" in infos[0]:
        fetch = statistics.median(info["fetch_seconds"] for info in infos)
        whole = statistics.median(info["seconds"] for info in infos)
        row.notes.append(f"median receiver {whole:.2f} s, of which library fetch {fetch:.2f} s")
    if "device_put_seconds" in infos[0]:
        put = statistics.median(info["device_put_seconds"] for info in infos)
        row.notes.append(f"median device_put {put:.2f} s")


def _busy_polls(box: Mailbox, busy: Any, busy_on: Any, timeout: float) -> tuple[list[float], bool]:
    """The second round of polls, while `busy.busy()` holds the coordinator worker's actor thread,
    and whether it still held it when the polls ended."""
    call = busy.busy(timeout)
    deadline = time.monotonic() + 30
    while not busy.is_busy().result(timeout=30):
        if time.monotonic() > deadline:
            raise TimeoutError("the Busy actor did not start its busy() call within 30 s")
        time.sleep(0.01)
    busy_on.set()
    times = box.take("polls", 1, timeout)[0][1]
    still_busy = busy.is_busy().result(timeout=30)
    busy.stop().result(timeout=30)
    call.result(timeout=30)
    return times, still_busy


def _ms(times: list[float]) -> str:
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return f"median {statistics.median(ordered) * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms"


def _rss_text(row: Row) -> str:
    above = (row.rss["peak"] - row.rss["idle"]) / row.nbytes
    absolute = row.rss["peak"] / row.nbytes
    return (
        f"trainer peak RSS {(row.rss['peak'] - row.rss['idle']) / GB:.2f} GB above idle "
        f"({above:.2f}x weights), absolute {row.rss['peak'] / GB:.2f} GB ({absolute:.2f}x)"
    )


def report(rows: list[Row], args: argparse.Namespace) -> None:
    base = next((r for r in rows if r.name == TCP_1), None)
    fresh = next((r for r in rows if r.name == TCP_1 + FRESH), None)
    print(f"weights: {rows[0].nbytes / GB:.3f} GB in {args.leaves} float32 leaves; "
          f"{args.receivers} receivers; {len(rows)} rows")  # fmt: skip
    for row in rows:
        ratio = f" ({row.total / base.total:.2f}x {TCP_1}" if base else ""
        if fresh and row.kind != "tcp":
            ratio += f", {row.total / fresh.total:.2f}x {fresh.name}"
        ratio += ")" if base else ""
        per = ", ".join(f"{g:.2f}" for g in row.per_receiver)
        extra = "".join(f"; {note}" for note in row.notes)
        if row.kind == "checkpoint":
            extra = f" ({row.nbytes / row.publish_seconds / GB:.2f} GB/s written)" + extra
        if row.kind != "tcp":
            extra = f"; {PUBLISH[row.kind]} {row.publish_seconds:.2f} s" + extra
        print(f"{row.name}: total {row.total:.2f} GB/s{ratio}, per receiver [{per}] GB/s, "
              f"{_rss_text(row)}{extra}")  # fmt: skip
    polled = next((r for r in rows if r.polls), None)
    if polled is not None:
        print(f"poll latency ({POLLS} check_for_update() with nothing newer, {polled.name} row): "
              f"{_ms(polled.polls['quiet'])}")  # fmt: skip
        print(f"poll latency while a sync actor method sleeps on the coordinator's worker: "
              f"{_ms(polled.polls['busy'])}; still busy when the polls ended: "
              f"{'yes' if polled.still_busy else 'NO'}")  # fmt: skip
    print("targets:")
    for row in rows:
        if row.kind == "tcp":
            continue
        role = " (library default)" if row.kind == "flight" else " (comparison)"
        for baseline in (b for b in (base, fresh) if b):
            share = row.total / baseline.total
            print(f"  {row.name}{role}: total throughput {share:.2f}x {baseline.name} (>= 0.5x) "
                  f"{_verdict(share >= 0.5)}")  # fmt: skip
        above = (row.rss["peak"] - row.rss["idle"]) / row.nbytes
        absolute = row.rss["peak"] / row.nbytes
        print(f"  {row.name}{role}: trainer peak RSS {above:.2f}x weights above idle "
              f"{_verdict(above <= 2.5)}, {absolute:.2f}x absolute {_verdict(absolute <= 2.5)} "
              f"(<= 2.5x)")  # fmt: skip
    if polled is not None:
        for label, times in (("quiet", polled.polls["quiet"]), ("busy", polled.polls["busy"])):
            median = statistics.median(times) * 1e3
            print(f"  poll latency ({label}): median {median:.2f} ms (<= 5 ms) "
                  f"{_verdict(median <= 5)}")  # fmt: skip
    if any("WRONG" in note for row in rows for note in row.notes):
        print("  !!! some receivers got wrong weights: FAIL")


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _add_path(path: str) -> None:
    if path not in sys.path:
        sys.path.insert(0, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gb", type=float, default=1.0, help="the weights' size in GB (1e9)")
    parser.add_argument("--receivers", type=int, default=4)
    parser.add_argument("--leaves", type=int, default=100)
    parser.add_argument("--rows", default=",".join(ROWS), help=f"any of {','.join(ROWS)}")
    args = parser.parse_args()
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    if unknown := sorted(set(rows) - set(ROWS)):
        raise SystemExit(f"--rows takes {','.join(ROWS)}; got unknown {','.join(unknown)}")
    if args.receivers < 1 or args.gb <= 0:
        raise SystemExit(f"--receivers must be >= 1 and --gb > 0, got {args.receivers}, {args.gb}")
    parts.model_shapes(args.gb, args.leaves)  # checks --leaves

    import distributed

    from fray_dask import DaskContext
    from fray_dask.rl import SingletonActor, WeightCoordinator

    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=":0",
        resources={"CPU": 1, "NON_PREEMPTIBLE": 1},
        silence_logs=logging.CRITICAL,
    )
    client = distributed.Client(cluster, set_as_default=False)
    folder = tempfile.mkdtemp(prefix="weight-transfer-")
    try:
        client.wait_for_workers(2, timeout=120)
        client.run(_add_path, str(HERE))  # the workers can unpickle parts.Busy
        ctx = DaskContext(client)
        base = {
            "address": cluster.scheduler_address,
            "gb": args.gb,
            "leaves": args.leaves,
            "receivers": args.receivers,
            "timeout": max(120.0, 600.0 * args.gb),
        }
        measured: list[Row] = []
        polls_row = next((r for r in ("flight", "checkpoint") if r in rows), None)
        for kind in [r for r in ROWS if r in rows]:
            spec = {**base, "kind": kind, "coordinator": f"wt-bench-{kind}-{uuid.uuid4().hex[:6]}"}
            if kind == "tcp":
                for suffix, fresh in (("", False), (FRESH, True)):
                    one = {**spec, "receivers": 1, "fresh": fresh}
                    measured.append(run_row(TCP_1 + suffix, one, 1))
                    if args.receivers > 1:
                        name = TCP_N.format(n=args.receivers) + suffix
                        measured.append(run_row(name, {**spec, "fresh": fresh}, args.receivers))
                continue
            busy = None
            if kind == "checkpoint":
                spec["folder"] = f"{folder}/{kind}"
            if kind == "dask":
                spec["worker"] = sorted(client.scheduler_info(n_workers=-1)["workers"])[0]
            if kind == polls_row:
                spec["polls"] = POLLS
                coordinator = SingletonActor(WeightCoordinator, name=spec["coordinator"], ctx=ctx)
                worker = coordinator.handle.worker
                holder = client.submit(  # the actor lives as long as this future
                    parts.Busy, actor=True, workers=[worker], allow_other_workers=False, pure=False
                )
                with client.as_current():  # the proxy binds to the current client on first use
                    busy = holder.result(timeout=60)
                    busy.is_busy().result(timeout=60)
            row = run_row(LABELS[kind], spec, args.receivers, busy)
            if kind == "checkpoint":
                row.notes.append("read back from the page cache (written just before)")
            measured.append(row)
            print(f"  ({row.name}: {row.total:.2f} GB/s)", flush=True)
        report(measured, args)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        client.close()
        cluster.close()


if __name__ == "__main__":
    main()
