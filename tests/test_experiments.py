"""Each experiment script runs end to end with ``--tiny`` and can redraw its figures from its CSV.

The tiny runs use small synthetic data (rank 2, ~20 draws). Their wall time is
dominated by XLA compilation of the samplers (20-40 s cold on 2 CPU cores);
the scripts enable JAX's persistent compilation cache, so a second run of the
suite takes seconds per script.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

pytestmark = pytest.mark.slow

# Figures each script must write (name -> script).
FIGURES = {
    "map_vs_mcmc": ("rmse_vs_rank.png", "nll_vs_rank.png", "reliability.png", "by_user_activity.png",
                    "by_movie_popularity.png", "convergence.png", "cost_vs_rmse.png"),
    "cold_start": ("cold_start.png", "cold_start_nll.png"),
    "cold_start_session": ("cumulative_regret.png",),
    "recommend_offline": ("ranking.png",),
    "model_variants": ("rmse_by_variant.png",),
}
KEY_COLUMNS = {
    "map_vs_mcmc": ("fold", "method", "rank", "bucket"),
    "cold_start": ("side", "k", "method", "bucket"),
    "cold_start_session": ("strategy", "step", "bucket"),
    "recommend_offline": ("method", "strategy", "repeat", "bucket"),
    "model_variants": ("fold", "rank", "method", "variant", "seed", "bucket"),
}
# Extra arguments that keep each tiny run to a few seconds once compiled.
TINY_ARGS = {
    "map_vs_mcmc": [],
    "cold_start": [],
    "cold_start_session": [],
    "recommend_offline": [],
    "model_variants": [],
}


def _module(name: str):
    return importlib.import_module(f"experiments.{name}")


def _run(name: str, out: Path, *extra: str) -> int:
    return _module(name).main(["--tiny", "--seed", "3", "--no-progress", "--out", str(out), *TINY_ARGS[name], *extra])


@pytest.fixture(scope="module", params=sorted(FIGURES))
def tiny_run(request, tmp_path_factory):
    name = request.param
    out = tmp_path_factory.mktemp(name)
    assert _run(name, out) == 0
    return name, out


def test_metrics_table(tiny_run):
    name, out = tiny_run
    module = _module(name)
    frame = pd.read_csv(out / "metrics.csv")
    assert len(frame) > 0
    for column in KEY_COLUMNS[name] + tuple(module.METRIC_COLUMNS):
        assert column in frame.columns, f"{name}: metrics.csv lacks {column!r}"
    values = frame[list(module.METRIC_COLUMNS)].to_numpy(np.float64)
    assert np.all(np.isfinite(values)), f"{name}: non-finite metrics"
    assert "all" in set(frame["bucket"])


def test_expected_rows(tiny_run):
    name, out = tiny_run
    frame = pd.read_csv(out / "metrics.csv")
    if name == "map_vs_mcmc":
        module = _module(name)
        assert set(frame["method"]) == set(module.ALL_METHODS)
        assert set(frame["fold"]) == {"r1", "r2"}
        assert frame["bucket"].str.startswith("user ").any() and frame["bucket"].str.startswith("movie ").any()
        # NUTS only on the first fold by default.
        assert set(frame.loc[frame["method"] == "nuts", "fold"]) == {"r1"}
        for column in ("coverage_50", "coverage_95"):
            assert frame[column].between(0, 1).all()
    elif name == "cold_start":
        module = _module(name)
        assert set(frame["method"]) == set(module.METHODS)
        assert set(frame["side"]) == {"users", "movies"}
        a = frame[frame["bucket"] == "all"]
        # With no revealed rating, fold-in is exactly the cold-start prior.
        for side in ("users", "movies"):
            k0 = a[(a["side"] == side) & (a["k"] == 0)].set_index("method")
            assert k0.loc["foldin-gibbs", "rmse"] == pytest.approx(k0.loc["prior-gibbs", "rmse"], rel=1e-9)
            assert k0.loc["foldin-map", "rmse"] == pytest.approx(k0.loc["prior-map", "rmse"], rel=1e-9)
            assert k0.loc["foldin-features", "rmse"] == pytest.approx(k0.loc["prior-features", "rmse"], rel=1e-9)
        # --aggregate pairs the features arm with the mean-based prior over seed*/ runs.
        runs = out / "runs"
        (runs / "seed3").mkdir(parents=True, exist_ok=True)
        (runs / "seed3" / "metrics.csv").write_bytes((out / "metrics.csv").read_bytes())
        assert module.main(["--aggregate", str(runs)]) == 0
        assert "Paired by seed" in (runs / "summary.md").read_text()
    elif name == "model_variants":
        module = _module(name)
        # Every (fold, method, variant) cell each method runs, once (myFM's only where it is installed),
        # and the summary pairs each variant with plain.
        expected = {(m, v) for m in module.METHODS for v in module.RUNS[m]
                    if m != "myfm" or importlib.util.find_spec("myfm") is not None}
        assert set(zip(frame["method"], frame["variant"])) == expected
        assert not frame.duplicated(list(module.KEYS)).any() and len(frame) == 2 * len(expected)
        assert "Paired difference" in (out / "summary.md").read_text()
    elif name == "recommend_offline":
        module = _module(name)
        assert set(frame["method"]) == set(module.METHODS)
        assert set(frame["strategy"]) == set(module.STRATEGIES)
        for column in ("precision_at_k", "recall_at_k", "ndcg_at_k"):
            assert frame[column].between(0, 1).all()
        # Thompson is repeated over keys; the deterministic strategies once.
        counts = frame.groupby(["method", "strategy"]).size()
        assert (counts.xs("thompson", level="strategy") == 2).all()
        assert (counts.drop("thompson", level="strategy") == 1).all()
    else:
        module = _module(name)
        assert set(frame["strategy"]) == set(module.STRATEGIES)
        regret = pd.read_csv(out / "regret.csv")
        assert (regret["regret"] >= -1e-9).all(), "regret is measured against the best unseen movie"
        assert not regret.duplicated(["strategy", "user", "item"]).any(), "a movie was recommended twice"


def test_figures_and_config(tiny_run):
    name, out = tiny_run
    for figure in FIGURES[name]:
        path = out / figure
        assert path.exists() and path.stat().st_size > 1000, f"{name}: {figure} missing or empty"
    config = json.loads((out / "config.json").read_text())
    assert config["seed"] == 3
    assert config["status"] == "ok"
    assert config["versions"]["bayesmf"]
    assert config["wall_seconds"] > 0
    assert (out / "summary.md").read_text().strip()


def test_plot_only_redraws(tiny_run):
    name, out = tiny_run
    for figure in FIGURES[name]:
        (out / figure).unlink()
    before = (out / "metrics.csv").read_bytes()
    assert _module(name).main(["--tiny", "--plot-only", "--out", str(out)]) == 0
    for figure in FIGURES[name]:
        assert (out / figure).stat().st_size > 1000
    assert (out / "metrics.csv").read_bytes() == before, "--plot-only must not touch the metrics"
