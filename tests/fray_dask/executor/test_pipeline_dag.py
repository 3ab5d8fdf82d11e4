"""examples/pipeline_dag.py run as a user runs it (a fresh interpreter, local processes or the
embedded Dask cluster): four steps whose outputs match a direct computation from the raw corpus,
a second run that skips them all, a `--docs` change that reruns them at new paths, a dry run."""

from __future__ import annotations

import collections
import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fray_dask.executor import SUCCESS, read_status

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "pipeline_dag.py"
STEPS = ["download", "clean", "dedup", "count"]
MIN_WORDS = 8  # the clean step's default
DOCS = "60"  # documents per raw shard: small, so each run takes seconds


def run_example(prefix: Path, *args: str, spec: str | None = "local") -> dict[str, tuple]:
    """Runs the example; returns {step: (action, output path)} from the lines it printed."""
    unset = ("FRAY_CLUSTER_SPEC", "FRAY_EXECUTOR_PREFIX", "PYTHONPATH")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env["PYTHONPATH"] = str(ROOT)
    if spec is not None:
        env["FRAY_CLUSTER_SPEC"] = spec
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--prefix", str(prefix), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    rows = re.findall(r"^(download|clean|dedup|count) +(\w+) +(\S+)$", done.stdout, re.M)
    return {name: (action, path) for name, action, path in rows}


def read_shards(folder: str) -> list[dict]:
    """The records of every .jsonl.gz file in `folder`, file by file in name order."""
    records = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".jsonl.gz"):
            with gzip.open(os.path.join(folder, name), "rt") as f:
                records.extend(json.loads(line) for line in f)
    return records


def check_outputs(outputs: dict[str, tuple]) -> None:
    """Each step's output is what the step before it implies, computed here without zephyr."""
    raw = read_shards(outputs["download"][1])
    texts = [doc["text"] for doc in raw]
    assert any(len(t.split()) < MIN_WORDS for t in texts)  # planted: too-short documents
    assert any(t != " ".join(t.split()) for t in texts)  # planted: messy whitespace
    normalised = [{**doc, "text": " ".join(doc["text"].split())} for doc in raw]
    cleaned = [doc for doc in normalised if len(doc["text"].split()) >= MIN_WORDS]
    assert sorted(read_shards(outputs["clean"][1]), key=lambda d: d["id"]) == sorted(
        cleaned, key=lambda d: d["id"]
    )

    first: dict[str, dict] = {}  # the first document of each text, in shard order
    for doc in cleaned:
        first.setdefault(doc["text"], doc)
    repeats = len(cleaned) - len(first)
    assert repeats > 0  # planted: exact duplicates
    deduped = read_shards(outputs["dedup"][1])
    assert len(deduped) == len(cleaned) - repeats
    assert sorted(deduped, key=lambda d: d["id"]) == sorted(first.values(), key=lambda d: d["id"])

    counts = collections.Counter(token for doc in deduped for token in doc["text"].split())
    with open(os.path.join(outputs["count"][1], "token_counts.json")) as f:
        summary = json.load(f)
    top = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:10]
    assert summary == {
        "documents": len(deduped),
        "tokens": sum(counts.values()),
        "distinct_tokens": len(counts),
        "top": [list(item) for item in top],
    }


def status_times(prefix: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in prefix.glob("*/.executor_status")}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    prefix = tmp_path_factory.mktemp("dag")
    return prefix, run_example(prefix, "--docs", DOCS)


def test_the_first_run_runs_four_steps_whose_outputs_are_right(first_run):
    prefix, outputs = first_run
    assert list(outputs) == STEPS
    assert all(action == "ran" for action, _ in outputs.values())
    assert all(Path(path).parent == prefix for _, path in outputs.values())
    check_outputs(outputs)


def test_a_second_run_skips_every_step_and_writes_nothing(first_run):
    prefix, outputs = first_run
    folders, statuses = sorted(prefix.iterdir()), status_times(prefix)
    again = run_example(prefix, "--docs", DOCS)
    assert again == {name: ("skipped", path) for name, (_, path) in outputs.items()}
    assert sorted(prefix.iterdir()) == folders
    assert status_times(prefix) == statuses


def test_changing_docs_reruns_every_step_at_new_paths_and_keeps_the_old(first_run):
    prefix, outputs = first_run
    changed = run_example(prefix, "--docs", "40")
    assert all(action == "ran" for action, _ in changed.values())
    old_paths = {path for _, path in outputs.values()}
    assert not old_paths & {path for _, path in changed.values()}
    check_outputs(changed)
    assert len(read_shards(changed["download"][1])) == 4 * 40
    for path in old_paths:  # the earlier outputs are still there, still complete
        assert read_status(path) == SUCCESS
    check_outputs(outputs)


def test_a_dry_run_on_a_fresh_prefix_writes_nothing(tmp_path):
    prefix = tmp_path / "fresh"
    printed = run_example(prefix, "--dry-run")
    assert printed == {}  # no outcome table: only the executor's [dry run] lines
    assert not prefix.exists() or not any(prefix.iterdir())


@pytest.mark.dask
def test_the_default_embedded_dask_cluster_runs_the_dag(tmp_path):
    """No FRAY_CLUSTER_SPEC: the steps are jobs on the embedded cluster and their pipelines run
    on that cluster's workers."""
    outputs = run_example(tmp_path, "--docs", DOCS, spec=None)
    assert list(outputs) == STEPS
    assert all(action == "ran" for action, _ in outputs.values())
    check_outputs(outputs)
