"""Latency and throughput of folding new users into a fitted posterior.

Questions:

* How long does folding in ONE new user with 10 ratings take over 200
  posterior draws at rank 10 (an ml-100k-sized model), after warm-up? Median
  of 50 calls on 2 CPU cores; target <= 20 ms. Also the latency of the
  fold-in followed by a top-10 recommendation over every movie.
* How many users per second when 1,000 users (10 ratings each) are folded in
  at once (one batched, vmapped call)?
* How far is ``weighting="equal"`` (uniform mixture over draws, ignoring what
  the new ratings say about the shared parameters) from the importance
  weights? On truly new users (a cold-user split: 20% of users held out of
  the fit entirely), fold in ``given`` of each one's ratings and predict the
  rest with both; report the differences in predictive mean / sd, RMSE, NLL
  and the effective sample size of the weights.

Data: the timed posterior is Gibbs on MovieLens-100K ``u1.base`` (rank 10,
200 draws after 50 burn-in) when ``--data`` holds ml-100k, and the timed
"new users" are u1 test users' ratings (of movies the model knows); the
comparison refits on the cold-user split of ``u.data``. Otherwise (or with
``--synthetic``) a MovieLens-shaped synthetic data set from
:mod:`bayesmf.synthetic` is used the same way.

Run::

    python benchmarks/foldin_latency.py --data /work/shared/data
    python benchmarks/foldin_latency.py --tiny          # seconds, for the smoke test

Writes ``results/benchmarks/foldin_latency.json`` (override with ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _versions() -> dict:
    import jax
    import numpyro

    import bayesmf

    return dict(bayesmf=bayesmf.__version__, jax=jax.__version__, numpyro=numpyro.__version__, python=platform.python_version())


def _load(args):
    """(all ratings, u1-style train, test, description): ml-100k or synthetic."""
    from bayesmf import data, split

    data_dir = Path(args.data) if args.data else None
    if not args.synthetic and not args.tiny and data_dir is not None and (data_dir / "ml-100k" / "u1.base").exists():
        directory = data_dir / "ml-100k"
        everything = data.read_ratings(directory / "u.data")
        train, test = data.read_ratings(directory / "u1.base"), data.read_ratings(directory / "u1.test")
        return everything, train, test, "ml-100k (u1 for timing, u.data cold-user split for the weighting comparison)"
    from bayesmf import synthetic

    if args.tiny:
        sim = synthetic.movielens_like(args.seed, num_users=60, num_items=80, num_ratings=2400, min_per_user=30)
    else:
        sim = synthetic.movielens_like(args.seed)
    s = split.random_holdout(sim.ratings, 0.2, args.seed)
    return sim.ratings, s.train, s.test, "synthetic (bayesmf.synthetic.movielens_like; 20% random holdout for timing)"


def _fit(train, args):
    """Gibbs posterior and its fit time."""
    import jax

    import bayesmf

    model = bayesmf.BayesMF(
        rank=args.rank, method="gibbs", num_samples=args.num_draws, num_warmup=args.num_warmup, progress_bar=False
    )
    start = time.perf_counter()
    posterior = model.fit(jax.random.PRNGKey(args.seed), train)
    return posterior, time.perf_counter() - start


def _test_rows(test):
    users = np.asarray(test.user_vocab.ids)[np.asarray(test.user_index)]
    items = np.asarray(test.item_vocab.ids)[np.asarray(test.item_index)]
    return users, items, np.asarray(test.rating, np.float64)


def _timed(fn, calls: int, warmup: int) -> np.ndarray:
    for _ in range(warmup):
        fn()
    times = np.empty(calls)
    for c in range(calls):
        start = time.perf_counter()
        fn()
        times[c] = time.perf_counter() - start
    return times


def _summary_ms(times: np.ndarray) -> dict:
    ms = 1e3 * times
    return dict(median_ms=float(np.median(ms)), p90_ms=float(np.quantile(ms, 0.9)), min_ms=float(ms.min()), calls=int(ms.size))


def _new_users(posterior, test, given: int, min_extra: int, limit: int, rng):
    """Users with >= given + min_extra test ratings of movies the model knows:
    (given pairs, held-out rows) per user. (Test movies absent from the
    training data are left out here; fold-in itself would report them.)"""
    users, items, ratings = _test_rows(test)
    known = posterior.item_vocab.index(items, missing="flag") >= 0
    users, items, ratings = users[known], items[known], ratings[known]
    out = []
    for u in np.unique(users):
        rows = rng.permutation(np.flatnonzero(users == u))
        if rows.size < given + min_extra:
            continue
        out.append(((items[rows[:given]], ratings[rows[:given]]), (items[rows[given:]], ratings[rows[given:]])))
        if len(out) == limit:
            break
    return out


def latency(posterior, test, args, rng) -> dict:
    from bayesmf import coldstart, ranking

    users = _new_users(posterior, test, args.given, 0, 1, rng)
    items, ratings = users[0][0]
    one = [(items, ratings)]

    def fold():
        f = coldstart.fold_in_users(posterior, one)
        return f.weights

    def fold_and_recommend():
        return ranking.recommend(coldstart.fold_in_users(posterior, one), 0, 10)

    t_fold = _timed(fold, args.calls, args.warmup_calls)
    t_rec = _timed(fold_and_recommend, args.calls, args.warmup_calls)
    return dict(
        fold_in_one_user=_summary_ms(t_fold),
        fold_in_and_top10=_summary_ms(t_rec),
        target_ms=20.0,
        meets_target=bool(np.median(t_fold) * 1e3 <= 20.0),
        given=int(len(items)),
    )


def throughput(posterior, test, args, rng) -> dict:
    from bayesmf import coldstart

    pool = _new_users(posterior, test, args.given, 0, 10**9, rng)
    batch = [pool[i % len(pool)][0] for i in range(args.batch_users)]
    times = _timed(lambda: coldstart.fold_in_users(posterior, batch).weights, args.batch_calls, 1)
    median = float(np.median(times))
    return dict(
        num_users=args.batch_users, given_per_user=args.given, median_seconds=median,
        users_per_second=args.batch_users / median, calls=args.batch_calls,
        distinct_users_cycled=len(pool),
    )


def equal_vs_importance(posterior, test, args, rng) -> list[dict]:
    from bayesmf import coldstart, metrics

    rows = []
    for given in args.compare_given:
        users = _new_users(posterior, test, given, 5, args.compare_users, rng)
        if not users:
            continue
        fold_w = coldstart.fold_in_users(posterior, [g for g, _ in users])
        fold_e = coldstart.fold_in_users(posterior, [g for g, _ in users], weighting="equal")
        d_mean, d_sd, y_all, m_w, m_e, nll_w, nll_e = [], [], [], [], [], [], []
        for p, (_, (items, y)) in enumerate(users):
            pw = fold_w.predict(p, items, keep_components=True)
            pe = fold_e.predict(p, items, keep_components=True)
            d_mean.append(np.abs(pw.mean - pe.mean))
            d_sd.append(np.abs(pw.sd - pe.sd))
            y_all.append(y)
            m_w.append(pw.mean)
            m_e.append(pe.mean)
            c = pw.components
            nll_w.append(metrics.nll_per_row(y, c.mean, c.sd, fold_w.weights[p]))
            nll_e.append(metrics.nll_per_row(y, c.mean, c.sd))
        y, mw, me = (np.concatenate(x) for x in (y_all, m_w, m_e))
        d_mean, d_sd = np.concatenate(d_mean), np.concatenate(d_sd)
        ess = fold_w.effective_sample_size
        rows.append(
            dict(
                given=given, num_users=len(users), num_predictions=int(y.size),
                mean_abs_diff_mean=float(d_mean.mean()), max_abs_diff_mean=float(d_mean.max()),
                mean_abs_diff_sd=float(d_sd.mean()), max_abs_diff_sd=float(d_sd.max()),
                rmse_importance=metrics.rmse(y, mw), rmse_equal=metrics.rmse(y, me),
                nll_importance=float(np.mean(np.concatenate(nll_w))), nll_equal=float(np.mean(np.concatenate(nll_e))),
                ess_median=float(np.median(ess)), ess_min=float(ess.min()), ess_q10=float(np.quantile(ess, 0.1)),
                num_draws=int(fold_w.num_draws),
            )
        )
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.environ.get("BAYESMF_DATA", "/work/shared/data"))
    parser.add_argument("--synthetic", action="store_true", help="use synthetic data even when ml-100k is present")
    parser.add_argument("--tiny", action="store_true", help="a seconds-long smoke run on small synthetic data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rank", type=int, default=10)
    parser.add_argument("--num-draws", type=int, default=200)
    parser.add_argument("--num-warmup", type=int, default=50)
    parser.add_argument("--given", type=int, default=10)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--warmup-calls", type=int, default=5)
    parser.add_argument("--batch-users", type=int, default=1000)
    parser.add_argument("--batch-calls", type=int, default=5)
    parser.add_argument("--compare-given", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--compare-users", type=int, default=200)
    parser.add_argument("--cold-fraction", type=float, default=0.2, help="users held out for the weighting comparison")
    parser.add_argument("--out", default=str(HERE.parent / "results" / "benchmarks" / "foldin_latency.json"))
    args = parser.parse_args(argv)
    if args.tiny:
        args.rank, args.num_draws, args.num_warmup = 3, 20, 10
        args.calls, args.warmup_calls, args.batch_users, args.batch_calls = 5, 1, 50, 2
        args.compare_given, args.compare_users = [5], 10

    from bayesmf import split

    rng = np.random.default_rng(args.seed)
    everything, train, test, source = _load(args)
    posterior, fit_seconds = _fit(train, args)
    timing = dict(latency=latency(posterior, test, args, rng), throughput=throughput(posterior, test, args, rng))
    # Truly new users for the weighting comparison: whole users held out of the fit.
    cold = split.cold_users(everything, args.cold_fraction, args.seed)
    cold_posterior, cold_fit_seconds = _fit(cold.train, args)
    comparison = equal_vs_importance(cold_posterior, cold.test, args, rng)
    result = dict(
        question="fold-in latency of one new user and batch throughput; equal vs importance weights",
        data=source,
        config=vars(args),
        seed=args.seed,
        versions=_versions(),
        machine=dict(cpu_count=os.cpu_count(), cpus_usable=len(os.sched_getaffinity(0)), platform=platform.platform()),
        model=dict(rank=posterior.rank, num_draws=posterior.num_chains * posterior.num_draws,
                   num_users=len(posterior.user_vocab), num_items=len(posterior.item_vocab), fit_seconds=fit_seconds),
        latency=timing["latency"],
        throughput=timing["throughput"],
        equal_vs_importance=dict(
            split=f"cold users: {args.cold_fraction:.0%} of users held out entirely (seed {args.seed})",
            num_train_users=len(cold_posterior.user_vocab), fit_seconds=cold_fit_seconds, by_given=comparison,
        ),
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float))
    print(json.dumps({k: result[k] for k in ("data", "model", "latency", "throughput", "equal_vs_importance")}, indent=2))
    return result


if __name__ == "__main__":
    main()
