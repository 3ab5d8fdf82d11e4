"""Per-record task overhead: `Dataset.from_list(range(n)).map(f)` on the embedded DaskBackend vs
raw `client.map(f, range(n))` + `client.gather` on the same distributed.Client (the baseline).

`f` is trivial (doubles an int), so both times are scheduling overhead: zephyr makes one shard per
item and packs shards into a few tasks; client.map submits one Dask task per item. Both are warmed
up first (cluster startup is not timed); their results must be equal and in order.
Target: zephyr <= 2 s for n=10,000 (raw client.map takes about 23 s on the 2-core reference box).

Run:  python benchmarks/task_overhead.py              # n=10,000
      python benchmarks/task_overhead.py --n 2000 --repeat 3
"""

from __future__ import annotations

import argparse
import time

import psutil


def double(x: int) -> int:
    return 2 * x


def time_zephyr(backend: object, n: int) -> tuple[float, list[int]]:
    from zephyr import Dataset

    start = time.perf_counter()
    results = list(Dataset.from_list(range(n)).map(double).execute(backend))
    return time.perf_counter() - start, results


def time_client_map(client: object, n: int) -> tuple[float, list[int]]:
    start = time.perf_counter()
    futures = client.map(double, range(n))  # type: ignore[attr-defined]
    results = client.gather(futures)  # type: ignore[attr-defined]
    elapsed = time.perf_counter() - start
    del futures
    return elapsed, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="number of records / tasks")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each; the best is kept")
    parser.add_argument("--target", type=float, default=2.0, help="zephyr target, seconds")
    args = parser.parse_args()

    from zephyr import DaskBackend
    from zephyr.backends.connection import shutdown_embedded

    backend = DaskBackend()
    client = backend.client
    expected = [double(i) for i in range(args.n)]
    # Warm-up: workers started, functions deserialised once, scheduler code paths exercised.
    time_zephyr(backend, 200)
    time_client_map(client, 200)
    busy = psutil.cpu_percent(interval=1.0)
    if busy > 15:
        print(f"WARNING: the machine is {busy:.0f}% busy before timing; results will be noisy")

    best_zephyr = best_raw = float("inf")
    for _ in range(args.repeat):
        seconds, results = time_zephyr(backend, args.n)
        if results != expected:
            raise SystemExit("zephyr results differ from [f(i) for i in range(n)] (value or order)")
        best_zephyr = min(best_zephyr, seconds)
        seconds, results = time_client_map(client, args.n)
        if results != expected:
            raise SystemExit("client.map results differ from [f(i) for i in range(n)]")
        best_raw = min(best_raw, seconds)

    workers = len(client.scheduler_info()["workers"])
    n = args.n
    print(f"zephyr Dataset.from_list(range({n})).map(f) on DaskBackend ({workers} workers): "
          f"{best_zephyr:.3f} s ({best_zephyr / n * 1e6:.0f} us/record)")  # fmt: skip
    print(f"raw client.map(f, range({n})) + client.gather (baseline): "
          f"{best_raw:.3f} s ({best_raw / n * 1e6:.0f} us/task)")  # fmt: skip
    print("results equal and in order: yes")
    print(f"ratio zephyr/client.map: {best_zephyr / best_raw:.3f}x "
          f"(client.map/zephyr: {best_raw / best_zephyr:.1f}x)")  # fmt: skip
    verdict = "OK" if best_zephyr <= args.target else "MISSED"
    print(f"target zephyr <= {args.target:g} s: {verdict}")
    shutdown_embedded()


if __name__ == "__main__":
    main()
