"""Peer libraries for the benchmarks, run in the same process (or a child) as ours.

Two peers, so that our benchmark scripts can report ratios measured in one run:

* **myFM** (``myfm``): a C++ Gibbs sampler for Bayesian factorization machines.
  With users and items one-hot encoded (and one prior group each) it is a
  BPMF-like model: global bias, per-user/per-item biases and rank-``k`` factors,
  each group with a Normal prior whose mean and precision have Normal-Gamma
  hyperpriors, and a Gamma prior on the noise precision ``alpha``.
* **Surprise** (``scikit-surprise``): ``SVD`` (Funk SVD with biases, SGD), with
  its default hyper-parameters; a point-estimate baseline for RMSE.

Nothing here imports ``bayesmf``: the peers are measured on their own, from
pandas frames read directly from the MovieLens files.

Functions (each returns a dict of plain floats / ints):

* :func:`load_ml100k_split` -> ``(train_df, test_df)`` with columns user, item, rating.
* :func:`run_surprise_svd` -> ``{"rmse", "fit_seconds", ...}``.
* :func:`run_myfm_bpmf` -> ``{"rmse", "coverage_90", "seconds_per_sweep", "fit_seconds",
  "ess_per_second", ...}``.
* :func:`run_myfm_synthetic` -> ``{"seconds_per_sweep", "peak_rss_mb", ...}``, in a fresh process.

Run ``python benchmarks/peers.py --data ../shared/data`` for both peers on
ml-100k u1 (one JSON line on stdout).
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing as mp
import os
import platform
import resource
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

_COLUMNS = ["user", "item", "rating", "timestamp"]
_Z90 = 1.6448536269514722  # standard normal 0.95 quantile


# --------------------------------------------------------------------------- data


def load_ml100k_split(data_dir, split: str = "u1") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read ``{split}.base`` / ``{split}.test`` of MovieLens 100K.

    ``data_dir`` is the ``ml-100k`` folder (the one holding ``u1.base``); a parent
    folder containing ``ml-100k/`` is accepted too.  Returns two frames with
    integer columns ``user``, ``item`` (the raw 1-based MovieLens ids) and a float
    column ``rating``.
    """
    data_dir = Path(data_dir)
    if not (data_dir / f"{split}.base").exists() and (data_dir / "ml-100k" / f"{split}.base").exists():
        data_dir = data_dir / "ml-100k"
    frames = []
    for suffix in ("base", "test"):
        df = pd.read_csv(data_dir / f"{split}.{suffix}", sep="\t", names=_COLUMNS, header=None,
                         dtype={"user": np.int64, "item": np.int64, "rating": np.float64, "timestamp": np.int64})
        frames.append(df[["user", "item", "rating"]].reset_index(drop=True))
    return frames[0], frames[1]


