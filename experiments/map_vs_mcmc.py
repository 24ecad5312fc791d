"""MAP versus MCMC: does integrating over the factors beat a point estimate, and where?

Question
    Salakhutdinov & Mnih (2008) found that a MAP fit of probabilistic matrix
    factorization (PMF) is best at a moderate rank and overfits beyond it,
    while Bayesian PMF (BPMF, Gibbs sampling with Normal-Wishart hyperpriors)
    improves or stays flat as the rank D grows, so the gap grows with D and is
    largest for users with few ratings. Does that shape hold for bayesmf on
    MovieLens-100K, for accuracy (RMSE, MAE) and for the predictive itself
    (NLL, CRPS, interval coverage), and what does each method cost?

Data
    MovieLens-100K, the five predefined folds u1..u5 (80k train / 20k test
    each), read through ``bayesmf.split.make_split``. ``--tiny`` uses a small
    synthetic MovieLens-shaped data set drawn from the model
    (``bayesmf.synthetic.movielens_like``) with two random 80/20 splits.

Methods (all through ``bayesmf.BayesMF``)
    ``map``          MAP with precisions tuned on a validation split and
                     learned factor means (the ``BayesMF`` default).
    ``map-fixed``    MAP with the default fixed precisions and zero factor
                     means (``tune=False``: the paper's PMF).
    ``gibbs``        blocked Gibbs with BPMF hyperpriors.
    ``gibbs-fixed``  blocked Gibbs with the fixed precisions (``priors="fixed"``).
    ``nuts``         NUTS on the BPMF model, only where practical (rank <= 10,
                     fold u1, unless ``--nuts-max-rank`` / ``--nuts-folds``), 100 + 100
                     draws with trees of depth <= 8 (``--nuts-max-tree-depth``).
    ``svi``          mean-field variational inference.

Outputs (``--out``, default ``results/map_vs_mcmc/``)
    ``metrics.csv`` one row per fold x method x rank x bucket (``all``,
    ``user <=20`` ... ``user >200`` by the user's training ratings,
    ``movie <=20`` ... ``movie >200`` by the movie's); ``convergence.csv`` and
    ``rhat.csv`` (4-chain Gibbs on u1 at rank 10); ``config.json``;
    ``summary.md``; figures ``rmse_vs_rank.png``, ``nll_vs_rank.png``,
    ``reliability.png``, ``by_user_activity.png``, ``by_movie_popularity.png``,
    ``convergence.png``, ``cost_vs_rmse.png``.

Run::

    python experiments/map_vs_mcmc.py --data ../shared/data                    # everything (68 min on 2 cores)
    python experiments/map_vs_mcmc.py --folds u1 --ranks 10,50 --methods map,gibbs,svi
    python experiments/map_vs_mcmc.py --folds u1,u2 --ranks 2,5 --resume       # add runs to the same table
    python experiments/map_vs_mcmc.py --plot-only                              # redraw from metrics.csv
    python experiments/map_vs_mcmc.py --tiny --out /tmp/mvm                    # seconds, synthetic
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

NAME = "map_vs_mcmc"
ALL_METHODS = ("map", "map-fixed", "gibbs", "gibbs-fixed", "nuts", "svi")
# Methods whose draws come from a Markov chain: R-hat means something only for
# these (SVI's draws are independent draws from the fitted guide).
MCMC = ("gibbs", "gibbs-fixed", "nuts")
USER_BUCKETS = ("<=20", "21-50", "51-100", "101-200", ">200")
HEADLINE_RANKS = (10, 50)
FOLD_ORDER = ("u1", "u2", "u3", "u4", "u5", "ua", "ub")
# Columns whose values must be finite in every row of metrics.csv.
METRIC_COLUMNS = ("count", "rmse", "mae", "nll", "crps", "coverage_50", "coverage_80", "coverage_90", "coverage_95", "fit_seconds")
# The gap between two RMSEs below which we call them "flat" / "equal" in the
# summary: about 2 Monte Carlo / fold-to-fold sds of an ml-100k test RMSE
# (sd over u1..u5 of a fixed method is ~0.01; within a fold MC error ~0.001).
FLAT_RMSE = 0.005


def build_parser():
    p = common.base_parser(NAME, __doc__)
    p.add_argument("--folds", type=common.str_list, default=None, help="folds, default u1,u2,u3,u4,u5 (tiny: r1,r2)")
    p.add_argument("--ranks", type=common.int_list, default=None, help="ranks D, default 2,5,10,20,50,100 (tiny: 2)")
    p.add_argument("--methods", type=common.str_list, default=list(ALL_METHODS), help=f"subset of {','.join(ALL_METHODS)}")
    p.add_argument("--num-samples", type=int, default=None, help="Gibbs draws kept (default 200; tiny 20)")
    p.add_argument("--num-warmup", type=int, default=None, help="Gibbs burn-in sweeps (default 50; tiny 10)")
    p.add_argument("--nuts-samples", type=int, default=None, help="NUTS draws (default 100; tiny 10)")
    p.add_argument("--nuts-warmup", type=int, default=None, help="NUTS warmup (default 100; tiny 10)")
    p.add_argument("--svi-samples", type=int, default=None, help="draws from the SVI guide (default 200; tiny 20)")
    p.add_argument("--svi-steps", type=int, default=None, help="SVI optimizer steps (default: the engine's; tiny 250 = one compiled chunk)")
    p.add_argument("--nuts-max-rank", type=int, default=10, help="run NUTS only at ranks <= this")
    # At the engine's default depth 10 every NUTS draw on ml-100k u1 hit the cap (1,023 leapfrog steps);
    # depth 8 (255 steps) took 160 s against 566 s at rank 10 (100 + 100 draws) for test RMSE 0.9081
    # against 0.9073, NLL 1.3105 against 1.3079, 90% coverage 0.903 against 0.900.
    p.add_argument("--nuts-max-tree-depth", type=int, default=8, help="NUTS tree depth cap (2^depth - 1 leapfrog steps per draw)")
    p.add_argument("--nuts-folds", type=common.str_list, default=None, help="folds where NUTS runs (default: the first)")
    p.add_argument("--convergence-rank", type=int, default=10)
    p.add_argument("--convergence-chains", type=int, default=4)
    p.add_argument("--convergence-sweeps", type=int, default=None, help="sweeps per chain, no burn-in (default 200; tiny 20)")
    p.add_argument("--skip-convergence", action="store_true")
    p.add_argument("--resume", action="store_true", help="keep metrics.csv and skip (fold, method, rank) already in it")
    return p


def resolve(args):
    if args.tiny:
        defaults = dict(folds=["r1", "r2"], ranks=[2], num_samples=20, num_warmup=10, nuts_samples=10, nuts_warmup=10,
                        svi_samples=20, svi_steps=250, convergence_sweeps=20)
        args.convergence_rank = min(args.convergence_rank, 2)
    else:
        defaults = dict(folds=["u1", "u2", "u3", "u4", "u5"], ranks=[2, 5, 10, 20, 50, 100], num_samples=200,
                        num_warmup=50, nuts_samples=100, nuts_warmup=100, svi_samples=200, convergence_sweeps=200)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.nuts_folds is None:
        args.nuts_folds = args.folds[:1]
    unknown = sorted(set(args.methods) - set(ALL_METHODS))
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; expected a subset of {ALL_METHODS}")
    return args


# --- data ------------------------------------------------------------------------------------


def load_folds(args) -> dict:
    """fold name -> (train, test) Ratings."""
    from bayesmf import split

    if args.tiny:
        from bayesmf import synthetic

        sim = synthetic.movielens_like(args.seed, num_users=60, num_items=40, num_ratings=900, rank=2, min_per_user=6)
        out = {}
        for j, name in enumerate(args.folds):
            s = split.make_split(sim.ratings, "random", test_fraction=0.2, seed=args.seed + j)
            out[name] = (s.train, s.test)
        return out
    directory = common.ml100k_dir(args)
    return {name: tuple(getattr(split.make_split(directory, name), a) for a in ("train", "test")) for name in args.folds}


# --- one run ---------------------------------------------------------------------------------


def make_model(method: str, rank: int, args):
    BayesMF = common.get_estimator()
    quiet = dict(progress_bar=False)
    if method == "map":
        # --tiny: a 2-point grid of precision ratios instead of the engine's full search (seconds, not minutes).
        grid = dict(grid={"factor": [3.0, 30.0], "offset": [10.0]}) if args.tiny else {}
        # The thorough search (offset ratio too, the whole coarse factor line): the research baseline.
        return BayesMF(rank=rank, method="map", search="thorough", **grid, **quiet)
    if method == "map-fixed":
        from bayesmf import FixedPriors

        # The paper's PMF: default precisions, zero prior means, no tuning.
        return BayesMF(rank=rank, method="map", tune=False, fixed=FixedPriors(), **quiet)
    if method == "gibbs":
        return BayesMF(rank=rank, method="gibbs", num_samples=args.num_samples, num_warmup=args.num_warmup, **quiet)
    if method == "gibbs-fixed":
        return BayesMF(rank=rank, method="gibbs", priors="fixed", num_samples=args.num_samples,
                       num_warmup=args.num_warmup, **quiet)
    if method == "nuts":
        return BayesMF(rank=rank, method="nuts", num_samples=args.nuts_samples, num_warmup=args.nuts_warmup,
                       max_tree_depth=args.nuts_max_tree_depth, **quiet)
    if method == "svi":
        steps = {} if args.svi_steps is None else dict(num_steps=args.svi_steps)
        return BayesMF(rank=rank, method="svi", num_samples=args.svi_samples, **steps, **quiet)
    raise ValueError(method)


def evaluate(posterior, test) -> list[dict]:
    """Rows for bucket ``all``, the user-activity buckets and the movie-popularity buckets."""
    levels = common.LEVELS
    table = posterior.evaluate(test, levels=levels, by=("user_activity", "item_popularity"))
    overall = table.loc[("all", "all")].to_dict()
    rows = [dict(bucket="all", **{**overall, "count": int(overall["count"])}, num_cold_rows=table.attrs["num_cold_rows"])]
    for prefix, name in (("user", "user_activity"), ("movie", "item_popularity")):
        for label, rec in table.loc[name].iterrows():
            if int(rec["count"]) == 0:
                continue
            rows.append(dict(bucket=f"{prefix} {label}", **rec.to_dict()))
    return rows


def run_one(fold: str, train, test, method: str, rank: int, args, key: int) -> list[dict]:
    from bayesmf import diagnostics

    model = make_model(method, rank, args)
    start = time.perf_counter()
    posterior = model.fit(key, train)
    wall = time.perf_counter() - start
    timing = posterior.timing
    meta = dict(
        fold=fold, method=method, rank=rank, seed=key,
        fit_seconds=float(timing.get("fit_seconds", wall)),
        compile_seconds=float(timing.get("compile_seconds", np.nan)),
        seconds_per_sample=float(timing.get("seconds_per_sample", np.nan)),
        num_chains=posterior.num_chains, num_draws=posterior.num_draws,
        num_train=len(train), num_test=len(test),
    )
    if method in MCMC and posterior.num_draws >= 4:
        meta["max_rhat"] = float(diagnostics.max_rhat(posterior))
    if method.startswith("map"):
        # The precisions the MAP used (tuned, or the defaults), as the posterior's model config holds them.
        for name, value in posterior.config.fixed._asdict().items():
            meta[f"map_{name}"] = float(value)
    rows = evaluate(posterior, test)
    return [{**meta, **row} for row in rows]


# --- convergence -----------------------------------------------------------------------------


def convergence(train, test, args, out: Path) -> None:
    """Gibbs with several chains, no burn-in: running RMSE and R-hat of probe predictions per sweep."""
    import arviz as az

    from bayesmf import diagnostics

    BayesMF = common.get_estimator()
    model = BayesMF(rank=args.convergence_rank, method="gibbs", num_samples=args.convergence_sweeps, num_warmup=0,
                    num_chains=args.convergence_chains, progress_bar=not args.no_progress)
    posterior = model.fit(args.seed, train)
    c, s = posterior.num_chains, posterior.num_draws
    y = np.asarray(test.rating, np.float64)
    pairs = posterior.pairs(test.user_ids, test.item_ids)
    means = posterior.components(pairs.user_index, pairs.item_index).mean.reshape(c, s, -1)  # (chain, draw, pair), chain-major
    running = np.cumsum(means, axis=1) / np.arange(1, s + 1)[None, :, None]
    chain_rmse = np.sqrt(np.mean((running - y) ** 2, axis=-1))  # (C, S)
    pooled_rmse = np.sqrt(np.mean((running.mean(axis=0) - y) ** 2, axis=-1))  # (S,)
    draw_rmse = diagnostics.rmse_trace(posterior, test.user_ids, test.item_ids, y)  # (C, S)
    rows = []
    for t in range(s):
        rows.append(dict(chain="all", sweep=t + 1, running_rmse=pooled_rmse[t], draw_rmse=float(draw_rmse[:, t].mean())))
        for ch in range(c):
            rows.append(dict(chain=str(ch), sweep=t + 1, running_rmse=chain_rmse[ch, t], draw_rmse=draw_rmse[ch, t]))
    pd.DataFrame(rows).to_csv(out / "convergence.csv", index=False)

    rng = np.random.default_rng(args.seed)
    probes = rng.choice(means.shape[-1], size=min(50, means.shape[-1]), replace=False)
    rhat_rows = []
    for t in range(4, s + 1):
        window = means[:, t // 2 : t, :][:, :, probes]  # second half of the first t sweeps
        if window.shape[1] < 4:
            continue
        r = np.asarray(az.rhat(window, chain_axis=0, draw_axis=1), np.float64)
        rhat_rows.append(dict(sweep=t, rhat_max=float(np.nanmax(r)), rhat_median=float(np.nanmedian(r)),
                              rhat_q90=float(np.nanquantile(r, 0.9))))
    pd.DataFrame(rhat_rows).to_csv(out / "rhat.csv", index=False)
    meta = dict(rank=args.convergence_rank, chains=c, sweeps=s, fit_seconds=posterior.timing.get("fit_seconds"),
                max_rhat_identifiable=float(diagnostics.max_rhat(posterior)), num_probes=int(probes.size))
    (out / "convergence.json").write_text(pd.Series(meta).to_json(indent=2))


# --- figures ---------------------------------------------------------------------------------


def _all(df):
    return df[df["bucket"] == "all"]


def _by_method_rank(df, column):
    g = _all(df).groupby(["method", "rank"])[column]
    return g.mean().unstack("rank"), g.std(ddof=1).unstack("rank"), g.count().unstack("rank")


def _methods(df):
    present = list(dict.fromkeys(df["method"]))
    return [m for m in ALL_METHODS if m in present] + [m for m in present if m not in ALL_METHODS]


def plot_vs_rank(df, column, ylabel, path, title):
    plt = common.plt()
    mean, sd, count = _by_method_rank(df, column)
    fig, ax = plt.subplots(figsize=(6.8, 4.4), layout="constrained")
    methods = [m for m in _methods(df) if m in mean.index]
    for j, m in enumerate(methods):
        x = mean.columns.to_numpy(np.float64)
        # Dodge the methods sideways (log axis: a multiplicative shift) so their error bars do not overlap.
        x = x * 1.03 ** (j - (len(methods) - 1) / 2)
        yv = mean.loc[m].to_numpy()
        e = sd.loc[m].fillna(0).to_numpy()
        ok = np.isfinite(yv)
        folds = sorted(set(count.loc[m].dropna().astype(int)))
        label = f"{m} ({'/'.join(map(str, folds))} fold{'s' if folds != [1] else ''})"
        ax.errorbar(x[ok], yv[ok], yerr=e[ok], label=label, color=common.color(m), marker=common.marker(m),
                    capsize=3, lw=1.5, ms=5)
    ax.set_xscale("log")
    ranks = sorted(df["rank"].unique())
    ax.set_xticks(ranks)
    ax.set_xticklabels([str(r) for r in ranks])
    ax.minorticks_off()
    if len(ranks) == 1:
        ax.set_xlim(ranks[0] / 1.5, ranks[0] * 1.5)
    ax.set_xlabel("rank D (latent factors, log scale)")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{title}\n(mean over folds; error bars: sd over folds)")
    ax.legend(loc="best", ncols=2)
    common.savefig(fig, path)


def plot_reliability(df, path):
    plt = common.plt()
    ranks = [r for r in HEADLINE_RANKS if r in set(df["rank"])] or sorted(df["rank"].unique())[-2:]
    fig, axes = plt.subplots(1, len(ranks), figsize=(4.6 * len(ranks), 4.6), squeeze=False, layout="constrained")
    nominal = np.array(common.LEVELS)
    for ax, rank in zip(axes[0], ranks):
        sub = _all(df)[_all(df)["rank"] == rank]
        ax.plot([0.4, 1.0], [0.4, 1.0], color="black", lw=1, ls="--", label="ideal")
        for m in _methods(sub):
            rows = sub[sub["method"] == m]
            emp = np.array([rows[f"coverage_{100 * p:g}"].mean() for p in nominal])
            ax.plot(nominal, emp, marker=common.marker(m), color=common.color(m), label=m)
        low = min(0.4, float(np.nanmin(sub[[f"coverage_{100 * p:g}" for p in nominal]].to_numpy())) - 0.05)
        ax.set_xlim(0.4, 1.0)
        ax.set_ylim(low, 1.0)
        if low >= 0.4:
            ax.set_aspect("equal", adjustable="box")
        ax.set_xlabel("nominal coverage of central interval")
        ax.set_ylabel("empirical coverage on test ratings")
        ax.set_title(f"reliability, D = {rank}")
        ax.legend(loc="upper left")
    common.savefig(fig, path)


def plot_by_bucket(df, prefix, xlabel, path):
    plt = common.plt()
    ranks = [r for r in HEADLINE_RANKS if r in set(df["rank"])] or sorted(df["rank"].unique())[-1:]
    sub = df[df["bucket"].str.startswith(prefix + " ")]
    labels = [f"{prefix} {b}" for b in USER_BUCKETS if f"{prefix} {b}" in set(sub["bucket"])]
    fig, axes = plt.subplots(len(ranks), 2, figsize=(11, 3.7 * len(ranks) + 0.5), squeeze=False, layout="constrained")
    for row, rank in enumerate(ranks):
        part = sub[sub["rank"] == rank]
        methods = _methods(part)
        width = 0.8 / max(len(methods), 1)
        x = np.arange(len(labels))
        counts = part.groupby("bucket")["count"].mean()
        for col, (column, ylabel) in enumerate((("rmse", "test RMSE"), ("coverage_90", "90% interval coverage"))):
            ax = axes[row, col]
            for j, m in enumerate(methods):
                g = part[part["method"] == m].groupby("bucket")[column]
                mean = g.mean().reindex(labels).to_numpy()
                sd = g.std(ddof=1).reindex(labels).to_numpy()
                yerr = None if not np.any(np.isfinite(sd)) else np.nan_to_num(sd)
                ax.bar(x + (j - (len(methods) - 1) / 2) * width, mean, width, yerr=yerr, capsize=2,
                       color=common.color(m), label=m, edgecolor="white", lw=0.5)
            ax.set_xticks(x)
            ax.set_xticklabels([f"{lab.split(' ', 1)[1]}\n(n={counts.get(lab, 0):.0f})" for lab in labels], fontsize=8)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            if column == "coverage_90":
                ax.axhline(0.9, color="black", ls="--", lw=1)
                finite = part[column][np.isfinite(part[column])]
                ax.set_ylim(min(0.75, float(finite.min()) - 0.03) if len(finite) else 0.5, 1.0)
            else:
                finite = part[column][np.isfinite(part[column])]
                if len(finite):
                    ax.set_ylim(max(0.0, finite.min() - 0.1), finite.max() + 0.05)
            ax.set_title(f"{ylabel} by {xlabel.split(' (')[0]}, D = {rank}")
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=len(names))
    nfolds = sub.groupby(["method", "rank"])["fold"].nunique()
    fig.suptitle(f"folds per method: {nfolds.min()}-{nfolds.max()}; error bars (where >1 fold): sd over folds"
                 if nfolds.max() > 1 else "one fold (no error bars)")
    common.savefig(fig, path)


def plot_convergence(out: Path, path: Path) -> bool:
    conv_path, rhat_path = out / "convergence.csv", out / "rhat.csv"
    if not conv_path.exists():
        return False
    plt = common.plt()
    conv = pd.read_csv(conv_path, dtype={"chain": str})
    rhat = pd.read_csv(rhat_path) if rhat_path.exists() else pd.DataFrame()
    meta = {}
    if (out / "convergence.json").exists():
        meta = pd.read_json(out / "convergence.json", typ="series").to_dict()
    meta = {k: (int(v) if isinstance(v, float) and float(v).is_integer() else v) for k, v in meta.items()}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6), layout="constrained")
    for ch, part in conv.groupby("chain"):
        if ch == "all":
            continue
        ax1.plot(part["sweep"], part["draw_rmse"], color="grey", lw=0.6, alpha=0.5,
                 label="single draw (each chain)" if ch == "0" else None)
        ax1.plot(part["sweep"], part["running_rmse"], lw=1.2, label=f"chain {ch}: running mean")
    pooled = conv[conv["chain"] == "all"]
    ax1.plot(pooled["sweep"], pooled["running_rmse"], color="black", lw=2, label="all chains pooled")
    final = pooled["running_rmse"].iloc[-1]
    lo = min(pooled["running_rmse"].min(), conv["running_rmse"].min())
    ax1.set_ylim(lo - 0.01, max(final + 0.08, lo + 0.1))
    ax1.set_xlabel("Gibbs sweep (no burn-in discarded)")
    ax1.set_ylabel("test RMSE")
    ax1.set_title(f"test RMSE of the running-mean prediction\n(D = {meta.get('rank', '?')}, "
                  f"{meta.get('chains', '?')} chains; final pooled {final:.4f})")
    ax1.legend(loc="upper right", fontsize=7.5, ncols=2)
    if len(rhat):
        floor = 1e-4  # R-hat - 1 is plotted on a log axis; values below this are drawn at it
        for column, label, c in (("rhat_max", "max over probe pairs", "#d62728"),
                                 ("rhat_q90", "90th percentile", "#ff7f0e"), ("rhat_median", "median", "#1f77b4")):
            ax2.plot(rhat["sweep"], np.maximum(rhat[column] - 1.0, floor), label=label, color=c)
        ax2.axhline(0.01, color="black", ls="--", lw=1, label="R-hat = 1.01")
        ax2.set_yscale("log")
    ax2.set_xlabel("Gibbs sweep t (R-hat on sweeps t/2 .. t)")
    ax2.set_ylabel("split R-hat − 1 of predicted test ratings (log scale)")
    ax2.set_title(f"R-hat of {meta.get('num_probes', 50)} probe test predictions (ArviZ)")
    ax2.legend(loc="upper right")
    common.savefig(fig, path)
    return True


def plot_cost(df, path):
    plt = common.plt()
    sub = _all(df).groupby(["method", "rank"])[["fit_seconds", "rmse"]].mean().reset_index()
    fig, ax = plt.subplots(figsize=(6.6, 4.4))
    # Rank labels that would print over one already placed are left off (the line still orders the
    # ranks); each method's smallest and largest rank are labelled first so the ends always show.
    sub["logx"] = np.log10(sub["fit_seconds"].clip(lower=1e-3))
    near_x = 0.07 * max(float(sub["logx"].max() - sub["logx"].min()), 1e-9)
    near_y = 0.025 * max(float(sub["rmse"].max() - sub["rmse"].min()), 1e-9)
    placed = []
    for m in _methods(sub):
        part = sub[sub["method"] == m].sort_values("rank")
        ax.plot(part["fit_seconds"], part["rmse"], marker=common.marker(m), color=common.color(m), label=m, lw=1)
        order = [0, len(part) - 1] + list(range(1, len(part) - 1)) if len(part) > 1 else [0]
        for i in order:
            r = part.iloc[i]
            x, y = r["logx"], r["rmse"]
            if any(abs(x - px) < near_x and abs(y - py) < near_y for px, py in placed):
                continue
            placed.append((x, y))
            ax.annotate(f"D={int(r['rank'])}", (r["fit_seconds"], r["rmse"]), textcoords="offset points",
                        xytext=(4, 3), fontsize=7, color=common.color(m))
    ax.set_xscale("log")
    ax.set_xlabel("fit time, seconds (log scale; includes compilation and MAP tuning)")
    ax.set_ylabel("test RMSE (mean over folds)")
    ax.set_title("cost vs accuracy")
    ax.legend(loc="best")
    common.savefig(fig, path)


def draw_all(out: Path) -> list[Path]:
    df = pd.read_csv(out / "metrics.csv")
    paths = []
    for column, ylabel, name, title in (
        ("rmse", "test RMSE", "rmse_vs_rank.png", "test RMSE vs rank"),
        ("nll", "test NLL per rating (nats)", "nll_vs_rank.png", "test negative log predictive density vs rank"),
    ):
        plot_vs_rank(df, column, ylabel, out / name, title)
        paths.append(out / name)
    plot_reliability(df, out / "reliability.png")
    plot_by_bucket(df, "user", "user activity (training ratings of the user)", out / "by_user_activity.png")
    plot_by_bucket(df, "movie", "movie popularity (training ratings of the movie)", out / "by_movie_popularity.png")
    plot_cost(df, out / "cost_vs_rmse.png")
    paths += [out / "reliability.png", out / "by_user_activity.png", out / "by_movie_popularity.png", out / "cost_vs_rmse.png"]
    if plot_convergence(out, out / "convergence.png"):
        paths.append(out / "convergence.png")
    return paths


# --- summary ---------------------------------------------------------------------------------


def headline_table(df) -> str:
    a = _all(df)
    ranks = [r for r in HEADLINE_RANKS if r in set(a["rank"])] or sorted(a["rank"].unique())
    rows = []
    for m in _methods(a):
        row = {"method": m}
        for r in ranks:
            part = a[(a["method"] == m) & (a["rank"] == r)]
            row[f"RMSE D={r}"] = common.mean_sd(part["rmse"])
            row[f"NLL D={r}"] = common.mean_sd(part["nll"], ".3f")
            row[f"cov90 D={r}"] = common.mean_sd(part["coverage_90"], ".3f")
            row[f"fit s D={r}"] = common.mean_sd(part["fit_seconds"], ".0f")
        rows.append(row)
    return common.markdown_table(pd.DataFrame(rows))


def _curve(df, method):
    a = _all(df)
    return a[a["method"] == method].groupby("rank")["rmse"].mean().sort_index()


def comparison_text(df) -> str:
    """Salakhutdinov & Mnih's expected shape, checked with the numbers."""
    lines = []
    bayes = _curve(df, "gibbs")
    for mname in ("map", "map-fixed"):
        curve = _curve(df, mname)
        if len(curve) < 2:
            continue
        best = curve.idxmin()
        top = curve.index.max()
        excess = curve[top] - curve[best]
        pts = ", ".join(f"D={d}: {v:.4f}" for d, v in curve.items())
        verdict = (
            f"best at D={best} and worse by {excess:+.4f} at D={top}: it overfits beyond D={best}"
            if best < top and excess > FLAT_RMSE
            else f"best at D={best}; at D={top} it is {excess:+.4f} from its best, so no overfitting beyond the "
            f"{FLAT_RMSE} threshold"
        )
        lines.append(f"* **MAP best at moderate rank, then overfits** (`{mname}`): RMSE {pts}. {verdict}.")
    if len(bayes) >= 2:
        lo, hi = bayes.index.min(), bayes.index.max()
        change = bayes[hi] - bayes[lo]
        diffs = np.diff(bayes.to_numpy())
        mono = "never rising by more than %.3f between neighbouring ranks" % FLAT_RMSE if np.all(diffs <= FLAT_RMSE) else (
            "rising by up to %+.4f between neighbouring ranks" % diffs.max())
        kind = "improves" if change < -FLAT_RMSE else ("stays flat" if abs(change) <= FLAT_RMSE else "gets worse")
        pts = ", ".join(f"D={d}: {v:.4f}" for d, v in bayes.items())
        lines.append(f"* **BPMF improves or stays flat** (`gibbs`): RMSE {pts}; from D={lo} to D={hi} it {kind} "
                     f"({change:+.4f}), {mono}. Expected shape {'holds' if change <= FLAT_RMSE else 'does not hold'}.")
    for mname in ("map", "map-fixed"):
        curve = _curve(df, mname)
        common_ranks = sorted(set(curve.index) & set(bayes.index))
        if len(common_ranks) < 2:
            continue
        gap = pd.Series({d: curve[d] - bayes[d] for d in common_ranks})
        grows = gap.iloc[-1] > gap.iloc[0] + FLAT_RMSE
        pts = ", ".join(f"D={d}: {v:+.4f}" for d, v in gap.items())
        lines.append(f"* **Gap grows with D** (RMSE `{mname}` − `gibbs`): {pts}. "
                     f"{'Holds' if grows else 'Does not hold'} (gap at largest D minus gap at smallest D: "
                     f"{gap.iloc[-1] - gap.iloc[0]:+.4f}).")
    ub = df[df["bucket"].str.startswith("user ")]
    for rank in [r for r in HEADLINE_RANKS if r in set(ub["rank"])]:
        part = ub[ub["rank"] == rank].groupby(["method", "bucket"])["rmse"].mean().unstack("bucket")
        for mname in ("map", "map-fixed"):
            if mname not in part.index or "gibbs" not in part.index:
                continue
            gap = (part.loc[mname] - part.loc["gibbs"]).reindex([f"user {b}" for b in USER_BUCKETS]).dropna()
            if gap.empty:
                continue
            largest = gap.idxmax()
            pts = ", ".join(f"{k.split(' ', 1)[1]}: {v:+.4f}" for k, v in gap.items())
            lines.append(f"* **Gap largest for users with few ratings** (D={rank}, `{mname}` − `gibbs` by user's "
                         f"training ratings): {pts}. Largest in `{largest.split(' ', 1)[1]}`: "
                         f"{'holds' if largest == 'user <=20' else 'does not hold'}.")
    if not lines:
        return "Not enough methods / ranks in this run to compare with the expected shape.\n"
    return "\n".join(lines) + "\n"


