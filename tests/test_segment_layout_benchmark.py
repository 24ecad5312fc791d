"""benchmarks/segment_layout.py: a --tiny run times every configuration, each
builds the layout it names, and all give the same chain (the same sums in
another order)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_run_compares_layouts_on_the_same_chain(tmp_path):
    out = tmp_path / "segment_layout.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "segment_layout.py"), "--tiny", "--repeats", "1",
                    "--sweeps", "3", "--out", str(out)], check=True, cwd=ROOT, capture_output=True, timeout=600)
    result = json.loads(out.read_text())
    runs = {r["config"]: r for r in result["runs"]}
    assert set(runs) == {"segment-4MB", "bucket-4MB", "segment-16MB", "bucket-16MB"}
    for name, run in runs.items():
        assert "error" not in run, run
        assert run["layout"] == ("SegmentLayout" if name.startswith("segment") else "BucketLayout")
        assert run["compile_seconds"] > 0 and run["seconds_per_sweep"] > 0 and run["peak_rss_mb"] > 0
    # Same key, same data: the chains differ only in float32 round-off of the
    # statistics' sums (4,000 ratings, 5 sweeps: measured differences ~1e-7).
    rmses = [run["train_rmse_last"] for run in runs.values()]
    assert max(rmses) - min(rmses) < 1e-4
    assert set(result["summary"]) == set(runs)
