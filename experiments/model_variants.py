"""Model variants: what does each addition to the plain model buy, by Gibbs and by MAP?

Question
    The plain model (movie offsets, Gaussian user and movie factors) levels off
    at a test RMSE of 0.906 on MovieLens-100K u1 at rank 10. Issue 20 adds user
    offsets, side features (Macau's prior), implicit feedback and an ordinal
    likelihood. This script measures each variant against the plain model on
    the same folds, ranks and seeds: RMSE, the star-scale log score and RPS
    (:mod:`bayesmf.metrics.stars`), 90% coverage and fit time. The paired
    difference from the plain model (same fold, rank, method and seed) is
    reported with its sd over the pairs.

Variants
    ``plain``         the mission's model (``BayesMF`` defaults).
    ``user-offsets``  plus ``b_u ~ N(0, 1/tau_b)`` (``BayesMF(user_offsets=True)``).
    ``side``          plus side features in Macau's prior: users' age bucket,
                      gender and occupation, movies' genres (``fit(user_features=,
                      item_features=)``; ``bayesmf.load_movielens_features``).
    ``implicit``      plus implicit feedback (each user's rated movies, each
                      movie's raters, training pairs only; ``implicit=True``).
    ``all``           user offsets, side features and implicit feedback.
    ``ordinal-all``   ``all`` with the ordered-probit likelihood
                      (``likelihood="ordinal"``; RMSE of the predictive mean).

Methods
    ``gibbs``  blocked Gibbs, BPMF hyperpriors, ``--num-samples`` after ``--num-warmup``.
    ``map``    tuned MAP (learned factor means); ``tau_b`` held at its default
               ratio; with features the link precisions are tuned too
               (:mod:`bayesmf.tuning`); ``ordinal-all`` is tuned on the
               validation RMSE of the star distribution's mean.
    ``myfm``   myFM (the ``bench`` extra; skipped with a note when absent), the
               same folds and rank, 250 sweeps with 200 kept, fed the same
               inputs as one relation block and group each: ``plain`` (its
               biases and factors), ``side``, ``implicit``, ``all`` (both;
               myFM always has user biases) and ``ordinal-all`` (its ordered
               probit with both; RMSE of the expected star).

Data
    MovieLens-100K folds (``--folds``, default u1..u5). ``--tiny``: two random
    80/20 splits of a small synthetic MovieLens-shaped data set.

Outputs (``--out``, default ``results/model_variants/``)
    ``metrics.csv`` (one row per fold x rank x method x variant x seed),
    ``config.json``, ``summary.md`` and ``rmse_by_variant.png``.

Wall time: on 2 cores, one fold and seed at rank 10 (6 Gibbs, 6 MAP and 5
myFM fits) takes about 5-6 minutes, at rank 50 about 10; the full default grid
(5 folds x ranks 10, 50 x 3 seeds) about 4 hours, one seed about 80 minutes.

Run::

    python experiments/model_variants.py --data ../shared/data --folds u1 --ranks 10 --methods gibbs
    python experiments/model_variants.py --resume --folds u2,u3      # add rows to the same table
    python experiments/model_variants.py --plot-only
    python experiments/model_variants.py --tiny --out /tmp/mv        # seconds, synthetic
"""

from __future__ import annotations

import importlib.util
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

NAME = "model_variants"
VARIANTS = ("plain", "user-offsets", "side", "implicit", "all", "ordinal-all")
METHODS = ("gibbs", "map", "myfm")
# The variants each method runs (the rest are skipped, with a note in summary.md).
RUNS = {"gibbs": VARIANTS, "map": VARIANTS, "myfm": ("plain", "side", "implicit", "all", "ordinal-all")}
# Variants with side features.
WITH_SIDE = ("side", "all", "ordinal-all")
MYFM_SWEEPS, MYFM_KEPT = 250, 200
METRICS = ("rmse", "star_nll", "rps", "coverage_90", "fit_seconds")
# Columns whose values must be finite in every row of metrics.csv.
METRIC_COLUMNS = ("rmse", "fit_seconds")
KEYS = ("fold", "rank", "method", "variant", "seed")