def cost_text(a) -> str:
    """Fit seconds summed over the runs in the table (one row per run), per method: what the whole grid
    costs even when it was run over several ``--resume`` invocations (evaluation time is not included)."""
    total = a.groupby("method")["fit_seconds"].sum()
    parts = ", ".join(f"`{m}` {total[m] / 60:.1f}" for m in _methods(a))
    return f"Fit time summed over these runs: {total.sum() / 60:.1f} min ({parts} min)."


def write_summary(out: Path, args, wall: float | None) -> Path:
    df = pd.read_csv(out / "metrics.csv")
    a = _all(df)
    folds = sorted(a["fold"].unique())
    text = [
        "# MAP vs MCMC on " + ("synthetic tiny data" if args.tiny else "MovieLens-100K"),
        "",
        f"Folds: {', '.join(folds)}; ranks: {', '.join(map(str, sorted(a['rank'].unique())))}; "
        f"methods: {', '.join(_methods(a))}. Seed {args.seed}. "
        + (f"Wall time of the last invocation: {wall / 60:.1f} min." if wall else ""),
        "",
        "Counts of runs (fold x rank) per method: "
        + ", ".join(f"`{m}` {len(a[a['method'] == m])}" for m in _methods(a)) + ".",
        "",
        cost_text(a),
        "",
        "## Headline: test RMSE, NLL, 90% interval coverage (mean ± sd over folds)",
        "",
        headline_table(df),
        "",
        "## Against Salakhutdinov & Mnih (2008)",
        "",
        "Their expected shape: MAP (PMF) is best at a moderate rank and then overfits; Bayesian PMF improves or stays "
        "flat as D grows; so the gap grows with D, and it is largest for users with few ratings. Checked here with "
        f"test RMSE (mean over the folds run; 'flat' means within {FLAT_RMSE}). Note that `map` tunes its "
        "regularization on a validation split per rank, which is exactly what keeps a point estimate from "
        "overfitting; `map-fixed` is the untuned PMF of the paper.",
        "",
        comparison_text(df),
    ]
    conv = out / "convergence.json"
    if conv.exists():
        meta = pd.read_json(conv, typ="series").to_dict()
        meta = {k: (int(v) if isinstance(v, float) and float(v).is_integer() else v) for k, v in meta.items()}
        rhat = pd.read_csv(out / "rhat.csv") if (out / "rhat.csv").exists() else None
        conv_df = pd.read_csv(out / "convergence.csv", dtype={"chain": str})
        pooled = conv_df[conv_df["chain"] == "all"]
        first_ok = None
        if rhat is not None and len(rhat):
            ok = rhat[rhat["rhat_max"] < 1.01]
            first_ok = int(ok["sweep"].iloc[0]) if len(ok) else None
        parts = [
            f"Gibbs, D={meta.get('rank')}, {meta.get('chains')} chains x {meta.get('sweeps')} sweeps with no burn-in, "
            f"on fold {folds[0] if folds else '?'}: pooled running-mean test RMSE {pooled['running_rmse'].iloc[-1]:.4f} "
            f"after {int(pooled['sweep'].iloc[-1])} sweeps (after 10 sweeps: "
            f"{pooled['running_rmse'].iloc[min(9, len(pooled) - 1)]:.4f})."
        ]
        if rhat is not None and len(rhat):
            if first_ok:
                parts.append(f"Max R-hat over {meta.get('num_probes')} probe test predictions (window t/2..t) is "
                             f"first below 1.01 at sweep {first_ok};")
            else:
                parts.append("Max R-hat over the probe test predictions never fell below 1.01;")
            parts.append(f"after the last sweep it is {rhat['rhat_max'].iloc[-1]:.3f} (median "
                         f"{rhat['rhat_median'].iloc[-1]:.3f}).")
        parts.append("Max R-hat over all identifiable quantities (`bayesmf.diagnostics.max_rhat`, all draws): "
                     f"{meta.get('max_rhat_identifiable', float('nan')):.3f}.")
        text += ["## Sampler convergence", "", " ".join(parts), ""]
    text += ["## Figures", ""] + [f"* `{p.name}`" for p in sorted(out.glob("*.png"))] + [""]
    path = out / "summary.md"
    path.write_text("\n".join(text))
    return path


