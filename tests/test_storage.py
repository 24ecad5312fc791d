"""Saving, loading and the ArviZ view of a posterior.

Posteriors are built from synthetic float32 draws shaped like a sampler's
(30 users x 20 items, rank 2, 2 chains x 50 draws); seeds are fixed, so each
test is deterministic.
"""

import json
import os

import arviz as az
import h5py
import jax
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from bayesmf import diagnostics, storage
from bayesmf.data import RatingScale, Ratings
from bayesmf.model import FixedPriors, ModelConfig, Params, present_fields
from bayesmf.posterior import Posterior

NUM_USERS, NUM_ITEMS, RANK, NUM_DRAWS, NUM_CHAINS = 30, 20, 2, 50, 2


def make_ratings(seed=0, nnz=300, str_ids=False):
    rng = np.random.default_rng(seed)
    cells = rng.choice(NUM_USERS * NUM_ITEMS, size=nnz, replace=False)
    users, items = np.divmod(cells, NUM_ITEMS)
    lu = rng.normal(0, 0.7, (NUM_USERS, RANK))
    rv = rng.normal(0, 0.7, (NUM_ITEMS, RANK))
    m = rng.normal(3.0, 0.5, NUM_ITEMS)
    r = np.clip(np.round(np.sum(lu[users] * rv[items], 1) + m[items] + rng.normal(0, 0.5, nnz)), 1, 5)
    return Ratings.from_arrays(*external_ids(users, items, str_ids), r, scale=RatingScale(1.0, 5.0, 1.0))


def external_ids(users, items, str_ids):
    if str_ids:  # zero-padded: sorted like the indices; non-ASCII survives
        return (np.array([f"user-{u:03d}" for u in users], dtype=object),
                np.array([f"película {i:03d}" for i in items], dtype=object))
    return users * 7 + 101, items + 1


def with_ratings(posterior, ratings, **kw):
    titles = {i: f"Title of {i}" for i in ratings.item_vocab.ids[::3].tolist()}
    return Posterior(
        posterior.draws, posterior.config, ratings.user_vocab, ratings.item_vocab, ratings.scale,
        method=posterior.method, stats=posterior.stats, timing=posterior.timing, train=ratings, titles=titles,
        info=posterior.info, tracked=posterior.tracked, **kw,
    )


def synthetic_draws(seed=0, num_chains=NUM_CHAINS, num_draws=NUM_DRAWS, dtype=np.float32) -> Params:
    """Draws shaped like a sampler's (float32 by default), with SPD precisions."""
    rng = np.random.default_rng(seed)
    c, s = num_chains, num_draws
    a = rng.normal(size=(2, c, s, RANK, RANK))
    precisions = np.einsum("...ij,...kj->...ik", a, a) + RANK * np.eye(RANK)
    draws = Params(
        user_factors=rng.normal(0, 0.7, (c, s, NUM_USERS, RANK)),
        item_factors=rng.normal(0, 0.7, (c, s, NUM_ITEMS, RANK)),
        item_offsets=rng.normal(3.0, 0.5, (c, s, NUM_ITEMS)),
        noise_precision=rng.gamma(50.0, 4.0 / 50, (c, s)),
        user_mean=rng.normal(0, 0.2, (c, s, RANK)),
        user_precision=precisions[0],
        item_mean=rng.normal(0, 0.2, (c, s, RANK)),
        item_precision=precisions[1],
        offset_mean=rng.normal(3.0, 0.05, (c, s)),
        offset_precision=rng.gamma(50.0, 4.0 / 50, (c, s)),
    )
    return jax.tree.map(lambda x: x.astype(dtype), draws)


@pytest.fixture(scope="module")
def fitted():
    """A posterior as an engine returns it, from synthetic draws (no compile: fast)."""
    ratings = make_ratings()
    draws = synthetic_draws()
    rng = np.random.default_rng(1)
    stats = dict(
        train_rmse=rng.uniform(0.8, 1.0, (NUM_CHAINS, NUM_DRAWS)).astype(np.float32),
        diverging=rng.uniform(size=(NUM_CHAINS, NUM_DRAWS)) < 0.1,
        step_size=np.array([0.1, 0.2]),  # per chain: not (chain, draw)
    )
    timing = dict(compile_seconds=1.25, sampling_seconds=0.5, seconds_per_sample=0.005, fit_seconds=1.75)
    info = dict(engine="gibbs", layout="BucketLayout", thin=1, tuning=np.array([0.5, 0.25]), callback=print)
    posterior = Posterior(
        draws, ModelConfig(rank=RANK), ratings.user_vocab, ratings.item_vocab, ratings.scale, method="gibbs",
        stats=stats, timing=timing, train=ratings, info=info, tracked=object(),
    )
    return with_ratings(posterior, ratings)


