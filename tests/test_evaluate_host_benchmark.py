"""benchmarks/evaluate_host.py: a --tiny run profiles a warm evaluate and splits its time into host work
and waits on the device."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_run_reports_the_host_share_of_a_warm_evaluate(tmp_path):
    out = tmp_path / "evaluate_host.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "evaluate_host.py"), "--tiny", "--out", str(out)],
                   check=True, cwd=ROOT, capture_output=True, timeout=600)
    result = json.loads(out.read_text())
    assert len(result["call_seconds"]) == 2 and all(t > 0 for t in result["call_seconds"])
    assert 0 < result["host_seconds"] <= result["profiled_seconds"]
    assert result["device_wait_seconds"] >= 0
    times = [t for _, t in result["top"]]
    assert len(times) == 15 and times == sorted(times, reverse=True) and sum(times) <= result["profiled_seconds"]
    assert result["shape"]["num_test"] == 5000 and result["shape"]["num_draws"] == 4
