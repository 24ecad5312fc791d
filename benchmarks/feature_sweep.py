"""What the richer model costs: the Gibbs sweep with features against the plain sweep, and fold-in with features.

Questions (issue 20's targets):

* The full Gaussian model's sweep (user offsets, side features and implicit
  feedback on both sides) at most 2x the plain sweep at ml-100k, rank 10, on
  this CPU. Both models are timed in the same process, interleaved (plain,
  full, plain, full, ...: the machine is noisy), as the median seconds per
  sweep of ``gibbs.sample`` after its compile; the one-off precomputation (the
  feature Grams' factorization, ``bayesmf.link.link_system``) is reported
  separately.
* Fold-in of one new user with features and 10 ratings over 200 draws at
  rank 10: at most 5 ms (median of 50 calls after warm-up), against the same
  fold-in on the plain model.

* At scale (``--shape ml-10m``, rank 32): the same sweep ratio on pairs
  drawn at that shape (:func:`bayesmf.synthetic.sample_pairs`: power-law
  activity and popularity) with one 30-level categorical side feature per
  side and implicit feedback from the pairs, as the issue asks; the one-off
  precomputation (the two sides' Gram eigendecompositions) and the peak
  resident memory are reported. No fold-in at scale.

Data: MovieLens-100K u1.base with u.user / u.item (``--data``), or (``--tiny``)
a small synthetic set with random features, or (``--shape``) synthetic pairs.

Run::

    python benchmarks/feature_sweep.py --data ../shared/data
    python benchmarks/feature_sweep.py --tiny
    python benchmarks/feature_sweep.py --shape ml-10m --rank 32 --sweeps 5 --repeats 2

Writes ``results/benchmarks/feature_sweep.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE.parent / "results" / "benchmarks" / "feature_sweep.json"


def load(args):
    """(train ratings, user features, movie features) by id."""
    import pandas as pd

    import bayesmf

    if args.shape:
        from bayesmf import synthetic
        from bayesmf.data import Ratings

        shape = synthetic.SHAPES[args.shape]
        users, items = synthetic.sample_pairs(0, shape.num_users, shape.num_items, shape.num_ratings,
                                              min_per_user=shape.min_per_user)
        rng = np.random.default_rng(0)
        stars = rng.integers(1, 6, len(users)).astype(np.float32)
        train = Ratings.from_arrays(users + 1, items + 1, stars)
        levels = np.asarray([f"level{k}" for k in range(30)])
        frames = [pd.DataFrame({"category": rng.choice(levels, n)}, index=np.arange(1, n + 1))
                  for n in (shape.num_users, shape.num_items)]
        return train, frames[0], frames[1]
    if args.tiny:
        from bayesmf import synthetic

        train = synthetic.movielens_like(0, num_users=120, num_items=80, num_ratings=3000, rank=2, min_per_user=8).ratings
        rng = np.random.default_rng(0)
        users = pd.DataFrame({"job": rng.choice(list("abcde"), 120)}, index=np.arange(1, 121))
        items = pd.DataFrame({"genre": rng.choice(list("xyz"), 80)}, index=np.arange(1, 81))
        return train, users, items
    directory = Path(args.data) / "ml-100k"
    users, items = bayesmf.load_movielens_features(directory)
    return bayesmf.read_ratings(directory / "u1.base"), users, items


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="directory holding ml-100k/")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--shape", default=None, help="a name of bayesmf.synthetic.SHAPES (sweep ratio only)")
    parser.add_argument("--rank", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timed runs of each model")
    parser.add_argument("--sweeps", type=int, default=100, help="sweeps per timed run")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    import jax

    import bayesmf
    from bayesmf import BayesMF
    from bayesmf.engines import gibbs
    from bayesmf.model import FeatureSpec, model_data_from_ratings, with_features

    train, users, items = load(args)
    sweeps = 10 if args.tiny else args.sweeps
    # The full model's data: side features encoded as BayesMF.fit encodes them, implicit feedback appended.
    encoded = [bayesmf.encode_features(bayesmf.fit_features(f, v), f, v)
               for f, v in ((users, train.user_vocab), (items, train.item_vocab))]
    plain = bayesmf.ModelConfig(rank=args.rank)
    full = plain.replace(user_offsets=True, user_features=FeatureSpec(encoded[0].shape[1], True),
                         item_features=FeatureSpec(encoded[1].shape[1], True))
    base = model_data_from_ratings(train)
    start = time.perf_counter()
    data_full = with_features(base, full, *encoded)
    features_seconds = time.perf_counter() - start
    start = time.perf_counter()
    ctx = gibbs.build_context(data_full, "auto", args.rank, config=full)
    jax.block_until_ready((ctx.user_link, ctx.item_link))
    precompute_seconds = time.perf_counter() - start
    # Each model's context built once (with features: the link systems' factorization, timed above).
    start = time.perf_counter()
    contexts = {"plain": gibbs.build_context(base, "auto", args.rank), "full": ctx}
    plain_context_seconds = time.perf_counter() - start
    times = {"plain": [], "full": []}
    for repeat in range(args.repeats):
        for name, config, data in (("plain", plain, base), ("full", full, data_full)):
            result = gibbs.sample(jax.random.PRNGKey(repeat), data, config, num_samples=sweeps, num_warmup=0,
                                  progress_bar=False, keep_draws=False,
                                  context=contexts[name])
            times[name].append(result.timing["seconds_per_sample"])
    plain_ms, full_ms = (1e3 * float(np.median(times[k])) for k in ("plain", "full"))
    scale = dict(data=f"synthetic pairs at the {args.shape} shape, one 30-level categorical per side + implicit",
                 num_ratings=int(train.nnz), rank=args.rank,
                 num_user_features=int(data_full.user_features.shape[1]),
                 num_item_features=int(data_full.item_features.shape[1]),
                 plain_ms_per_sweep=plain_ms, full_ms_per_sweep=full_ms, ratio=full_ms / plain_ms,
                 per_repeat_ms={k: [1e3 * t for t in v] for k, v in times.items()},
                 one_off_feature_rows_seconds=features_seconds, one_off_context_seconds=precompute_seconds,
                 plain_context_seconds=plain_context_seconds,
                 one_off_link_systems_seconds=precompute_seconds - plain_context_seconds,
                 peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                 load_average=os.getloadavg(), device=str(jax.devices()[0]),
                 command=f"python benchmarks/feature_sweep.py --shape {args.shape} --rank {args.rank} "
                         f"--sweeps {args.sweeps} --repeats {args.repeats}")
    if args.shape:
        out_path = args.out.with_name(f"feature_sweep_{args.shape}.json") if args.out == DEFAULT_OUT else args.out
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(scale, indent=1) + "\n")
        print(json.dumps(scale, indent=1))
        return 0

    # Fold-in latency: one new user, 10 ratings, 200 draws (tiny: 20).
    draws = 20 if args.tiny else 200
    fits = {
        "plain": BayesMF(rank=args.rank, num_samples=draws, num_warmup=20 if args.tiny else 50, progress_bar=False).fit(
            0, train),
        "full": BayesMF(rank=args.rank, num_samples=draws, num_warmup=20 if args.tiny else 50, user_offsets=True,
                        implicit=True, progress_bar=False).fit(0, train, user_features=users, item_features=items),
    }
    movies = np.asarray(train.item_vocab.ids)[:10]
    given = [(movies, np.linspace(1, 5, 10).round())]
    new_user = users.iloc[:1].copy()
    new_user.index = [10**6]
    latency = {}
    for name, post in fits.items():
        kw = dict(user_ids=[10**6], user_features=new_user) if name == "full" else dict(user_ids=[10**6])
        calls = []
        for i in range(60):
            start = time.perf_counter()
            fold = bayesmf.fold_in_users(post, given, **kw)
            jax.block_until_ready(fold._mean)
            calls.append(time.perf_counter() - start)
        latency[name] = 1e3 * float(np.median(calls[10:]))
    out = dict(
        data="synthetic tiny" if args.tiny else "ml-100k u1.base + u.user / u.item",
        rank=args.rank,
        num_user_features=int(data_full.user_features.shape[1]),
        num_item_features=int(data_full.item_features.shape[1]),
        plain_ms_per_sweep=plain_ms,
        full_ms_per_sweep=full_ms,
        ratio=full_ms / plain_ms,
        per_repeat_ms={k: [1e3 * t for t in v] for k, v in times.items()},
        one_off_feature_rows_seconds=features_seconds,
        one_off_context_seconds=precompute_seconds,
        foldin_ms={"plain": latency["plain"], "full_with_features": latency["full"]},
        foldin_draws=draws,
        command="python benchmarks/feature_sweep.py" + (" --tiny" if args.tiny else f" --data {args.data}"),
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