@pytest.fixture(scope="module", params=["int_ids", "str_ids"])
def posterior(request, fitted):
    """The fitted draws with integer ids, or relabelled with string ids."""
    if request.param == "int_ids":
        return fitted
    train = fitted.train
    strs = make_ratings(str_ids=True)
    assert np.array_equal(strs.user_index, train.user_index) and np.array_equal(strs.item_index, train.item_index)
    return with_ratings(fitted, strs)


@pytest.fixture(scope="module")
def saved(posterior, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.nc"
    storage.save(posterior, path)
    return path


def query_pairs(posterior):
    """Known pairs, a new user, a new item and a new user + item."""
    users = list(posterior.user_vocab.ids[:5]) + [posterior.user_vocab.ids[0]]
    items = list(posterior.item_vocab.ids[:5]) + [posterior.item_vocab.ids[1]]
    if posterior.user_vocab.ids.dtype == object:
        users += ["nobody", "nobody"]
        items += [posterior.item_vocab.ids[2], "no such film"]
    else:
        users += [10**6, 10**6]
        items += [posterior.item_vocab.ids[2], 10**6]
    return np.array(users, dtype=posterior.user_vocab.ids.dtype), np.array(items, dtype=posterior.item_vocab.ids.dtype)


# --- round trip ----------------------------------------------------------------------


def test_round_trip_predicts_bit_identically(posterior, saved):
    loaded = storage.load(saved)
    users, items = query_pairs(posterior)
    before = posterior.predict(users, items, keep_components=True)
    after = loaded.predict(users, items, keep_components=True)
    for field in ("mean", "sd", "epistemic_sd", "noise_sd", "lower", "upper", "known_user", "known_item"):
        assert np.array_equal(getattr(before, field), getattr(after, field)), field
    assert np.array_equal(before.components.mean, after.components.mean)
    assert not before.known_user.all() and not before.known_item.all()


def test_round_trip_keeps_everything(posterior, saved):
    loaded = storage.load(saved)
    for name in present_fields(posterior.config):
        a, b = getattr(posterior.draws, name), getattr(loaded.draws, name)
        assert a.dtype == b.dtype and a.dtype == np.float32, name
        assert np.array_equal(a, b), name
    assert loaded.user_vocab.ids.dtype == posterior.user_vocab.ids.dtype
    assert np.array_equal(loaded.user_vocab.ids, posterior.user_vocab.ids)
    assert np.array_equal(loaded.item_vocab.ids, posterior.item_vocab.ids)
    assert [type(x) for x in loaded.item_vocab.ids[:3]] == [type(x) for x in posterior.item_vocab.ids[:3]]
    assert loaded.scale == posterior.scale
    assert loaded.config == posterior.config
    assert loaded.method == "gibbs"
    assert loaded.timing == posterior.timing
    assert set(loaded.stats) == set(posterior.stats)
    for name, value in posterior.stats.items():
        assert np.array_equal(loaded.stats[name], value) and loaded.stats[name].dtype == value.dtype
    assert loaded.titles == posterior.titles
    # JSON-able info survives (arrays as lists); the callback is dropped.
    assert loaded.info["engine"] == "gibbs" and loaded.info["tuning"] == [0.5, 0.25]
    assert "callback" not in loaded.info
    assert loaded.tracked is None
    for name in ("user_index", "item_index", "rating"):
        a, b = np.asarray(getattr(posterior.train, name)), np.asarray(getattr(loaded.train, name))
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    assert np.array_equal(loaded.train.user_ids, posterior.train.user_ids)


def test_loaded_model_recommends_unseen_items_as_before(posterior, saved):
    from bayesmf.ranking import recommend

    loaded = storage.load(saved)
    user = posterior.train.user_ids[0]
    before = recommend(posterior, user, k=5)
    after = recommend(loaded, user, k=5)
    assert before.equals(after)
    seen = set(posterior.train.item_ids[posterior.train.user_ids == user].tolist())
    assert seen and not seen & set(after["item"].tolist())


def test_diagnostics_are_the_same_after_load(posterior, saved):
    loaded = storage.load(saved)
    a, b = diagnostics.summary(posterior), diagnostics.summary(loaded)
    assert a.index.equals(b.index)
    np.testing.assert_array_equal(a.to_numpy(float), b.to_numpy(float))


def test_round_trip_fixed_priors_map_like(tmp_path):
    """One chain, one draw, fixed precisions, no train / titles / stats."""
    ratings = make_ratings(seed=2)
    config = ModelConfig(rank=RANK, priors="fixed", fixed=FixedPriors(user_precision=np.float32(3.5)))
    rng = np.random.default_rng(0)
    draws = Params(
        rng.normal(size=(1, 1, NUM_USERS, RANK)), rng.normal(size=(1, 1, NUM_ITEMS, RANK)),
        rng.normal(3, 1, (1, 1, NUM_ITEMS)), np.full((1, 1), 2.0), np.zeros((1, 1, RANK)),
        np.broadcast_to(3.5 * np.eye(RANK), (1, 1, RANK, RANK)), np.zeros((1, 1, RANK)),
        np.broadcast_to(20.0 * np.eye(RANK), (1, 1, RANK, RANK)), np.full((1, 1), 3.0), np.full((1, 1), 4.0),
    )
    p = Posterior(draws, config, ratings.user_vocab, ratings.item_vocab, ratings.scale, method="map")
    storage.save(p, tmp_path / "map.nc")
    q = storage.load(tmp_path / "map.nc")
    assert q.train is None and q.titles == {} and q.stats == {}
    assert q.config == config and q.draws.user_factors.dtype == np.float64
    users, items = ratings.user_ids[:10], ratings.item_ids[:10]
    assert np.array_equal(p.predict(users, items).mean, q.predict(users, items).mean)


# --- atomic writes ---------------------------------------------------------------------


def crashing_writer(tree, path, encoding):
    with open(path, "wb") as f:
        f.write(b"\x89HDF\r\n\x1a\n half a file")
    raise RuntimeError("simulated crash mid-save")


def test_crash_mid_save_leaves_existing_file_intact(posterior, tmp_path, monkeypatch):
    path = tmp_path / "model.nc"
    storage.save(posterior, path)
    before = path.read_bytes()
    monkeypatch.setattr(storage, "_write_tree", crashing_writer)
    with pytest.raises(RuntimeError, match="simulated crash"):
        storage.save(posterior, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.nc"]  # no temporary file left behind
    monkeypatch.undo()
    users, items = query_pairs(posterior)
    assert np.array_equal(storage.load(path).predict(users, items).mean, posterior.predict(users, items).mean)


def test_crash_mid_save_creates_nothing(posterior, tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "_write_tree", crashing_writer)
    with pytest.raises(RuntimeError):
        storage.save(posterior, tmp_path / "model.nc")
    assert os.listdir(tmp_path) == []


def test_save_replaces_an_existing_file(posterior, tmp_path):
    path = tmp_path / "model.nc"
    path.write_bytes(b"old")
    assert storage.save(posterior, str(path)) == path
    assert storage.load(path).num_draws == NUM_DRAWS


# --- load errors -------------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere.nc"
    with pytest.raises(FileNotFoundError, match="nowhere.nc"):
        storage.load(path)


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.0])
def test_truncated_file(saved, tmp_path, keep):
    data = saved.read_bytes()
    path = tmp_path / "truncated.nc"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ValueError, match="truncated.nc is not a readable bayesmf model file"):
        storage.load(path)


