"""Smaller model files: thinning, serving files, float16 and int8 factors (issue 18, item 6).

Uses the synthetic posterior of ``test_storage`` (30 users x 20 items, rank 2,
2 chains x 50 float32 draws); seeds are fixed, so each test is deterministic.
"""

import h5py
import jax
import numpy as np
import pytest

from bayesmf import compact, storage
from bayesmf.coldstart import fold_in_users
from bayesmf.ranking import recommend

from test_storage import fitted, posterior, query_pairs  # noqa: F401  (fixtures: int and string ids)

# float16 rounding: relative error of a normal number, absolute error below 2**-14.
EPS16 = 2.0**-11
TINY16 = 2.0**-25


def predictions(posterior):
    users, items = query_pairs(posterior)
    return posterior.predict(users, items, prob=0.9)


def assert_same_predictions(a, b):
    pa, pb = predictions(a), predictions(b)
    np.testing.assert_array_equal(pa.mean, pb.mean)
    np.testing.assert_array_equal(pa.sd, pb.sd)
    np.testing.assert_array_equal(pa.lower, pb.lower)
    np.testing.assert_array_equal(pa.upper, pb.upper)


def new_user_ratings(posterior):
    items = np.asarray(posterior.item_vocab.ids)
    return [(items[:4], np.array([5.0, 1.0, 4.0, 3.0])), (items[5:7], np.array([2.0, 4.0]))]


# --- thinning ----------------------------------------------------------------------------


@pytest.mark.parametrize("kw", [dict(thin=3), dict(thin=1), dict(num_draws=7), dict(num_draws=1), dict(thin=50)])
def test_thinned_file_predicts_exactly_as_thinned_posterior(fitted, tmp_path, kw):
    path = storage.save(fitted, tmp_path / "thin.nc", **kw)
    loaded = storage.load(path)
    expected = storage.thinned(fitted, **kw)
    index = storage.draw_indices(fitted.num_draws, thin=kw.get("thin"), keep=kw.get("num_draws"))
    assert loaded.num_draws == expected.num_draws == len(index)
    for a, b, full in zip(jax.tree.leaves(loaded.draws), jax.tree.leaves(expected.draws), jax.tree.leaves(fitted.draws)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, np.asarray(full)[:, index])
    np.testing.assert_array_equal(loaded.stats["train_rmse"], fitted.stats["train_rmse"][:, index])
    np.testing.assert_array_equal(loaded.stats["step_size"], fitted.stats["step_size"])  # per chain: kept
    assert_same_predictions(loaded, expected)


def test_draw_indices():
    np.testing.assert_array_equal(storage.draw_indices(10, thin=3), [0, 3, 6, 9])
    np.testing.assert_array_equal(storage.draw_indices(10, keep=4), [0, 3, 6, 9])
    np.testing.assert_array_equal(storage.draw_indices(100, keep=2), [0, 99])
    assert len(np.unique(storage.draw_indices(100, keep=100))) == 100
    np.testing.assert_array_equal(storage.draw_indices(5), np.arange(5))


def test_thinning_is_recorded_in_the_file(fitted, tmp_path):
    path = storage.save(fitted, tmp_path / "thin.nc", num_draws=5)
    with h5py.File(path, "r") as f:
        kept = __import__("json").loads(f.attrs["draws_kept"])
        assert kept["source_num_draws"] == fitted.num_draws and kept["num_draws"] == 5
        assert kept["indices"] == storage.draw_indices(fitted.num_draws, keep=5).tolist()


# --- serving files --------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_and_serving(posterior, tmp_path_factory):
    d = tmp_path_factory.mktemp("serve")
    full = storage.save(posterior, d / "full.nc")
    serve = storage.save(posterior, d / "serve.nc", serving=True)
    return full, serve


def test_serving_file_drops_what_serving_does_not_read(posterior, full_and_serving):
    fitted = posterior
    full, serve = full_and_serving
    with h5py.File(serve, "r") as f:
        assert set(f.keys()) == {"posterior", "train", "titles"}
        assert "timestamp" not in f["train"]
        assert f.attrs["contents"] in ("serving", b"serving")
        assert f["train/item_index"].dtype == np.int16  # 20 items: the smallest exact dtype
        assert f["train/rating"].compression == "gzip"  # lossless
    loaded = storage.load(serve)
    assert loaded.stats == {} and loaded.timing == {} and loaded.info == {} and loaded.tracked is None
    assert serve.stat().st_size < full.stat().st_size
    # the training ratings come back in their own dtypes, bit for bit
    for name in ("user_index", "item_index", "rating"):
        a, b = getattr(loaded.train, name), np.asarray(getattr(fitted.train, name))
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    assert loaded.titles == fitted.titles


def test_serving_file_predicts_recommends_and_folds_in_as_the_full_file(full_and_serving):
    full, serve = (storage.load(p) for p in full_and_serving)
    assert_same_predictions(full, serve)
    users = list(full.user_vocab.ids[:4])
    for strategy in ("mean", "lcb"):
        a = recommend(full, users, k=5, strategy=strategy)
        b = recommend(serve, users, k=5, strategy=strategy)
        assert a.equals(b)
    fa, fb = fold_in_users(full, new_user_ratings(full)), fold_in_users(serve, new_user_ratings(serve))
    np.testing.assert_array_equal(np.asarray(fa.weights), np.asarray(fb.weights))
    ra, rb = recommend(fa, k=5), recommend(fb, k=5)
    assert ra.equals(rb)