def _versions() -> dict:
    out = dict(python=platform.python_version(), numpy=np.__version__, pandas=pd.__version__)
    for mod in ("myfm", "surprise", "scipy", "arviz_stats"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing peer is reported, not fatal
            out[mod] = None
    return out


# --------------------------------------------------------------------------- Surprise


def run_surprise_svd(train_df: pd.DataFrame, test_df: pd.DataFrame, seed: int = 0) -> dict:
    """Surprise ``SVD()`` with its defaults (100 factors, 20 epochs, lr 0.005, reg 0.02, biased).

    Only ``random_state`` is set.  Predictions are clipped to the rating scale
    (Surprise's default, ``clip=True``); unknown users/items fall back to the
    global mean (Surprise's default).  ``fit_seconds`` covers ``build_full_trainset``
    and ``fit``; ``predict_seconds`` the test predictions.
    """
    from surprise import SVD, Dataset, Reader

    reader = Reader(rating_scale=(1, 5))
    start = time.perf_counter()
    trainset = Dataset.load_from_df(train_df[["user", "item", "rating"]], reader).build_full_trainset()
    algo = SVD(random_state=seed)
    algo.fit(trainset)
    fit_seconds = time.perf_counter() - start

    start = time.perf_counter()
    pred = np.fromiter(
        (algo.predict(u, i).est for u, i in zip(test_df["user"].tolist(), test_df["item"].tolist())),
        dtype=np.float64, count=len(test_df),
    )
    predict_seconds = time.perf_counter() - start
    y = test_df["rating"].to_numpy(np.float64)
    return dict(
        rmse=float(np.sqrt(np.mean((pred - y) ** 2))),
        mae=float(np.mean(np.abs(pred - y))),
        fit_seconds=float(fit_seconds),
        predict_seconds=float(predict_seconds),
        n_factors=int(algo.n_factors),
        n_epochs=int(algo.n_epochs),
    )


# --------------------------------------------------------------------------- myFM helpers


def _one_hot(users: np.ndarray, items: np.ndarray, num_users: int, num_items: int):
    """CSR design matrix [one-hot user | one-hot item] (0-based indices)."""
    import scipy.sparse as sps

    n = users.shape[0]
    rows = np.repeat(np.arange(n, dtype=np.int64), 2)
    cols = np.empty(2 * n, dtype=np.int64)
    cols[0::2] = users
    cols[1::2] = num_users + items
    return sps.csr_matrix((np.ones(2 * n), (rows, cols)), shape=(n, num_users + num_items))


def _quiet_callback(i, fm, hyper, history):
    # Replaces myFM's default callback (which formats a status string every 10 sweeps).
    return False, None


def _myfm_fit(X, y, rank, n_iter, n_kept, seed, group_shapes):
    import myfm
    import myfm.base

    model = myfm.MyFMRegressor(rank=rank, random_seed=int(seed))
    # myFM always draws a tqdm bar; switch it off for the duration of the fit.
    bar = myfm.base.tqdm
    myfm.base.tqdm = functools.partial(bar, disable=True)
    try:
        start = time.perf_counter()
        model.fit(X, y, n_iter=int(n_iter), n_kept_samples=int(n_kept), group_shapes=list(group_shapes),
                  callback=_quiet_callback)
        seconds = time.perf_counter() - start
    finally:
        myfm.base.tqdm = bar
    return model, seconds


def _mixture_cdf(x: np.ndarray, means: np.ndarray, sds: np.ndarray) -> np.ndarray:
    """CDF at x[n] of the equal-weight mixture of Normal(means[s, n], sds[s]), averaged over s."""
    from scipy.special import ndtr

    return ndtr((x[None, :] - means) / sds[:, None]).mean(axis=0)


def _mixture_quantiles(probs, means: np.ndarray, sds: np.ndarray, iters: int = 32) -> list[np.ndarray]:
    """Quantiles of the per-pair Normal mixtures by bisection on the mixture CDF."""
    lo0 = (means - 8.0 * sds[:, None]).min(axis=0)
    hi0 = (means + 8.0 * sds[:, None]).max(axis=0)
    out = []
    for p in probs:
        lo, hi = lo0.copy(), hi0.copy()
        for _ in range(iters):  # bracket (~10 rating units) shrinks by 2^-32: ~1e-9
            mid = 0.5 * (lo + hi)
            below = _mixture_cdf(mid, means, sds) < p
            lo = np.where(below, mid, lo)
            hi = np.where(below, hi, mid)
        out.append(0.5 * (lo + hi))
    return out


def _ess_median(draws: np.ndarray) -> float | None:
    """Median over test pairs of the bulk ESS (arviz-stats) of draws[S, n], one chain."""
    try:
        import arviz_stats
    except ImportError:
        return None
    ess = np.asarray(arviz_stats.ess(draws[None, :, :], method="bulk", chain_axis=0, draw_axis=1), dtype=np.float64)
    return float(np.nanmedian(ess))


# --------------------------------------------------------------------------- myFM on ml-100k


def run_myfm_bpmf(train_df: pd.DataFrame, test_df: pd.DataFrame, rank: int = 10, n_iter: int = 250,
                  n_kept: int = 200, seed: int = 0) -> dict:
    """myFM ``MyFMRegressor`` on one-hot users and items: a BPMF-like Gibbs sampler.

    Model: ``r = w0 + w_u + w_i + <V_u, V_i> + eps``, ``eps ~ N(0, 1/alpha)``, with users
    and items as two prior groups (``group_shapes=[num_users, num_items]``), myFM's
    default hyperpriors (alpha_0 = beta_0 = gamma_0 = reg_0 = 1, mu_0 = 0) and
    init_stdev 0.1.  ``n_iter`` sweeps in total, the last ``n_kept`` are kept
    (``n_iter - n_kept`` burn-in).  Users/items are indexed over train and test
    together, so a test-only user/item gets prior draws (myFM samples unobserved
    features from their group prior), as in BPMF.

    Returned figures:

    * ``rmse`` / ``mae`` of the posterior predictive mean (mean of the per-draw
      predictions, not clipped).
    * ``coverage_90``: share of test ratings inside the central 90% interval of the
      posterior predictive, which is the equal-weight mixture over kept draws ``s`` of
      ``Normal(pred_s, 1/sqrt(alpha_s))`` (``alpha_s`` = the noise precision of the
      same sweep, from ``history_.hypers``).  Exact: ``y`` is inside
      ``[q05, q95]`` iff ``0.05 <= F_mix(y) <= 0.95``.  ``interval_width_90`` is the
      mean width of the mixture-quantile intervals (bisection on the mixture CDF).
      ``coverage_90_gauss`` is the moment approximation
      ``mean +- 1.645 sqrt(E[1/alpha] + Var[pred])``, for reference.
    * ``nll``: mean negative log predictive density of the test ratings under the mixture.
    * ``seconds_per_sweep`` = ``fit_seconds / n_iter``; ``fit_seconds`` is the wall time
      of ``fit`` (all ``n_iter`` sweeps), measured after a tiny warm-up fit so that
      import / first-call costs are excluded.
    * ``ess_median``: median over test pairs of the bulk ESS (arviz-stats, one chain)
      of the per-draw predicted means ``pred_s``; ``ess_per_second`` divides it by the
      time spent producing the kept draws, ``sampling_seconds = fit_seconds * n_kept / n_iter``.
    """
    train_users = train_df["user"].to_numpy()
    train_items = train_df["item"].to_numpy()
    test_users = test_df["user"].to_numpy()
    test_items = test_df["item"].to_numpy()
    user_ids = np.unique(np.concatenate([train_users, test_users]))
    item_ids = np.unique(np.concatenate([train_items, test_items]))
    nu, ni = user_ids.size, item_ids.size
    X_train = _one_hot(np.searchsorted(user_ids, train_users), np.searchsorted(item_ids, train_items), nu, ni)
    X_test = _one_hot(np.searchsorted(user_ids, test_users), np.searchsorted(item_ids, test_items), nu, ni)
    y_train = train_df["rating"].to_numpy(np.float64)
    y_test = test_df["rating"].to_numpy(np.float64)

    # Warm-up: a tiny fit so that the extension's first-call costs are not timed.
    _myfm_fit(X_train[:2000], y_train[:2000], rank, 3, 1, seed + 1, [nu, ni])

    model, fit_seconds = _myfm_fit(X_train, y_train, rank, n_iter, n_kept, seed, [nu, ni])

    start = time.perf_counter()
    samples = model.predictor_.samples
    assert len(samples) == n_kept, (len(samples), n_kept)
    draws = np.stack([np.asarray(fm.predict_score(X_test, [])) for fm in samples])  # (S, n)
    hypers = model.history_.hypers
    assert len(hypers) == n_iter, (len(hypers), n_iter)
    # Sample k is the state after sweep n_iter - n_kept + k; its noise precision is that sweep's alpha.
    alphas = np.array([h.alpha for h in hypers[n_iter - n_kept:]], dtype=np.float64)
    predict_seconds = time.perf_counter() - start

    sds = 1.0 / np.sqrt(alphas)
    mean = draws.mean(axis=0)
    err = mean - y_test

    from scipy.special import logsumexp

    logp = (-0.5 * ((y_test[None, :] - draws) / sds[:, None]) ** 2 - np.log(sds)[:, None] - 0.5 * np.log(2 * np.pi))
    nll = -float(np.mean(logsumexp(logp, axis=0) - np.log(n_kept)))

    pit = _mixture_cdf(y_test, draws, sds)
    coverage = float(np.mean((pit >= 0.05) & (pit <= 0.95)))
    q05, q95 = _mixture_quantiles((0.05, 0.95), draws, sds)
    gauss_sd = np.sqrt(np.mean(sds**2) + draws.var(axis=0))
    coverage_gauss = float(np.mean(np.abs(err) <= _Z90 * gauss_sd))

    sampling_seconds = fit_seconds * n_kept / n_iter
    ess = _ess_median(draws)
    return dict(
        rmse=float(np.sqrt(np.mean(err**2))),
        mae=float(np.mean(np.abs(err))),
        coverage_90=coverage,
        interval_width_90=float(np.mean(q95 - q05)),
        coverage_90_gauss=coverage_gauss,
        nll=nll,
        seconds_per_sweep=float(fit_seconds / n_iter),
        fit_seconds=float(fit_seconds),
        sampling_seconds=float(sampling_seconds),
        predict_seconds=float(predict_seconds),
        ess_median=ess,
        ess_per_second=(ess / sampling_seconds) if ess is not None else None,
        noise_sd_mean=float(np.mean(sds)),
        rank=int(rank),
        n_iter=int(n_iter),
        n_kept=int(n_kept),
        num_users=int(nu),
        num_items=int(ni),
    )


# --------------------------------------------------------------------------- myFM at scale


def _synthetic_child(conn, user_index, item_index, ratings, num_users, num_items, rank, n_iter, seed):
    try:
        import myfm  # noqa: F401 - imported before the baseline so its size is not counted as fit memory

        baseline_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        X = _one_hot(np.asarray(user_index, np.int64), np.asarray(item_index, np.int64), num_users, num_items)
        y = np.asarray(ratings, np.float64)
        _myfm_fit(X[:2000], y[:2000], rank, 2, 1, seed + 1, [num_users, num_items])  # warm-up
        # keep one sample only: the memory measured is the sampler's, not a stored posterior
        _, fit_seconds = _myfm_fit(X, y, rank, n_iter, 1, seed, [num_users, num_items])
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        conn.send(dict(seconds_per_sweep=fit_seconds / n_iter, fit_seconds=fit_seconds,
                       peak_rss_mb=peak_mb, baseline_rss_mb=baseline_mb))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        conn.send(dict(error=f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def run_myfm_synthetic(user_index, item_index, ratings, num_users: int, num_items: int, rank: int,
                       n_iter: int, seed: int = 0, timeout: float | None = 3600.0) -> dict:
    """Seconds per sweep and peak memory of myFM on given (synthetic) ratings, in a fresh process.

    ``user_index`` / ``item_index`` are 0-based.  The fit runs in a ``spawn``-ed child
    (no memory inherited from this process) that keeps one sample (``n_kept_samples=1``)
    after a tiny warm-up fit.  ``peak_rss_mb`` is the child's own peak resident set
    (``getrusage(RUSAGE_SELF).ru_maxrss`` read in the child, which includes the
    interpreter, numpy/scipy/myfm and the input arrays); ``baseline_rss_mb`` is the
    same figure just after ``import myfm``, before the data is built, and
    ``rss_over_baseline_mb`` the difference.  The parent's own
    ``RUSAGE_CHILDREN`` is not used because it is a maximum over every child ever reaped.
    """
    ctx = mp.get_context("spawn")
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    args = (child_conn, np.asarray(user_index), np.asarray(item_index), np.asarray(ratings),
            int(num_users), int(num_items), int(rank), int(n_iter), int(seed))
    proc = ctx.Process(target=_synthetic_child, args=args, daemon=True)
    proc.start()
    child_conn.close()
    try:
        if not parent_conn.poll(timeout):
            raise TimeoutError(f"myFM synthetic run exceeded {timeout}s")
        res = parent_conn.recv()
    except EOFError as exc:
        raise RuntimeError(f"myFM child died (exit code {proc.exitcode})") from exc
    finally:
        if proc.is_alive():
            proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()
    if "error" in res:
        raise RuntimeError(f"myFM synthetic run failed: {res['error']}")
    res = {k: float(v) for k, v in res.items()}
    res["rss_over_baseline_mb"] = res["peak_rss_mb"] - res["baseline_rss_mb"]
    res.update(rank=int(rank), n_iter=int(n_iter), num_ratings=int(np.asarray(ratings).size))
    return res


# --------------------------------------------------------------------------- CLI


def _default_data() -> Path:
    return Path(os.environ.get("BAYESMF_DATA", Path(__file__).resolve().parent.parent.parent / "shared" / "data"))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="Run the benchmark peers (myFM, Surprise SVD) on ml-100k.")
    parser.add_argument("--data", type=Path, default=_default_data(),
                        help="folder holding ml-100k/ (default: $BAYESMF_DATA or ../shared/data)")
    parser.add_argument("--split", default="u1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rank", type=int, default=10)
    parser.add_argument("--n-iter", type=int, default=250)
    parser.add_argument("--n-kept", type=int, default=200)
    parser.add_argument("--skip-surprise", action="store_true")
    parser.add_argument("--skip-myfm", action="store_true")
    parser.add_argument("--timeout", type=int, default=1800, help="watchdog: abort after this many seconds")
    args = parser.parse_args(argv)

    def _alarm(signum, frame):
        raise TimeoutError(f"peers benchmark exceeded {args.timeout}s")

    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(args.timeout)
    try:
        train_df, test_df = load_ml100k_split(args.data / "ml-100k", args.split)
        out = dict(split=args.split, n_train=len(train_df), n_test=len(test_df), seed=args.seed,
                   cpus=os.cpu_count(), versions=_versions())
        if not args.skip_surprise:
            start = time.perf_counter()
            out["surprise_svd"] = run_surprise_svd(train_df, test_df, seed=args.seed)
            out["surprise_svd"]["wall_seconds"] = time.perf_counter() - start
        if not args.skip_myfm:
            start = time.perf_counter()
            out["myfm_bpmf"] = run_myfm_bpmf(train_df, test_df, rank=args.rank, n_iter=args.n_iter,
                                             n_kept=args.n_kept, seed=args.seed)
            out["myfm_bpmf"]["wall_seconds"] = time.perf_counter() - start
    finally:
        signal.alarm(0)
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
