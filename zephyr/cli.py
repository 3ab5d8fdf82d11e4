"""The `zephyr` command: run a pipeline script with a backend configured from flags.

    zephyr --backend dask --max-parallelism 50 --memory 2GB script.py [script args]

Inside the script `flow_backend()` returns that backend. Imports no Dask itself (the backend does).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

from zephyr.backends.config import BACKEND_KINDS, cli_context, parse_memory
from zephyr.errors import ZephyrError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, exit code 2: "zephyr: error: argument --memory: invalid memory size 'lots': ..."
        self.exit(2, f"{self.prog}: error: {message} (see zephyr --help)\n")


def _memory(value: str) -> str:
    try:
        parse_memory(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def _number(kind: type, minimum: int) -> Callable[[str], Any]:
    """An argparse type: a value of `kind` (int or float) no smaller than `minimum`."""
    what = f"{'an integer' if kind is int else 'a number'} >= {minimum}"

    def parse(value: str) -> Any:
        try:
            number = kind(value)
        except ValueError:
            number = None
        if number is None or number < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}")
        return number

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="zephyr",
        description="Run a zephyr pipeline script; inside it, flow_backend() returns the backend "
        "configured here.",
        epilog="Example: zephyr --backend dask --max-parallelism 50 --memory 2GB script.py --out gs://b/o",
    )
    p.add_argument(
        "--backend",
        default="dask",
        choices=sorted(BACKEND_KINDS),
        help="where tasks run (default: dask)",
    )
    p.add_argument(
        "--cluster",
        metavar="ADDRESS",
        default=None,
        help="Dask scheduler address, e.g. tcp://10.0.0.2:8786 (default: an embedded "
        "local cluster)",
    )
    p.add_argument(
        "--max-parallelism",
        type=_number(int, 1),
        default=None,
        metavar="N",
        help="at most N shards of the pipeline run at once, cluster-wide",
    )
    p.add_argument(
        "--memory",
        type=_memory,
        default=None,
        metavar="SIZE",
        help="memory each task needs, e.g. 8GB (a Dask worker resource MEMORY)",
    )
    p.add_argument(
        "--num-cpus",
        type=_number(float, 0),
        default=None,
        metavar="N",
        help="CPUs each task needs (worker resource CPU)",
    )
    p.add_argument(
        "--num-gpus",
        type=_number(float, 0),
        default=None,
        metavar="N",
        help="GPUs each task needs (worker resource GPU)",
    )
    p.add_argument(
        "--retries",
        type=_number(int, 0),
        default=None,
        metavar="N",
        help="times a task lost with its worker is retried (default 3)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print each pipeline's plan instead of running it"
    )
    p.add_argument(
        "--entry-point",
        default=None,
        metavar="NAME",
        help="function of the script to call (default: main, if the script defines it)",
    )
    p.add_argument("script", help="the Python script to run")
    p.add_argument("script_args", nargs=argparse.REMAINDER, help="arguments passed to the script")
    return p


def _load_script(path: str) -> Any:
    """Import the script as a module whose functions travel to workers by value."""
    import cloudpickle

    spec = importlib.util.spec_from_file_location("__zephyr_script__", path)
    if spec is None or spec.loader is None:
        raise ZephyrError(f"cannot load {path!r} as a Python script")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    cloudpickle.register_pickle_by_value(module)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not os.path.isfile(args.script):
        print(f"zephyr: error: script {args.script!r} does not exist", file=sys.stderr)
        return 2
    if args.cluster and args.backend != "dask":
        print(
            f"zephyr: error: --cluster needs --backend dask (got --backend {args.backend})",
            file=sys.stderr,
        )
        return 2

    config = {
        "max_parallelism": args.max_parallelism,
        "memory": args.memory,
        "num_cpus": args.num_cpus,
        "num_gpus": args.num_gpus,
        "max_retries": args.retries,
    }
    if args.backend == "dask":
        config["address"] = args.cluster
    config = {k: v for k, v in config.items() if v is not None}

    script = os.path.abspath(args.script)
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [script, *args.script_args]
    sys.path.insert(0, os.path.dirname(script))
    try:
        with cli_context(args.backend, dry_run=args.dry_run, **config):
            module = _load_script(script)
            entry = args.entry_point or "main"
            fn = getattr(module, entry, None)
            if fn is None and args.entry_point:
                print(
                    f"zephyr: error: {args.script} has no function {entry!r} (--entry-point)",
                    file=sys.stderr,
                )
                return 2
            if fn is not None:
                result = fn()
                if isinstance(result, int) and not isinstance(result, bool):
                    return result
        return 0
    except ZephyrError as e:
        if e.__cause__ is not None:
            traceback.print_exc()
        print(f"zephyr: error: {e}", file=sys.stderr)
        return 1
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path


if __name__ == "__main__":
    sys.exit(main())