def test_serving_point_estimate_keeps_laplace_uncertainty(fitted, tmp_path):
    point = storage.thinned(fitted, num_draws=1)
    point = type(point)(
        storage.thinned(point).draws, point.config, point.user_vocab, point.item_vocab, point.scale, method="map",
        train=point.train,
    )
    point = storage.load(storage.save(point, tmp_path / "full.nc"))
    serve = storage.load(storage.save(point, tmp_path / "serve.nc", serving=True))
    users, items = query_pairs(point)
    a = point.predict(users, items, uncertainty="laplace")
    b = serve.predict(users, items, uncertainty="laplace")
    np.testing.assert_array_equal(a.sd, b.sd)


# --- float16 factors ----------------------------------------------------------------------


def test_float16_factors_round_trip_within_the_rounding_bound(fitted, tmp_path):
    path = storage.save(fitted, tmp_path / "f16.nc", dtype="float16")
    with h5py.File(path, "r") as f:
        assert f["posterior/user_factors"].dtype == np.float16
        assert f["posterior/item_offsets"].dtype == fitted.draws.item_offsets.dtype  # only factors narrow
    loaded = storage.load(path)
    for name in storage.FACTOR_FIELDS:
        a, b = getattr(loaded.draws, name), getattr(fitted.draws, name)
        assert a.dtype == b.dtype == np.float32  # loaded back in the original dtype
        err = np.abs(a.astype(np.float64) - b)
        assert np.all(err <= np.maximum(EPS16 * np.abs(b), TINY16))
    for name in ("item_offsets", "noise_precision", "user_precision"):
        np.testing.assert_array_equal(getattr(loaded.draws, name), getattr(fitted.draws, name))
    # Per draw: |u'v' - uv| <= sum_d |u_d||v_d| ((1+e)^2 - 1) (+ the tiny absolute terms), e = 2^-11,
    # plus float32 arithmetic (a few ulps of the sums); the mixture mean averages per-draw means.
    users, items = query_pairs(fitted)
    pairs = fitted.pairs(users, items)
    known = pairs.known_user & pairs.known_item
    u, i = pairs.user_index[known], pairs.item_index[known]
    uf, vf = fitted.draws.user_factors[:, :, u].astype(np.float64), fitted.draws.item_factors[:, :, i].astype(np.float64)
    tiny = TINY16 * (np.abs(uf) + np.abs(vf) + TINY16)
    bound = np.sum(np.abs(uf * vf) * ((1 + EPS16) ** 2 - 1) + tiny, -1)  # (C, S, n)
    slack = 1e-5
    a = loaded.components(u, i).mean.reshape(bound.shape)
    b = fitted.components(u, i).mean.reshape(bound.shape)
    assert np.all(np.abs(a - b) <= bound + slack)
    pa, pb = loaded.predict(users[known], items[known]), fitted.predict(users[known], items[known])
    assert np.all(np.abs(pa.mean - pb.mean) <= bound.mean((0, 1)) + slack)


def test_float16_with_thinning_and_serving(fitted, tmp_path):
    path = storage.save(fitted, tmp_path / "small.nc", num_draws=10, dtype="float16", serving=True)
    full = storage.save(fitted, tmp_path / "full.nc")
    assert path.stat().st_size < full.stat().st_size
    loaded = storage.load(path)
    expected = storage.thinned(fitted, num_draws=10)
    assert loaded.num_draws == 10
    np.testing.assert_allclose(loaded.draws.user_factors, expected.draws.user_factors, rtol=EPS16, atol=TINY16)
    np.testing.assert_array_equal(loaded.draws.item_offsets, expected.draws.item_offsets)


def test_float16_out_of_range_is_an_error(fitted, tmp_path):
    big = type(fitted)(
        fitted.draws._replace(user_factors=fitted.draws.user_factors * 1e6), fitted.config, fitted.user_vocab,
        fitted.item_vocab, fitted.scale, method=fitted.method, train=fitted.train,
    )
    with pytest.raises(ValueError, match="range of float16"), np.errstate(over="ignore"):
        storage.save(big, tmp_path / "big.nc", dtype="float16")
    assert not (tmp_path / "big.nc").exists()


# --- int8 factors ---------------------------------------------------------------------------


