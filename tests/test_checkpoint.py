"""Long runs that resume, models that continue: a Gibbs fit killed
(SIGKILL, in a child process) after its checkpoint file appears continues
from that file to the draws of an uninterrupted run with the same seed; a
file from another seed, other ratings or other settings is refused;
``checkpoint_every`` counts sweeps; the CLI's ``fit --checkpoint`` /
``--resume``; the progress bar counts sweeps with their rate and the time
left; ``fit(init_from=model)`` / ``fit --init-from`` continue a model on
grown ratings (new users and movies from the prior)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pandas as pd
import pytest
from tqdm.auto import tqdm as real_tqdm

from bayesmf import BayesMF, cli, storage, synthetic
from bayesmf.data import as_ratings
from bayesmf.engines import common, driver, gibbs
from bayesmf.estimator import start_from
from bayesmf.model import ModelConfig, model_data_from_ratings

SEED = 5
# 20 + 100 sweeps: 12 chunks of 10 (driver.chunk_size), one save after each.
SETTINGS = dict(rank=2, method="gibbs", num_samples=100, num_warmup=20, progress_bar=False)
EVERY = 10
# Bounds that make the subprocess test stop by itself (seconds).
APPEAR_TIMEOUT = 90.0
KILL_AFTER = 0.7  # after the file appears: a save or two later, mid-run
# The child sleeps this long after each save, so that it cannot finish
# before the parent's SIGKILL however fast the machine is (11 saves remain).
CHILD_PAUSE = 0.4

CHILD = """
import sys, time
from bayesmf import BayesMF, synthetic
from bayesmf.engines import driver

write = driver.write_checkpoint


def write_then_pause(*args):
    write(*args)
    time.sleep({pause})


