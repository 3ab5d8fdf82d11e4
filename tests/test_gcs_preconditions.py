"""The GCS precondition stand-in (tests/gcs_preconditions.py): through a real gcsfs client,
ifGenerationMatch holds on uploads, deletes and reads as on GCS, and everything else passes."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests import gcs_preconditions
from tests.gcs_emulator import running_emulator

gcs_cas = gcs_preconditions.gcs_cas  # the shared fixture, bound here so pytest finds it

BUCKET = "bucket"
RACE_TIMEOUT = 30.0


def _upload(fs, key: str, data: bytes, generation: int | str | None = None) -> dict:
    """A media upload, as the step executor's lease does: returns the new object's metadata."""
    condition = {} if generation is None else {"ifGenerationMatch": str(generation)}
    return fs.call(
        "POST",
        f"{fs._location}/upload/storage/v1/b/{BUCKET}/o",
        uploadType="media",
        name=key,
        data=data,
        json_out=True,
        headers={"Content-Type": "application/octet-stream"},
        **condition,
    )


def _delete(fs, key: str, generation: int | str) -> None:
    fs.call("DELETE", "b/{}/o/{}", BUCKET, key, ifGenerationMatch=str(generation))


def _cat(fs, key: str) -> bytes:
    fs.invalidate_cache()
    return fs.cat(f"{BUCKET}/{key}")


def test_create_if_absent_succeeds_once(gcs_cas):
    first = _upload(gcs_cas, "create/lease", b"mine", generation=0)

    with pytest.raises(FileExistsError):
        _upload(gcs_cas, "create/lease", b"theirs", generation=0)

    assert int(first["generation"]) > 0
    assert _cat(gcs_cas, "create/lease") == b"mine"


def test_upload_with_the_current_generation_replaces_and_a_stale_one_is_refused(gcs_cas):
    old = int(_upload(gcs_cas, "swap/lease", b"v1", generation=0)["generation"])

    new = int(_upload(gcs_cas, "swap/lease", b"v2", generation=old)["generation"])
    with pytest.raises(FileExistsError):
        _upload(gcs_cas, "swap/lease", b"v3", generation=old)

    assert new != old
    assert _cat(gcs_cas, "swap/lease") == b"v2"
    assert int(gcs_cas.info(f"{BUCKET}/swap/lease")["generation"]) == new


def test_delete_with_a_stale_generation_is_refused_and_the_current_one_deletes(gcs_cas):
    old = int(_upload(gcs_cas, "del/lease", b"v1")["generation"])
    current = int(_upload(gcs_cas, "del/lease", b"v2", generation=old)["generation"])

    with pytest.raises(FileExistsError):
        _delete(gcs_cas, "del/lease", old)
    assert _cat(gcs_cas, "del/lease") == b"v2"

    _delete(gcs_cas, "del/lease", current)
    gcs_cas.invalidate_cache()
    assert not gcs_cas.exists(f"{BUCKET}/del/lease")


def test_a_read_with_a_stale_generation_is_refused(gcs_cas):
    old = int(_upload(gcs_cas, "read/obj", b"v1")["generation"])
    current = int(_upload(gcs_cas, "read/obj", b"v2")["generation"])
    path = f"b/{BUCKET}/o/read%2Fobj"

    with pytest.raises(FileExistsError):
        gcs_cas.call("GET", path, ifGenerationMatch=str(old), json_out=True)
    with pytest.raises(FileExistsError):
        gcs_cas.call(
            "GET",
            f"{gcs_cas._location}/download/storage/v1/{path}",
            alt="media",
            ifGenerationMatch=str(old),
        )

    meta = gcs_cas.call("GET", path, ifGenerationMatch=str(current), json_out=True)
    _, data = gcs_cas.call(
        "GET",
        f"{gcs_cas._location}/download/storage/v1/{path}",
        alt="media",
        ifGenerationMatch=str(current),
    )
    assert (int(meta["generation"]), data) == (current, b"v2")


def test_unconditioned_operations_pass_through(gcs_cas):
    small, large = b"small\n" * 10, os.urandom(gcs_cas.default_block_size + 2**20)
    _upload(gcs_cas, "plain/media", b"media")
    gcs_cas.pipe(f"{BUCKET}/plain/pipe", b"piped")
    with gcs_cas.open(f"{BUCKET}/plain/small", "wb") as f:  # one multipart upload
        f.write(small)
    with gcs_cas.open(f"{BUCKET}/plain/large", "wb") as f:  # a resumable session, two chunks
        f.write(large)
    gcs_cas.invalidate_cache()

    assert gcs_cas.ls(f"{BUCKET}/plain", detail=False) == [
        f"{BUCKET}/plain/{name}" for name in ("large", "media", "pipe", "small")
    ]
    assert [_cat(gcs_cas, f"plain/{n}") for n in ("media", "pipe", "small")] == [
        b"media",
        b"piped",
        small,
    ]
    assert _cat(gcs_cas, "plain/large") == large
    assert gcs_cas.info(f"{BUCKET}/plain/large")["size"] == len(large)

    gcs_cas.rm(f"{BUCKET}/plain", recursive=True)
    gcs_cas.invalidate_cache()
    assert not gcs_cas.exists(f"{BUCKET}/plain/small")
    assert gcs_cas.find(f"{BUCKET}/plain") == []


def test_racing_creates_have_exactly_one_winner(gcs_cas):
    contenders = 8
    start = threading.Barrier(contenders, timeout=RACE_TIMEOUT)

    def contend(i: int) -> str:
        start.wait()
        try:
            _upload(gcs_cas, "race/lease", f"contender {i}".encode(), generation=0)
            return "won"
        except FileExistsError:
            return "lost"

    with ThreadPoolExecutor(contenders) as pool:
        outcomes = list(pool.map(contend, range(contenders), timeout=RACE_TIMEOUT))

    assert sorted(outcomes) == ["lost"] * (contenders - 1) + ["won"]
    winner = outcomes.index("won")
    assert _cat(gcs_cas, "race/lease") == f"contender {winner}".encode()


def test_gcsfs_create_mode_is_refused_on_an_existing_object(gcs_cas):
    path = f"{BUCKET}/mode/create"
    gcs_cas.pipe(path, b"first", mode="create")  # multipart upload, ifGenerationMatch=0

    with pytest.raises(FileExistsError):
        gcs_cas.pipe(path, b"second", mode="create")
    with pytest.raises(FileExistsError):  # resumable session, refused when it is initiated
        with gcs_cas.open(path, "xb") as f:
            f.write(os.urandom(gcs_cas.default_block_size + 2**20))

    assert _cat(gcs_cas, "mode/create") == b"first"


def test_a_resumable_create_is_refused_when_the_object_appears_during_the_upload(gcs_cas):
    path = f"{BUCKET}/mode/late"
    with pytest.raises(FileExistsError):
        with gcs_cas.open(path, "xb") as f:
            f.write(
                os.urandom(gcs_cas.default_block_size + 2**20)
            )  # the session starts, a chunk is sent
            _upload(gcs_cas, "mode/late", b"someone else", generation=0)
        # closing sends the last chunk, still carrying ifGenerationMatch=0

    assert _cat(gcs_cas, "mode/late") == b"someone else"


def test_a_precondition_the_stand_in_does_not_check_is_refused_not_ignored(gcs_cas):
    from gcsfs.retry import HttpError

    _upload(gcs_cas, "other/obj", b"v1")

    with pytest.raises(HttpError, match=r"enforces only ifGenerationMatch.*ifMetagenerationMatch"):
        gcs_cas.call("GET", f"b/{BUCKET}/o/other%2Fobj", ifMetagenerationMatch="7")


def test_plain_emulator_ignores_preconditions(tmp_path):
    """DOCUMENTS THE GAP the stand-in fills: gcp-storage-emulator accepts a create-if-absent
    (ifGenerationMatch=0) on an existing object. If this test fails, the emulator now honours
    preconditions and tests/gcs_preconditions.py can go."""
    import gcsfs

    with running_emulator(tmp_path / "emulator.log") as endpoint:
        fs = gcsfs.core.GCSFileSystem(endpoint_url=endpoint, token="anon", skip_instance_cache=True)
        fs.mkdir(BUCKET)
        _upload(fs, "gap/lease", b"one", generation=0)
        _upload(fs, "gap/lease", b"two", generation=0)  # GCS answers 412 here

        assert fs.cat(f"{BUCKET}/gap/lease") == b"two"
