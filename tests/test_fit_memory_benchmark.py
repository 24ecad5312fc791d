"""benchmarks/fit_memory.py: a --tiny run fits from this checkout in a child process, samples its RSS
through every phase of the command, and sets the memory model's estimate beside it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_run_measures_each_phase_of_the_fit_command(tmp_path):
    out = tmp_path / "fit_memory.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fit_memory.py"), "--tiny", "--out", str(out)],
                   check=True, cwd=ROOT, capture_output=True, timeout=600)
    result = json.loads(out.read_text())
    (run,) = result["runs"]
    assert run["exit_code"] == 0
    assert Path(run["bayesmf_file"]).resolve() == ROOT / "bayesmf" / "__init__.py"  # this checkout, not another
    assert {"start", "fit", "save"} <= set(run["phases"])
    assert run["peak_mib"] >= max(p["peak_mib"] for p in run["phases"].values())
    assert run["phases"]["fit"]["peak_mib"] >= run["phases"]["start"]["peak_mib"]  # the fit adds to the process
    assert result["memory_model_mib"] > 0 and result["fit"]["num_samples"] == 10