driver.write_checkpoint = write_then_pause
ratings = synthetic.movielens_like(3, num_users=60, num_items=45, num_ratings=1200, rank=2, min_per_user=8).ratings
BayesMF(**{settings}).fit({seed}, ratings, checkpoint=sys.argv[1], checkpoint_every={every})
print("finished")
"""


def small_ratings():
    return synthetic.movielens_like(3, num_users=60, num_items=45, num_ratings=1200, rank=2, min_per_user=8).ratings


def assert_same_draws(a, b):
    for name, x, y in zip(a._fields, a, b):
        assert (x is None and y is None) or np.array_equal(x, y), name


@pytest.fixture(scope="module")
def uninterrupted():
    """The same fit without a checkpoint."""
    return BayesMF(**SETTINGS).fit(SEED, small_ratings())


class _Killed(Exception):
    pass


def kill_after_saves(monkeypatch, count: int) -> list:
    """Make the ``count``-th checkpoint write raise :class:`_Killed` (after writing)."""
    write = driver.write_checkpoint
    saves = []

    def write_then_die(*args):
        write(*args)
        saves.append(1)
        if len(saves) == count:
            raise _Killed

    monkeypatch.setattr(driver, "write_checkpoint", write_then_die)
    return saves


def test_sigkilled_run_resumes_to_identical_draws(tmp_path, uninterrupted):
    """A child process fitting with a checkpoint every 10 sweeps is killed
    with SIGKILL soon after its checkpoint file appears; fitting again with
    the same seed, ratings, settings and file continues from it and gives
    draws equal (np.array_equal) to an uninterrupted run's; the file is gone
    afterwards."""
    path = tmp_path / "run.ckpt.npz"
    script = CHILD.format(pause=CHILD_PAUSE, settings=repr(SETTINGS), seed=SEED, every=EVERY)
    child = subprocess.Popen([sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + APPEAR_TIMEOUT
        while not path.exists():
            assert child.poll() is None, f"the child ended before its first checkpoint: {child.communicate()}"
            assert time.monotonic() < deadline, "no checkpoint file within the time limit"
            time.sleep(0.05)
        time.sleep(KILL_AFTER)
        assert child.poll() is None, "the child finished before it could be killed"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
        child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL
    with np.load(path, allow_pickle=False) as saved:
        reached = int(saved["chunk"])
    assert 1 <= reached < 12  # killed mid-run

    partial = path.with_name(path.name + ".tmp")  # as a kill during a write would leave it
    partial.write_bytes(b"PK\x03\x04 half an archive")
    resumed = BayesMF(**SETTINGS).fit(SEED, small_ratings(), checkpoint=path, checkpoint_every=EVERY)
    assert_same_draws(resumed.draws, uninterrupted.draws)
    np.testing.assert_array_equal(resumed.stats["train_rmse"], uninterrupted.stats["train_rmse"])
    assert not path.exists() and not partial.exists()  # a finished run deletes its checkpoint


def test_checkpoint_of_another_run_is_refused(tmp_path, monkeypatch, uninterrupted):
    """A file written by another seed, other ratings or other settings
    raises a ValueError naming the file and is left as it was; the run that
    wrote it still resumes from it."""
    path = tmp_path / "run.ckpt.npz"
    ratings = small_ratings()
    kill_after_saves(monkeypatch, 3)
    with pytest.raises(_Killed):
        BayesMF(**SETTINGS).fit(SEED, ratings, checkpoint=path, checkpoint_every=EVERY)
    monkeypatch.undo()
    before = path.read_bytes()
    other_ratings = ratings.to_dataframe().assign(rating=lambda f: f.rating.where(f.index != 0, 1.0))
    for seed, data, settings in (
        (SEED + 1, ratings, SETTINGS),
        (SEED, other_ratings, SETTINGS),
        (SEED, ratings, dict(SETTINGS, num_samples=90)),
        (SEED, ratings, dict(SETTINGS, rank=3)),
        (SEED, ratings, dict(SETTINGS, thin=2)),
    ):
        with pytest.raises(ValueError, match=f"checkpoint .*{path.name}.* belongs to another run"):
            BayesMF(**settings).fit(seed, data, checkpoint=path)
    assert path.read_bytes() == before
    resumed = BayesMF(**SETTINGS).fit(SEED, ratings, checkpoint=path)
    assert_same_draws(resumed.draws, uninterrupted.draws)
    assert not path.exists()


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "notes.npz"
    path.write_text("not an archive")
    with pytest.raises(ValueError, match="notes.npz.*not a bayesmf checkpoint"):
        BayesMF(**SETTINGS).fit(SEED, small_ratings(), checkpoint=path)


def test_checkpoint_every_counts_sweeps(tmp_path, monkeypatch):
    """With checkpoint_every=25 and chunks of 10 sweeps, saves come after
    sweeps 30, 60, 90 and 120 (the first chunk end at least 25 sweeps after
    the last save); the minute timer is not what fires them."""
    monkeypatch.setattr(driver, "CHECKPOINT_SECONDS", 1e9)
    write = driver.write_checkpoint
    reached = []

    def record(path, arrays):
        reached.append(int(arrays["chunk"]))
        write(path, arrays)

    monkeypatch.setattr(driver, "write_checkpoint", record)
    data = model_data_from_ratings(small_ratings())
    gibbs.sample(jax.random.PRNGKey(0), data, ModelConfig(rank=2), num_samples=100, num_warmup=20,
                 checkpoint=tmp_path / "c.npz", checkpoint_every=25, progress_bar=False)
    assert reached == [3, 6, 9, 12]
    with pytest.raises(ValueError, match="checkpoint_every"):
        gibbs.sample(jax.random.PRNGKey(0), data, ModelConfig(rank=2), num_samples=10, num_warmup=0,
                     checkpoint=tmp_path / "c.npz", checkpoint_every=0, progress_bar=False)


def test_estimator_refuses_checkpoints_it_cannot_honour(tmp_path):
    with pytest.raises(ValueError, match="takes no checkpoint"):
        BayesMF(rank=2, method="map", tune=False, progress_bar=False).fit(0, small_ratings(), checkpoint=tmp_path / "c")
    with pytest.raises(ValueError, match="needs a checkpoint file"):
        BayesMF(**SETTINGS).fit(0, small_ratings(), checkpoint_every=10)


def test_progress_bar_counts_sweeps_with_rate_and_time_left(tmp_path, monkeypatch):
    """The bar's total is every sweep (warm-up and thinned ones), its unit
    'sweep', shown with sweeps/s and the time left; a resumed run's bar
    starts at the sweeps already done."""
    out = io.StringIO()
    bars = []

    def bar(*args, **kwargs):
        bars.append(real_tqdm(*args, **dict(kwargs, disable=False, file=out, mininterval=0)))
        return bars[-1]

    monkeypatch.setattr(common, "tqdm", bar)
    data = model_data_from_ratings(small_ratings())
    kwargs = dict(num_samples=20, num_warmup=10, thin=2, progress_bar=True)
    path = tmp_path / "c.npz"
    kill_after_saves(monkeypatch, 2)
    with pytest.raises(_Killed):
        gibbs.sample(jax.random.PRNGKey(0), data, ModelConfig(rank=2), checkpoint=path, checkpoint_every=1, **kwargs)
    assert bars[0].total == 10 + 20 * 2 and bars[0].unit == "sweep"
    text = out.getvalue()
    assert "sweep/s" in text and "<" in text  # rate and time left (elapsed<remaining)
    monkeypatch.undo()
    monkeypatch.setattr(common, "tqdm", bar)
    gibbs.sample(jax.random.PRNGKey(0), data, ModelConfig(rank=2), checkpoint=path, **kwargs)
    assert bars[1].initial == 10 + 10 * 2  # the warm-up chunk, then one chunk of 10 draws x thin 2
    assert bars[1].n == bars[1].total


def test_cli_fit_checkpoint_and_resume(tmp_path, monkeypatch, capsys):
    """``fit --checkpoint PATH`` saves there; after the run dies, ``fit
    --resume PATH`` with the same arguments writes the model an
    uninterrupted fit writes (same draws); --resume with another seed, a
    missing file or a MAP method exits 2 naming the problem."""
    frame = small_ratings().to_dataframe()
    data = tmp_path / "ratings.csv"
    frame.to_csv(data, index=False)
    args = ["fit", "--data", str(data), "--rank", "2", "--num-samples", "30", "--num-warmup", "10", "--seed", "4",
            "--no-progress"]
    ckpt = tmp_path / "run.ckpt.npz"
    assert cli.main([*args, "--out", str(tmp_path / "whole.nc")]) == 0
    kill_after_saves(monkeypatch, 2)
    with pytest.raises(_Killed):
        cli.main([*args, "--out", str(tmp_path / "resumed.nc"), "--checkpoint", str(ckpt), "--checkpoint-every", "10"])
    monkeypatch.undo()
    assert ckpt.exists() and not (tmp_path / "resumed.nc").exists()
    capsys.readouterr()

    assert cli.main([*args[:-3], "--seed", "5", "--no-progress", "--out", str(tmp_path / "x.nc"),
                     "--resume", str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert f"cannot resume from {str(ckpt)!r}" in err and "--seed" in err
    assert cli.main([*args, "--out", str(tmp_path / "x.nc"), "--resume", str(tmp_path / "none.npz")]) == 2
    assert "none.npz" in capsys.readouterr().err
    assert cli.main([*args, "--method", "map", "--out", str(tmp_path / "x.nc"), "--checkpoint", str(ckpt)]) == 2
    assert "needs a sampler" in capsys.readouterr().err
    assert not (tmp_path / "x.nc").exists()

    assert cli.main([*args, "--out", str(tmp_path / "resumed.nc"), "--resume", str(ckpt)]) == 0
    assert not ckpt.exists()
    assert_same_draws(storage.load(tmp_path / "resumed.nc").draws, storage.load(tmp_path / "whole.nc").draws)


def test_cli_help_names_the_checkpoint_flags(capsys):
    with pytest.raises(SystemExit):
        cli.main(["fit", "--help"])
    text = capsys.readouterr().out
    assert "--checkpoint PATH" in text and "--resume PATH" in text and "--checkpoint-every N" in text
    with pytest.raises(SystemExit):
        cli.main(["fit", "--data", "x", "--out", "m.nc", "--checkpoint", "a", "--resume", "a"])


# --- continuing a model with new ratings -----------------------------------------------

NEW_USER, NEW_ITEM = 10_000, 20_000


def grown_ratings():
    """small_ratings plus a new user (5 ratings) and a new movie (5 ratings)."""
    frame = small_ratings().to_dataframe()[["user", "item", "rating"]]
    users, items = frame.user.unique()[:5], frame.item.unique()[:5]
    extra = pd.DataFrame({"user": np.r_[np.full(5, NEW_USER), users], "item": np.r_[items, np.full(5, NEW_ITEM)],
                          "rating": np.r_[4.0, 3.0, 5.0, 2.0, 4.0, 3.0, 3.0, 4.0, 5.0, 1.0]})
    return as_ratings(pd.concat([frame, extra.astype(frame.dtypes.to_dict())], ignore_index=True))


def test_start_from_keeps_known_rows_and_draws_new_ones_from_the_prior(uninterrupted):
    ratings = grown_ratings()
    config = BayesMF(**SETTINGS).config
    start = start_from(jax.random.PRNGKey(0), uninterrupted, ratings, config)
    last = jax.tree.map(lambda x: x[0, -1], uninterrupted.draws)
    old_u = uninterrupted.user_vocab.index(ratings.user_vocab.ids, missing="flag")
    old_i = uninterrupted.item_vocab.index(ratings.item_vocab.ids, missing="flag")
    assert (old_u < 0).sum() == 1 and (old_i < 0).sum() == 1
    np.testing.assert_array_equal(start.user_factors[old_u >= 0], last.user_factors[old_u[old_u >= 0]])
    np.testing.assert_array_equal(start.item_factors[old_i >= 0], last.item_factors[old_i[old_i >= 0]])
    np.testing.assert_array_equal(start.item_offsets[old_i >= 0], last.item_offsets[old_i[old_i >= 0]])
    np.testing.assert_array_equal(start.noise_precision, last.noise_precision)
    new_rows = np.r_[start.user_factors[old_u < 0].ravel(), start.item_factors[old_i < 0].ravel(),
                     start.item_offsets[old_i < 0]]
    assert np.isfinite(new_rows).all() and np.all(new_rows != 0)
    with pytest.raises(ValueError, match="init_from: the model has rank=2"):
        start_from(jax.random.PRNGKey(0), uninterrupted, ratings, BayesMF(**dict(SETTINGS, rank=3)).config)
    with pytest.raises(ValueError, match="takes no init_from"):
        BayesMF(rank=2, method="map", tune=False, progress_bar=False).fit(0, ratings, init_from=uninterrupted)


def test_init_from_continues_where_the_model_was(uninterrupted):
    """Fitting the grown ratings from the model needs no burn-in: the first
    sweep's train RMSE is already within 0.05 of the model's mean train
    RMSE, while a cold start's first sweep is further off."""
    ratings = grown_ratings()
    settings = dict(SETTINGS, num_samples=5, num_warmup=0)
    warm = BayesMF(**settings).fit(1, ratings, init_from=uninterrupted)
    cold = BayesMF(**settings).fit(1, ratings)
    reference = float(np.mean(uninterrupted.stats["train_rmse"]))
    first_warm, first_cold = float(warm.stats["train_rmse"][0, 0]), float(cold.stats["train_rmse"][0, 0])
    assert abs(first_warm - reference) < 0.05, (first_warm, reference)
    assert abs(first_cold - reference) > abs(first_warm - reference), (first_cold, first_warm, reference)
    assert NEW_USER in warm.user_vocab and NEW_ITEM in warm.item_vocab


def test_cli_fit_init_from(tmp_path, capsys):
    data, grown = tmp_path / "ratings.csv", tmp_path / "grown.csv"
    small_ratings().to_dataframe()[["user", "item", "rating"]].to_csv(data, index=False)
    grown_ratings().to_dataframe()[["user", "item", "rating"]].to_csv(grown, index=False)
    args = ["--rank", "2", "--num-samples", "10", "--num-warmup", "5", "--no-progress"]
    assert cli.main(["fit", "--data", str(data), "--out", str(tmp_path / "a.nc"), *args]) == 0
    assert cli.main(["fit", "--data", str(grown), "--out", str(tmp_path / "b.nc"), "--init-from",
                     str(tmp_path / "a.nc"), *args]) == 0
    assert NEW_USER in storage.load(tmp_path / "b.nc").user_vocab
    assert cli.main(["fit", "--data", str(grown), "--out", str(tmp_path / "c.nc"), "--init-from",
                     str(tmp_path / "a.nc"), "--method", "map", *args]) == 2
    assert "--init-from needs a sampler" in capsys.readouterr().err
