"""Milliseconds of ``pair_mean`` and its gradient on the ml-100k u1 training pairs, by rank.

Question: from which rank is the gradient of ``<L_u, R_v> + m_v`` over the
80k training pairs cheaper through a dense user x movie matrix (scatter nnz
scalars, two GEMMs) than through the row gathers' transpose (a scatter-add of
nnz x D values)? It sets ``bayesmf.model.DENSE_GRAD_MIN_RANK``; SVI, MAP and
NUTS take this gradient every step.

Run::

    python benchmarks/pair_mean_grad.py 10 20 30 40 50 100     # ranks

Data: ``BAYESMF_DATA`` or ``../shared/data``. Prints one line per rank.
"""
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from bayesmf import model, split
from bayesmf.model import model_data_from_ratings

data_dir = Path(os.environ.get("BAYESMF_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data")))
d = model_data_from_ratings(split.make_split(data_dir / "ml-100k", "u1").train)
u, v = d.user_index, d.item_index
offsets = jnp.zeros(d.num_items)
g = jax.random.normal(jax.random.PRNGKey(0), (d.nnz,))


def ms(f, *args, n=30):
    f = jax.jit(f)
    jax.block_until_ready(f(*args))
    start = time.perf_counter()
    for _ in range(n):
        out = f(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / n * 1e3


def vjp(fn):
    # The indices are arguments, as in the engines (data is never a constant of a program).
    return lambda L, R, g, u, v: jax.vjp(lambda L, R: fn(L, R, offsets, u, v), L, R)[1](g)


for rank in [int(x) for x in sys.argv[1:]] or [10, 20, 30, 40, 50, 100]:
    L = jax.random.normal(jax.random.PRNGKey(1), (d.num_users, rank))
    R = jax.random.normal(jax.random.PRNGKey(2), (d.num_items, rank))
    gathers = ms(vjp(model._pair_mean), L, R, g, u, v)
    dense = ms(vjp(model._pair_mean_dense_grad), L, R, g, u, v)
    value = ms(lambda L, R, u, v: model.pair_mean(L, R, offsets, u, v), L, R, u, v)
    print(f"rank {rank:4d}  value {value:6.2f} ms  gradient: gathers {gathers:6.2f} ms, dense {dense:6.2f} ms, "
          f"dense/gathers {dense / gathers:.2f}  (pair_mean takes {'dense' if rank >= model.DENSE_GRAD_MIN_RANK else 'gathers'})",
          flush=True)
