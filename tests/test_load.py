"""Load: thousands of matches in chunks hold memory flat (benchmarks/rollout_memory.py's measurement)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "rollout_memory.py"


def _measure():
    spec = importlib.util.spec_from_file_location("rollout_memory", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.measure


def _measure_in_a_fresh_process(**kwargs) -> dict:
    """``measure(**kwargs)`` in a child process: the RSS is then this measurement's alone (a test worker's RSS also
    moves with what earlier tests left running in it: one CI run saw 6 MiB of such growth)."""
    code = (
        "import json, runpy, sys; measure = runpy.run_path(sys.argv[1])['measure']; "
        "print(json.dumps(measure(**json.loads(sys.argv[2]))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(BENCHMARK), json.dumps(kwargs)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_5000_matches_in_chunks_hold_memory_flat():
    figures = _measure_in_a_fresh_process(game="ipd", players=["tft", "alld"], matches=5000, chunk=250, keep=False)
    print(figures)
    assert figures["matches"] == 5000 and figures["turns"] >= 5000 * 2
    # Python allocations after 5000 matches (every turn recorded, results dropped as the trainer drops them):
    # within 32 bytes a match of where they were after the warm-up chunk (a leak of one small object per match
    # would show as 50+ bytes a match).
    assert abs(figures["growth_beyond_results_per_match_bytes"]) < 32
    # RSS once the allocator has settled: no trend (under 4 MiB over the last 4000 matches).
    late = figures["rss_trace_mib"][len(figures["rss_trace_mib"]) // 5 :]
    assert max(late) - late[0] < 4.0


def test_kept_results_are_the_only_growth():
    # The figure is per match and does not depend on the number of matches (measured: -98 bytes a match over
    # 2000 matches in chunks of 250, -92 over 500 in chunks of 125): 4 chunks after the warm-up keep it fast.
    figures = _measure()("ipd", ["tft", "alld"], matches=500, chunk=125, keep=True)
    print(figures)
    assert figures["matches"] == 500
    assert figures["kept_results_bytes"] > 0
    assert abs(figures["growth_beyond_results_per_match_bytes"]) < 128
