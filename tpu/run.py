"""The bootstrap a TPU pod runs for a callable job: `python -m tpu.run <payload path or URL>`.

Imports only the standard library and cloudpickle (fsspec only for a URL), so any image with this
package runs it. Exit 0 when the callable returns, 1 with its traceback on stderr when it raises.
"""

from __future__ import annotations

import sys
import traceback

__all__ = ["load_payload", "main"]

USAGE = "usage: python -m tpu.run <payload path or URL (gs://, s3://, https://, file://)>"


def load_payload(location: str) -> tuple:
    """Reads cloudpickle((fn, args, kwargs)) from a local path, or from a URL (anything with
    "://", file:// included) through fsspec (gs:// needs gcsfs in the image). Returns the
    3-tuple; raises OSError when it cannot be read and ValueError when it is not such a tuple."""
    import cloudpickle

    if "://" in location:
        try:
            import fsspec
        except ImportError as e:
            raise ImportError(
                f"reading the payload {location!r} needs fsspec: pip install fsspec "
                "(and gcsfs for gs://, s3fs for s3://)"
            ) from e
        with fsspec.open(location, "rb") as f:
            blob = f.read()
    else:
        with open(location, "rb") as f:
            blob = f.read()
    payload = cloudpickle.loads(blob)
    if not (isinstance(payload, tuple) and len(payload) == 3 and callable(payload[0])):
        raise ValueError(
            f"payload {location!r} holds a {type(payload).__name__}, not (fn, args, kwargs); "
            "write it with tpu.manifests.callable_payload(request)"
        )
    return payload


def main(argv: list[str]) -> int:
    """Runs the payload named by `argv` (one path or URL); returns the process exit code:
    0 on return, 1 when the callable raised, 2 on bad usage or an unreadable payload; a
    `sys.exit(code)` inside the callable exits with that code."""
    if len(argv) != 1:
        sys.stderr.write(f"{USAGE}\ngot arguments: {argv!r}\n")
        return 2
    location = argv[0]
    try:
        fn, args, kwargs = load_payload(location)
    except Exception as e:
        sys.stderr.write(
            f"tpu.run: cannot load the job's payload {location!r} ({type(e).__name__}: {e}); "
            "check that the ConfigMap is mounted or the URL exists and the pod may read it\n"
        )
        return 2
    try:
        fn(*args, **kwargs)
    except SystemExit:
        raise  # sys.exit(code) inside the job keeps its code
    except BaseException:  # noqa: BLE001 - every failure of the job ends up as exit code 1
        traceback.print_exc()
        sys.stderr.flush()
        return 1
    return 0


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    sys.exit(main(sys.argv[1:]))
