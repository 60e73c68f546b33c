"""benchmarks/run_all.py: the runner's rounds, medians, ratios, agreement and table (the
cases themselves are measurements, run by hand; see BENCHMARKS.md)."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run_all():
    spec = importlib.util.spec_from_file_location("run_all", ROOT / "benchmarks" / "run_all.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_all"] = module
    spec.loader.exec_module(module)
    return module


def test_measure_times_every_contestant_in_rotated_rounds(run_all):
    order = []

    def fast():
        order.append("fast")
        return [1.0, 2.0]

    def slow():
        order.append("slow")
        time.sleep(0.02)
        return [1.0, 2.5]

    case = run_all.Case("toy", fast, {"slow peer": slow}, run_all._max_diff)
    res = run_all.measure(case, repeats=4)
    assert len(res["alignfuse_times_s"]) == 4 and len(res["peers"]["slow peer"]["times_s"]) == 4
    # warm-up, then rounds alternately starting with each contestant
    assert order == ["fast", "slow", "fast", "slow", "slow", "fast", "fast", "slow", "slow", "fast"]
    peer = res["peers"]["slow peer"]
    assert peer["ratio"] > 1 and peer["agreement"] == pytest.approx(0.5)
    table = run_all.markdown(
        {"machine": "m", "torch": "t", "date": "d", "repeats": 4, "cases": {"toy": res}}
    )
    assert "| toy |" in table and "slow peer" in table and "x** |" in table
    json.dumps(res)  # the JSON file holds plain values


def test_every_case_is_registered_with_a_builder(run_all):
    assert {"sinkhorn_tol", "sinkhorn_fixed", "dtw", "cca", "extraction"} <= set(run_all.CASES)
    assert all(callable(f) for f in run_all.CASES.values())
