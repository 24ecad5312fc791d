"""Cold start: how much do a new user's (or a new movie's) first k ratings buy, by method?

Question
    A user the model has never seen is predicted by the mean-based cold-start
    prior (each movie's offset plus ``mu_L . R_v``), not by zero. How much
    better is that than the trivial answers (predicting 0, as a model without
    offsets would before mean normalization, or the global mean), and how fast
    do MAP fold-in and Bayesian fold-in (over Gibbs posterior draws) improve
    on it as the user reveals k = 0, 1, 2, 5, 10, 20 ratings, in accuracy
    (RMSE) and in calibration (NLL, 90% interval coverage)? The same for new
    movies.

Data
    MovieLens-100K (all 100k ratings, ``bayesmf.data.read_dataset_dir``).
    20% of the users are held out entirely (``bayesmf.split.cold_users``,
    seeded); MAP and Gibbs are fitted once on the remaining users' ratings.
    Each held-out user then reveals k of their ratings, drawn at random and
    nested across k (``bayesmf.split.leave_k_out`` with one seed), and the
    rest of their ratings are predicted. So that every k is scored on the
    same people, the evaluated users are the held-out users with more than
    max(k) ratings. New movies: the same with 20% of the movies held out
    (``bayesmf.split.cold_items``), the evaluated movies being those with
    more than max(k) ratings. ``--tiny``: small synthetic data from
    ``bayesmf.synthetic.movielens_like``.

Methods
    ``zero``          predict 0 for every rating (inline trivial baseline:
                      a zero-mean prior without offsets), with the sd of a
                      zero-mean Gaussian fitted to the training ratings.
    ``global-mean``   the training global mean and sd (inline baseline).
    ``prior-map``, ``prior-gibbs``
                      ``Posterior.predict`` for the unknown user / movie:
                      the mean-based cold-start prior (ignores the k ratings).
    ``foldin-map``, ``foldin-gibbs``
                      ``bayesmf.coldstart.fold_in_users`` / ``fold_in_items``
                      on the MAP / Gibbs posterior (importance-weighted over
                      Gibbs draws); at k = 0 they equal the prior.
    ``prior-features``, ``foldin-features``
                      the same on a Gibbs posterior fitted with side features
                      (users' age bucket, gender and occupation; movies'
                      genres: ``bayesmf.load_movielens_features``): a new
                      user's (movie's) prior mean is ``mu + B^T x`` from its
                      own features. ``--implicit`` adds implicit feedback to
                      that posterior (unknown for a new row until it has
                      ratings: its prior carries the spread, ``bayesmf.spread``).

Outputs (``--out``, default ``results/cold_start/``)
    ``metrics.csv`` (side x k x method x bucket: ``all`` and buckets of the
    held-out user's / movie's total number of ratings), ``config.json``,
    ``summary.md``, ``cold_start.png`` (RMSE and 90% coverage vs k, users and
    movies), ``cold_start_nll.png``.

Run::

    python experiments/cold_start.py --data ../shared/data
    python experiments/cold_start.py --plot-only
    python experiments/cold_start.py --tiny --out /tmp/cs
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

NAME = "cold_start"
METHODS = ("zero", "global-mean", "prior-map", "prior-gibbs", "foldin-map", "foldin-gibbs", "prior-features",
           "foldin-features")
SIDES = ("users", "movies")
METRIC_COLUMNS = ("count", "rmse", "mae", "nll", "crps", "coverage_50", "coverage_80", "coverage_90", "coverage_95")


def build_parser():
    p = common.base_parser(NAME, __doc__)
    p.add_argument("--ks", type=common.int_list, default=[0, 1, 2, 5, 10, 20], help="numbers of revealed ratings")
    p.add_argument("--rank", type=int, default=None, help="rank D (default 10; tiny 2)")
    p.add_argument("--holdout", type=float, default=0.2, help="fraction of users (movies) held out")
    p.add_argument("--num-samples", type=int, default=None, help="Gibbs draws kept (default 200; tiny 20)")
    p.add_argument("--num-warmup", type=int, default=None, help="Gibbs burn-in sweeps (default 50; tiny 10)")
    p.add_argument("--sides", type=common.str_list, default=list(SIDES), help="users,movies")
    p.add_argument("--methods", type=common.str_list, default=list(METHODS), help=f"subset of {','.join(METHODS)}")
    p.add_argument("--aggregate", type=Path, default=None,
                   help="only write DIR/summary.md over the runs in DIR/seed*/ (the features arm, paired by seed)")
    p.add_argument("--resume", action="store_true", help="keep metrics.csv and skip the sides already in it")
    p.add_argument("--implicit", action="store_true",
                   help="the features arm adds implicit feedback (a new row's prior then carries its spread)")
    return p


def resolve(args):
    tiny = args.tiny
    for key, full, small in (("rank", 10, 2), ("num_samples", 200, 20), ("num_warmup", 50, 10)):
        if getattr(args, key) is None:
            setattr(args, key, small if tiny else full)
    if tiny and args.ks == [0, 1, 2, 5, 10, 20]:
        args.ks = [0, 1, 3]
    args.ks = sorted(set(args.ks))
    bad = sorted(set(args.sides) - set(SIDES))
    if bad:
        raise SystemExit(f"unknown sides {bad}; expected a subset of {SIDES}")
    bad = sorted(set(args.methods) - set(METHODS))
    if bad:
        raise SystemExit(f"unknown methods {bad}; expected a subset of {METHODS}")
    return args


def load_ratings(args):
    if args.tiny:
        from bayesmf import synthetic

        return synthetic.movielens_like(args.seed, num_users=80, num_items=40, num_ratings=1400, rank=2,
                                        min_per_user=8).ratings
    from bayesmf import data

    return data.read_dataset_dir(common.ml100k_dir(args))


# --- the protocol ------------------------------------------------------------------------------


def transpose(ratings):
    """Ratings with users and movies swapped, so that per-user split helpers act per movie."""
    from bayesmf.data import Ratings

    return Ratings.from_arrays(ratings.item_ids, ratings.user_ids, ratings.rating, scale=ratings.scale)


def held_out(ratings, side: str, args):
    """(train, held, population): training ratings, the held-out entities' ratings as (entity, other) pairs.

    ``held`` is oriented so that its *users* are the held-out entities (movies
    are transposed); ``population`` the ids evaluated at every k.
    """
    from bayesmf import split

    s = (split.cold_users if side == "users" else split.cold_items)(ratings, args.holdout, args.seed, given=0)
    held = s.test if side == "users" else transpose(s.test)
    degree = held.user_degrees()
    population = held.user_vocab.ids[degree > max(args.ks)]
    return s.train, held, population, held.user_vocab.ids


def reveal(held, population, k: int, seed: int):
    """(given, rest) for k revealed ratings of each evaluated entity (nested across k for one seed)."""
    from bayesmf import split

    keep = np.isin(held.user_ids, population)
    sub = held.subset(keep)
    if k == 0:
        return None, sub
    s = split.leave_k_out(sub, k, seed)  # k random ratings of each entity: these are revealed
    return s.test, s.train


def given_lists(given, population):
    """Per entity of ``population``: (ids of the other side, ratings) revealed."""
    if given is None:
        return [(np.zeros(0, np.int64), np.zeros(0)) for _ in population]
    frame = pd.DataFrame(dict(entity=given.user_ids, other=given.item_ids, rating=given.rating.astype(np.float64)))
    groups = {key: g for key, g in frame.groupby("entity", sort=False)}
    out = []
    for e in population:
        g = groups.get(e.item() if hasattr(e, "item") else e)
        out.append((np.zeros(0, np.int64), np.zeros(0)) if g is None else (g["other"].to_numpy(), g["rating"].to_numpy()))
    return out


def predictions(side, method, posteriors, train, rest, given, population, features=(None, None)):
    """A prediction (Prediction-like) of the ``rest`` ratings by one method."""
    from bayesmf.coldstart import fold_in_items, fold_in_users

    n = len(rest)
    entity, other = rest.user_ids, rest.item_ids  # held-out entity, the other side
    y_train = np.asarray(train.rating, np.float64)
    if method == "zero":
        # Inline trivial baseline (bayesmf has no zero-mean/no-offset predictor): mean 0, sd of the
        # zero-mean Gaussian that fits the training ratings best, sqrt(mean(r^2)).
        return common.GaussianBaseline(0.0, np.sqrt(np.mean(y_train**2)), n)
    if method == "global-mean":
        # Inline trivial baseline: N(global mean, training variance).
        return common.GaussianBaseline(y_train.mean(), y_train.std(), n)
    post = posteriors[method.split("-")[1]]
    # The features posterior's new rows get mu + B^T x from their own features.
    frames = (dict(user_features=features[0]) if side == "users" else dict(item_features=features[1])
              ) if method.endswith("features") else {}
    if method.startswith("prior"):
        users, items = (entity, other) if side == "users" else (other, entity)
        return post.predict(users, items, keep_components=True, **frames)
    rows = given_lists(given, population)
    if side == "users":
        fold = fold_in_users(post, rows, unknown="ignore", user_ids=population, **frames)
        return fold.predict(entity, other, keep_components=True)
    fold = fold_in_items(post, rows, unknown="ignore", item_ids=population, **frames)
    return fold.predict(other, entity, keep_components=True)


def fit_side(train, args, side: str, features=(None, None)) -> dict:
    BayesMF = common.get_estimator()
    out = {}
    sampler = dict(rank=args.rank, method="gibbs", num_samples=args.num_samples, num_warmup=args.num_warmup,
                   progress_bar=not args.no_progress)
    for name, model, data in (
        ("map", BayesMF(rank=args.rank, method="map", search="thorough", progress_bar=False), {}),
        ("gibbs", BayesMF(**sampler), {}),
        # Side features (with --implicit, implicit feedback too: a new row's is unknown until it has
        # ratings, and its prior carries the spread of the unknown rows, bayesmf.spread).
        ("features", BayesMF(**sampler, implicit=args.implicit),
         dict(user_features=features[0], item_features=features[1])),
    ):
        if not any(m.endswith(name) for m in args.methods):
            continue
        start = time.perf_counter()
        out[name] = model.fit(args.seed, train, **data)
        print(f"[cold_start] {side}: fitted {name} (D={args.rank}) on {len(train)} ratings in "
              f"{time.perf_counter() - start:.1f} s", file=sys.stderr)
    return out


def run_side(ratings, side: str, args) -> list[dict]:
    from bayesmf import metrics

    train, held, population, all_held = held_out(ratings, side, args)
    features = common.feature_frames(args, 80, 40)
    posteriors = fit_side(train, args, side, features)
    total = held.user_degrees()
    degree_of = dict(zip(held.user_vocab.ids.tolist(), total.tolist()))
    rows = []
    plan = [(k, m) for k in args.ks for m in METHODS if m in args.methods]
    bar = common.progress(plan, desc=f"cold start ({side})", disable=args.no_progress)
    cache = {}
    for k, method in bar:
        bar.set_postfix_str(f"k={k} {method}")
        if k not in cache:
            cache[k] = reveal(held, population, k, args.seed)
        given, rest = cache[k]
        pred = predictions(side, method, posteriors, train, rest, given, population, features)
        y = np.asarray(rest.rating, np.float64)
        buckets = metrics.activity_bucket(np.array([degree_of[e] for e in rest.user_ids.tolist()]))
        prefix = "user" if side == "users" else "movie"
        base = dict(side=side, k=k, method=method, rank=args.rank, seed=args.seed,
                    num_heldout=int(len(all_held)), num_evaluated=int(len(population)),
                    mean_given=float(0 if given is None else len(given) / len(population)))
        rows.append({**base, "bucket": "all", **common.score(y, pred)})
        table = common.score(y, pred, groups=buckets)
        for label, rec in table[table["count"] > 0].iterrows():  # empty buckets have no scores
            rows.append({**base, "bucket": f"{prefix} {label}", **rec.to_dict()})
    return rows


# --- figures and summary --------------------------------------------------------------------------


def draw(out: Path) -> list[Path]:
    plt = common.plt()
    df = pd.read_csv(out / "metrics.csv")
    a = df[df["bucket"] == "all"]
    sides = [s for s in SIDES if s in set(a["side"])]
    paths = []
    for name, panels in (
        ("cold_start.png", (("rmse", "test RMSE"), ("coverage_90", "90% interval coverage"))),
        ("cold_start_nll.png", (("nll", "test NLL per rating (nats)"), ("crps", "test CRPS"))),
    ):
        fig, axes = plt.subplots(len(panels), len(sides), figsize=(5.6 * len(sides), 3.9 * len(panels) + 0.5),
                                 squeeze=False, layout="constrained")
        for col, side in enumerate(sides):
            part = a[a["side"] == side]
            ks = sorted(part["k"].unique())
            pos = {k: j for j, k in enumerate(ks)}
            for row, (column, ylabel) in enumerate(panels):
                ax = axes[row, col]
                for m in [m for m in METHODS if m in set(part["method"])]:
                    line = part[part["method"] == m].sort_values("k")
                    ax.plot([pos[k] for k in line["k"]], line[column], marker=common.marker(m), color=common.color(m),
                            ls="--" if m in ("zero", "global-mean") else "-", label=m)
                ax.set_xticks(range(len(ks)))
                ax.set_xticklabels([str(k) for k in ks])
                who = "user" if side == "users" else "movie"
                ax.set_xlabel(f"k: ratings revealed per new {who}")
                ax.set_ylabel(ylabel)
                n_ent = int(part["num_evaluated"].iloc[0])
                ax.set_title(f"new {side} ({n_ent} evaluated): {ylabel}")
                if column == "coverage_90":
                    ax.axhline(0.9, color="black", lw=1, ls=":")
                if column in ("rmse", "nll", "crps"):
                    # The zero baseline is far off the scale of the others: cap the axis, say so.
                    others = line_values(part, column, exclude=("zero",))
                    zero = line_values(part, column, exclude=tuple(m for m in METHODS if m != "zero"))
                    if len(others) and len(zero) and zero.min() > others.max() * 1.5:
                        lo, hi = others.min(), others.max()
                        ax.set_ylim(lo - 0.05 * (hi - lo + 1e-9), hi + 0.25 * (hi - lo + 1e-9))
                        ax.annotate(f"zero: {zero.mean():.2f} (off scale)", xy=(0.98, 0.97), xycoords="axes fraction",
                                    ha="right", va="top", fontsize=8, color=common.color("zero"))
        handles, labels = axes[0, 0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=len(labels))
        common.savefig(fig, out / name)
        paths.append(out / name)
    return paths


def line_values(part, column, exclude):
    return part[~part["method"].isin(exclude)][column].to_numpy(np.float64)


def write_summary(out: Path, args, wall: float | None) -> Path:
    df = pd.read_csv(out / "metrics.csv")
    a = df[df["bucket"] == "all"]
    text = [f"# Cold start on {'synthetic tiny data' if args.tiny else 'MovieLens-100K'}", "",
            f"Rank {args.rank}; seed {args.seed}; {args.holdout:.0%} of users (movies) held out; "
            + (f"wall time {wall / 60:.1f} min." if wall else ""), ""]
    for side in [s for s in SIDES if s in set(a["side"])]:
        part = a[a["side"] == side]
        r0 = part.iloc[0]
        text += [f"## New {side}", "",
                 f"{int(r0['num_heldout'])} held out; {int(r0['num_evaluated'])} with more than {max(part['k'])} "
                 f"ratings are evaluated at every k.", ""]
        for column, label, fmt in (("rmse", "RMSE", ".4f"), ("nll", "NLL", ".3f"), ("coverage_90", "90% coverage", ".3f")):
            table = part.pivot_table(index="method", columns="k", values=column).reindex(
                [m for m in METHODS if m in set(part["method"])])
            table.columns = [f"k={k}" for k in table.columns]
            text += [f"**{label}**", "", common.markdown_table(table.reset_index(), floatfmt=fmt), ""]
        at0 = part[part["k"] == min(part["k"])].set_index("method")["rmse"]
        prior, gm, zero = (at0.get(m, np.nan) for m in ("prior-gibbs", "global-mean", "zero"))
        fb = part[part["method"] == "foldin-gibbs"].set_index("k")["rmse"]
        fm = part[part["method"] == "foldin-map"].set_index("k")["rmse"]
        kmax = max(part["k"])
        text += [
            f"With k={min(part['k'])} ratings, the mean-based prior (`prior-gibbs`) has RMSE {prior:.4f} against {gm:.4f} for the global "
            f"mean and {zero:.4f} for predicting zero. With k={kmax} revealed ratings Bayesian fold-in reaches "
            f"{fb.get(kmax, np.nan):.4f} and MAP fold-in {fm.get(kmax, np.nan):.4f}; at k=1 they are "
            f"{fb.get(1, np.nan):.4f} and {fm.get(1, np.nan):.4f}.", ""]
    text += ["## Figures", "", "* `cold_start.png`: RMSE and 90% coverage vs k, users and movies.",
             "* `cold_start_nll.png`: NLL and CRPS vs k.", ""]
    path = out / "summary.md"
    path.write_text("\n".join(text))
    return path


def aggregate(directory: Path) -> Path:
    """``summary.md`` over the runs in ``directory/seed*/`` (one holdout seed each, users side): the
    features arm against the mean-based prior, paired by seed."""
    frames = [pd.read_csv(f) for f in sorted(Path(directory).glob("seed*/metrics.csv"))]
    if not frames:
        raise SystemExit(f"no seed*/metrics.csv under {directory}")
    a = pd.concat(frames)
    a = a[(a["bucket"] == "all") & (a["side"] == "users")]
    seeds = ", ".join(str(x) for x in sorted(a["seed"].unique()))
    lines = ["# Cold start with side features: new users", "",
             f"20% of users held out whole, holdout seeds {seeds}. `prior-features` / `foldin-features`: a Gibbs "
             "posterior fitted with side features (Macau's prior); `prior-gibbs` / `foldin-gibbs`: the plain model's "
             "mean-based prior. Per seed S: `python experiments/cold_start.py --data ../shared/data --methods "
             "global-mean,prior-gibbs,foldin-gibbs,prior-features,foldin-features --ks 0,1,5,20 --sides users "
             "--seed S --out DIR/seedS`, then `--aggregate DIR`.", ""]
    for metric, fmt in (("rmse", ".4f"), ("nll", ".4f"), ("coverage_90", ".3f")):
        table = a.groupby(["method", "k"])[metric].mean().unstack()
        lines += [f"**{metric}** (mean over seeds)", "",
                  "| method | " + " | ".join(f"k={k}" for k in table.columns) + " |", "|---|" + "---|" * len(table.columns)]
        lines += ["| " + m + " | " + " | ".join(format(v, fmt) for v in table.loc[m]) + " |" for m in table.index] + [""]
    lines += ["**Paired by seed: features minus mean-based** (mean ± sd over seeds)", "", "| k | RMSE | NLL |", "|---|---|---|"]
    for k in sorted(a["k"].unique()):
        paired = a[a["k"] == k].pivot_table(index="seed", columns="method", values=["rmse", "nll"])
        arm = "prior" if k == 0 else "foldin"
        d = {m: paired[m][f"{arm}-features"] - paired[m][f"{arm}-gibbs"] for m in ("rmse", "nll")}
        lines.append(f"| {k} ({arm}) | {common.mean_sd(d['rmse'])} | {common.mean_sd(d['nll'])} |")
    path = Path(directory) / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv=None) -> int:
    args = resolve(build_parser().parse_args(argv))
    if args.aggregate is not None:
        print(aggregate(args.aggregate).read_text())
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if args.plot_only:
        draw(out)
        write_summary(out, args, None)
        return 0
    common.enable_compile_cache()
    done = set()
    if args.resume and (out / "metrics.csv").exists():
        done = set(pd.read_csv(out / "metrics.csv")["side"])
    else:
        (out / "metrics.csv").unlink(missing_ok=True)
    status = "ok"
    try:
        with common.watchdog(args.timeout):
            ratings = load_ratings(args)
            for side in [s for s in args.sides if s not in done]:
                common.append_rows(out / "metrics.csv", run_side(ratings, side, args))
    except common.WatchdogTimeout as exc:
        status = f"timeout: {exc}"
        print(status, file=sys.stderr)
    finally:
        wall = time.perf_counter() - start
        common.finish_run(out, args, argv, start, status)
    if (out / "metrics.csv").exists():
        draw(out)
        write_summary(out, args, wall)
    return 0 if status == "ok" else 1


if __name__ == "__main__":
    raise SystemExit(main())