def test_garbage_file(tmp_path):
    path = tmp_path / "garbage.nc"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ValueError, match="garbage.nc is not a readable bayesmf model file"):
        storage.load(path)


def test_flipped_bit_in_the_draws_is_detected(posterior, saved, tmp_path):
    """Fletcher-32 checksums: a corrupted draw is an error, never a different model."""
    data = bytearray(saved.read_bytes())
    needle = posterior.draws.user_factors[0, 0, :3].tobytes()  # inside the first HDF5 chunk
    at = data.find(needle)
    assert at >= 0 and data.find(needle, at + 1) < 0
    data[at + len(needle) // 2] ^= 0x01
    path = tmp_path / "flipped.nc"
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="is not a readable bayesmf model file"):
        storage.load(path)


@pytest.mark.parametrize("engine", ["h5netcdf", "scipy"])
def test_foreign_netcdf_is_not_a_bayesmf_file(tmp_path, engine):
    path = tmp_path / "other.nc"
    xr.Dataset({"temperature": ("time", np.arange(5.0))}).to_netcdf(path, engine=engine)
    with pytest.raises(ValueError, match="is not a bayesmf model file"):
        storage.load(path)


@pytest.mark.parametrize("version", [storage.FORMAT_VERSION + 1, 0])
def test_unknown_format_version_is_refused(posterior, tmp_path, version):
    path = tmp_path / "future.nc"
    storage.save(posterior, path)
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = np.int64(version)
    with pytest.raises(ValueError, match=rf"future.nc has bayesmf model format version {version} .* "
                                         rf"reads format versions 1, 2; "):
        storage.load(path)


