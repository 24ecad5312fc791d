"""benchmarks/compile_scale.py: a --tiny run compiles a sweep for each layout
it names without running it, and records which layout each side got."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_run_compiles_each_layout(tmp_path):
    out = tmp_path / "compile_scale.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compile_scale.py"), "--tiny", "--cases", "ml-10m:3",
                    "--layouts", "segment,bucket", "--out", str(out)], check=True, cwd=ROOT, capture_output=True,
                   timeout=600)
    (case,) = json.loads(out.read_text())["cases"].values()
    assert "error" not in case, case
    assert case["layouts"]["segment"]["users"] == "SegmentLayout, 1 block(s)"
    assert case["layouts"]["bucket"]["users"].startswith("BucketLayout")
    for row in case["layouts"].values():
        assert row["compile_seconds"] > 0 and row["lower_seconds"] > 0
