"""Shared fixtures: where the MovieLens test data lives (never inside the repository).

One persistent XLA compilation cache serves the whole session, in a fresh
temporary directory removed at its end: the programs that many tests compile
alike (a fit's loop on the same shapes, the CLI's and the README's commands
in their own processes, the experiments' tiny runs) compile once. It caches
compiled programs only, so results are bit-identical with or without it
(JAX's documented contract); ``JAX_COMPILATION_CACHE_DIR`` set by the caller
is kept.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

_OWN_CACHE = None
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    _OWN_CACHE = tempfile.mkdtemp(prefix="bayesmf-tests-jax-cache-")
    # Read by jax at import, here and in every child process the tests start;
    # BAYESMF_JAX_CACHE points the experiments' own cache there too.
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
    os.environ["BAYESMF_JAX_CACHE"] = _OWN_CACHE


def pytest_sessionfinish(session, exitstatus):
    if _OWN_CACHE is not None:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """``$BAYESMF_DATA``, else ``<repo>/../shared/data``."""
    return Path(os.environ.get("BAYESMF_DATA") or REPO.parent / "shared" / "data").expanduser()


@pytest.fixture(scope="session")
def ml100k_dir(data_dir) -> Path:
    """The ml-100k directory; skips the test when ``u.data`` is not there."""
    directory = data_dir / "ml-100k"
    if not (directory / "u.data").is_file():
        pytest.skip(f"MovieLens 100K not found at {directory} (set BAYESMF_DATA to the data directory)")
    return directory


# --- test data builders (small synthetic ratings) ---------------------------------------

import numpy as np  # noqa: E402

from bayesmf.model import make_model_data  # noqa: E402


def tiny_data(seed=0, num_users=12, num_items=9, nnz=60, rank=2, noise_sd=0.5):
    """``nnz`` distinct (user, item) cells drawn from the model (factor sd
    0.7, offsets N(3.5, 0.5^2), Gaussian noise), as ModelData."""
    rng = np.random.default_rng(seed)
    cells = rng.choice(num_users * num_items, size=nnz, replace=False)
    users, items = np.divmod(cells, num_items)
    lu = rng.normal(0, 0.7, (num_users, rank))
    rv = rng.normal(0, 0.7, (num_items, rank))
    m = rng.normal(3.5, 0.5, num_items)
    r = np.sum(lu[users] * rv[items], 1) + m[items] + rng.normal(0, noise_sd, nnz)
    return make_model_data(users, items, r, num_users, num_items)


def tiny_problem(seed=0, num_users=30, num_items=20, nnz=300, rank=2, noise_sd=0.5, num_test=5):
    """~300 ratings drawn from the model (factor sd 0.7, offsets
    N(3.5, 0.5^2), noise sd ``noise_sd``) as ModelData, and ``num_test``
    held-out (user, item) index pairs of seen users and items."""
    rng = np.random.default_rng(seed)
    cells = rng.permutation(num_users * num_items)
    users, items = np.divmod(cells[:nnz], num_items)
    lu = rng.normal(0, 0.7, (num_users, rank))
    rv = rng.normal(0, 0.7, (num_items, rank))
    m = rng.normal(3.5, 0.5, num_items)
    r = np.sum(lu[users] * rv[items], 1) + m[items] + rng.normal(0, noise_sd, nnz)
    data = make_model_data(users, items, r, num_users, num_items)
    test_users, test_items = np.divmod(cells[nnz : nnz + num_test], num_items)
    return data, (test_users.astype(np.int32), test_items.astype(np.int32))


@pytest.fixture(scope="session")
def make_tiny_data():
    """The :func:`tiny_data` builder (ModelData of a few dozen ratings)."""
    return tiny_data


@pytest.fixture(scope="session")
def make_tiny_problem():
    """The :func:`tiny_problem` builder ((ModelData, held-out index pairs))."""
    return tiny_problem


class SyntheticRatings:
    """Ratings drawn from the model (``bayesmf.synthetic.movielens_like``,
    continuous), every cell's true mean, and held-out ratings of unobserved
    cells drawn with the same noise.

    Attributes
    ----------
    sim : bayesmf.synthetic.Synthetic
    train : Ratings
    test_users, test_items : array, shape (n,)
        External ids of held-out cells.
    test_ratings : array, shape (n,)
    noise_sd : float
    """

    NUM_USERS, NUM_ITEMS, NUM_RATINGS, RANK, NOISE_SD = 30, 20, 300, 2, 0.5

    def __init__(self, seed: int = 0):
        from bayesmf.synthetic import movielens_like

        self.noise_sd = self.NOISE_SD
        self.sim = movielens_like(
            seed, num_users=self.NUM_USERS, num_items=self.NUM_ITEMS, num_ratings=self.NUM_RATINGS,
            rank=self.RANK, noise_sd=self.NOISE_SD, min_per_user=5, discretize=False,
        )
        self.train = self.sim.ratings
        seen = np.zeros((self.NUM_USERS, self.NUM_ITEMS), bool)
        seen[np.asarray(self.train.user_index), np.asarray(self.train.item_index)] = True
        users, items = np.nonzero(~seen)
        rng = np.random.default_rng(seed + 1)
        self.test_users = np.asarray(self.train.user_vocab.ids)[users]
        self.test_items = np.asarray(self.train.item_vocab.ids)[items]
        self.test_ratings = self.sim.true_mean(users, items) + rng.normal(0, self.NOISE_SD, users.size)


@pytest.fixture(scope="session")
def synthetic_ratings() -> SyntheticRatings:
    """30 users x 20 movies, 300 continuous ratings from the rank-2 model
    (noise sd 0.5) and the other 300 cells held out."""
    return SyntheticRatings(0)


@pytest.fixture(scope="session")
def map_sim():
    """60 users x 40 movies, 900 continuous ratings from a rank-3 model (noise sd 0.5): the MAP and tuning tests' data."""
    from bayesmf.synthetic import movielens_like

    return movielens_like(0, num_users=60, num_items=40, num_ratings=900, rank=3, min_per_user=5, noise_sd=0.5,
                          discretize=False)


