"""Where a Gibbs sweep's time goes: each part of ``gibbs.step`` jitted alone,
on ml-100k u1 at one rank, in one run (milliseconds, median of repetitions).

The parts are the user-side Gram and rhs, the user row draws, the item-side
Gram and rhs (design ``[L, 1]``), the item row draws, the training SSE (for
the noise precision) and the test-pair predictions the sampler streams; then
the whole sweep. Also the two micro-measurements behind choices in the code:
a 2-D ``jax.random.normal`` against the flat draw that
``conjugate.standard_normal`` uses, and ``jnp.sum(axis=-1)`` against the matvec
``model.predict_mean`` uses.

Run::

    python benchmarks/gibbs_sweep_parts.py --data ../shared/data --rank 10
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np


def median_ms(fn, *args, reps: int = 200) -> float:
    fn = jax.jit(fn)
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


def main(argv=None) -> dict:
    from bayesmf import split
    from bayesmf.conjugate import row_draw, standard_normal
    from bayesmf.engines import gibbs
    from bayesmf.layout import gram_and_rhs
    from bayesmf.model import ModelConfig, model_data_from_ratings, predict_mean

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("BAYESMF_DATA", "../shared/data"))
    parser.add_argument("--rank", type=int, default=10)
    parser.add_argument("--reps", type=int, default=200)
    args = parser.parse_args(argv)

    d = args.rank
    s = split.make_split(os.path.join(args.data, "ml-100k"), "u1")
    data = model_data_from_ratings(s.train)
    config = ModelConfig(rank=d)
    ctx = gibbs.build_context(data, "auto", d)
    state = gibbs.init(jax.random.PRNGKey(0), data, config)
    key = jax.random.PRNGKey(1)
    pairs = (jnp.asarray(s.test.user_ids), jnp.asarray(s.test.item_ids))
    design = jnp.concatenate([state.user_factors, jnp.ones((data.num_users, 1), state.user_factors.dtype)], axis=1)
    item_prior, item_mean = jnp.eye(d + 1), jnp.zeros(d + 1)

    def user_gram(st, c):
        return gram_and_rhs(c.user_layout, st.item_factors, c.data.rating - st.item_offsets[c.data.item_index])

    user_stats = jax.jit(user_gram)(state, ctx)
    item_stats = jax.jit(lambda c, z: gram_and_rhs(c.item_layout, z, c.data.rating))(ctx, design)
    r = args.reps
    parts = {
        "user gram + rhs": median_ms(user_gram, state, ctx, reps=r),
        "user row draws": median_ms(
            lambda k, st, g: row_draw(k, st.user_precision, st.user_mean, g[0], g[1], st.noise_precision), key, state, user_stats, reps=r
        ),
        "item gram + rhs": median_ms(lambda c, z: gram_and_rhs(c.item_layout, z, c.data.rating), ctx, design, reps=r),
        "item row draws": median_ms(lambda k, g: row_draw(k, item_prior, item_mean, g[0], g[1], 1.0), key, item_stats, reps=r),
        "train SSE": median_ms(
            lambda st, c: jnp.sum((c.data.rating - predict_mean(st, c.data.user_index, c.data.item_index)) ** 2), state, ctx, reps=r
        ),
        "test predictions": median_ms(lambda st, p: predict_mean(st, p[0], p[1]), state, pairs, reps=r),
        "whole sweep": median_ms(lambda k, st, c: gibbs.step(k, st, c, config), key, state, ctx, reps=r),
    }
    shape = (data.num_users, d)
    u, v = data.user_index, data.item_index
    ones = jnp.ones(d)
    choices = {
        "normal 2-D": median_ms(lambda k: jax.random.normal(k, shape), key, reps=r),
        "normal flat (standard_normal)": median_ms(lambda k: standard_normal(k, shape, jnp.float32), key, reps=r),
        "row sums, jnp.sum(axis=-1)": median_ms(lambda a, b: jnp.sum(a[u] * b[v], axis=-1), state.user_factors, state.item_factors, reps=r),
        "row sums, matvec with ones": median_ms(lambda a, b: (a[u] * b[v]) @ ones, state.user_factors, state.item_factors, reps=r),
    }
    print(f"ml-100k u1, rank {d}, layout {type(ctx.user_layout).__name__}, median ms of {r} calls")
    for name, ms in {**parts, **choices}.items():
        print(f"  {name:32s} {ms:8.3f}")
    return dict(parts=parts, choices=choices)


if __name__ == "__main__":
    main()