def test_broken_content_is_a_value_error(posterior, tmp_path):
    path = tmp_path / "broken.nc"
    storage.save(posterior, path)
    with h5py.File(path, "r+") as f:
        f.attrs["config"] = "{not json"
    with pytest.raises(ValueError, match="is not a readable bayesmf model file"):
        storage.load(path)


# --- ArviZ ------------------------------------------------------------------------------


def test_to_datatree_groups_and_dims(posterior):
    dt = storage.to_datatree(posterior, keep_factors=True)
    assert set(dt.children) == {"posterior", "constant_data", "sample_stats"}
    post = dt["posterior"]
    assert post["user_factors"].dims == ("chain", "draw", "user", "factor")
    assert post["item_factors"].dims == ("chain", "draw", "item", "factor")
    assert post["user_precision"].dims == ("chain", "draw", "factor", "factor_col")
    assert np.array_equal(post["user"].values, posterior.user_vocab.ids)
    assert np.array_equal(post["item"].values, posterior.item_vocab.ids)
    for name in ("noise_sd", "offset_mean", "offset_sd", "user_prior_trace_cov", "item_prior_trace_cov",
                 "user_mean_norm", "item_mean_norm", "user_factors_norm", "item_factors_norm", "pred_fro_norm"):
        assert post[name].dims == ("chain", "draw"), name
    assert post["item_offsets"].dims == ("chain", "draw", "item")
    assert post["user_prior_eigvals"].dims == ("chain", "draw", "factor")
    assert post["probe_pred"].dims == ("chain", "draw", "probe")
    assert post.sizes["chain"] == NUM_CHAINS and post.sizes["draw"] == NUM_DRAWS
    probes = dt["constant_data"]
    assert set(probes["probe_user"].values.tolist()) <= set(posterior.user_vocab.ids.tolist())
    assert probes["probe_user"].dtype == posterior.user_vocab.ids.dtype
    assert post["probe"].values.tolist() == [
        f"{u}:{i}" for u, i in zip(probes["probe_user"].values, probes["probe_item"].values)]
    assert "probe_user" not in post.coords  # ArviZ refuses coords that some variables lack
    assert dt["sample_stats"]["train_rmse"].dims == ("chain", "draw")
    assert dt["sample_stats"]["diverging"].dtype == bool
    assert "step_size" not in dt["sample_stats"]  # not per draw
    slim = storage.to_datatree(posterior)  # raw factors only on request
    assert "user_factors" not in slim["posterior"] and "noise_sd" in slim["posterior"]
    assert "user" not in slim["posterior"].coords


def test_to_datatree_fixed_mode_puts_constants_aside(fitted):
    d = fitted.draws
    eye = np.broadcast_to(np.eye(RANK, dtype=np.float32), d.user_precision.shape)
    draws = d._replace(user_precision=20 * eye, item_precision=20 * eye, user_mean=0 * d.user_mean,
                       item_mean=0 * d.item_mean, noise_precision=np.ones_like(d.noise_precision))
    p = Posterior(draws, ModelConfig(rank=RANK, priors="fixed"), fitted.user_vocab, fitted.item_vocab,
                  fitted.scale, method="gibbs")
    dt = storage.to_datatree(p, keep_factors=True)
    assert "user_prior_trace_cov" in dt["constant_data"] and "user_prior_trace_cov" not in dt["posterior"]
    assert float(dt["constant_data"]["user_prior_trace_cov"]) == pytest.approx(RANK / 20)
    assert dt["constant_data"]["user_precision"].dims == ("factor", "factor_col")
    assert "item_offsets" in dt["posterior"]  # still estimated
    assert "noise_sd" in dt["constant_data"] and "sample_stats" not in dt.children


