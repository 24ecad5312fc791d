"""Model file sizes and what thinning, serving files and float16 / int8 factors cost in accuracy.

Questions (issue 18, item 6):

* How large is a model file saved in full, as a serving file
  (``serving=True``), thinned (``thin=`` / ``num_draws=``), with float16
  factors (``dtype="float16"``) and with all of them together?
* How much do test RMSE, 90% interval coverage (``posterior.evaluate(test)``,
  row ``("all", "all")``) and the top-10 lists (``bayesmf.recommend(k=10)``,
  mean strategy, seen movies excluded) of each smaller file differ from the
  full model's? Target for the compact file: at most 0.002, 0.005 and one
  movie in ten.
* What would each file weigh at ML-10M shape (69,878 x 10,677, 9M training
  ratings, rank 32, 100 draws), where the full file is about 1.15 GB and the
  compact target is 250 MB?

Data and model: ratings drawn from the model at ML-1M shape
(``bayesmf.synthetic.movielens_like``, 6,040 x 3,706, 1M ratings, true rank
8, noise sd 0.9, rounded to stars), a random 90/10 split, and a real Gibbs
fit at rank 32 (one chain, ``--draws`` kept after ``--warmup``): the draws
are a sampler's, not made up.

Extrapolation to ML-10M: each file's bytes are split by the HDF5 storage
size of its arrays into factor draws, the other per-draw arrays, the
training ratings and the rest (attributes, ids, titles, metadata), and
scaled as

    size_10M = f * S * (N + M) * D + o * S * M + t * R + i * (N + M) + rest

with f = factor bytes / (S (N + M) D) (4 for float32, 2 for float16, 1 for
int8), i = bytes per row of the ids and of int8's per-row centres and steps,
o = other per-draw bytes / (S M) (the item offsets dominate), t = training
bytes / R, S the draws kept (e.g. 100 or 25), N = 69,878, M = 10,677,
D = 32, R = 9,000,054 training ratings (a 90% split of 10,000,054), and
rest from the measured file (attributes, titles, metadata).

The compact file (``COMPACT``: serving, int8 factors, 80 of 100 draws) is
also written at ML-10M shape, not only extrapolated: 100 draws of random
factors (a file's factor bytes do not depend on their values) with the
fitted hyperparameter draws, and the training split of ML-10M-shaped
synthetic ratings (``ml10m_written``).

Run::

    python benchmarks/model_files.py                 # ML-1M shape, rank 32, 100 draws (a few minutes on 2 cores)
    python benchmarks/model_files.py --tiny          # seconds, a smoke run

Writes ``results/benchmarks/model_files.json`` (override with ``--out``).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

ML10M = dict(num_users=69_878, num_items=10_677, rank=32, num_draws=100, train_ratings=9_000_054)

VARIANTS = {
    "full": {},
    "serving": dict(serving=True),
    "thin_2": dict(thin=2),
    "draws_25": dict(num_draws=25),
    "float16": dict(dtype="float16"),
    "serving_float16": dict(serving=True, dtype="float16"),
    "compact_float16_draws_45": dict(serving=True, dtype="float16", num_draws=45),
    "compact_float16_draws_30": dict(serving=True, dtype="float16", num_draws=30),
    "compact_float16_draws_25": dict(serving=True, dtype="float16", num_draws=25),
    "int8": dict(dtype="int8"),
    "serving_int8": dict(serving=True, dtype="int8"),
    "compact_int8_draws_80": dict(serving=True, dtype="int8", num_draws=80),
    "compact_int8_draws_85": dict(serving=True, dtype="int8", num_draws=85),
}


def storage_bytes(path: Path) -> dict:
    """Bytes of each HDF5 dataset's storage, grouped as the extrapolation needs."""
    import h5py

    out = dict(factors=0, factor_rows=0, other_per_draw=0, train=0, train_widening=0, ids=0)
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if not isinstance(obj, h5py.Dataset):
                return
            size = obj.id.get_storage_size()
            leaf = name.rsplit("/", 1)[-1]
            if name.startswith("posterior/") and leaf in ("user_factors", "item_factors"):
                out["factors"] += size
            elif name.startswith("posterior/") and leaf.endswith(("_factors_centre", "_factors_scale")):
                out["factor_rows"] += size  # int8 codes' per-row centre and step: no draw axis
            elif name.startswith("posterior/") and leaf in ("user", "item"):
                out["ids"] += size
            elif name.startswith("posterior/") and obj.ndim >= 2:
                out["other_per_draw"] += size
            elif name.startswith("train/"):
                out["train"] += size
                # an index column widens at ML-10M when its largest index no longer fits int16
                wide = leaf in ("user_index", "item_index") and obj.dtype == np.int16
                limit = ML10M["num_users" if leaf == "user_index" else "num_items"] if wide else 0
                out["train_widening"] += size if limit > np.iinfo(np.int16).max else 0
        f.visititems(visit)
    out["file"] = path.stat().st_size
    out["rest"] = (out["file"] - out["factors"] - out["factor_rows"] - out["other_per_draw"] - out["train"]
                   - out["ids"])
    return out