def build_parser():
    p = common.base_parser(NAME, __doc__)
    p.add_argument("--folds", type=common.str_list, default=None, help="folds, default u1..u5 (tiny: r1,r2)")
    p.add_argument("--ranks", type=common.int_list, default=None, help="ranks D, default 10,50 (tiny: 2)")
    p.add_argument("--methods", type=common.str_list, default=list(METHODS), help=f"subset of {','.join(METHODS)}")
    p.add_argument("--variants", type=common.str_list, default=list(VARIANTS), help=f"subset of {','.join(VARIANTS)}")
    p.add_argument("--seeds", type=int, default=None, help="seeds per cell, default 3 (tiny: 1)")
    p.add_argument("--num-samples", type=int, default=None, help="Gibbs draws kept (default 200; tiny 20)")
    p.add_argument("--num-warmup", type=int, default=None, help="Gibbs warm-up sweeps (default 50; tiny 10)")
    p.add_argument("--resume", action="store_true", help="keep metrics.csv and skip the cells already in it")
    return p


def resolve(args):
    defaults = (dict(folds=["r1", "r2"], ranks=[2], seeds=1, num_samples=20, num_warmup=10) if args.tiny else
                dict(folds=["u1", "u2", "u3", "u4", "u5"], ranks=[10, 50], seeds=3, num_samples=200, num_warmup=50))
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for name, given, known in (("variants", args.variants, VARIANTS), ("methods", args.methods, METHODS)):
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise SystemExit(f"unknown {name} {unknown}; expected a subset of {known}")
    return args


def load_folds(args) -> dict:
    """fold name -> (train, test) Ratings (star-valued, so the star-scale scores exist)."""
    from bayesmf import split

    if args.tiny:
        from bayesmf import synthetic

        sim = synthetic.movielens_like(args.seed, num_users=60, num_items=40, num_ratings=900, rank=2, min_per_user=6)
        return {name: tuple(getattr(split.make_split(sim.ratings, "random", test_fraction=0.2, seed=args.seed + j), a)
                            for a in ("train", "test")) for j, name in enumerate(args.folds)}
    directory = common.ml100k_dir(args)
    return {name: tuple(getattr(split.make_split(directory, name), a) for a in ("train", "test")) for name in args.folds}


def make_model(method: str, variant: str, rank: int, args):
    BayesMF = common.get_estimator()
    options = dict(rank=rank, user_offsets=variant in ("user-offsets", "all", "ordinal-all"),
                   implicit=variant in ("implicit", "all", "ordinal-all"), progress_bar=False,
                   likelihood="ordinal" if variant == "ordinal-all" else "gaussian")
    if method == "gibbs":
        return BayesMF(method="gibbs", num_samples=args.num_samples, num_warmup=args.num_warmup, **options)
    grid = dict(grid={"factor": [3.0, 30.0], "offset": [10.0]}) if args.tiny else {}
    return BayesMF(method="map", search="thorough", **grid, **options)  # the research baseline's search


def run_one(fold, train, test, rank, method, variant, seed, args, features) -> dict:
    if method == "myfm":
        return run_myfm(fold, train, test, rank, variant, seed, features)
    model = make_model(method, variant, rank, args)
    start = time.perf_counter()
    side = dict(zip(("user_features", "item_features"), features)) if variant in WITH_SIDE else {}
    posterior = model.fit(seed, train, **side)
    wall = time.perf_counter() - start
    row = posterior.evaluate(test, levels=common.LEVELS).iloc[0].to_dict()
    return dict(fold=fold, rank=rank, method=method, variant=variant, seed=seed, bucket="all",
                fit_seconds=float(posterior.timing.get("fit_seconds", wall)),
                **{k: float(row[k]) for k in ("rmse", "nll", "crps", "star_nll", "rps", "coverage_90") if k in row})