@pytest.mark.filterwarnings("ignore:Estimated shape parameter of Pareto")
def test_to_datatree_with_pairs_and_loo(posterior):
    test = make_ratings(seed=9, nnz=80, str_ids=posterior.user_vocab.ids.dtype == object)
    dt = storage.to_datatree(posterior, (test.user_ids, test.item_ids, test.rating), keep_factors=False)
    assert {"posterior_predictive", "log_likelihood", "observed_data"} <= set(dt.children)
    ll = dt["log_likelihood"]["rating"]
    assert ll.dims == ("chain", "draw", "pair") and ll.shape == (NUM_CHAINS, NUM_DRAWS, len(test))
    assert np.array_equal(dt["observed_data"]["rating"].values, np.asarray(test.rating, np.float64))
    assert np.array_equal(dt["log_likelihood"]["pair_user"].values, test.user_ids)
    resolved = posterior.pairs(test.user_ids, test.item_ids)
    comps = posterior.components(resolved.user_index, resolved.item_index)
    np.testing.assert_allclose(
        dt["posterior_predictive"]["rating_mean"].values.reshape(-1, len(test)), comps.mean, rtol=0
    )
    result = az.loo(dt)
    assert np.isfinite(result.elpd) and result.n_data_points == len(test)
    # pairs + observed given apart give the same tree.
    again = storage.to_datatree(posterior, (test.user_ids, test.item_ids), test.rating, keep_factors=False)
    assert np.array_equal(again["log_likelihood"]["rating"].values, ll.values)
    with pytest.raises(ValueError, match="twice"):
        storage.to_datatree(posterior, (test.user_ids, test.item_ids, test.rating), test.rating)


def test_to_datatree_is_writable(posterior, tmp_path):
    test = make_ratings(seed=9, nnz=20, str_ids=posterior.user_vocab.ids.dtype == object)
    dt = storage.to_datatree(posterior, (test.user_ids, test.item_ids, test.rating))
    dt.to_netcdf(tmp_path / "arviz.nc", engine="h5netcdf")
    back = xr.open_datatree(tmp_path / "arviz.nc", engine="h5netcdf")
    try:
        assert np.array_equal(back["posterior"]["noise_sd"].values, dt["posterior"]["noise_sd"].values)
    finally:
        back.close()


def test_file_attributes_are_documented(saved):
    with h5py.File(saved, "r") as f:
        attrs = dict(f.attrs)
        assert attrs["format"] in (storage.FORMAT, storage.FORMAT.encode())
        assert int(np.asarray(attrs["format_version"]).item()) == storage.FORMAT_VERSION == 2
        config = json.loads(attrs["config"])
        assert config["rank"] == RANK and "fixed" in config and "hyper" in config
        assert set(f.keys()) == {"posterior", "train", "titles", "sample_stats"}
        assert f["posterior/user_factors"].fletcher32


# --- format versions ----------------------------------------------------------------------

V1_FILE = os.path.join(os.path.dirname(__file__), "data", "posterior_v1.nc")


def v1_fixture_posterior():
    """The synthetic posterior saved in ``tests/data/posterior_v1.nc`` by bayesmf 0.1.0
    (format version 1, commit 89fb805's storage.py), regenerated here to compare with::

        python -c "import sys; sys.path.insert(0, 'tests'); import test_storage as t; \\
                   t.storage.save(t.v1_fixture_posterior(), 'tests/data/posterior_v1.nc')"

    String user ids (non-ASCII), integer item ids, 2 chains x 3 draws, rank 2,
    float32 draws, timestamps, titles, stats and info: every node of the layout.
    """
    rng = np.random.default_rng(20261126)
    users = np.array(["ana", "bo", "chloé", "dev", "eli", "fay"], dtype=object)
    items = np.array([10, 20, 30, 40])
    pairs = [(u, i) for u in range(6) for i in range(4) if (u + i) % 3 != 0]
    u, i = np.array(pairs).T
    ratings = Ratings.from_arrays(users[u], items[i], rng.integers(1, 6, len(pairs)).astype(float),
                                  timestamps=np.arange(len(pairs)) + 10**9, scale=RatingScale(1.0, 5.0, 1.0))
    c, s, d = 2, 3, 2
    a = rng.normal(size=(2, c, s, d, d))
    precisions = np.einsum("...ij,...kj->...ik", a, a) + d * np.eye(d)
    draws = Params(
        rng.normal(0, 0.7, (c, s, 6, d)), rng.normal(0, 0.7, (c, s, 4, d)), rng.normal(3.0, 0.5, (c, s, 4)),
        rng.gamma(50.0, 4.0 / 50, (c, s)), rng.normal(0, 0.2, (c, s, d)), precisions[0],
        rng.normal(0, 0.2, (c, s, d)), precisions[1], rng.normal(3.0, 0.05, (c, s)), rng.gamma(50.0, 4.0 / 50, (c, s)),
    )
    return Posterior(
        jax.tree.map(lambda x: x.astype(np.float32), draws), ModelConfig(rank=d), ratings.user_vocab, ratings.item_vocab,
        ratings.scale, method="gibbs", stats=dict(train_rmse=rng.uniform(0.8, 1.0, (c, s)).astype(np.float32)),
        timing=dict(fit_seconds=1.5), train=ratings, titles={10: "Ten", 30: "Thirty"},
        info=dict(engine="gibbs", thin=1),
    )