def extrapolate(parts: dict, *, num_users: int, num_items: int, rank: int, draws: int, train_ratings: int) -> dict:
    t = ML10M
    factor_b = parts["factors"] / (draws * (num_users + num_items) * rank)
    other_b = parts["other_per_draw"] / (draws * num_items)
    train_b = (parts["train"] + parts["train_widening"]) / train_ratings  # int16 columns that need int32
    id_b = (parts["ids"] + parts["factor_rows"]) / (num_users + num_items)  # both scale with the rows
    kept = parts["kept_fraction"] * t["num_draws"]
    size = (factor_b * kept * (t["num_users"] + t["num_items"]) * t["rank"] + other_b * kept * t["num_items"]
            + train_b * t["train_ratings"] + id_b * (t["num_users"] + t["num_items"]) + parts["rest"])
    return dict(bytes=int(size), mb=round(size / 1e6, 1), factor_bytes_per_entry=round(factor_b, 3),
                train_bytes_per_rating=round(train_b, 3), draws_kept=kept)


def top10_overlap(a, b) -> dict:
    """Per user, how many of the 10 movies of ``a`` are also in ``b``'s top 10."""
    sa = a.groupby("user")["item"].apply(set)
    sb = b.groupby("user")["item"].apply(set)
    common = np.array([len(sa[u] & sb[u]) for u in sa.index])
    return dict(mean_changed=float(10 - common.mean()), median_changed=float(10 - np.median(common)),
                max_changed=int(10 - common.min()),
                share_users_changed=float(np.mean(common < 10)))


def ml10m_file(posterior, seed: int, options: dict) -> dict:
    """The bytes of a file saved with ``options`` from a posterior at ML-10M shape: 100 draws of
    random factors and offsets (their bytes do not depend on their values) with ``posterior``'s
    hyperparameter draws, and the 90% training split of ML-10M-shaped synthetic ratings."""
    import jax

    from bayesmf import split, storage, synthetic
    from bayesmf.posterior import Posterior

    t0 = time.perf_counter()
    sim = synthetic.movielens_like(seed, rank=8, noise_sd=0.9, **synthetic.SHAPES["ml-10m"]._asdict())
    train = split.random_holdout(sim.ratings, 0.1, seed).train
    del sim
    rng = np.random.default_rng(seed)
    n, m, s, d = len(train.user_vocab), len(train.item_vocab), ML10M["num_draws"], ML10M["rank"]
    kept = storage.thinned(posterior, num_draws=s)
    draws = kept.draws._replace(
        user_factors=rng.standard_normal((1, s, n, d), np.float32) * 0.5,
        item_factors=rng.standard_normal((1, s, m, d), np.float32) * 0.5,
        item_offsets=rng.standard_normal((1, s, m), np.float32) * 0.3 + 3.5,
    )
    big = Posterior(jax.tree.map(np.asarray, draws), kept.config, train.user_vocab, train.item_vocab, train.scale,
                    method=kept.method, train=train)
    build = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path = storage.save(big, Path(tmp) / "ml10m.nc", **options)
        save_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        loaded = storage.load(path)
        load_s = time.perf_counter() - t0
        size = path.stat().st_size
    return dict(options=options, num_users=n, num_items=m, train_ratings=len(train), draws_saved=s,
                draws_kept=loaded.num_draws, bytes=size, mb=round(size / 1e6, 1), build_seconds=round(build, 1),
                save_seconds=round(save_s, 1), load_seconds=round(load_s, 1))


