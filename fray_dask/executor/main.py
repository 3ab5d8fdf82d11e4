"""`executor_main(steps)`: the command line of an experiment script (`--prefix`, `--dry-run`,
`--run-only`, `--max-concurrent`, `--no-force-run-failed`), the prefix defaulting to the
FRAY_EXECUTOR_PREFIX environment variable. No Dask import.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from fray_dask.executor.dag import Executor, StepOutcome
from fray_dask.executor.steps import ExecutorStep, InputName

PREFIX_VARIABLE = "FRAY_EXECUTOR_PREFIX"


def _parser(prog: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run this script's DAG of steps with fray_dask.executor: steps that succeeded "
        "before are skipped, the rest run as fray_dask jobs on the current cluster "
        "(FRAY_CLUSTER_SPEC, else the embedded Dask cluster).",
    )
    parser.add_argument(
        "--prefix",
        help=f"where step outputs go (a local folder or gs://...); default: ${PREFIX_VARIABLE}",
    )
    parser.add_argument(
        "--executor-info-base-path",
        help="where the run's JSON goes (default: PREFIX/experiments)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print what would run, skip or wait; run nothing"
    )
    parser.add_argument(
        "--run-only",
        nargs="+",
        metavar="REGEX",
        help="run only steps whose name matches, and the dependencies they need that have not "
        "succeeded",
    )
    parser.add_argument(
        "--max-concurrent", type=int, metavar="N", help="run at most N steps at once"
    )
    parser.add_argument(
        "--no-force-run-failed",
        dest="force_run_failed",
        action="store_false",
        help="stop with an error instead of running again steps that failed before",
    )
    return parser


def executor_main(
    steps: Sequence[ExecutorStep | InputName],
    prefix: str | None = None,
    description: str | None = None,
    args: Sequence[str] | None = None,
) -> list[StepOutcome]:
    """Runs `steps` (and what they need) from a script's command line.

    The prefix is `--prefix`, else the `prefix` argument, else ${FRAY_EXECUTOR_PREFIX}; with
    none of them, exits with a message naming the three. `args` defaults to `sys.argv[1:]`.
    """
    options = _parser(None).parse_args(list(sys.argv[1:] if args is None else args))
    chosen = options.prefix or prefix or os.environ.get(PREFIX_VARIABLE, "").strip() or None
    if chosen is None:
        raise SystemExit(
            f"no prefix for the steps' outputs: pass --prefix PATH, executor_main(steps, "
            f"prefix=...), or set {PREFIX_VARIABLE} (a local folder or gs://bucket/path)"
        )
    if options.max_concurrent is not None and options.max_concurrent < 1:
        raise SystemExit(f"--max-concurrent must be >= 1, got {options.max_concurrent}")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    executor = Executor(chosen, options.executor_info_base_path, description)
    return executor.run(
        list(steps),
        dry_run=options.dry_run,
        run_only=options.run_only,
        force_run_failed=options.force_run_failed,
        max_concurrent=options.max_concurrent,
    )
