"""Batched Cholesky + the two triangular solves of conjugate.row_draw: XLA's LAPACK path
against a column-at-a-time Cholesky vectorized over rows (fori_loop), float32, in one run.

Run::

    python benchmarks/small_cholesky.py 30     # repetitions per size (median reported)
"""
import time, sys
import jax, jax.numpy as jnp, numpy as np

def chol_small(a):
    """Lower Cholesky of a batch (n, d, d), one column per loop step, vectorized over the batch."""
    n, d, _ = a.shape
    idx = jnp.arange(d)
    def body(j, L):
        row = jax.lax.dynamic_index_in_dim(L, j, axis=1, keepdims=False)  # (n, d): L[j, :], zero for k >= j
        acol = jax.lax.dynamic_index_in_dim(a, j, axis=2, keepdims=False)  # (n, d): a[:, j]
        col = acol - jnp.einsum("nik,nk->ni", L, row)
        diag = jnp.sqrt(jax.lax.dynamic_index_in_dim(col, j, axis=1, keepdims=False))
        col = jnp.where(idx > j, col / diag[:, None], jnp.where(idx == j, diag[:, None], 0.0))
        return jax.lax.dynamic_update_index_in_dim(L, col[:, :, None], j, axis=2)
    return jax.lax.fori_loop(0, d, body, jnp.zeros_like(a))

def solve_lower(L, b):
    n, d = b.shape
    idx = jnp.arange(d)
    def body(i, x):
        li = jax.lax.dynamic_index_in_dim(L, i, axis=1, keepdims=False)  # (n, d) row i
        xi = (b[:, i] if False else jax.lax.dynamic_index_in_dim(b, i, axis=1, keepdims=False) - jnp.sum(li * x, -1)) / jax.lax.dynamic_index_in_dim(li, i, axis=1, keepdims=False)
        return jnp.where(idx == i, xi[:, None], x)
    return jax.lax.fori_loop(0, d, body, jnp.zeros_like(b))

def solve_upper_t(L, b):  # solve L^T x = b
    n, d = b.shape
    idx = jnp.arange(d)
    def body(t, x):
        i = d - 1 - t
        ci = jax.lax.dynamic_index_in_dim(L, i, axis=2, keepdims=False)  # column i of L = row i of L^T
        xi = (jax.lax.dynamic_index_in_dim(b, i, axis=1, keepdims=False) - jnp.sum(ci * x, -1)) / jax.lax.dynamic_index_in_dim(ci, i, axis=1, keepdims=False)
        return jnp.where(idx == i, xi[:, None], x)
    return jax.lax.fori_loop(0, d, body, jnp.zeros_like(b))

@jax.jit
def custom(p, b, z):
    L = chol_small(p)
    return solve_upper_t(L, solve_lower(L, b) + z)

@jax.jit
def lapack(p, b, z):
    L = jnp.linalg.cholesky(p)
    h = jax.scipy.linalg.solve_triangular(L, b[..., None], lower=True)[..., 0]
    return jax.scipy.linalg.solve_triangular(L, (h + z)[..., None], lower=True, trans="T")[..., 0]

rng = np.random.default_rng(0)
for n, d in [(943, 10), (1682, 11), (943, 50), (1682, 51), (943, 100)]:
    g = rng.normal(size=(n, d, 3 * d)).astype(np.float32)
    p = jnp.asarray(g @ g.transpose(0, 2, 1) / d + np.eye(d, dtype=np.float32))
    b = jnp.asarray(rng.normal(size=(n, d)).astype(np.float32)); z = jnp.asarray(rng.normal(size=(n, d)).astype(np.float32))
    x1, x2 = custom(p, b, z).block_until_ready(), lapack(p, b, z).block_until_ready()
    err = float(jnp.max(jnp.abs(x1 - x2)) / jnp.max(jnp.abs(x2)))
    ts = {"custom": [], "lapack": []}
    for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 20):
        for name, f in (("custom", custom), ("lapack", lapack)):
            t = time.perf_counter(); f(p, b, z).block_until_ready(); ts[name].append(time.perf_counter() - t)
    print(n, d, "relerr %.1e" % err, {k: "%.3f ms" % (1e3 * np.median(v)) for k, v in ts.items()}, flush=True)