def test_version_1_file_still_loads(tmp_path):
    """A file bayesmf 0.1.0 wrote (format 1: /draws and /vocab) loads bit for bit, and re-saves as format 2."""
    expected = v1_fixture_posterior()
    with h5py.File(V1_FILE, "r") as f:
        assert int(np.asarray(f.attrs["format_version"]).item()) == 1 and {"draws", "vocab"} <= set(f.keys())
    loaded = storage.load(V1_FILE)
    for name in Params._fields:
        a, b = getattr(expected.draws, name), getattr(loaded.draws, name)
        assert (a is None and b is None) or (a.dtype == b.dtype and np.array_equal(a, b)), name
    assert loaded.user_vocab.ids.tolist() == ["ana", "bo", "chloé", "dev", "eli", "fay"]
    assert loaded.user_vocab.ids.dtype == object and np.array_equal(loaded.item_vocab.ids, expected.item_vocab.ids)
    assert (loaded.config, loaded.scale, loaded.method) == (expected.config, expected.scale, "gibbs")
    assert loaded.titles == expected.titles and loaded.info == expected.info and loaded.timing == expected.timing
    assert np.array_equal(loaded.stats["train_rmse"], expected.stats["train_rmse"])
    for name in ("user_index", "item_index", "rating", "timestamp"):
        assert np.array_equal(getattr(loaded.train, name), getattr(expected.train, name)), name
    users, items = ["ana", "chloé", "nobody", "fay"], [10, 40, 20, 99]
    want = expected.predict(users, items).mean
    assert np.array_equal(loaded.predict(users, items).mean, want)
    storage.save(loaded, tmp_path / "v2.nc")
    with h5py.File(tmp_path / "v2.nc", "r") as f:
        assert int(np.asarray(f.attrs["format_version"]).item()) == 2
    assert np.array_equal(storage.load(tmp_path / "v2.nc").predict(users, items).mean, want)


def test_model_file_opens_as_an_arviz_tree(posterior, saved):
    """xarray reads the file itself: a posterior group with chain, draw and named dims and coords."""
    with xr.open_datatree(saved, engine="h5netcdf") as tree:
        post = tree["posterior"]
        assert post["user_factors"].dims == ("chain", "draw", "user", "factor")
        assert post["user_precision"].dims == ("chain", "draw", "factor", "factor_col")
        assert post["item_offsets"].dims == ("chain", "draw", "item")
        assert post["chain"].values.tolist() == list(range(NUM_CHAINS))
        assert post["draw"].values.tolist() == list(range(NUM_DRAWS))
        assert post["user"].values.tolist() == posterior.user_vocab.ids.tolist()
        assert post["item"].values.tolist() == posterior.item_vocab.ids.tolist()
        assert tree["sample_stats"]["train_rmse"].dims == ("chain", "draw")
        assert az.rhat(tree)["noise_precision"].shape == ()
    # The documented converter: the identifiable quantities of the saved model.
    dt = storage.load_datatree(saved)
    want = storage.to_datatree(posterior)
    assert set(dt["posterior"].data_vars) == set(want["posterior"].data_vars)
    for name in want["posterior"].data_vars:
        assert np.array_equal(dt["posterior"][name].values, want["posterior"][name].values), name
    assert az.summary(dt).index.equals(az.summary(want).index)