def test_int8_factors_decode_within_half_a_step(fitted, tmp_path):
    path = storage.save(fitted, tmp_path / "q8.nc", dtype="int8")
    with h5py.File(path, "r") as f:
        assert f["posterior/user_factors"].dtype == np.int8
        assert f["posterior/user_factors_centre"].shape == (fitted.num_chains, len(fitted.user_vocab), fitted.config.rank)
        assert f["posterior/item_factors_scale"].shape == (fitted.num_chains, len(fitted.item_vocab))
    loaded = storage.load(path)
    for name in storage.FACTOR_FIELDS:
        a, b = getattr(loaded.draws, name), np.asarray(getattr(fitted.draws, name), np.float64)
        assert a.dtype == np.float32 and a.shape == b.shape
        # Half a step per entry, the step being the row's largest deviation from its chain mean / 127
        # (plus float32 rounding of centre + code * step, a few ulps of the entries).
        step = np.abs(b - b.mean(1, keepdims=True)).max(axis=(1, 3), keepdims=True) / 127
        assert np.all(np.abs(a - b) <= step / 2 + 1e-6 * (1 + np.abs(b)))
        assert not np.array_equal(a, b)  # lossy: the test would notice float32 being written instead
        np.testing.assert_allclose(a.mean(1), b.mean(1), atol=float(step.max()) / 2 + 1e-6)
    for name in ("item_offsets", "noise_precision", "user_precision"):
        np.testing.assert_array_equal(getattr(loaded.draws, name), getattr(fitted.draws, name))
    pa, pb = predictions(loaded), predictions(fitted)
    assert np.array_equal(pa.known_user, pb.known_user)
    np.testing.assert_allclose(pa.mean, pb.mean, atol=0.05)


def test_int8_thinned_draws_take_the_mean_of_all_draws(fitted, tmp_path):
    path = storage.save(fitted, tmp_path / "q8thin.nc", dtype="int8", num_draws=10, serving=True)
    loaded = storage.load(path)
    kept = storage.thinned(fitted, num_draws=10)
    assert loaded.num_draws == 10
    np.testing.assert_array_equal(loaded.draws.item_offsets, kept.draws.item_offsets)  # thinned exactly
    for name in storage.FACTOR_FIELDS:
        a = getattr(loaded.draws, name)
        full, k = (np.asarray(getattr(p.draws, name), np.float64) for p in (fitted, kept))
        step = np.abs(k - k.mean(1, keepdims=True)).max(axis=(1, 3), keepdims=True) / 127
        # each loaded draw is the kept draw moved by (mean of all draws - mean of the kept ones)
        moved = k - k.mean(1, keepdims=True) + full.mean(1, keepdims=True)
        assert np.all(np.abs(a - moved) <= step / 2 + 1e-6 * (1 + np.abs(moved)))
        np.testing.assert_allclose(a.mean(1), full.mean(1), atol=float(step.max()) / 2 + 1e-6)
        assert np.abs(k.mean(1) - full.mean(1)).max() > step.max()  # the shift is not within rounding


def test_int8_of_non_finite_factors_is_an_error(fitted, tmp_path):
    bad = type(fitted)(
        fitted.draws._replace(user_factors=np.where(np.arange(fitted.config.rank) == 0, np.nan,
                                                    fitted.draws.user_factors)),
        fitted.config, fitted.user_vocab, fitted.item_vocab, fitted.scale, method=fitted.method, train=fitted.train,
    )
    existing = storage.save(fitted, tmp_path / "model.nc")
    before = existing.read_bytes()
    with pytest.raises(ValueError, match="user_factors has non-finite entries"):
        storage.save(bad, existing, dtype="int8")
    assert existing.read_bytes() == before  # nothing already saved is lost


def test_quantize_rows_with_constant_rows_and_one_draw():
    draws = np.zeros((2, 1, 3, 4), np.float32) + np.arange(4, dtype=np.float32)
    q = compact.quantize_rows(draws)
    assert np.all(q.scale == 0) and np.all(q.codes == 0)
    np.testing.assert_array_equal(compact.dequantize_rows(q, np.float32), draws)
    with pytest.raises(ValueError, match="shape"):
        compact.quantize_rows(draws, centre=np.zeros((2, 3, 5)))


# --- bad arguments and the default -----------------------------------------------------


@pytest.mark.parametrize("kw, match", [
    (dict(thin=0), "thin must be a positive integer"),
    (dict(thin=-2), "thin must be a positive integer"),
    (dict(thin=1.5), "thin must be a positive integer"),
    (dict(num_draws=0), "num_draws must be an integer from 1"),
    (dict(num_draws=10**6), "num_draws must be an integer from 1"),
    (dict(thin=2, num_draws=3), "not both"),
    (dict(dtype="bfloat16"), "dtype must be one of"),
    (dict(dtype="int16"), "dtype must be one of"),
    (dict(dtype="float8"), "dtype must be one of"),
])
def test_bad_arguments_are_clear_errors(fitted, tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        storage.save(fitted, tmp_path / "bad.nc", **kw)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_default_save_still_round_trips_bit_identically(fitted, tmp_path):
    loaded = storage.load(storage.save(fitted, tmp_path / "full.nc"))
    for a, b in zip(jax.tree.leaves(loaded.draws), jax.tree.leaves(fitted.draws)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    assert_same_predictions(loaded, fitted)
    assert loaded.timing == fitted.timing and set(loaded.stats) == set(fitted.stats)
    with h5py.File(tmp_path / "full.nc", "r") as f:
        assert f.attrs["contents"] in ("full", b"full") and "draws_kept" not in f.attrs
        assert f["train/item_index"].dtype == np.asarray(fitted.train.item_index).dtype
