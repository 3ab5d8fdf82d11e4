"""The `zephyr` command: run a script as `python script.py [args]` would, with the backend its
flags configure returned by `flow_backend()`.

    zephyr --backend dask --max-parallelism 50 --memory 2GB script.py [script args]

Imports no Dask itself (the backend does).
"""

from __future__ import annotations

import argparse
import ast
import builtins
import io
import os
import sys
import traceback
import types
from collections.abc import Callable
from types import CodeType
from typing import Any, NoReturn

from fray_dask.connection import ClusterError
from zephyr.backends.config import BACKEND_KINDS, cli_context, parse_memory
from zephyr.errors import ZephyrError

# The module name a script runs under with --entry-point (never importable by workers).
_SCRIPT_MODULE = "__zephyr_script__"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, exit code 2: "zephyr: error: argument --memory: invalid memory size 'lots': ..."
        self.exit(2, f"{self.prog}: error: {message} (see zephyr --help)\n")


def _memory(value: str) -> str:
    try:
        parse_memory(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"invalid memory size {value!r}: {e}") from None
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
        description="Run a Python script exactly as `python script.py [args]` would (as "
        "__main__, with sys.argv = [script, *args]); inside it, flow_backend() returns the backend "
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
        "--scratch",
        default=None,
        metavar="URL",
        help="where shuffles (group_by, deduplicate) write their sorted runs, e.g. gs://b/tmp "
        "(default: $ZEPHYR_SCRATCH, else this machine's temporary folder)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="every pipeline the script executes prints its plan and yields nothing, and no "
        "cluster is started for it; the script's own code outside pipelines still runs (where it "
        "asks for a Dask cluster, it fails: skip it when flow_backend().dry_run is True)",
    )
    p.add_argument(
        "--entry-point",
        default=None,
        metavar="NAME",
        help="run the script as a module not named __main__ (its `if __name__ == "
        '"__main__":` block stays idle), then call NAME() with no arguments; an int it returns '
        "is the exit code (default: run the script as __main__)",
    )
    p.add_argument("script", help="the Python script to run")
    p.add_argument("script_args", nargs=argparse.REMAINDER, help="arguments passed to the script")
    return p


def _compile(path: str) -> tuple[ast.Module, CodeType]:
    """The script's syntax tree and code, compiled as python compiles a script: its own
    `from __future__` imports only (none inherited from this module)."""
    with io.open_code(path) as f:
        source = f.read()
    tree = ast.parse(source, filename=path)
    return tree, compile(tree, path, "exec", dont_inherit=True)


def _run_as_main(path: str, code: CodeType) -> None:
    """Run `code` as `python path` would: in a fresh module named `__main__` that is
    `sys.modules["__main__"]` while it runs (its functions and classes then travel to Dask workers
    by value, as cloudpickle pickles `__main__`)."""
    module = types.ModuleType("__main__")
    module.__dict__.update(__file__=path, __cached__=None, __builtins__=builtins)
    saved = sys.modules.get("__main__")
    sys.modules["__main__"] = module
    try:
        exec(code, module.__dict__)
    finally:
        if saved is not None:
            sys.modules["__main__"] = saved


def _call_entry_point(path: str, code: CodeType, name: str) -> int:
    """Run the script as a module that is not `__main__` (its `if __name__ == "__main__":` block
    stays idle), then call `name()`; an int it returns is the exit code."""
    import cloudpickle

    module = types.ModuleType(_SCRIPT_MODULE)
    module.__dict__.update(__file__=path, __cached__=None, __builtins__=builtins)
    sys.modules[_SCRIPT_MODULE] = module
    # Workers cannot import this module: its functions must travel by value, like __main__'s.
    cloudpickle.register_pickle_by_value(module)
    try:
        exec(code, module.__dict__)
        fn = module.__dict__.get(name)
        if not callable(fn):
            raise _UsageError(
                f"{os.path.basename(path)} has no function {name!r} (--entry-point); "
                f"define it or drop --entry-point to run the script as __main__"
            )
        result = fn()
    finally:
        cloudpickle.unregister_pickle_by_value(module)
        sys.modules.pop(_SCRIPT_MODULE, None)
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def _defines_main_never_called(tree: ast.Module) -> bool:
    """True when the script defines `main` at top level but no top-level statement names it (so
    `python script.py` would define it and stop)."""
    defs = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    if not any(isinstance(s, defs[:2]) and s.name == "main" for s in tree.body):
        return False
    for stmt in tree.body:
        if isinstance(stmt, defs):
            continue
        for node in ast.walk(stmt):
            if isinstance(node, ast.Name) and node.id == "main":
                return False
    return True


class _UsageError(Exception):
    """A mistake in the command line found while running it (exit code 2)."""


def _print_traceback(error: BaseException, script: str) -> None:
    """Print `error`'s traceback as python would for the script: from its first frame in the
    script, without this module's frames above it."""
    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != script:
        tb = tb.tb_next
    sys.stderr.write("".join(traceback.format_exception(type(error), error, tb)))


def main(argv: list[str] | None = None) -> int:
    """Run the `zephyr` command; returns the exit code. A `SystemExit` the script raises
    propagates unchanged, so `sys.exit(3)` in the script exits with 3."""
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
        "scratch": args.scratch,
    }
    if args.backend == "dask":
        config["address"] = args.cluster
    config = {k: v for k, v in config.items() if v is not None}

    # As `python script.py args`: argv[0] as typed, __file__ absolute, the script's folder first
    # on sys.path.
    script = os.path.abspath(args.script)
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [args.script, *args.script_args]
    sys.path.insert(0, os.path.dirname(script))
    try:
        tree, code = _compile(script)
        with cli_context(args.backend, dry_run=args.dry_run, **config):
            if args.entry_point:
                return _call_entry_point(script, code, args.entry_point)
            _run_as_main(script, code)
        if _defines_main_never_called(tree):
            name = os.path.basename(args.script)
            print(
                f"zephyr: note: {name} defines main() but never calls it, so main() did not run "
                f'(as with `python {name}`); end the script with `if __name__ == "__main__": '
                f"main()` or pass --entry-point main",
                file=sys.stderr,
            )
        return 0
    except _UsageError as e:
        print(f"zephyr: error: {e}", file=sys.stderr)
        return 2
    except (ZephyrError, ClusterError) as e:
        if e.__cause__ is not None:
            _print_traceback(e, script)
        print(f"zephyr: error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # what python does with an uncaught exception
        _print_traceback(e, script)
        return 1
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path


if __name__ == "__main__":
    sys.exit(main())
