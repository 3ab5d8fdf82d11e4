"""Every Python block of README.md runs as written, each in a fresh interpreter in an empty folder
with the environment a fresh install has (gs:// blocks against a local GCS emulator), and the
README's links and docs/ARCHITECTURE.md's paths stay inside this repository."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.gcs_emulator import running_emulator

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"
BLOCK_TIMEOUT = 100.0  # seconds for one block; the slowest (8 JAX processes) takes about 7 here

# The rules, as the README states them to its readers:
# - A block whose first line is `# continues the snippet under "<section>" ...` runs after the
#   first Python block of that section, in the same interpreter (as a reader pasting both would).
# - A block of `>>>` lines is a REPL session: it runs through doctest, so its shown output must
#   be what Python prints.
# - `gs://bucket/...` is a placeholder bucket: those blocks run against gcp-storage-emulator,
#   holding gzip JSON Lines files under gs://bucket/raw/.
# - A block preceded by the line `<!-- not run: REASON -->` is not run; NOT_RUN names each such
#   block (section #n) with its reason, and a test checks the two agree, so no block is skipped
#   silently. Today every block runs.
NOT_RUN: dict[str, str] = {}

_CONTINUES = re.compile(r'^# continues the snippet under "(?P<section>[^"]+)"')
_NOT_RUN = re.compile(r"^<!-- not run: (?P<reason>.+) -->$")


@dataclass(frozen=True)
class Block:
    section: str  # the nearest heading above the block
    index: int  # 1-based, among the section's Python blocks
    line: int  # the line of its opening fence in README.md
    code: str
    not_run: str | None

    @property
    def name(self) -> str:
        return f"{self.section} #{self.index}"

    @property
    def continues(self) -> str | None:
        match = _CONTINUES.match(self.code)
        return match["section"] if match else None


def python_blocks(text: str) -> list[Block]:
    """The ```python blocks of a Markdown text, in order, with the heading each sits under."""
    blocks: list[Block] = []
    section, fence, body, start, counts = "", None, [], 0, {}
    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        if fence is None:
            if line.startswith("```"):
                fence, body, start = line[3:].strip(), [], number
            elif line.startswith("#"):
                section = line.lstrip("#").strip()
        elif line.startswith("```"):
            if fence == "python":
                counts[section] = counts.get(section, 0) + 1
                before = lines[start - 2].strip() if start >= 2 else ""
                marker = _NOT_RUN.match(before)
                code = "\n".join(body) + "\n"
                reason = marker["reason"] if marker else None
                blocks.append(Block(section, counts[section], start, code, reason))
            fence = None
        else:
            body.append(line)
    return blocks


BLOCKS = python_blocks(README.read_text())


def _slug(block: Block) -> str:
    return re.sub(r"[^a-z0-9]+", "-", block.section.lower()).strip("-") + f"-{block.index}"


def _script(block: Block) -> str:
    """The block's code, after the block it continues, if any."""
    if block.continues is None:
        return block.code
    earlier = [b for b in BLOCKS if b.section == block.continues and b.index == 1]
    assert earlier, (
        f"README.md line {block.line}: {block.name} continues the snippet under "
        f"{block.continues!r}, but no section of that name has a Python block; fix the name"
    )
    assert earlier[0].continues is None, f"{earlier[0].name} continues another block itself"
    return earlier[0].code + "\n" + block.code


# -- the GCS emulator the gs:// blocks run against -----------------------------------------------
def _seed_records(shard: int) -> bytes:
    docs = [{"id": f"{shard}-{i}", "text": " ".join(["word"] * (30 * i))} for i in range(4)]
    return gzip.compress("".join(json.dumps(d) + "\n" for d in docs).encode())


def _post(url: str, data: bytes, content_type: str) -> None:
    request = urllib.request.Request(url, data=data, method="POST")
    request.add_header("Content-Type", content_type)
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200, f"POST {url} answered {response.status}"


@pytest.fixture(scope="module")
def gcs_env(tmp_path_factory):
    """The environment variables that point gs:// at a fresh in-memory emulator holding the
    bucket `bucket` with four gzip JSON Lines files under raw/."""
    log_path = tmp_path_factory.mktemp("gcs-emulator") / "emulator.log"
    with running_emulator(log_path) as endpoint:
        _post(
            f"{endpoint}/storage/v1/b?project=test",
            json.dumps({"name": "bucket"}).encode(),
            "application/json",
        )
        for shard in range(4):
            name = urllib.parse.quote(f"raw/part-{shard}.jsonl.gz", safe="")
            url = f"{endpoint}/upload/storage/v1/b/bucket/o?uploadType=media&name={name}"
            _post(url, _seed_records(shard), "application/octet-stream")
        yield {
            "STORAGE_EMULATOR_HOST": endpoint,
            # Anonymous credentials, without probing the GCE metadata server.
            "FSSPEC_GCS_TOKEN": "anon",
            # Else gcsfs probes, for each new bucket, a gRPC API the emulator does not serve.
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        }


