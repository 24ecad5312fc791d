"""Command line: thin commands over the public API, no modelling logic here.

::

    bayesmf demo [--data ml-100k] [--method gibbs] [--rank 10]
    bayesmf evaluate --data DIR_OR_NAME --split u1 --method map --rank 10 --seed 0 --json
    bayesmf evaluate --data DIR --split random --test-fraction 0.2 --seed 0 --method gibbs --json
    bayesmf evaluate --data DIR --split cold-users --test-fraction 0.2 --given 5 --method map --json
    bayesmf evaluate --data ratings.csv --method gibbs --json            (one file: a random split)
    bayesmf evaluate --train FILE --test FILE --method map --rank 10 --json
    bayesmf fit --data DIR [--split u1] --method gibbs --rank 10 --out model.nc
    bayesmf fit --data DIR --method gibbs --out model.nc --checkpoint run.ckpt.npz [--checkpoint-every 100]
    bayesmf fit --data DIR --method gibbs --out model.nc --resume run.ckpt.npz   (same arguments as the killed run)
    bayesmf fit --data NEW_RATINGS --method gibbs --out new.nc --init-from model.nc   (continue a model)
    bayesmf predict --model model.nc --user U --item I [--json]
    bayesmf predict --model model.nc --pairs pairs.csv --out predictions.csv   (a header naming user, item)
    bayesmf recommend --model model.nc --user U --k 10 --strategy lcb [--json]
    bayesmf recommend --model model.nc --ratings new_user.csv --k 10 [--json]
    bayesmf recommend --model model.nc --users all --k 10 --out top10.csv      (or --users users.csv)
    bayesmf similar --model model.nc --item I --k 10 [--json]

With ``--json`` the last line of stdout is one JSON object (or list).
Errors print ``bayesmf: error: ...`` to stderr and exit with status 2.

The parser imports nothing heavy (the choices come from
:mod:`bayesmf.choices`); each command imports what it needs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from bayesmf import __version__
from bayesmf.choices import (
    DEFAULT_METHOD,
    FACTOR_DTYPES,
    MAP_METHODS,
    MAP_SEARCHES,
    METHODS,
    PREDEFINED_SPLITS,
    SAMPLERS,
    SIMILARITY_METRICS,
    SPLIT_NAMES,
    STRATEGIES,
    UNCERTAINTIES,
)

# Splits whose test rows are cold-start predictions by design.
COLD_SPLITS = ("cold-users", "cold-items")
# R-hat above this draws a warning in the text output.
RHAT_WARN = 1.01


class CLIError(Exception):
    """A user error: printed without a traceback."""


def _emit(obj, as_json: bool, text: str | None = None):
    from bayesmf.encoding import to_jsonable

    if text and not as_json:
        print(text)
    if as_json:
        print(json.dumps(to_jsonable(obj, nonfinite_as_null=True)))


# --- data -----------------------------------------------------------------------------


def _read_options(args) -> dict:
    """Keyword arguments of :func:`bayesmf.data.read_ratings` from the file flags."""
    options = {}
    if getattr(args, "sep", None):
        options["sep"] = args.sep
    if getattr(args, "columns", None):
        options["columns"] = [c.strip() for c in args.columns.split(",")]
    if getattr(args, "duplicates", None):
        options["duplicates"] = args.duplicates
    if getattr(args, "scale", None):
        try:
            low, high, step = (float(x) for x in args.scale.split(","))
        except ValueError:
            raise CLIError(f"--scale {args.scale!r}: give LOW,HIGH,STEP, e.g. 0.5,5,0.5") from None
        options["scale"] = (low, high, step)
    return options


def _read_file(args, path) -> object:
    from bayesmf import data

    return data.read_ratings(path, **_read_options(args))


def _source(args):
    """``(kind, value)`` of --data: ("dir", Path) or ("file", Path)."""
    from bayesmf import data

    path = Path(args.data).expanduser()
    if path.is_dir():
        return "dir", path
    if path.is_file():
        return "file", path
    return "dir", Path(data.find_dataset(args.data, download=getattr(args, "download", False)))


def _read_all(args):
    """Every rating of --data (a MovieLens directory, a dataset name or one file)."""
    from bayesmf import data

    kind, path = _source(args)
    if kind == "file":
        return _read_file(args, path)
    return data.read_dataset_dir(path, verify=not args.no_verify)


def _default_split(args, kind: str, path: Path) -> str:
    """``u1`` for an ml-100k folder (it ships the split), else a random split."""
    if args.split:
        return args.split
    return "u1" if kind == "dir" and (path / "u1.base").is_file() else "random"


def _load_split(args):
    """(train, test, split name) from --train/--test or --data/--split."""
    from bayesmf import split

    test = getattr(args, "test", None)  # fit has no --test
    if args.train or test:
        if not (args.train and test):
            raise CLIError("--train and --test must be given together")
        return _read_file(args, args.train), _read_file(args, test), "files"
    if not args.data:
        raise CLIError("give --data DIR_OR_NAME_OR_FILE (with --split) or --train FILE --test FILE")
    kind, path = _source(args)
    name = _default_split(args, kind, path)
    if name in PREDEFINED_SPLITS:
        if kind == "file":
            raise CLIError(f"--split {name} is one of ml-100k's predefined splits: give the ml-100k folder as --data")
        s = split.make_split(path, name, seed=args.seed)
    else:
        ratings = _read_file(args, path) if kind == "file" else _read_all(args)
        s = split.make_split(ratings, name, test_fraction=args.test_fraction, seed=args.seed, given=args.given, fold=args.fold)
    return s.train, s.test, name


def _titles(args) -> dict:
    from bayesmf import data

    if getattr(args, "data", None):
        try:
            kind, path = _source(args)
            return data.load_titles(path) if kind == "dir" else {}
        except (FileNotFoundError, ValueError, CLIError):
            return {}
    return {}


# --- fitting --------------------------------------------------------------------------------


def _model(args):
    from bayesmf import BayesMF

    if args.search != MAP_SEARCHES[0] and (args.method not in MAP_METHODS or args.no_tune):
        raise CLIError(f"--search {args.search} picks how a MAP method tunes its precisions: use it with "
                       f"--method {' or '.join(MAP_METHODS)}, without --no-tune")
    options = dict(rank=args.rank, method=args.method, offsets=args.offsets, user_offsets=args.user_offsets,
                   implicit=args.implicit, likelihood=args.likelihood, progress_bar=not args.no_progress)
    if args.devices is not None or args.coordinator is not None:
        options.update(devices=_mesh_devices(args))
    if args.method in SAMPLERS:
        options.update(num_samples=args.num_samples, num_warmup=args.num_warmup, num_chains=args.num_chains)
    elif args.method == "svi":
        options.update(num_samples=args.num_samples)
    elif args.no_tune:
        options.update(tune=False)
    else:
        options.update(search=args.search)
    return BayesMF(**options)


def _features(args) -> dict:
    """``--user-features`` / ``--item-features`` as fit's keyword arguments (DataFrames by id)."""
    from bayesmf import data

    out = {}
    for side in ("user", "item"):
        path = getattr(args, f"{side}_features", None)
        if path is not None:
            try:
                out[f"{side}_features"] = data.read_features(path, side)
            except (OSError, ValueError) as exc:
                raise CLIError(f"--{side}-features {path}: {exc}") from None
    return out


