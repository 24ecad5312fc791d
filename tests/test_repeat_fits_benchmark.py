"""benchmarks/repeat_fits.py: a --tiny run times a repeated fit with the
process's kept programs against one with them forgotten, and a kept fit
compiles nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_run_compares_kept_and_forgotten_programs(tmp_path):
    out = tmp_path / "repeat_fits.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "repeat_fits.py"), "--tiny", "--methods", "gibbs",
                    "--rounds", "1", "--out", str(out)], check=True, cwd=ROOT, capture_output=True, timeout=600)
    gibbs = json.loads(out.read_text())["methods"]["gibbs"]
    (round_,) = gibbs["rounds"]
    assert round_["cold"]["xla_compiles"] >= 1 and round_["cold"]["xla_compile_s"] > 0  # the sweep, compiled again
    assert round_["kept"]["xla_compiles"] == 0
    assert gibbs["first"]["xla_compiles"] >= round_["cold"]["xla_compiles"]
    assert len(gibbs["kept_over_cold"]) == 1 and gibbs["kept_over_cold"][0] > 0
