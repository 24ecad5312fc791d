"""Offline top-10 evaluation: does ranking with posterior uncertainty change what a user gets?

Question
    On MovieLens-100K u1, how do the ranking strategies of
    ``bayesmf.recommend`` (posterior ``mean``, risk-averse ``lcb``, exploratory
    ``ucb``, ``thompson`` sampling, and ``prob_above``: P(r >= 4)) compare on
    precision@10, recall@10 and NDCG@10 against the held-out ratings >= 4, for
    a Gibbs (BPMF) posterior and for the tuned MAP fit?

Protocol
    One fit per method on u1.base (``--tiny``: small synthetic data and an
    80/20 split); for every test user with a relevant test movie
    (rating >= ``--relevance``), every movie the model knows except the
    user's training movies is ranked and the top ``--k`` are scored
    (``bayesmf.evaluate_ranking``). LCB / UCB use mean -/+ beta x
    the epistemic sd: over draws for Gibbs, the per-row Laplace sd for MAP
    (its plug-in predictive sd is the same for every movie, which would
    make LCB and UCB equal to ``mean``). Thompson sampling is random, so it
    is repeated with ``--thompson-repeats`` keys and reported as mean and sd.

Outputs (``--out``, default ``results/recommend_offline/``)
    ``metrics.csv`` (method x strategy x repeat, bucket ``all``),
    ``config.json``, ``summary.md``, ``ranking.png`` (the three metrics per
    strategy and method).

Run::

    python experiments/recommend_offline.py --data ../shared/data      # ~5 min on 2 cores
    python experiments/recommend_offline.py --plot-only
    python experiments/recommend_offline.py --tiny --out /tmp/offline
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _common as common
else:
    from experiments import _common as common

NAME = "recommend_offline"
METHODS = ("gibbs", "map")
STRATEGIES = ("mean", "lcb", "ucb", "thompson", "prob_above")
METRIC_COLUMNS = ("precision_at_k", "recall_at_k", "ndcg_at_k", "num_users", "seconds")
METRICS = (("precision_at_k", "precision@k"), ("recall_at_k", "recall@k"), ("ndcg_at_k", "NDCG@k"))


def build_parser():
    p = common.base_parser(NAME, __doc__)
    p.add_argument("--methods", type=common.str_list, default=list(METHODS), help=",".join(METHODS))
    p.add_argument("--strategies", type=common.str_list, default=list(STRATEGIES), help=",".join(STRATEGIES))
    p.add_argument("--k", type=int, default=10, help="length of the ranked list")
    p.add_argument("--relevance", type=float, default=4.0, help="a test rating >= this is relevant")
    p.add_argument("--beta", type=float, default=1.0, help="LCB / UCB width in epistemic sds")
    p.add_argument("--threshold", type=float, default=4.0, help="prob_above: P(r >= threshold)")
    p.add_argument("--thompson-repeats", type=int, default=None, help="Thompson keys (default 3; tiny 2)")
    p.add_argument("--rank", type=int, default=None, help="rank D (default 10; tiny 2)")
    p.add_argument("--num-samples", type=int, default=None, help="Gibbs draws kept (default 200; tiny 20)")
    p.add_argument("--num-warmup", type=int, default=None, help="Gibbs burn-in sweeps (default 50; tiny 10)")
    return p


def resolve(args):
    for key, full, small in (("rank", 10, 2), ("num_samples", 200, 20), ("num_warmup", 50, 10),
                             ("thompson_repeats", 3, 2)):
        if getattr(args, key) is None:
            setattr(args, key, small if args.tiny else full)
    for name, allowed in (("methods", METHODS), ("strategies", STRATEGIES)):
        bad = sorted(set(getattr(args, name)) - set(allowed))
        if bad:
            raise SystemExit(f"unknown {name} {bad}; expected a subset of {allowed}")
    if args.k <= 0 or args.thompson_repeats <= 0:
        raise SystemExit("--k and --thompson-repeats must be > 0")
    return args


def load_split(args):
    from bayesmf import split

    if args.tiny:
        from bayesmf import synthetic

        ratings = synthetic.movielens_like(args.seed, num_users=60, num_items=40, num_ratings=900, rank=2,
                                           min_per_user=6).ratings
        s = split.validation_split(ratings, 0.2, args.seed)  # every user and movie keeps a training rating
    else:
        s = split.make_split(common.ml100k_dir(args), "u1")
    return s.train, s.test


def fit(method: str, train, args):
    BayesMF = common.get_estimator()
    quiet = dict(progress_bar=not args.no_progress)
    if method == "gibbs":
        model = BayesMF(rank=args.rank, method="gibbs", num_samples=args.num_samples, num_warmup=args.num_warmup,
                        **quiet)
    else:
        grid = dict(grid={"factor": [3.0, 30.0], "offset": [10.0]}) if args.tiny else {}
        model = BayesMF(rank=args.rank, method="map", search="thorough", **grid, **quiet)  # the research baseline
    start = time.perf_counter()
    posterior = model.fit(args.seed, train)
    return posterior, time.perf_counter() - start


def evaluate(posterior, method: str, test, args) -> list[dict]:
    import jax

    from bayesmf import evaluate_ranking

    rows = []
    for strategy in args.strategies:
        repeats = args.thompson_repeats if strategy == "thompson" else 1
        for repeat in range(repeats):
            key = jax.random.fold_in(jax.random.PRNGKey(args.seed), repeat) if strategy == "thompson" else None
            start = time.perf_counter()
            out = evaluate_ranking(
                posterior, test.user_ids, test.item_ids, test.rating, k=args.k, strategy=strategy,
                relevance_threshold=args.relevance, beta=args.beta, threshold=args.threshold, rng_key=key,
                # MAP's lcb / ucb / thompson use the per-row Laplace spread (a no-op with several draws).
                uncertainty="laplace",
            )
            rows.append(dict(
                method=method, strategy=strategy, repeat=repeat, bucket="all", k=args.k,
                precision_at_k=out["precision_at_k"], recall_at_k=out["recall_at_k"], ndcg_at_k=out["ndcg_at_k"],
                num_users=out["num_users"], num_users_skipped=out["num_users_skipped"],
                num_cold_users=out["num_cold_users"], seconds=time.perf_counter() - start,
            ))
    return rows


def table(m: pd.DataFrame) -> pd.DataFrame:
    """Mean (and sd over repeats where there are several) per method x strategy."""
    rows = []
    for (method, strategy), part in m.groupby(["method", "strategy"], sort=False):
        row = dict(method=method, strategy=strategy)
        for column, label in METRICS:
            label = label.replace("k", str(int(part["k"].iloc[0])))
            row[label] = common.mean_sd(part[column]) if len(part) > 1 else f"{part[column].iloc[0]:.4f}"
        row["users"] = int(part["num_users"].iloc[0])
        rows.append(row)
    return pd.DataFrame(rows)


def draw(out: Path) -> Path:
    plt = common.plt()
    m = pd.read_csv(out / "metrics.csv")
    methods = [x for x in METHODS if x in set(m["method"])]
    strategies = [s for s in STRATEGIES if s in set(m["strategy"])]
    k = int(m["k"].iloc[0])
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 4.0), layout="constrained")
    width = 0.8 / len(methods)
    x = np.arange(len(strategies))
    for ax, (column, label) in zip(np.atleast_1d(axes), METRICS):
        for j, method in enumerate(methods):
            g = m[m["method"] == method].groupby("strategy")[column]
            mean = g.mean().reindex(strategies).to_numpy()
            sd = g.std(ddof=1).reindex(strategies).to_numpy()
            pos = x + (j - (len(methods) - 1) / 2) * width
            ax.bar(pos, mean, width, color=common.color(method), label=method, edgecolor="white", lw=0.5)
            has = np.isfinite(sd)  # only repeated strategies (Thompson) get error bars
            if has.any():
                ax.errorbar(pos[has], mean[has], yerr=sd[has], fmt="none", ecolor="black", capsize=3, lw=1)
        ax.set_xticks(x)
        ax.set_xticklabels(strategies, fontsize=8, rotation=20)
        ax.set_xlabel("ranking strategy")
        ax.set_ylabel(label.replace("k", str(k)))
        ax.set_title(label.replace("k", str(k)))
    handles, names = np.atleast_1d(axes)[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=len(names))
    fig.suptitle(f"top-{k} ranking vs held-out ratings >= relevance; error bars: sd over Thompson keys")
    return common.savefig(fig, out / "ranking.png")


def write_summary(out: Path, args, wall) -> Path:
    m = pd.read_csv(out / "metrics.csv")
    data = "synthetic tiny data, 80/20 split" if args.tiny else "MovieLens-100K u1"
    k = int(m["k"].iloc[0])
    means = m.groupby(["method", "strategy"])["ndcg_at_k"].mean()
    best = means.idxmax()
    text = [
        f"# Offline top-{k} ranking ({data})", "",
        f"Rank {args.rank}; Gibbs {args.num_samples} draws after {args.num_warmup} burn-in; MAP tuned on validation. "
        f"Relevant: test rating >= {args.relevance}; LCB/UCB beta = {args.beta} epistemic sds (MAP: per-row "
        f"Laplace sd); prob_above: P(r >= {args.threshold}); Thompson: mean ± sd over {args.thompson_repeats} keys; "
        f"seed {args.seed}. " + (f"Wall time {wall / 60:.1f} min." if wall else ""), "",
        common.markdown_table(table(m)), "",
        f"Highest NDCG@{k}: `{best[0]}` with `{best[1]}` ({means[best]:.4f}).", "",
        "Figure: `ranking.png`.", "",
    ]
    path = out / "summary.md"
    path.write_text("\n".join(text))
    return path


def main(argv=None) -> int:
    args = resolve(build_parser().parse_args(argv))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if args.plot_only:
        draw(out)
        write_summary(out, args, None)
        return 0
    common.enable_compile_cache()
    (out / "metrics.csv").unlink(missing_ok=True)
    status, extra = "ok", {}
    try:
        with common.watchdog(args.timeout):
            train, test = load_split(args)
            for method in args.methods:
                posterior, seconds = fit(method, train, args)
                extra[f"{method}_fit_seconds"] = seconds
                common.append_rows(out / "metrics.csv", evaluate(posterior, method, test, args))
    except common.WatchdogTimeout as exc:
        status = f"timeout: {exc}"
        print(status, file=sys.stderr)
    finally:
        wall = time.perf_counter() - start
        common.finish_run(out, args, argv, start, status, extra)
    if (out / "metrics.csv").exists():
        draw(out)
        write_summary(out, args, wall)
    return 0 if status == "ok" else 1


if __name__ == "__main__":
    raise SystemExit(main())