def _overall(table) -> dict:
    """The overall row of :meth:`Posterior.evaluate` as a dict of floats."""
    return {name: float(value) for name, value in table.loc[("all", "all")].items()}


def _rhat_warnings(posterior) -> list[str]:
    import warnings

    from bayesmf import diagnostics

    with warnings.catch_warnings():  # printed once, as the CLI's own warning lines
        warnings.simplefilter("ignore", diagnostics.ConvergenceWarning)
        return diagnostics.check(posterior, rhat_threshold=RHAT_WARN, min_ess=0)


def _evaluate(args) -> tuple[dict, object]:
    from bayesmf import diagnostics

    train, test, name = _load_split(args)
    posterior = _model(args).fit(args.seed, train, **_features(args))
    table = posterior.evaluate(test, expect_cold=name in COLD_SPLITS)
    scores = _overall(table)
    out = dict(
        method=args.method,
        rank=args.rank,
        seed=args.seed,
        split=name,
        **{k: v for k, v in scores.items() if k != "count"},
        fit_seconds=posterior.timing["fit_seconds"],
        num_train=len(train),
        num_test=len(test),
        num_cold_users=table.attrs["num_cold_users"],
        num_cold_items=table.attrs["num_cold_items"],
        num_cold_rows=table.attrs["num_cold_rows"],
        **_device_counts(posterior),
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
    return out, posterior


def _warn_rhat(out: dict, posterior, as_json: bool) -> None:
    if as_json or out.get("max_rhat") is None or not out["max_rhat"] > RHAT_WARN:
        return
    for line in _rhat_warnings(posterior):
        print(f"bayesmf: warning: {line}", file=sys.stderr)


def cmd_evaluate(args):
    out, posterior = _evaluate(args)
    if not _is_writer():
        return
    text = (
        f"{out['method']} rank {out['rank']} ({out['split']}): RMSE {out['rmse']:.4f}  MAE {out['mae']:.4f}  "
        f"NLL {out['nll']:.4f}  CRPS {out['crps']:.4f}  90% coverage {out['coverage_90']:.3f}  "
        f"fit {out['fit_seconds']:.1f}s  ({out['num_train']} train / {out['num_test']} test, "
        f"{out['num_cold_users']} cold users, {out['num_cold_items']} cold items)"
    )
    _emit(out, args.json, text)
    _warn_rhat(out, posterior, args.json)


def cmd_demo(args):
    """Fit on the embedded synthetic data (or --data), print metrics, intervals and a cold start."""
    from bayesmf import split, synthetic

    if args.data:
        train, test, name = _load_split(args)
        source = f"{args.data} (split {name})"
    else:
        sim = synthetic.movielens_like(args.seed)
        s = split.random_holdout(sim.ratings, 0.2, args.seed)
        train, test, name = s.train, s.test, "random"
        source = "synthetic MovieLens-shaped data drawn from the model (943 users x 1682 movies, 100k ratings)"
    print(f"data: {source}")
    print(f"fitting {args.method} (rank {args.rank}) on {len(train)} ratings ...")
    posterior = _model(args).fit(args.seed, train)
    scores = _overall(posterior.evaluate(test, expect_cold=name in COLD_SPLITS))
    print(
        f"test RMSE {scores['rmse']:.4f} | NLL {scores['nll']:.4f} | 90% interval coverage "
        f"{scores['coverage_90']:.3f} | fit {posterior.timing['fit_seconds']:.1f}s"
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
    _emit(dict(scores, method=args.method, rank=args.rank), args.json)


def cmd_fit(args):
    from bayesmf import storage

    if args.train:
        train = _read_file(args, args.train)
    elif not args.data:
        raise CLIError("give --data DIR_OR_NAME_OR_FILE or --train FILE")
    elif args.split:
        train, _, _ = _load_split(args)
    else:
        train = _read_all(args)
    checkpoint = args.resume or args.checkpoint
    if checkpoint is not None and args.method not in SAMPLERS:
        flag = "--resume" if args.resume else "--checkpoint"
        raise CLIError(f"{flag} needs a sampler (--method {' or '.join(SAMPLERS)}); --method {args.method} has no checkpoints")
    if args.checkpoint_every is not None and checkpoint is None:
        raise CLIError("--checkpoint-every needs --checkpoint PATH")
    if args.init_from is not None and args.method not in SAMPLERS:
        raise CLIError(f"--init-from needs a sampler (--method {' or '.join(SAMPLERS)}), not --method {args.method}")
    init_from = _load_model(args.init_from) if args.init_from is not None else None
    if (args.keep_draws or args.thin) and args.method in MAP_METHODS:
        raise CLIError(f"--keep-draws / --thin choose among draws; --method {args.method} gives one point estimate")
    if args.keep_draws and args.keep_draws > args.num_samples:
        raise CLIError(f"--keep-draws {args.keep_draws} is more than the {args.num_samples} draws per chain "
                       "(--num-samples)")
    if args.resume and not Path(args.resume).is_file():
        raise CLIError(f"cannot resume: checkpoint file {args.resume!r} does not exist (a finished run deletes it)")
    try:
        posterior = _model(args).fit(args.seed, train, titles=_titles(args), checkpoint=checkpoint,
                                     checkpoint_every=args.checkpoint_every, init_from=init_from, **_features(args))
    except ValueError as exc:
        if args.resume and "belongs to another run" in str(exc):
            raise CLIError(f"cannot resume from {args.resume!r}: {exc}; resume with the data, --seed and model "
                           "options of the run that wrote it") from None
        raise
    if not _is_writer():
        return
    storage.save(posterior, args.out, serving=args.serving, dtype=args.file_dtype, num_draws=args.keep_draws,
                 thin=args.thin)
    out = dict(model=str(args.out), method=args.method, rank=args.rank, num_train=len(train),
               fit_seconds=posterior.timing["fit_seconds"], **_device_counts(posterior))
    _emit(out, args.json, f"saved {args.method} rank-{args.rank} model fitted on {len(train)} ratings to {args.out}")


def _load_model(path):
    from bayesmf import storage

    return storage.load(path)


def _parse_id(vocab, value: str):
    """CLI ids are strings; the model's ids may be ints."""
    if vocab.ids.dtype != object:
        try:
            return int(value)
        except ValueError:
            raise CLIError(f"id {value!r} is not an integer, but this model's ids are integers") from None
    return value


def _new_user(posterior, args, user):
    """A fold-in of one new user labelled ``user`` from ``--ratings`` (possibly none) and ``--user-features``."""
    from bayesmf import coldstart, data

    given = ([], [])
    if args.ratings:
        given = data.read_item_ratings(args.ratings, item_vocab=posterior.item_vocab, scale=posterior.scale)
    frames = _features(args)
    return coldstart.fold_in_users(posterior, [given], user_ids=[user], user_features=frames.get("user_features"))


def _write_csv(frame, path) -> None:
    """``frame`` to a CSV at ``path``, whole or not at all: written beside it, then moved into place."""
    import tempfile

    path = _out_path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            frame.to_csv(f, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _out_path(path) -> Path:
    path = Path(path).expanduser()
    if not path.parent.is_dir():
        raise CLIError(f"--out {path}: no directory {path.parent}")
    return path


def _many(frame, args, what: str) -> None:
    """Rows for many users or pairs: to ``--out`` (a one-line summary, or a JSON object with --json), else shown."""
    if args.out is None:
        _table(frame, args.json)
        return
    _write_csv(frame, args.out)
    _emit(dict(out=str(args.out), rows=len(frame)), args.json, f"wrote {len(frame)} {what} to {args.out}")


def cmd_predict(args):
    posterior = _load_model(args.model)
    if args.pairs is not None:
        from bayesmf import data

        if args.user or args.item or args.ratings or args.user_features:
            raise CLIError("--pairs predicts the pairs of a file: leave out --user, --item, --ratings, --user-features")
        if args.out is not None:
            _out_path(args.out)  # before the work
        users, items = data.read_ids(args.pairs, ("user", "item"), (posterior.user_vocab, posterior.item_vocab))
        pred = posterior.predict(users, items, prob=args.prob, uncertainty=args.uncertainty)
        _many(pred.to_dataframe(), args, "predictions")
        return
    if args.user is None or args.item is None:
        raise CLIError("give --user U --item I, or --pairs pairs.csv")
    if args.out is not None:
        raise CLIError("--out writes the predictions of --pairs")
    user = _parse_id(posterior.user_vocab, args.user)
    item = _parse_id(posterior.item_vocab, args.item)
    target = posterior
    if args.ratings or args.user_features:
        if bool(posterior.pairs([user], [item]).known_user[0]):
            raise CLIError(f"user {user} is in the model: --ratings / --user-features are for a new user")
        target = _new_user(posterior, args, user)
    pred = target.predict([user], [item], prob=args.prob, **_uncertainty(target, args))
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

    from bayesmf import ranking

    posterior = _load_model(args.model)
    key = jax.random.PRNGKey(args.seed)
    options = dict(strategy=args.strategy, beta=args.beta, threshold=args.threshold, rng_key=key)
    if args.users is not None:
        from bayesmf import data

        if args.user is not None or args.ratings or args.user_features:
            raise CLIError("--users ranks many users of the model: leave out --user, --ratings, --user-features")
        if args.out is not None:
            _out_path(args.out)  # before the work
        users = None if args.users == "all" else data.read_ids(args.users, ("user",), (posterior.user_vocab,))[0]
        frame = ranking.recommend(posterior, users, args.k, uncertainty=args.uncertainty, progress_bar=True, **options)
        _many(frame, args, "recommendations")
        return
    if args.out is not None:
        raise CLIError("--out writes the lists of --users")
    if args.ratings or args.user_features:
        label = "new" if args.user is None else _parse_id(posterior.user_vocab, args.user)
        target, user = _new_user(posterior, args, label), label
    elif args.user is not None:
        target, user = posterior, _parse_id(posterior.user_vocab, args.user)
        if user not in posterior.user_vocab:  # a mistyped id would otherwise pass for a new user
            print(f"bayesmf: note: user {user} is not in the model: ranked by the cold-start prior "
                  "(pass --ratings to fold in a new user's ratings)", file=sys.stderr)
    else:
        raise CLIError("give --user U, --users all|users.csv, or --ratings new_user.csv")
    frame = ranking.recommend(target, user, args.k, **options, **_uncertainty(target, args))
    _table(frame.drop(columns=["user"]), args.json)


def _uncertainty(target, args) -> dict:
    """``uncertainty=`` for a posterior (a fold-in has its own spread: --uncertainty laplace is refused)."""
    from bayesmf.posterior import Posterior

    if args.uncertainty == "posterior":
        return {}
    if not isinstance(target, Posterior):
        raise CLIError("--uncertainty laplace is for a point estimate's known users, not a new user folded in")
    return dict(uncertainty=args.uncertainty)


def cmd_similar(args):
    from bayesmf import similar

    posterior = _load_model(args.model)
    item = _parse_id(posterior.item_vocab, args.item)
    frame = similar.similar_items(posterior, item, args.k, metric=args.metric)
    _table(frame, args.json)


# --- devices and processes ------------------------------------------------------------------------


def _start_devices(args) -> None:
    """Before JAX starts its backends: ``--devices N`` local CPU devices (XLA's
    forced host device count; GPUs are unaffected) and, with
    ``--coordinator``, ``jax.distributed.initialize``."""
    if getattr(args, "devices", None) is None and getattr(args, "coordinator", None) is None:
        return
    if args.method != "gibbs":
        raise CLIError(f"--devices and --coordinator shard the Gibbs sweep: use --method gibbs, not {args.method}")
    if (args.coordinator is None) != (args.num_processes is None) or (args.coordinator is None) != (args.process_id is None):
        raise CLIError("multi-process runs need --coordinator HOST:PORT, --num-processes P and --process-id K together")
    if (args.devices or 1) > 1 and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={args.devices}").strip()
    if args.coordinator is not None:
        if not 0 <= args.process_id < args.num_processes:
            raise CLIError(f"--process-id must be in [0, {args.num_processes}), got {args.process_id}")
        from bayesmf.engines import sharding

        sharding.initialize(args.coordinator, args.num_processes, args.process_id)


def _mesh_devices(args) -> list:
    """The first ``--devices`` local devices of every process (all when not given)."""
    import jax

    devices = []
    for process in range(jax.process_count()):
        local = [d for d in jax.devices() if d.process_index == process]
        if args.devices is not None and args.devices > len(local):
            raise CLIError(f"--devices {args.devices} but process {process} has {len(local)} device(s)")
        devices += local[: args.devices]
    return devices


def _device_counts(posterior) -> dict:
    import jax

    return dict(num_devices=int(posterior.info.get("num_devices", 1)), num_processes=jax.process_count())


def _is_writer() -> bool:
    """Process 0 writes the files and the output of a multi-process run."""
    import jax

    return jax.process_index() == 0


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


def _add_file_args(p):
    g = p.add_argument_group("ratings files")
    g.add_argument("--sep", help="field separator of ratings files (default: sniffed from '::', tab, ',', ';', space)")
    g.add_argument("--columns", help="comma-separated column names of ratings files in order (user,item,rating[,timestamp])")
    g.add_argument("--duplicates", choices=("error", "mean", "first", "last"), default=None,
                   help="what to do with a (user, item) pair rated twice (default: error)")
    g.add_argument("--scale", help="rating scale LOW,HIGH,STEP (default: inferred from the ratings)")
    g.add_argument("--no-verify", action="store_true", help="skip the md5 check of known MovieLens files")
    g.add_argument("--download", action="store_true", help="download a named MovieLens dataset if it is not found")


def _add_data_args(p, *, test: bool):
    p.add_argument("--data", help="a ratings file, a directory in a MovieLens layout, or a dataset name (ml-100k, ml-1m, ...)")
    p.add_argument("--split", choices=SPLIT_NAMES, default=None,
                   help="how to split --data (default: u1 for an ml-100k folder, else random)")
    p.add_argument("--test-fraction", type=_fraction, default=0.2, help="random and cold-start splits: test share")
    p.add_argument("--given", type=int, default=0, help="cold-start splits: ratings revealed per held-out user/movie")
    p.add_argument("--fold", type=int, default=0, help="kfold split: which fold is the test set")
    p.add_argument("--train", help="training ratings file")
    if test:
        p.add_argument("--test", help="test ratings file (with --train)")
    _add_file_args(p)


def _add_model_args(p):
    p.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD, help="inference engine")
    p.add_argument("--rank", type=_positive_int, default=10, help="number of latent factors")
    p.add_argument("--offsets", choices=("estimated", "empirical"), default="estimated", help="movie offsets")
    p.add_argument("--user-offsets", action="store_true",
                   help="give each user an offset b_u ~ N(0, 1/tau_b) as well (MAP holds tau_b, it does not tune it)")
    p.add_argument("--likelihood", choices=("gaussian", "ordinal"), default="gaussian",
                   help="ordinal: ordered probit over the stars (gibbs, nuts, map, map-adam)")
    p.add_argument("--implicit", action="store_true",
                   help="implicit feedback (who rated what) in both sides' prior means (not als)")
    p.add_argument("--user-features", help="user side features: a CSV (id column first), u.user / users.dat, "
                   "or a MovieLens directory (not als)")
    p.add_argument("--item-features", help="movie side features: a CSV (id column first), u.item / movies.dat, "
                   "or a MovieLens directory (not als)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--num-samples", type=_positive_int, default=200, help="kept draws (samplers and SVI)")
    p.add_argument("--num-warmup", type=int, default=50, help="warm-up sweeps (samplers)")
    p.add_argument("--num-chains", type=_positive_int, default=1, help="chains (samplers)")
    p.add_argument("--no-tune", action="store_true",
                   help="MAP methods: keep the default precisions instead of tuning them on a validation split")
    p.add_argument("--search", choices=MAP_SEARCHES, default=MAP_SEARCHES[0],
                   help="MAP methods: how the precisions are tuned (thorough also tunes the offset ratio; slower)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    g = p.add_argument_group("devices (gibbs): the sweep sharded over a device mesh")
    g.add_argument("--devices", type=_positive_int, default=None, metavar="N",
                   help="shard the sweep over N local devices (per process; on a CPU, N forced host devices)")
    g.add_argument("--coordinator", metavar="HOST:PORT", default=None,
                   help="multi-process run: address of process 0's jax.distributed coordinator")
    g.add_argument("--num-processes", type=_positive_int, default=None, metavar="P", help="multi-process run: processes")
    g.add_argument("--process-id", type=int, default=None, metavar="K",
                   help="multi-process run: this process (0 writes the files and the output)")


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    # No abbreviations: `fit --test x` would otherwise be taken as --test-fraction.
    parser = argparse.ArgumentParser(prog="bayesmf", description="Bayesian matrix factorization of ratings",
                                     formatter_class=fmt, allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"bayesmf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="fit on embedded synthetic data (or --data) and show predictions with intervals",
                       formatter_class=fmt, allow_abbrev=False)
    _add_data_args(p, test=True)
    _add_model_args(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("evaluate", help="fit on a split and score the predictive", formatter_class=fmt, allow_abbrev=False)
    _add_data_args(p, test=True)
    _add_model_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("fit", help="fit and save a model file", formatter_class=fmt, allow_abbrev=False)
    _add_data_args(p, test=False)
    _add_model_args(p)
    p.add_argument("--out", required=True, help="model file to write (netCDF)")
    g = p.add_argument_group("checkpoints (gibbs, nuts)")
    ck = g.add_mutually_exclusive_group()
    ck.add_argument("--checkpoint", metavar="PATH",
                    help="save the run's progress to PATH (one .npz file, replaced atomically; deleted when the fit "
                         "finishes); if PATH holds a checkpoint of this same run, continue from it")
    ck.add_argument("--resume", metavar="PATH",
                    help="continue a killed run from its checkpoint file PATH (give the same data, --seed and model "
                         "options as the killed run; the draws equal an uninterrupted run's) and keep saving there")
    g.add_argument("--checkpoint-every", type=_positive_int, metavar="N", default=None,
                   help="save every N sweeps (NUTS: steps), warm-up included (default: about once a minute)")
    g = p.add_argument_group("smaller model files (see bayesmf.save; e.g. --serving --file-dtype int8 --keep-draws "
                             "80 for a compact file)")
    g.add_argument("--serving", action="store_true",
                   help="keep only what predict, recommend and fold-in read (same predictions)")
    g.add_argument("--file-dtype", choices=FACTOR_DTYPES, default=None,
                   help="store the factor draws in this dtype (int8: per-row 8-bit codes, a quarter of float32)")
    kd = g.add_mutually_exclusive_group()
    kd.add_argument("--keep-draws", type=_positive_int, metavar="N", default=None,
                    help="keep N evenly spaced draws per chain")
    kd.add_argument("--thin", type=_positive_int, metavar="K", default=None, help="keep every K-th draw per chain")
    p.add_argument("--init-from", metavar="MODEL",
                   help="continue from a model file written by fit (gibbs, nuts): known users and movies start from "
                        "its last draw, new ones from its prior; same --rank and --offsets")
    p.set_defaults(func=cmd_fit)

    uncertainty_help = ("laplace: a point estimate's (MAP's) per-user conditional spread of the factors, added "
                        "to its plug-in noise sd (changes nothing with several draws)")
    p = sub.add_parser("predict", help="predictive rating with an interval", formatter_class=fmt, allow_abbrev=False)
    p.add_argument("--model", required=True, help="model file written by fit")
    p.add_argument("--user", help="user id (an unknown id gets the cold-start prior)")
    p.add_argument("--item", help="movie id")
    p.add_argument("--pairs", metavar="FILE", help="CSV whose header names user and item columns: predict every "
                   "pair (unknown ids get the cold-start prior, flagged)")
    p.add_argument("--out", metavar="CSV", help="with --pairs: write the predictions there (replaced whole)")
    p.add_argument("--uncertainty", choices=UNCERTAINTIES, default="posterior", help=uncertainty_help)
    p.add_argument("--ratings", help="CSV with columns item,rating of the new user --user (folded in)")
    p.add_argument("--user-features", help="features of the new user --user (a row keyed by its id; a model "
                   "fitted with user features)")
    p.add_argument("--prob", type=_fraction, default=0.9, help="probability of the central interval")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("recommend", help="top-k movies for a user or for new ratings (fold-in)", formatter_class=fmt, allow_abbrev=False)
    p.add_argument("--model", required=True, help="model file written by fit")
    p.add_argument("--user", help="user id")
    p.add_argument("--users", metavar="all|FILE", help="many users of the model: 'all', or a CSV whose header "
                   "names a user column (unknown ids get the cold-start prior)")
    p.add_argument("--out", metavar="CSV", help="with --users: write the lists there (replaced whole)")
    p.add_argument("--uncertainty", choices=UNCERTAINTIES, default="posterior", help=uncertainty_help)
    p.add_argument("--ratings", help="CSV with columns item,rating for a new user (folded in)")
    p.add_argument("--user-features", help="features of the new user (a row keyed by --user, or by 'new'; a "
                   "model fitted with user features)")
    p.add_argument("--k", type=_positive_int, default=10, help="number of movies")
    p.add_argument("--strategy", choices=STRATEGIES, default="mean", help="ranking score")
    p.add_argument("--beta", type=float, default=1.0, help="lcb / ucb width in sds")
    p.add_argument("--threshold", type=float, default=4.0, help="prob_above: rating threshold")
    p.add_argument("--seed", type=int, default=0, help="random seed (thompson)")
    p.add_argument("--json", action="store_true", help="print one JSON list as the last line")
    p.set_defaults(func=cmd_recommend)

    p = sub.add_parser("similar", help="movies closest to a movie", formatter_class=fmt, allow_abbrev=False)
    p.add_argument("--model", required=True, help="model file written by fit")
    p.add_argument("--item", required=True, help="movie id")
    p.add_argument("--k", type=_positive_int, default=10, help="number of movies")
    p.add_argument("--metric", choices=SIMILARITY_METRICS, default="invariant", help="distance")
    p.add_argument("--json", action="store_true", help="print one JSON list as the last line")
    p.set_defaults(func=cmd_similar)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _start_devices(args)
        args.func(args)
    except (CLIError, ValueError, KeyError, FileNotFoundError, FloatingPointError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"bayesmf: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
