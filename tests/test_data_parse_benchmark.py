"""benchmarks/parse_ratings.py: the writer makes ML-25M's layout, and a --tiny run completes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd

from bayesmf import data

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "parse_ratings.py"


def load_script():
    spec = importlib.util.spec_from_file_location("parse_ratings", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_writer_matches_the_layout_and_reads_back(tmp_path):
    bench = load_script()
    path = tmp_path / "ratings.csv"
    bench.write_file(path, seed=1, rows=5000)
    raw = path.read_bytes()
    assert raw.startswith(b"userId,movieId,rating,timestamp\r\n") and raw.endswith(b"\r\n")
    columns = bench.synthetic_columns(1, 5000)
    expected = pd.DataFrame(columns)
    assert (expected.groupby("userId").size() >= 20).all()
    assert expected.set_index(["userId", "movieId"]).index.is_monotonic_increasing  # sorted, no repeats
    np.testing.assert_array_equal(pd.read_csv(path).to_numpy(), expected.to_numpy())
    r = data.read_ratings(path)
    assert r.nnz == 5000 and r.scale == data.RatingScale(0.5, 5, 0.5)
    np.testing.assert_array_equal(r.to_dataframe().to_numpy(), expected.to_numpy())


def test_tiny_run_writes_results(tmp_path):
    result = load_script().main(["--tiny", "--out", str(tmp_path / "out.json")])
    saved = json.loads((tmp_path / "out.json").read_text())
    assert saved["config"]["rows"] == 20_000 and saved["reads"][0]["nnz"] == 20_000
    assert saved["seconds"] > 0 and saved["peak_mb"] > 0 and result["versions"] == saved["versions"]