# --- main ------------------------------------------------------------------------------------


def main(argv=None) -> int:
    args = resolve(build_parser().parse_args(argv))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if args.plot_only:
        draw_all(out)
        write_summary(out, args, None)
        return 0
    common.enable_compile_cache()
    metrics_path = out / "metrics.csv"
    done = set()
    if args.resume and metrics_path.exists():
        prev = pd.read_csv(metrics_path)
        done = set(zip(prev["fold"].astype(str), prev["method"], prev["rank"].astype(int)))
    else:
        for stale in ("metrics.csv", "convergence.csv", "rhat.csv", "convergence.json"):
            (out / stale).unlink(missing_ok=True)
    status = "ok"
    try:
        with common.watchdog(args.timeout):
            folds = load_folds(args)
            plan = []
            for f_idx, fold in enumerate(args.folds):
                for rank in args.ranks:
                    for method in args.methods:
                        if method == "nuts" and (rank > args.nuts_max_rank or fold not in args.nuts_folds):
                            continue
                        if (fold, method, rank) in done:
                            continue
                        plan.append((f_idx, fold, rank, method))
            bar = common.progress(plan, desc="map_vs_mcmc runs", disable=args.no_progress)
            for f_idx, fold, rank, method in bar:
                bar.set_postfix_str(f"{fold} D={rank} {method}")
                train, test = folds[fold]
                # The key depends on the fold's name, not its place in --folds, so a
                # run split over invocations (--resume) draws what one run would.
                fold_number = FOLD_ORDER.index(fold) if fold in FOLD_ORDER else f_idx
                rows = run_one(fold, train, test, method, rank, args, key=args.seed + 1000 * fold_number + rank)
                common.append_rows(metrics_path, rows)  # incremental: a timeout keeps what finished
            conv_done = args.resume and (out / "convergence.csv").exists()
            if not args.skip_convergence and not conv_done:
                train, test = folds[args.folds[0]]
                convergence(train, test, args, out)
    except common.WatchdogTimeout as exc:
        status = f"timeout: {exc}"
        print(status, file=sys.stderr)
    finally:
        wall = time.perf_counter() - start
        common.finish_run(out, args, argv, start, status)
    if metrics_path.exists():
        draw_all(out)
        write_summary(out, args, wall)
    return 0 if status == "ok" else 1


if __name__ == "__main__":
    raise SystemExit(main())