def _myfm_block(index, side_rows, other_index, num_rows: int, num_other: int, variant: str):
    """One side's relation block for myFM: [one-hot row | side features | implicit feedback] per row."""
    import scipy.sparse as sps

    from bayesmf.featurerows import implicit_features

    parts = [sps.identity(num_rows, format="csr")]
    if variant in ("side", "all", "ordinal-all"):
        parts.append(sps.csr_matrix(side_rows))
    if variant in ("implicit", "all", "ordinal-all"):
        parts.append(implicit_features(index, other_index, num_rows, num_other, sparse=True))
    return sps.hstack(parts, format="csr"), [p.shape[1] for p in parts]


def run_myfm(fold, train, test, rank, variant, seed, features) -> dict:
    """myFM on the same split and inputs: one relation block per side, one group per kind of column."""
    import functools

    import myfm
    import myfm.base
    import scipy.sparse as sps

    from bayesmf.data import encode_features, fit_features

    u, i = np.asarray(train.user_index), np.asarray(train.item_index)
    sides = [encode_features(fit_features(frame, vocab), frame, vocab)
             for frame, vocab in zip(features, (train.user_vocab, train.item_vocab))]
    user_block, user_groups = _myfm_block(u, sides[0], i, train.num_users, train.num_items, variant)
    item_block, item_groups = _myfm_block(i, sides[1], u, train.num_items, train.num_users, variant)
    tu = np.asarray(train.user_vocab.index(test.user_ids, missing="flag"))
    ti = np.asarray(train.item_vocab.index(test.item_ids, missing="flag"))
    keep = (tu >= 0) & (ti >= 0)  # u1..u5 test users and movies are all in training
    ordinal = variant == "ordinal-all"
    model = (myfm.MyFMOrderedProbit if ordinal else myfm.MyFMRegressor)(rank=rank, random_seed=int(seed))
    y = np.asarray(train.rating, np.float64)
    bar = myfm.base.tqdm
    myfm.base.tqdm = functools.partial(bar, disable=True)  # myFM always draws a bar
    try:
        start = time.perf_counter()
        model.fit(sps.csr_matrix((len(y), 0)), (y - 1).astype(int) if ordinal else y,
                  X_rel=[myfm.RelationBlock(u, user_block), myfm.RelationBlock(i, item_block)],
                  n_iter=MYFM_SWEEPS, n_kept_samples=MYFM_KEPT, group_shapes=user_groups + item_groups)
        seconds = time.perf_counter() - start
    finally:
        myfm.base.tqdm = bar
    rel = [myfm.RelationBlock(tu[keep], user_block), myfm.RelationBlock(ti[keep], item_block)]
    empty = sps.csr_matrix((int(keep.sum()), 0))
    if ordinal:
        mean = model.predict_proba(empty, rel) @ np.arange(1, 6)
    else:
        mean = model.predict(empty, rel)
    rmse = float(np.sqrt(np.mean((np.asarray(test.rating, np.float64)[keep] - mean) ** 2)))
    return dict(fold=fold, rank=rank, method="myfm", variant=variant, seed=seed, bucket="all", fit_seconds=seconds,
                rmse=rmse, star_nll=np.nan, rps=np.nan, coverage_90=np.nan)


def paired(table: pd.DataFrame) -> pd.DataFrame:
    """Each variant minus ``plain`` on the same (fold, rank, method, seed): mean and sd over the pairs."""
    pair_keys = ["fold", "rank", "method", "seed"]
    base = table[table["variant"] == "plain"]
    rows = []
    for variant, part in table[table["variant"] != "plain"].groupby("variant"):
        both = part.merge(base, on=pair_keys, suffixes=("", "_plain"))
        for (rank, method), group in both.groupby(["rank", "method"]):
            rows.append(dict(variant=variant, rank=rank, method=method, pairs=len(group),
                             **{f"d_{m}": common.mean_sd(group[m] - group[f"{m}_plain"]) for m in METRICS}))
    return pd.DataFrame(rows)


