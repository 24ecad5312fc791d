"""Command line: thin commands over the public API, no modelling logic here.

::

    bayesmf demo [--data ml-100k] [--method map] [--rank 10]
    bayesmf evaluate --data DIR_OR_NAME --split u1 --method map --rank 10 --seed 0 --json
    bayesmf evaluate --data DIR --split random --test-fraction 0.2 --seed 0 --method gibbs --json
    bayesmf evaluate --data DIR --split cold-users --test-fraction 0.2 --given 5 --method map --json
    bayesmf evaluate --train FILE --test FILE --method map --rank 10 --json
    bayesmf fit --data DIR [--split u1] --method gibbs --rank 10 --out model.nc
    bayesmf predict --model model.nc --user U --item I [--json]
    bayesmf recommend --model model.nc --user U --k 10 --strategy lcb [--json]
    bayesmf recommend --model model.nc --ratings new_user.csv --k 10 [--json]
    bayesmf similar --model model.nc --item I --k 10 [--json]

With ``--json`` the last line of stdout is one JSON object (or list).
Errors print ``bayesmf: error: ...`` to stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from bayesmf.estimator import METHODS, SAMPLERS

SPLITS = ("u1", "u2", "u3", "u4", "u5", "ua", "ub", "random", "kfold", "leave-k-out", "cold-users", "cold-items")
STRATEGIES = ("mean", "lcb", "ucb", "thompson", "prob_above")


class CLIError(Exception):
    """A user error: printed without a traceback."""


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _emit(obj, as_json: bool, text: str | None = None):
    if text and not as_json:
        print(text)
    if as_json:
        print(json.dumps(_jsonable(obj)))


# --- data -----------------------------------------------------------------------------


def _dataset_dir(spec: str) -> Path:
    from bayesmf import data

    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CLIError(f"--data {spec!r} is a file; give a directory in a MovieLens layout or a dataset name")
    return Path(data.find_dataset(spec))


def _load_split(args):
    """(train, test) Ratings from --train/--test or --data/--split."""
    from bayesmf import data, split

    if args.train or args.test:
        if not (args.train and args.test):
            raise CLIError("--train and --test must be given together")
        return data.read_ratings(args.train), data.read_ratings(args.test)
    if not args.data:
        raise CLIError("give --data DIR_OR_NAME (with --split) or --train FILE --test FILE")
    directory = _dataset_dir(args.data)
    if args.split in ("u1", "u2", "u3", "u4", "u5", "ua", "ub"):
        s = split.make_split(directory, args.split, seed=args.seed)
    else:
        ratings = data.read_dataset_dir(directory)
        s = split.make_split(
            ratings, args.split, test_fraction=args.test_fraction, seed=args.seed, given=args.given, fold=args.fold
        )
    return s.train, s.test


def _titles(args) -> dict:
    from bayesmf import data

    if getattr(args, "data", None):
        try:
            return data.load_titles(_dataset_dir(args.data))
        except (FileNotFoundError, ValueError, CLIError):
            return {}
    return {}


# --- fitting --------------------------------------------------------------------------------


def _model(args):
    from bayesmf import BayesMF

    return BayesMF(
        rank=args.rank,
        method=args.method,
        offsets=args.offsets,
        num_samples=args.num_samples,
        num_warmup=args.num_warmup,
        num_chains=args.num_chains,
        progress_bar=not args.no_progress,
    )


def _evaluate(args) -> dict:
    from bayesmf import diagnostics

    train, test = _load_split(args)
    model = _model(args)
    posterior = model.fit(args.seed, train, track=(test.user_ids, test.item_ids) if args.method in SAMPLERS else None)
    metrics = posterior.evaluate(test)
    out = dict(
        method=args.method,
        rank=args.rank,
        seed=args.seed,
        split=args.split if not args.train else "files",
        rmse=metrics["rmse"],
        mae=metrics["mae"],
        nll=metrics["nll"],
        crps=metrics["crps"],
        coverage_50=metrics.get("coverage_50"),
        coverage_80=metrics.get("coverage_80"),
        coverage_90=metrics["coverage_90"],
        coverage_95=metrics.get("coverage_95"),
        fit_seconds=posterior.timing["fit_seconds"],
        num_train=len(train),
        num_test=len(test),
        num_cold_users=metrics["num_cold_users"],
        num_cold_items=metrics["num_cold_items"],
        num_cold_rows=metrics["num_cold_rows"],
    )
    if args.method in SAMPLERS:
        out.update(
            num_samples=args.num_samples,
            num_warmup=args.num_warmup,
            num_chains=args.num_chains,
            seconds_per_sample=posterior.timing.get("seconds_per_sample"),
            compile_seconds=posterior.timing.get("compile_seconds"),
            max_rhat=diagnostics.max_rhat(posterior),
        )
    return out


def cmd_evaluate(args):
    out = _evaluate(args)
    text = (
        f"{out['method']} rank {out['rank']}: RMSE {out['rmse']:.4f}  MAE {out['mae']:.4f}  NLL {out['nll']:.4f}  "
        f"CRPS {out['crps']:.4f}  90% coverage {out['coverage_90']:.3f}  fit {out['fit_seconds']:.1f}s  "
        f"({out['num_train']} train / {out['num_test']} test, {out['num_cold_users']} cold users, "
        f"{out['num_cold_items']} cold items)"
    )
    _emit(out, args.json, text)


def cmd_demo(args):
    """Fit on the embedded synthetic data (or --data), print metrics, intervals and a cold start."""
    from bayesmf import split, synthetic

    if args.data:
        train, test = _load_split(args)
        source = args.data
    else:
        sim = synthetic.movielens_like(args.seed)
        s = split.random_holdout(sim.ratings, 0.2, args.seed)
        train, test = s.train, s.test
        source = "synthetic MovieLens-shaped data drawn from the model (943 users x 1682 movies, 100k ratings)"
    print(f"data: {source}")
    print(f"fitting {args.method} (rank {args.rank}) on {len(train)} ratings ...")
    posterior = _model(args).fit(args.seed, train)
    metrics = posterior.evaluate(test)
    print(
        f"test RMSE {metrics['rmse']:.4f} | NLL {metrics['nll']:.4f} | 90% interval coverage "
        f"{metrics['coverage_90']:.3f} | fit {posterior.timing['fit_seconds']:.1f}s"
    )
    pred = posterior.predict(test.user_ids[:5], test.item_ids[:5])
    print("a few test predictions (90% intervals):")
    for u, i, m, lo, hi, r in zip(pred.users, pred.items, pred.mean, pred.lower, pred.upper, test.rating[:5]):
        print(f"  user {u} movie {i}: {m:.2f} [{lo:.2f}, {hi:.2f}]  (rated {r:g})")
    new_user = "new-user" if posterior.user_vocab.ids.dtype == object else int(posterior.user_vocab.ids.max()) + 1
    items = posterior.item_vocab.ids[:3]
    cold = posterior.predict([new_user] * len(items), items)
    print(f"cold start: user {new_user} has no ratings; the prior predictive is each movie's offset m_v + mu_L . R_v "
          "with the prior's spread:")
    for i, m, lo, hi in zip(cold.items, cold.mean, cold.lower, cold.upper):
        print(f"  movie {i}: {m:.2f} [{lo:.2f}, {hi:.2f}]  known_user={bool(cold.known_user[0])}")
    _emit(dict(metrics, method=args.method, rank=args.rank), args.json)


def cmd_fit(args):
    from bayesmf import data

    if args.train:
        train = data.read_ratings(args.train)
    elif args.split:
        train, _ = _load_split(args)
    else:
        if not args.data:
            raise CLIError("give --data DIR_OR_NAME or --train FILE")
        train = data.read_dataset_dir(_dataset_dir(args.data))
    posterior = _model(args).fit(args.seed, train, titles=_titles(args))
    posterior.save(args.out)
    out = dict(model=str(args.out), method=args.method, rank=args.rank, num_train=len(train),
               fit_seconds=posterior.timing["fit_seconds"])
    _emit(out, args.json, f"saved {args.method} rank-{args.rank} model fitted on {len(train)} ratings to {args.out}")


def _load_model(path):
    from bayesmf import Posterior

    return Posterior.load(path)


def _parse_id(vocab, value: str):
    """CLI ids are strings; the model's ids may be ints."""
    if vocab.ids.dtype != object:
        try:
            return int(value)
        except ValueError:
            raise CLIError(f"id {value!r} is not an integer, but this model's ids are integers") from None
    return value