def map_like(posterior):
    """The first draw as a point estimate (one chain, one draw), as the MAP engine returns."""
    draws = jax.tree.map(lambda x: x[:1, :1], posterior.draws)
    return Posterior(draws, posterior.config, posterior.user_vocab, posterior.item_vocab, posterior.scale,
                     method="map", train=posterior.train)


@pytest.mark.parametrize("keep_factors", [False, True])
@pytest.mark.parametrize("method", ["gibbs", "map"])
def test_arviz_summary_rhat_ess_on_the_tree(posterior, method, keep_factors):
    """Issue 17, defect 4: az.summary failed with "coordinate 'probe_user' not present in all datasets"."""
    p = posterior if method == "gibbs" else map_like(posterior)
    dt = storage.to_datatree(p, keep_factors=keep_factors)
    table = az.summary(dt, round_to="none")
    labels = set(table.index)
    assert {"noise_sd", "offset_mean", "offset_sd", "user_prior_trace_cov", "pred_fro_norm"} <= labels
    assert f"item_offsets[{p.item_vocab.ids[0]}]" in labels
    probes = dt["constant_data"]
    assert f"probe_pred[{probes['probe_user'].values[0]}:{probes['probe_item'].values[0]}]" in labels
    assert any(label.startswith("user_factors[") for label in labels) == keep_factors
    rhat, ess = az.rhat(dt), az.ess(dt)  # the posterior group's values
    assert set(rhat.data_vars) == set(ess.data_vars) == set(dt["posterior"].data_vars)
    if method == "map":  # one draw: a point, no diagnostics
        assert table["sd"].isna().all() and table["r_hat"].isna().all()
        assert np.isnan(float(rhat["noise_sd"]))
    else:
        assert np.isfinite(table["r_hat"]).all() and np.isfinite(float(ess["noise_sd"]))
        if not keep_factors:  # the same numbers as bayesmf's own summary
            ours = diagnostics.summary(p)
            pd.testing.assert_frame_equal(table.loc[ours.index, ours.columns].astype(float), ours.astype(float))


SAVE_LOAD_WITHOUT_ARVIZ = """
import sys
for name in ("arviz", "arviz_base", "arviz_stats", "arviz_plots"):
    sys.modules[name] = None  # any import of it raises ImportError
from bayesmf import storage
p = storage.load(sys.argv[1])
storage.save(p, sys.argv[2])
q = storage.load(sys.argv[2])
assert (q.predict(["ana"], [10]).mean == p.predict(["ana"], [10]).mean).all()
assert not [name for name, module in sys.modules.items() if name.startswith("arviz") and module is not None]
print("ok")
"""


def test_save_and_load_work_without_arviz(tmp_path):
    """The GPU image has no ArviZ: storage imports it only for to_datatree."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", SAVE_LOAD_WITHOUT_ARVIZ, V1_FILE, str(tmp_path / "m.nc")],
                          cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


# --- the JSON encoder ----------------------------------------------------------------------


def test_to_jsonable():
    from bayesmf.encoding import to_jsonable

    config = ModelConfig(rank=RANK, priors="fixed", fixed=FixedPriors(user_precision=np.float32(3.5)))
    out = to_jsonable(dict(config=config, scale=RatingScale(1.0, 5.0, 0.5), n=np.int64(3), flag=np.bool_(True),
                           tuning=np.array([0.5, np.nan]), pair=(1, "a"), none=None))
    json.dumps(out, allow_nan=True)  # plain JSON types only
    assert out["config"]["fixed"]["user_precision"] == 3.5 and out["config"]["rank"] == RANK
    assert out["scale"] == dict(low=1.0, high=5.0, step=0.5)
    assert out["n"] == 3 and type(out["n"]) is int and out["flag"] is True and out["pair"] == [1, "a"]
    assert np.isnan(out["tuning"][1])  # kept by default: model files round-trip NaN
    strict = to_jsonable(dict(x=np.float32("inf"), y=[float("nan"), 1.0], z=np.array([np.nan])),
                         nonfinite_as_null=True)
    assert strict == dict(x=None, y=[None, 1.0], z=[None])
    json.dumps(strict, allow_nan=False)
    for bad in (print, {1: "a"}, np.array(["a"], dtype=object), object()):
        with pytest.raises(TypeError, match="JSON-able"):
            to_jsonable(bad)
