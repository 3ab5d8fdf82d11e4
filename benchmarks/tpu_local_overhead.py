"""tpu-local's overhead over starting a TPU job's processes by hand.

A v4-16 x 2-slice job is 4 processes. Measured: N no-op jobs, each launched on LocalTpuCluster and
waited for (wiring from the manifests, gang supervision, log pumps), against the baseline of
starting the same 4 child processes (`python -m fray_dask.runner` on the pickled no-op) with
subprocess.Popen and waiting for them. Each of --repeat rounds runs both back to back and gives one
time ratio; the median ratio is the result (no target: the issue sets none).

Run:  python benchmarks/tpu_local_overhead.py
      python benchmarks/tpu_local_overhead.py --jobs 20 --repeat 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import cloudpickle


def noop() -> None:
    return None


def time_tpu_local(cluster, request, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        cluster.wait(cluster.launch(request), raise_on_failure=True, timeout=120)
    return time.perf_counter() - start


def time_by_hand(payload: bytes, processes: int, n: int) -> float:
    with tempfile.TemporaryDirectory(prefix="tpu-by-hand-") as tmp:
        path = os.path.join(tmp, "payload.pkl")
        with open(path, "wb") as f:
            f.write(payload)
        start = time.perf_counter()
        for _ in range(n):
            children = [
                subprocess.Popen(
                    [sys.executable, "-m", "fray_dask.runner", path, f"{path}.{i}.result"],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "TPU_WORKER_ID": str(i % 2), "JAX_PLATFORMS": "cpu"},
                )
                for i in range(processes)
            ]
            for child in children:
                child.communicate(timeout=120)
                assert child.returncode == 0
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20, help="no-op jobs per round")
    parser.add_argument("--repeat", type=int, default=5, help="rounds; the median ratio counts")
    args = parser.parse_args()

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    from fray_dask import Entrypoint, JobRequest, ResourceConfig, TpuConfig
    from tpu import LocalTpuCluster

    request = JobRequest(
        name="noop",
        entrypoint=Entrypoint(callable=noop),
        resources=ResourceConfig(device=TpuConfig("v4-16"), replicas=2),
    )
    payload = cloudpickle.dumps((noop, (), {}))
    with LocalTpuCluster() as cluster:
        time_tpu_local(cluster, request, 2)  # warm-up
        time_by_hand(payload, 4, 2)
        ours, theirs = [], []
        for i in range(args.repeat):
            pair = [
                (ours, lambda: time_tpu_local(cluster, request, args.jobs)),
                (theirs, lambda: time_by_hand(payload, 4, args.jobs)),
            ]
            for times, run in pair if i % 2 == 0 else reversed(pair):
                times.append(run())
    ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
    print(
        f"tpu_local_jobs: {args.jobs} no-op v4-16 x 2 jobs (4 processes each): tpu-local best "
        f"{min(ours):.2f} s, by hand best {min(theirs):.2f} s; per-round ratios "
        f"{', '.join(f'{r:.2f}' for r in ratios)}; median ratio {statistics.median(ratios):.2f}x"
    )


if __name__ == "__main__":
    main()