def cmd_predict(args):
    posterior = _load_model(args.model)
    user = _parse_id(posterior.user_vocab, args.user)
    item = _parse_id(posterior.item_vocab, args.item)
    pred = posterior.predict([user], [item], prob=args.prob)
    out = dict(
        user=user, item=item, mean=float(pred.mean[0]), sd=float(pred.sd[0]), lower=float(pred.lower[0]),
        upper=float(pred.upper[0]), known_user=bool(pred.known_user[0]), known_item=bool(pred.known_item[0]),
    )
    text = (
        f"user {user}, movie {item}: {out['mean']:.3f} (sd {out['sd']:.3f}), {args.prob:.0%} interval "
        f"[{out['lower']:.2f}, {out['upper']:.2f}]" + ("" if out["known_user"] else " [cold-start user]")
        + ("" if out["known_item"] else " [cold-start movie]")
    )
    _emit(out, args.json, text)


def _table(frame, as_json: bool):
    records = frame.to_dict(orient="records")
    if not as_json:
        print(frame.to_string(index=False))
    _emit(records, as_json)


def cmd_recommend(args):
    import jax

    from bayesmf import coldstart, data, recommend

    posterior = _load_model(args.model)
    key = jax.random.PRNGKey(args.seed)
    if args.ratings:
        given = data.read_item_ratings(args.ratings, item_vocab=posterior.item_vocab, scale=posterior.scale)
        target = coldstart.fold_in_users(posterior, [given])
        user = 0
    elif args.user is not None:
        target = posterior
        user = _parse_id(posterior.user_vocab, args.user)
    else:
        raise CLIError("give --user U or --ratings new_user.csv")
    frame = recommend.recommend(
        target, user, args.k, strategy=args.strategy, beta=args.beta, threshold=args.threshold, rng_key=key,
    )
    _table(frame, args.json)