def write_summary(out: Path, table: pd.DataFrame) -> None:
    means = table.groupby(["rank", "method", "variant"])[list(METRICS)].mean().reset_index()
    lines = [f"# {NAME}", "", "Mean over folds and seeds:", "", common.markdown_table(means), ""]
    diffs = paired(table)
    if not diffs.empty:
        lines += ["Paired difference from the same method's `plain` (mean ± sd over fold x seed pairs; negative "
                  "RMSE, star NLL and RPS are better):", "", common.markdown_table(diffs), ""]
    rows = []
    for variant in ("all", "ordinal-all"):
        ours, peer = (table[(table["method"] == m) & (table["variant"] == variant)] for m in ("gibbs", "myfm"))
        both = ours.merge(peer, on=["fold", "rank", "seed"], suffixes=("", "_myfm"))
        rows += [dict(variant=variant, rank=rank, pairs=len(g), rmse=common.mean_sd(g["rmse"]),
                      rmse_myfm=common.mean_sd(g["rmse_myfm"]), difference=common.mean_sd(g["rmse"] - g["rmse_myfm"]))
                 for rank, g in both.groupby("rank")]
    if rows:
        lines += ["Gibbs against myFM on the same folds and seeds (`all`: myFM's side + implicit, no user offsets in "
                  "myFM's sense beyond its biases; `ordinal-all`: its ordered probit with both), test RMSE (mean ± sd "
                  "over the pairs):", "", common.markdown_table(pd.DataFrame(rows)), ""]
    lines += ["myFM rows have RMSE only (star scores and coverage: NaN).", ""]
    (out / "summary.md").write_text("\n".join(lines))


def plot(out: Path, table: pd.DataFrame) -> None:
    plt = common.plt()
    groups = table.groupby(["rank", "method"])
    fig, axes = plt.subplots(1, len(groups), figsize=(4 * len(groups), 3.2), squeeze=False)
    for ax, ((rank, method), part) in zip(axes[0], groups):
        stats = part.groupby("variant")["rmse"].agg(["mean", "std"]).reindex([v for v in VARIANTS if v in set(part["variant"])])
        ax.bar(range(len(stats)), stats["mean"], yerr=stats["std"].fillna(0), color=common.color(method))
        ax.set_xticks(range(len(stats)), stats.index)
        low = float((stats["mean"] - stats["std"].fillna(0)).min())
        ax.set_ylim(low - 0.01, float(stats["mean"].max()) + 0.01)
        ax.set_title(f"{method}, D={rank}")
        ax.set_ylabel("test RMSE")
    common.savefig(fig, out / "rmse_by_variant.png")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = resolve(build_parser().parse_args(argv))
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    path = out / "metrics.csv"
    start = time.perf_counter()
    if not args.plot_only:
        common.enable_compile_cache()
        if path.exists() and not args.resume:
            path.unlink()
        done = set()
        if path.exists():
            done = set(map(tuple, pd.read_csv(path)[list(KEYS)].astype(str).to_numpy()))
        methods = list(args.methods)
        if "myfm" in methods and importlib.util.find_spec("myfm") is None:
            methods.remove("myfm")
            print("model_variants: myFM is not installed (pip install -e '.[bench]'): its rows are skipped",
                  file=sys.stderr)
        wanted = set(args.variants) | ({"ordinal-all"} if "all" in args.variants else set())
        cells = [(f, r, m, v, args.seed + s) for f in args.folds for r in args.ranks for m in methods
                 for v in RUNS[m] if v in wanted for s in range(args.seeds)]
        with common.watchdog(args.timeout):
            folds = load_folds(args)
            features = common.feature_frames(args, 60, 40)
            for cell in common.progress(cells, desc=NAME, disable=args.no_progress):
                if tuple(map(str, cell)) in done:
                    continue
                fold, rank, method, variant, seed = cell
                train, test = folds[fold]
                common.append_rows(path, [run_one(fold, train, test, rank, method, variant, seed, args, features)])
    table = pd.read_csv(path)
    write_summary(out, table)
    plot(out, table)
    if not args.plot_only:
        common.finish_run(out, args, argv, start, "ok")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
