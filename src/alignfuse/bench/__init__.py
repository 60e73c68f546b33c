"""Benchmark suites, runner, leaderboard and report."""

from alignfuse.bench.runner import run_experiment, run_suite
from alignfuse.bench.suite import Suite, builtin_suites, load_suite

__all__ = ["Suite", "builtin_suites", "load_suite", "run_experiment", "run_suite"]