def cmd_similar(args):
    from bayesmf import recommend

    posterior = _load_model(args.model)
    item = _parse_id(posterior.item_vocab, args.item)
    frame = recommend.similar_items(posterior, item, args.k, metric=args.metric)
    _table(frame, args.json)


# --- parser ---------------------------------------------------------------------------------------


def _positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _fraction(text):
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {value}")
    return value


def _add_fit_args(p):
    p.add_argument("--data", help="a directory in any MovieLens layout, or a dataset name (ml-100k, ml-1m, ...)")
    p.add_argument("--split", choices=SPLITS, default=None)
    p.add_argument("--test-fraction", type=_fraction, default=0.2)
    p.add_argument("--given", type=int, default=0, help="cold-start splits: ratings revealed per held-out user/movie")
    p.add_argument("--fold", type=int, default=0, help="kfold split: which fold is the test set")
    p.add_argument("--train", help="training ratings file")
    p.add_argument("--test", help="test ratings file")
    p.add_argument("--method", choices=METHODS, default="map")
    p.add_argument("--rank", type=_positive_int, default=10)
    p.add_argument("--offsets", choices=("estimated", "empirical"), default="estimated")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-samples", type=_positive_int, default=200)
    p.add_argument("--num-warmup", type=int, default=50)
    p.add_argument("--num-chains", type=_positive_int, default=1)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bayesmf", description="Bayesian matrix factorization of ratings")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="fit on embedded synthetic data (or --data) and show predictions with intervals")
    _add_fit_args(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("evaluate", help="fit on a split and score the predictive")
    _add_fit_args(p)
    p.set_defaults(func=cmd_evaluate, split="u1")

    p = sub.add_parser("fit", help="fit and save a model file")
    _add_fit_args(p)
    p.add_argument("--out", required=True, help="model file to write (netCDF)")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("predict", help="predictive rating with an interval")
    p.add_argument("--model", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--item", required=True)
    p.add_argument("--prob", type=_fraction, default=0.9)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("recommend", help="top-k movies for a user or for new ratings (fold-in)")
    p.add_argument("--model", required=True)
    p.add_argument("--user")
    p.add_argument("--ratings", help="CSV with columns item,rating for a new user")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--strategy", default="mean", help=f"one of {', '.join(STRATEGIES)}")
    p.add_argument("--beta", type=float, default=1.0)
    p.add_argument("--threshold", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_recommend)

    p = sub.add_parser("similar", help="movies closest to a movie")
    p.add_argument("--model", required=True)
    p.add_argument("--item", required=True)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--metric", default="invariant")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_similar)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (CLIError, ValueError, KeyError, FileNotFoundError, FloatingPointError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"bayesmf: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