# The compact file the README recommends, written at ML-10M shape (not extrapolated).
COMPACT = "compact_int8_draws_80"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--draws", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--users", type=int, default=1000, help="users whose top-10 lists are compared")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/benchmarks/model_files.json")
    args = parser.parse_args(argv)

    import jax

    import bayesmf
    from bayesmf import split, storage, synthetic

    shape = synthetic.SHAPES["ml-1m"]._asdict()
    if args.tiny:
        shape = dict(num_users=300, num_items=200, num_ratings=12_000, min_per_user=10)
        args.rank, args.draws, args.warmup, args.users = 4, 40, 5, 50
    sim = synthetic.movielens_like(args.seed, rank=8, noise_sd=0.9, **shape)
    s = split.random_holdout(sim.ratings, 0.1, args.seed)
    model = bayesmf.BayesMF(rank=args.rank, method="gibbs", num_samples=args.draws, num_warmup=args.warmup,
                            progress_bar=False)
    start = time.perf_counter()
    posterior = model.fit(jax.random.PRNGKey(args.seed), s.train)
    fit_seconds = time.perf_counter() - start
    rng = np.random.default_rng(args.seed)
    users = rng.choice(np.asarray(posterior.user_vocab.ids), size=min(args.users, len(posterior.user_vocab)),
                       replace=False)

    def scores(post):
        ev = post.evaluate(s.test).loc[("all", "all")]
        return dict(rmse=float(ev["rmse"]), coverage_90=float(ev["coverage_90"]), nll=float(ev["nll"]))

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, kw in VARIANTS.items():
            if "num_draws" in kw:  # the variants' draw counts are out of 100: scaled to --draws
                kw = dict(kw, num_draws=max(1, round(kw["num_draws"] * args.draws / 100)))
            path = Path(tmp) / f"{name}.nc"
            t0 = time.perf_counter()
            storage.save(posterior, path, **kw)
            save_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            loaded = storage.load(path)
            load_s = time.perf_counter() - t0
            parts = storage_bytes(path)
            parts["kept_fraction"] = loaded.num_draws / posterior.num_draws
            row = dict(options=kw, draws=loaded.num_draws, bytes=parts["file"], parts=parts,
                       save_seconds=round(save_s, 2), load_seconds=round(load_s, 2))
            row["scores"] = scores(loaded)
            row["top10"] = bayesmf.recommend(loaded, users, k=10)
            if "thin" in kw or "num_draws" in kw:  # the file predicts as the thinned posterior in memory
                mem = storage.thinned(posterior, thin=kw.get("thin"), num_draws=kw.get("num_draws"))
                if "dtype" not in kw:
                    a = loaded.predict(s.test.user_ids[:20000], s.test.item_ids[:20000])
                    b = mem.predict(s.test.user_ids[:20000], s.test.item_ids[:20000])
                    row["equals_thinned_in_memory"] = bool(np.array_equal(a.mean, b.mean)
                                                           and np.array_equal(a.lower, b.lower))
            row["ml10m_extrapolated"] = extrapolate(
                parts, num_users=len(posterior.user_vocab), num_items=len(posterior.item_vocab), rank=args.rank,
                draws=loaded.num_draws, train_ratings=len(s.train))
            results[name] = row
            print(name, row["bytes"], row["scores"], row["ml10m_extrapolated"]["mb"], "MB at ML-10M", flush=True)

    full = results["full"]
    for name, row in results.items():
        row["size_vs_full"] = round(row["bytes"] / full["bytes"], 4)
        row["change_vs_full"] = dict(
            rmse=row["scores"]["rmse"] - full["scores"]["rmse"],
            coverage_90=row["scores"]["coverage_90"] - full["scores"]["coverage_90"],
            top10=top10_overlap(full["top10"], row["top10"]),
        )
        ch = row["change_vs_full"]
        row["meets_compact_target"] = bool(
            abs(ch["rmse"]) <= 0.002 and abs(ch["coverage_90"]) <= 0.005 and ch["top10"]["mean_changed"] <= 1.0
            and row["ml10m_extrapolated"]["mb"] <= 250)
    for row in results.values():
        del row["top10"]
    written = None if args.tiny else ml10m_file(posterior, args.seed, VARIANTS[COMPACT])
    if written is not None:
        print("written at ML-10M shape:", written, flush=True)
        results[COMPACT]["ml10m_written"] = written
        results[COMPACT]["meets_compact_target"] &= written["mb"] <= 250
    out = dict(
        question="model file sizes; accuracy cost of thinning, serving files, float16 / int8 factors",
        command="python benchmarks/model_files.py" + (" --tiny" if args.tiny else ""),
        data=dict(generator="bayesmf.synthetic.movielens_like", true_rank=8, noise_sd=0.9, split="random 90/10",
                  **shape, train_ratings=len(s.train), test_ratings=len(s.test)),
        model=dict(method="gibbs", rank=args.rank, draws=args.draws, warmup=args.warmup, chains=1,
                   fit_seconds=round(fit_seconds, 1)),
        top10_users=len(users),
        extrapolation=("size_10M = f*S*(N+M)*D + o*S*M + t*R + i*(N+M) + rest, with per-entry bytes f, o, t, i "
                       "(i: ids, and the int8 codes' per-row centres and steps) "
                       "measured from each file's HDF5 storage sizes; N=69,878, M=10,677, D=32, R=9,000,054, "
                       "S = 100 x the kept fraction of draws"),
        ml10m=ML10M,
        machine=dict(platform=platform.platform(), processor=platform.processor(), jax=jax.__version__,
                     backend=jax.default_backend()),
        variants=results,
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2, default=float) + "\n")
    return out


if __name__ == "__main__":
    main()