# Variables a test run may carry that a fresh user's shell does not have.
_NOT_FRESH = ("FRAY_", "DASK_", "ZEPHYR_", "STORAGE_EMULATOR_", "FSSPEC_", "GCSFS_", "JAX_", "TPU_")


@pytest.fixture(scope="module")
def fresh_env(tmp_path_factory) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_NOT_FRESH)}
    env.pop("PIP_NO_INDEX", None)
    env["PYTHONPATH"] = str(ROOT)  # this checkout, whichever one the package is installed from
    # The default venv cache is ~/.cache/fray_dask/venvs; the test keeps its venvs to itself.
    env["FRAY_VENV_CACHE"] = str(tmp_path_factory.mktemp("venvs"))
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    """Runs `cmd` in its own process group, which is killed after BLOCK_TIMEOUT and at the end
    (clusters or jobs a failed block leaves behind); returns (exit code, output)."""
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=BLOCK_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
        return -1, f"{out}\n(killed after {BLOCK_TIMEOUT:g} s)"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, out


@pytest.mark.dask  # blocks start their own embedded LocalCluster, as a user's script does
@pytest.mark.parametrize("block", [b for b in BLOCKS if b.not_run is None], ids=_slug)
def test_readme_python_block_runs_as_written(block, fresh_env, tmp_path, request):
    script = _script(block)
    env = dict(fresh_env)
    if "gs://" in script:
        env.update(request.getfixturevalue("gcs_env"))
    if block.code.lstrip().startswith(">>>"):
        (tmp_path / "snippet.txt").write_text(script)
        cmd = [sys.executable, "-m", "doctest", "snippet.txt"]
    else:
        (tmp_path / "snippet.py").write_text(script)
        cmd = [sys.executable, "snippet.py"]
    code, out = _run(cmd, tmp_path, env)
    assert code == 0, (
        f"README.md line {block.line} ({block.name}) must run as written, but exited {code}; "
        f"fix the snippet (or the code it shows). Last output:\n{out[-3000:]}"
    )


def test_readme_has_its_python_blocks():
    # A parser that found nothing would make the test above pass vacuously.
    sections = {b.section for b in BLOCKS}
    assert {"A pipeline", "Plans", "Jobs and actors: fray_dask"} <= sections, sections


def test_blocks_not_run_are_marked_and_named():
    marked = {b.name: b.not_run for b in BLOCKS if b.not_run is not None}
    assert marked == NOT_RUN, (
        f"blocks marked `<!-- not run: ... -->` in README.md {marked} must be exactly those "
        f"named in NOT_RUN {NOT_RUN}; make the block run, or name it there with its reason"
    )


_TOP = "zephyr|fray_dask|tpu|tests|deploy|examples|benchmarks|docs"


def _local_targets(text: str) -> set[str]:
    """Relative paths a Markdown text points to: link targets, backticked `.md`/`.py`/`.yaml`
    paths with a slash, and any such path under one of this repository's top-level folders."""
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    ticked = re.findall(r"`([\w./-]+/[\w.-]+\.(?:md|py|yaml))`", text)
    bare = re.findall(rf"(?<![\w/.])((?:{_TOP})/[\w./-]*\.(?:md|py|yaml))\b", text)
    return {t for t in [*links, *ticked, *bare] if "://" not in t and not t.startswith("mailto:")}


@pytest.mark.parametrize("doc", [README, ARCHITECTURE], ids=lambda p: p.name)
def test_local_paths_exist_inside_the_repository(doc):
    text = doc.read_text()
    for target in sorted(_local_targets(text)):
        path = (doc.parent / target).resolve()
        if not path.exists():  # a path written from the repository root, as prose does
            path = (ROOT / target).resolve()
        assert path.is_relative_to(ROOT), (
            f"{doc.name} points to {target!r}, outside this repository; link a file inside it"
        )
        assert path.exists(), f"{doc.name} points to {target!r}, which does not exist"


def test_readme_links_the_architecture_document():
    assert "(docs/ARCHITECTURE.md)" in README.read_text()
