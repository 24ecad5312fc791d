"""benchmarks/gpu_check.py, the one script a GPU session runs: its children
work on whatever backend JAX finds (here the CPU), with tiny data, and its
device-side data generator gives distinct pairs."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def _child(*args: str) -> dict:
    done = subprocess.run([sys.executable, str(SCRIPT), "--child", *args, "--tiny"], capture_output=True, text=True,
                          timeout=300, cwd=SCRIPT.parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_engine_and_scale_children_report_their_figures():
    engine = _child("engine", "--shape", "ml-10m", "--rank", "3", "--warmup", "1", "--sweeps", "3")
    for key in ("generation_seconds", "compile_seconds", "seconds_per_sweep", "model_device_mb", "train_rmse_last"):
        assert np.isfinite(engine[key]), key
    assert 0 < engine["nnz"] <= engine["num_ratings"]
    scale = _child("scale", "--shape", "ml-10m", "--rank", "3", "--warmup", "2", "--sweeps", "10", "--evaluate",
                   "--save")
    # Ratings drawn from a rank-8 model with noise sd 0.9 on stars: the RMSE is near the noise, and the
    # 90% interval of a 10-draw posterior covers most of the test stars.
    assert 0.5 < scale["rmse"] < 1.5 and 0.7 < scale["coverage_90"] <= 1.0
    assert scale["file_mb"] > 0 and scale["load_seconds"] >= 0


def test_fast_pairs_are_distinct_and_on_the_star_scale():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(SCRIPT.parent))
    data = gpu_check.fast_pairs(0, num_users=50, num_items=30, num_ratings=900, min_per_user=3)
    pairs = np.asarray(data.user_index, np.int64) * 30 + np.asarray(data.item_index)
    assert np.unique(pairs).size == pairs.size  # repeats dropped
    assert set(np.unique(np.asarray(data.rating))) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert np.bincount(np.asarray(data.user_index), minlength=50).min() >= 1


@pytest.mark.slow
def test_paths_child_times_the_map_loop_against_optax_zoom():
    """The ninth plan's MAP peer (--map-zoom): the same tuned MAP with optax.lbfgs()'s zoom loop, in the
    same process, after the package's loop. Both solve the same objective to the tuning's ftol, so their
    test RMSEs agree to far below the 0.02 that separates a bad fit (test_map.py's SOLVER_PREDICTION_ATOL
    between two converged solvers)."""
    paths = _child("paths", "--precision", "default", "--map", "--map-zoom")
    for key in ("map_fit_seconds", "zoom_map_fit_seconds", "map_rmse", "zoom_map_rmse"):
        assert np.isfinite(paths[key]), key
    assert paths["zoom_map_tuning_fits"] > 0
    assert abs(paths["map_rmse"] - paths["zoom_map_rmse"]) < 0.02
    # The MAP model's batched Laplace ranking, checked against one user at a time (equal on the CPU, bit for bit).
    assert paths["map_laplace_lcb_equal_to_per_user"] and paths["map_laplace_thompson_equal_to_per_user"]
    assert paths["map_laplace_lcb_seconds"] > 0 and paths["map_laplace_thompson_seconds"] > 0
