"""Step functions, configs and DAGs the executor tests run. Pickled by value, so a step's job
process needs neither `tests` importable nor pytest.

Every step appends a line to `calls/<step>.log` when it starts, so a test counts how often each
step really ran, across drivers and processes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass

import cloudpickle

from fray_dask.executor import ExecutorStep, output_path_of, this_output_path, versioned

cloudpickle.register_pickle_by_value(sys.modules[__name__])

DOCS = [
    "the quick brown fox",
    "jumps over the lazy dog",
    "the quick brown fox",  # a duplicate, after cleaning
    "  THE   quick brown   fox ",  # a duplicate after cleaning too
    "hi",  # too short
    "a corpus of text for the model",
]


def record_call(calls: str, name: str) -> None:
    os.makedirs(calls, exist_ok=True)
    with open(os.path.join(calls, f"{name}.log"), "a") as f:
        f.write(f"{os.getpid()}\n")


def calls_of(calls: str, name: str) -> int:
    try:
        with open(os.path.join(calls, f"{name}.log")) as f:
            return len(f.read().split())
    except FileNotFoundError:
        return 0


def wait_for_release(gate: str | None) -> None:
    """Blocks while the file `gate` exists (a test holds a step in the middle of its work)."""
    if gate:
        wait_until(lambda: not os.path.exists(gate))


@dataclass(frozen=True)
class DownloadConfig:
    copies: int
    calls: str
    gate: str | None = None
    output_path: str = this_output_path()


def download(config: DownloadConfig) -> None:
    """Writes the raw corpus as two JSONL shards, the second only after `gate` is gone: a driver
    killed in between leaves a half-written step."""
    record_call(config.calls, "download")
    os.makedirs(config.output_path, exist_ok=True)
    docs = [{"id": i, "text": t} for i, t in enumerate(DOCS * config.copies)]
    half = len(docs) // 2
    with open(os.path.join(config.output_path, "part-0.jsonl"), "w") as f:
        f.writelines(json.dumps(d) + "\n" for d in docs[:half])
    wait_for_release(config.gate)
    with open(os.path.join(config.output_path, "part-1.jsonl"), "w") as f:
        f.writelines(json.dumps(d) + "\n" for d in docs[half:])


@dataclass(frozen=True)
class CleanConfig:
    input_path: str
    min_words: int
    calls: str
    output_path: str = this_output_path()


def clean(config: CleanConfig) -> None:
    """A zephyr pipeline: normalise whitespace and case, drop documents under `min_words`."""
    from zephyr import Dataset, create_backend

    record_call(config.calls, "clean")

    def normalise(doc: dict) -> dict:
        return {**doc, "text": " ".join(doc["text"].lower().split())}

    pipeline = (
        Dataset.from_files(config.input_path, "*.jsonl")
        .load_jsonl()
        .map(normalise)
        .filter(lambda doc: len(doc["text"].split()) >= config.min_words)
        .write_jsonl(os.path.join(config.output_path, "{shard:05d}.jsonl"))
    )
    list(pipeline.execute(create_backend("threads")))


@dataclass(frozen=True)
class DedupConfig:
    input_path: str
    calls: str
    output_path: str = this_output_path()


def dedup(config: DedupConfig) -> None:
    from zephyr import Dataset, create_backend

    record_call(config.calls, "dedup")
    pipeline = (
        Dataset.from_files(config.input_path, "*.jsonl")
        .load_jsonl()
        .deduplicate(lambda doc: doc["text"], num_output_shards=1)
        .write_jsonl(os.path.join(config.output_path, "{shard:05d}.jsonl"))
    )
    list(pipeline.execute(create_backend("threads")))


@dataclass(frozen=True)
class CountConfig:
    input_path: str
    calls: str
    fail: bool = False
    output_path: str = this_output_path()


def count(config: CountConfig) -> None:
    record_call(config.calls, "count")
    print(f"counting {config.input_path}", flush=True)
    if config.fail:
        raise ValueError(f"count refuses to count {config.input_path}")
    total = 0
    for name in sorted(os.listdir(config.input_path)):
        if name.endswith(".jsonl"):
            with open(os.path.join(config.input_path, name)) as f:
                total += sum(len(json.loads(line)["text"].split()) for line in f)
    os.makedirs(config.output_path, exist_ok=True)
    with open(os.path.join(config.output_path, "count.json"), "w") as f:
        json.dump({"tokens": total}, f)


def four_steps(
    calls: str,
    copies: int = 1,
    min_words: int = 2,
    gate: str | None = None,
    fail_count: bool = False,
) -> list[ExecutorStep]:
    """download -> clean (zephyr) -> dedup (zephyr) -> count."""
    raw = ExecutorStep("raw/download", download, DownloadConfig(versioned(copies), calls, gate))
    cleaned = ExecutorStep(
        "clean", clean, CleanConfig(output_path_of(raw), versioned(min_words), calls)
    )
    unique = ExecutorStep("dedup", dedup, DedupConfig(output_path_of(cleaned), calls))
    counted = ExecutorStep("count", count, CountConfig(output_path_of(unique), calls, fail_count))
    return [raw, cleaned, unique, counted]


def wait_until(condition, deadline: float = 60.0) -> None:
    """Polls `condition` until it holds; TimeoutError after `deadline` s."""
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError(f"condition not met within {deadline:g} s")
        time.sleep(0.02)


@dataclass(frozen=True)
class HoldConfig:
    spans: str
    index: int


def hold(config: HoldConfig) -> None:
    """Stays in the function a little while and records when it was inside."""
    start = time.time()
    time.sleep(0.3)
    os.makedirs(config.spans, exist_ok=True)
    with open(os.path.join(config.spans, str(config.index)), "w") as f:
        f.write(f"{start} {time.time()}")


def dump_config(config: dict) -> None:
    """Writes the config it received into the file its `mine` entry names."""
    os.makedirs(os.path.dirname(config["mine"]), exist_ok=True)
    with open(config["mine"], "w") as f:
        json.dump(config, f)


def write_object(config: dict) -> None:
    """Writes `text` to the path `out` through fsspec (gs:// in the tests that use it)."""
    import fsspec

    with fsspec.open(config["out"], "w") as f:
        f.write(config["text"])
