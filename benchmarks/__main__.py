"""`python -m benchmarks`: the regression and performance suites against their baselines (from the source
checkout; `totalgen-eval benchmark` runs this in a subprocess).

    python -m benchmarks                      # the CI subset (regression suite, small configurations)
    python -m benchmarks --suite all --publish

Exit status: 0 when no figure regressed, 1 when one did, 2 for a bad option.
"""
from __future__ import annotations

import argparse
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options of `python -m benchmarks` (the same as `totalgen-eval benchmark`)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks",
                                     description="Benchmark suites against their committed baselines.")
    parser.add_argument("--suite", default="regression", help="regression, perf or all (default: regression)")
    parser.add_argument("--update", action="store_true", help="rewrite the baselines with the current figures")
    parser.add_argument("--publish", action="store_true",
                        help="run the full configurations and regenerate reports/ (implies --full)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--fast", dest="fast", action="store_true", default=True,
                      help="the small CI configurations (default)")
    size.add_argument("--full", dest="fast", action="store_false", help="the full configurations")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the suite(s); 0 when nothing regressed, 1 otherwise, 2 for an unknown suite."""
    from benchmarks.suite import run_suite, suites

    args = parse_args(argv)
    try:
        suites(args.suite)
    except ValueError as exc:
        print(f"error: --suite: {exc}", file=sys.stderr)
        return 2
    ok = run_suite(args.suite, update=args.update, publish=args.publish, fast=args.fast,
                   echo=lambda line: print(line, flush=True))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