class RecordingBar:
    """Stands in for ``tqdm``: keeps its keyword arguments and its ticks."""

    def __init__(self, bars, **kwargs):
        self.kwargs, self.n, self.closed = kwargs, 0, False
        bars.append(self)

    def update(self, n=1):
        self.n += n

    def set_postfix(self, *args, **kwargs):
        pass

    def close(self):
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@pytest.fixture
def record_bars(monkeypatch):
    """``record_bars(module)`` replaces ``module.tqdm`` by :class:`RecordingBar` and returns the list of bars made."""

    def record(module) -> list:
        bars = []
        monkeypatch.setattr(module, "tqdm", lambda *args, **kwargs: RecordingBar(bars, **kwargs))
        return bars

    return record


def sbc_pvalue(draws, truth, bins: int = 5) -> tuple[np.ndarray, float]:
    """Chi-square p-value of simulation-based-calibration ranks (Talts et al. 2018).

    ``draws`` (replicates, L + 1): thinned draws per replicate, the first of
    which (one sweep from the start) is dropped; ``truth`` (replicates,). The
    rank of the truth among the L kept draws takes L + 1 values, which must
    split evenly into ``bins`` bins (L = 19: 4 values a bin), so that uniform
    ranks give equal expected counts. Returns the bin counts and the p-value.
    """
    from scipy import stats

    draws = np.asarray(draws)[:, 1:]
    if (draws.shape[1] + 1) % bins:
        raise ValueError(f"{draws.shape[1]} kept draws give {draws.shape[1] + 1} rank values, not a multiple of {bins}")
    ranks = np.sum(draws < np.asarray(truth)[:, None], axis=1)
    counts = np.histogram(ranks, bins=bins, range=(0, draws.shape[1] + 1))[0]
    return counts, stats.chisquare(counts).pvalue


@pytest.fixture
def x64():
    """64-bit JAX for one test (the closed-form checks at 1e-8), restored after it."""
    import jax

    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", False)
