"""The bootstrap that runs a pickled callable in a child process: `python -m fray_dask.runner
<payload> <result>`.

The payload file holds cloudpickle((fn, args, kwargs)). The result file receives
cloudpickle(("ok", value)) or cloudpickle(("error", exception_or_None, traceback_text)); the exit
code is 0 on success and 1 when the callable raised. Imports only cloudpickle, so it also runs
inside an isolated virtualenv that overlays the parent environment. When the process that started
it dies, it removes its work directory (the payload's folder) and kills its process group.
"""

from __future__ import annotations

import os
import sys
import traceback


def _write(path: str, payload: bytes) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(payload)
    os.replace(tmp, path)


def _watch_lifeline(workdir: str) -> None:
    """Kills this process group (the job and everything it started) when the lifeline pipe from
    the parent closes, which happens when the worker or driver that started the job dies; first
    removes `workdir`, which that parent would have removed. Checked by a thread, so a job's own
    signal handlers are untouched."""
    fd = os.environ.pop("FRAY_LIFELINE_FD", None)
    if fd is None:
        return
    import shutil
    import signal
    import threading

    lifeline = int(fd)
    os.set_inheritable(lifeline, False)  # not passed on to processes the job starts

    def watch() -> None:
        try:
            os.read(lifeline, 1)  # returns (empty) only when the parent's end is closed
            shutil.rmtree(workdir, ignore_errors=True)  # nobody is left to read the result
        finally:
            os.killpg(0, signal.SIGKILL)

    threading.Thread(target=watch, name="fray-lifeline", daemon=True).start()


def main(argv: list[str]) -> int:
    payload_path, result_path = argv
    _watch_lifeline(os.path.dirname(os.path.abspath(payload_path)))
    import cloudpickle

    with open(payload_path, "rb") as f:
        fn, args, kwargs = cloudpickle.load(f)
    try:
        value = fn(*args, **kwargs)
    except BaseException as e:  # noqa: BLE001 - every failure is reported to the parent
        text = traceback.format_exc()
        sys.stderr.write(text)
        sys.stderr.flush()
        try:
            blob = cloudpickle.dumps(("error", e, text))
        except Exception:  # an exception that cannot be pickled still reports its traceback
            blob = cloudpickle.dumps(("error", None, text))
        _write(result_path, blob)
        return 1
    try:
        blob = cloudpickle.dumps(("ok", value))
    except Exception as e:
        text = f"the return value of {getattr(fn, '__name__', fn)!r} cannot be pickled: {e!r}"
        _write(result_path, cloudpickle.dumps(("error", None, text)))
        return 1
    _write(result_path, blob)
    return 0


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    sys.exit(main(sys.argv[1:]))
