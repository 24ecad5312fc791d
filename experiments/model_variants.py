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

Variants built so far
    ``plain``         the mission's model (``BayesMF`` defaults).
    ``user-offsets``  plus ``b_u ~ N(0, 1/tau_b)`` (``BayesMF(user_offsets=True)``).
    The side-feature, implicit-feedback and ordinal variants are not built
    yet: asking for them stops with an error that says so.

Methods
    ``gibbs``  blocked Gibbs, BPMF hyperpriors, ``--num-samples`` after ``--num-warmup``.
    ``map``    tuned MAP (learned factor means); ``tau_b`` held at its default ratio.

Data
    MovieLens-100K folds (``--folds``, default u1..u5). ``--tiny``: two random
    80/20 splits of a small synthetic MovieLens-shaped data set.

Outputs (``--out``, default ``results/model_variants/``)
    ``metrics.csv`` (one row per fold x rank x method x variant x seed),
    ``config.json``, ``summary.md`` and ``rmse_by_variant.png``.

Wall time: a Gibbs fit of u1 at rank 10 takes about 25 s on 2 cores, a tuned
MAP fit about 15 s; the full default grid (5 folds x ranks 10, 50 x 2 methods
x 2 variants x 3 seeds) about 40 minutes.

Run::

    python experiments/model_variants.py --data ../shared/data --folds u1 --ranks 10 --methods gibbs
    python experiments/model_variants.py --resume --folds u2,u3      # add rows to the same table
    python experiments/model_variants.py --plot-only
    python experiments/model_variants.py --tiny --out /tmp/mv        # seconds, synthetic
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _common as common
else:
    from experiments import _common as common

NAME = "model_variants"
VARIANTS = ("plain", "user-offsets")
PLANNED = ("side", "implicit", "all", "ordinal")
METHODS = ("gibbs", "map")
METRICS = ("rmse", "star_nll", "rps", "coverage_90", "fit_seconds")
# Columns whose values must be finite in every row of metrics.csv.
METRIC_COLUMNS = METRICS
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
    planned = sorted(set(args.variants) & set(PLANNED))
    if planned:
        raise SystemExit(f"variants {planned} are not built yet (issue 20); built: {', '.join(VARIANTS)}")
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
    options = dict(rank=rank, user_offsets=variant == "user-offsets", progress_bar=False)
    if method == "gibbs":
        return BayesMF(method="gibbs", num_samples=args.num_samples, num_warmup=args.num_warmup, **options)
    grid = dict(grid={"factor": [3.0, 30.0], "offset": [10.0]}) if args.tiny else {}
    return BayesMF(method="map", **grid, **options)


def run_one(fold, train, test, rank, method, variant, seed, args) -> dict:
    model = make_model(method, variant, rank, args)
    start = time.perf_counter()
    posterior = model.fit(seed, train)
    wall = time.perf_counter() - start
    row = posterior.evaluate(test, levels=common.LEVELS).iloc[0].to_dict()
    return dict(fold=fold, rank=rank, method=method, variant=variant, seed=seed, bucket="all",
                fit_seconds=float(posterior.timing.get("fit_seconds", wall)),
                **{k: float(row[k]) for k in ("rmse", "nll", "crps", "star_nll", "rps", "coverage_90") if k in row})


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
        lines += ["Paired difference from `plain` (mean ± sd over fold x seed pairs; negative RMSE, "
                  "star NLL and RPS are better):", "", common.markdown_table(diffs), ""]
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
        cells = [(f, r, m, v, args.seed + s) for f in args.folds for r in args.ranks for m in args.methods
                 for v in args.variants for s in range(args.seeds)]
        with common.watchdog(args.timeout):
            folds = load_folds(args)
            for cell in common.progress(cells, desc=NAME, disable=args.no_progress):
                if tuple(map(str, cell)) in done:
                    continue
                fold, rank, method, variant, seed = cell
                train, test = folds[fold]
                common.append_rows(path, [run_one(fold, train, test, rank, method, variant, seed, args)])
    table = pd.read_csv(path)
    write_summary(out, table)
    plot(out, table)
    if not args.plot_only:
        common.finish_run(out, args, argv, start, "ok")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
