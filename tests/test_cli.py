"""The CLI contract: commands, the JSON last line, and clear errors."""

import json

import numpy as np
import pandas as pd
import pytest

from bayesmf import cli, synthetic

EVALUATE_KEYS = {
    "method", "rank", "rmse", "mae", "nll", "crps", "coverage_90", "fit_seconds",
    "num_train", "num_test", "num_cold_users", "num_cold_items",
}
SAMPLER_KEYS = {"num_samples", "num_warmup", "num_chains", "seconds_per_sample", "compile_seconds", "max_rhat"}


def last_json(capsys):
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory):
    """A small data set written in the ml-100k layout (u.data, tab-separated)."""
    sim = synthetic.movielens_like(3, num_users=60, num_items=45, num_ratings=1200, rank=2, min_per_user=8)
    frame = sim.ratings.to_dataframe()
    directory = tmp_path_factory.mktemp("small")
    frame.assign(timestamp=np.arange(len(frame)) + 880000000)[["user", "item", "rating", "timestamp"]].astype(
        {"rating": int}
    ).to_csv(directory / "u.data", sep="\t", header=False, index=False)
    return directory


FAST = ["--rank", "2", "--num-samples", "20", "--num-warmup", "10", "--no-progress", "--json"]


def test_evaluate_random_split_gibbs_json_contract(small_dir, capsys):
    code = cli.main(["evaluate", "--data", str(small_dir), "--split", "random", "--test-fraction", "0.2",
                     "--method", "gibbs", *FAST])
    assert code == 0
    out = last_json(capsys)
    assert EVALUATE_KEYS | SAMPLER_KEYS <= set(out)
    assert out["method"] == "gibbs" and out["num_test"] == 240 and out["num_train"] == 960
    assert 0.0 <= out["coverage_90"] <= 1.0 and out["rmse"] > 0


def test_evaluate_cold_users_counts_cold_rows(small_dir, capsys):
    code = cli.main(["evaluate", "--data", str(small_dir), "--split", "cold-users", "--test-fraction", "0.2",
                     "--method", "gibbs", *FAST])
    assert code == 0
    out = last_json(capsys)
    assert out["num_cold_users"] == 12  # 20% of 60 users, none revealed
    assert np.isfinite(out["rmse"])


def test_evaluate_train_test_files(tmp_path, small_dir, capsys):
    lines = (small_dir / "u.data").read_text().splitlines()
    (tmp_path / "a.base").write_text("\n".join(lines[:1000]) + "\n")
    (tmp_path / "a.test").write_text("\n".join(lines[1000:]) + "\n")
    code = cli.main(["evaluate", "--train", str(tmp_path / "a.base"), "--test", str(tmp_path / "a.test"),
                     "--method", "gibbs", *FAST])
    assert code == 0
    assert last_json(capsys)["num_test"] == 200


def test_fit_predict_recommend_similar(tmp_path, small_dir, capsys):
    model = tmp_path / "model.nc"
    assert cli.main(["fit", "--data", str(small_dir), "--method", "gibbs", "--out", str(model), *FAST]) == 0
    capsys.readouterr()
    assert cli.main(["predict", "--model", str(model), "--user", "1", "--item", "1", "--json"]) == 0
    out = last_json(capsys)
    assert set(out) >= {"mean", "sd", "lower", "upper", "known_user", "known_item"}
    assert out["lower"] < out["mean"] < out["upper"]
    # An unknown user gets the cold-start prior, flagged.
    assert cli.main(["predict", "--model", str(model), "--user", "99999", "--item", "1", "--json"]) == 0
    assert last_json(capsys)["known_user"] is False
    assert cli.main(["recommend", "--model", str(model), "--user", "1", "--k", "5", "--strategy", "lcb", "--json"]) == 0
    recs = last_json(capsys)
    assert len(recs) == 5 and {"item", "score", "mean", "sd"} <= set(recs[0])
    assert [r["score"] for r in recs] == sorted((r["score"] for r in recs), reverse=True)
    # An unknown user is ranked by the cold-start prior, said on stderr (stdout stays one JSON line).
    assert cli.main(["recommend", "--model", str(model), "--user", "99999", "--k", "3", "--json"]) == 0
    err = capsys.readouterr().err
    assert "user 99999 is not in the model" in err and "cold-start prior" in err
    assert cli.main(["recommend", "--model", str(model), "--user", "1", "--k", "3"]) == 0
    assert "not in the model" not in capsys.readouterr().err
    new_user = tmp_path / "new_user.csv"
    new_user.write_text("item,rating\n1,5\n2,4\n")
    assert cli.main(["recommend", "--model", str(model), "--ratings", str(new_user), "--k", "3", "--json"]) == 0
    recs = last_json(capsys)
    assert len(recs) == 3 and not {1, 2} & {r["item"] for r in recs}
    assert cli.main(["similar", "--model", str(model), "--item", "1", "--k", "4", "--json"]) == 0
    sims = last_json(capsys)
    assert len(sims) == 4 and 1 not in {s["item"] for s in sims}


def test_fit_writes_a_compact_model_file(tmp_path, small_dir, capsys):
    """--serving --file-dtype int8 --keep-draws N: the file holds int8 codes of N draws and predicts."""
    import h5py

    model = tmp_path / "small.nc"
    assert cli.main(["fit", "--data", str(small_dir), "--method", "gibbs", "--out", str(model), "--serving",
                     "--file-dtype", "int8", "--keep-draws", "8", *FAST]) == 0
    with h5py.File(model, "r") as f:
        assert f["posterior/user_factors"].dtype == np.int8 and f["posterior/user_factors"].shape[1] == 8
        assert f.attrs["contents"] in ("serving", b"serving") and "sample_stats" not in f
    capsys.readouterr()
    assert cli.main(["predict", "--model", str(model), "--user", "1", "--item", "1", "--json"]) == 0
    out = last_json(capsys)
    assert out["lower"] < out["mean"] < out["upper"]


@pytest.mark.parametrize("extra, match", [
    (["--keep-draws", "50"], "more than the 20 draws per chain"),
    (["--method", "map", "--keep-draws", "5"], "one point estimate"),
    (["--search", "thorough"], "--search thorough picks how a MAP method tunes"),
    (["--method", "map", "--no-tune", "--search", "thorough"], "without --no-tune"),
])
def test_fit_refuses_draw_options_it_cannot_honour_before_fitting(tmp_path, small_dir, capsys, extra, match):
    model = tmp_path / "m.nc"
    assert cli.main(["fit", "--data", str(small_dir), "--method", "gibbs", "--out", str(model), *FAST, *extra]) == 2
    assert match in capsys.readouterr().err
    assert not model.exists()


def test_fit_search_thorough_is_what_the_saved_model_records(tmp_path, small_dir, capsys):
    """--search reaches the MAP tuning: the saved model's info names the search and its tuning table holds
    the offset ratios only the thorough search fits."""
    import bayesmf

    model = tmp_path / "als.nc"
    assert cli.main(["fit", "--data", str(small_dir), "--method", "als", "--search", "thorough", "--out", str(model),
                     *FAST]) == 0
    info = bayesmf.load(model).info
    assert info["search"] == "thorough"
    assert len({row["offset_ratio"] for row in info["tuning"]}) >= 3


def test_features_fit_predict_recommend(tmp_path, small_dir, capsys):
    """--user-features / --item-features / --implicit on fit; a new user's features (and ratings) on
    predict and recommend move its prediction away from the mean-based prior."""
    rng = np.random.default_rng(0)
    users = pd.DataFrame({"user": np.arange(1, 61), "job": rng.choice(["a", "b"], 60), "age": rng.normal(30, 5, 60)})
    users.to_csv(tmp_path / "users.csv", index=False)
    pd.DataFrame({"item": np.arange(1, 46), "kind": rng.choice(["x", "y"], 45)}).to_csv(tmp_path / "items.csv",
                                                                                       index=False)
    model = tmp_path / "model.nc"
    assert cli.main(["fit", "--data", str(small_dir), "--method", "gibbs", "--implicit", "--user-features",
                     str(tmp_path / "users.csv"), "--item-features", str(tmp_path / "items.csv"), "--out", str(model),
                     *FAST]) == 0
    capsys.readouterr()
    pd.DataFrame({"user": [999], "job": ["b"], "age": [55.0]}).to_csv(tmp_path / "new.csv", index=False)
    assert cli.main(["predict", "--model", str(model), "--user", "999", "--item", "1", "--json"]) == 0
    plain = last_json(capsys)["mean"]
    assert cli.main(["predict", "--model", str(model), "--user", "999", "--item", "1", "--user-features",
                     str(tmp_path / "new.csv"), "--json"]) == 0
    assert last_json(capsys)["mean"] != pytest.approx(plain, abs=1e-9)
    (tmp_path / "r.csv").write_text("item,rating\n1,5\n2,4\n")
    assert cli.main(["recommend", "--model", str(model), "--user", "999", "--ratings", str(tmp_path / "r.csv"),
                     "--user-features", str(tmp_path / "new.csv"), "--k", "3", "--json"]) == 0
    assert len(last_json(capsys)) == 3
    assert cli.main(["predict", "--model", str(model), "--user", "1", "--item", "1", "--user-features",
                     str(tmp_path / "new.csv")]) == 2
    assert "new user" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["evaluate", "--data", "/nonexistent/dir", "--split", "random"], "nonexistent|not found|No such"),
        (["evaluate", "--data", "/nonexistent/dir", "--split", "random", "--user-features", "/nonexistent/u.csv"],
         "nonexistent"),
        (["evaluate", "--data", "not-a-dataset", "--split", "random"], "not-a-dataset"),
        (["evaluate", "--train", "x.csv"], "--train and --test must be given together"),
        (["predict", "--model", "/nonexistent/model.nc", "--user", "1", "--item", "1"], "model.nc"),
    ],
)
def test_bad_input_exits_2_with_message(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("bayesmf: error:")
    import re

    assert re.search(message, err)


@pytest.mark.parametrize(
    "argv",
    [
        ["evaluate", "--data", "x", "--split", "nope"],
        ["evaluate", "--data", "x", "--method", "nope"],
        ["evaluate", "--data", "x", "--rank", "0"],
        ["evaluate", "--data", "x", "--num-samples", "-1"],
        ["evaluate", "--data", "x", "--test-fraction", "1.5"],
    ],
)
def test_argument_errors(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert "error: argument" in capsys.readouterr().err


def test_corrupt_model_file(tmp_path, capsys):
    bad = tmp_path / "model.nc"
    bad.write_bytes(b"not a netcdf file at all")
    assert cli.main(["predict", "--model", str(bad), "--user", "1", "--item", "1"]) == 2
    assert "not a readable bayesmf model file" in capsys.readouterr().err


@pytest.mark.slow
def test_ml100k_u1_json_contract(ml100k_dir, capsys):
    """The issue's command shape on the real data: the JSON contract on u1.

    A short Gibbs run keeps CI fast; the MAP RMSE band on u1 is checked in
    tests/test_map.py, and full-length figures live in benchmarks/."""
    code = cli.main(["evaluate", "--data", str(ml100k_dir), "--split", "u1", "--method", "gibbs", "--rank", "10",
                     "--num-samples", "20", "--num-warmup", "20", "--seed", "0", "--json", "--no-progress"])
    assert code == 0
    out = last_json(capsys)
    assert EVALUATE_KEYS | SAMPLER_KEYS <= set(out)
    assert out["num_train"] == 80_000 and out["num_test"] == 20_000
    # u1's test set has movies absent from u1.base (see tests/test_split.py): flagged, not dropped.
    assert out["num_cold_items"] > 0
    # 40 sweeps already beat the global-mean baseline (~1.15) and the movie-mean baseline (~1.03) by far.
    assert out["rmse"] < 0.95


def test_evaluate_does_not_stream_pairs_it_never_reads(small_dir, monkeypatch, capsys):
    """evaluate once passed every test pair as fit(track=...) and never read the result."""
    import bayesmf

    seen = {}
    fit = bayesmf.BayesMF.fit

    def spy(self, rng_key, ratings, **kwargs):
        seen.update(kwargs)
        return fit(self, rng_key, ratings, **kwargs)

    monkeypatch.setattr(bayesmf.BayesMF, "fit", spy)
    assert cli.main(["evaluate", "--data", str(small_dir), "--split", "random", "--method", "gibbs", *FAST]) == 0
    assert seen.get("track") is None


def test_version_help_and_flag_hygiene(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("bayesmf ")
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--help"])
    out = capsys.readouterr().out
    assert "(default: gibbs)" in out and "--sep" in out and "--download" in out
    # A flag a command does not have is an error, not silence.
    with pytest.raises(SystemExit) as exc:
        cli.main(["fit", "--data", "x", "--test", "y", "--out", "m.nc"])
    assert exc.value.code == 2 and "unrecognized arguments: --test" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["recommend", "--model", "m.nc", "--user", "1", "--strategy", "best"])
    assert "invalid choice: 'best'" in capsys.readouterr().err


def test_help_imports_no_heavy_library():
    """`bayesmf --help` builds its parser without JAX or pandas (they cost most of a second to import)."""
    import subprocess
    import sys

    code = ("import sys, bayesmf.cli as c; c.build_parser(); "
            "print(sorted(m for m in ('jax', 'pandas', 'numpyro', 'xarray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_text_output_warns_naming_the_quantity_when_rhat_is_high(small_dir, capsys):
    """Ten draws of one chain cannot have mixed: the text output says which quantity has R-hat > 1.01."""
    argv = ["evaluate", "--data", str(small_dir), "--split", "random", "--method", "gibbs", "--rank", "2",
            "--num-samples", "10", "--num-warmup", "0", "--no-progress"]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert "RMSE" in captured.out
    warnings = [line for line in captured.err.splitlines() if line.startswith("bayesmf: warning:")]
    assert warnings and any("R-hat" in line or "rhat" in line.lower() for line in warnings), captured.err
    assert cli.main([*argv, "--json"]) == 0  # --json output stays one JSON line, no warning text
    assert "bayesmf: warning:" not in capsys.readouterr().err


# --- many users or pairs at once: --users, --pairs, --out ----------------------------------------


@pytest.fixture(scope="module")
def map_model(tmp_path_factory, small_dir):
    model = tmp_path_factory.mktemp("map") / "map.nc"
    assert cli.main(["fit", "--data", str(small_dir), "--method", "map", "--rank", "2", "--no-progress", "--out",
                     str(model)]) == 0
    return model


def test_predict_pairs_writes_every_pair_as_the_api_predicts_it(tmp_path, map_model, capsys):
    import bayesmf

    pairs = tmp_path / "pairs.csv"
    pairs.write_text("userId,movieId,rating\n1,1,4\n2,5,3\n99999,3,5\n4,2,1\n")  # aliases; the rating is ignored
    out = tmp_path / "predictions.csv"
    for uncertainty in ("posterior", "laplace"):
        assert cli.main(["predict", "--model", str(map_model), "--pairs", str(pairs), "--out", str(out),
                         "--uncertainty", uncertainty, "--json"]) == 0
        assert last_json(capsys) == {"out": str(out), "rows": 4}
        got = pd.read_csv(out)
        want = bayesmf.load(map_model).predict([1, 2, 99999, 4], [1, 5, 3, 2], uncertainty=uncertainty).to_dataframe()
        assert got["user"].tolist() == [1, 2, 99999, 4] and got["known_user"].tolist() == [True, True, False, True]
        np.testing.assert_allclose(got[["mean", "sd", "lower", "upper"]], want[["mean", "sd", "lower", "upper"]],
                                   rtol=1e-12)
        sds = got["sd"].to_numpy()
        if uncertainty == "posterior":
            plug_in = sds
    # The Laplace spread widens a point estimate's known pairs only (the cold-start pair has its prior's).
    assert np.all(sds[[0, 1, 3]] > plug_in[[0, 1, 3]]) and sds[2] == plug_in[2]
    # Without --out: shown, or one JSON list.
    assert cli.main(["predict", "--model", str(map_model), "--pairs", str(pairs), "--json"]) == 0
    assert len(last_json(capsys)) == 4


def test_recommend_users_all_and_from_a_file(tmp_path, map_model, capsys):
    import bayesmf
    from bayesmf.ranking import recommend

    posterior = bayesmf.load(map_model)
    out = tmp_path / "top.csv"
    assert cli.main(["recommend", "--model", str(map_model), "--users", "all", "--k", "3", "--strategy", "lcb",
                     "--uncertainty", "laplace", "--out", str(out)]) == 0
    want = recommend(posterior, None, 3, strategy="lcb", uncertainty="laplace")  # fewer for users who rated most movies
    assert f"wrote {len(want)} recommendations to {out}" in capsys.readouterr().out
    got = pd.read_csv(out)
    assert got["user"].tolist() == want["user"].tolist() and got["item"].tolist() == want["item"].tolist()
    np.testing.assert_allclose(got["score"], want["score"], rtol=1e-12)
    users = tmp_path / "users.csv"
    users.write_text("user\n4\n99999\n1\n")
    assert cli.main(["recommend", "--model", str(map_model), "--users", str(users), "--k", "2", "--json"]) == 0
    recs = last_json(capsys)
    assert [r["user"] for r in recs] == [4, 4, 99999, 99999, 1, 1]


@pytest.mark.parametrize("argv, match", [
    (["predict", "--pairs", "PAIRS", "--user", "1"], "leave out --user"),
    (["predict", "--user", "1"], "give --user U --item I, or --pairs"),
    (["predict", "--user", "1", "--item", "1", "--out", "OUT"], "--out writes the predictions of --pairs"),
    (["predict", "--pairs", "NOFILE"], "no file at"),
    (["predict", "--pairs", "BADID"], "line 3: item id (this model's ids are integers) 'x7' is not a number"),
    (["predict", "--pairs", "NOITEM"], "item"),
    (["predict", "--pairs", "PAIRS", "--out", "NODIR"], "no directory"),
    (["recommend", "--users", "all", "--user", "1"], "leave out --user"),
    (["recommend", "--user", "1", "--out", "OUT"], "--out writes the lists of --users"),
    (["recommend", "--ratings", "NEWUSER", "--uncertainty", "laplace"], "not a new user folded in"),
])
def test_many_at_once_refuses_what_it_cannot_do_and_keeps_the_old_output(tmp_path, map_model, capsys, argv, match):
    files = dict(PAIRS="user,item\n1,1\n", BADID="user,item\n1,1\n2,x7\n", NOITEM="user,rating\n1,4\n",
                 NEWUSER="item,rating\n1,5\n")
    for name, text in files.items():
        (tmp_path / f"{name}.csv").write_text(text)
    out = tmp_path / "out.csv"
    out.write_text("kept\n")
    paths = dict({name: str(tmp_path / f"{name}.csv") for name in files}, NOFILE=str(tmp_path / "none.csv"),
                 OUT=str(out), NODIR=str(tmp_path / "no" / "out.csv"))
    argv = [paths.get(a, a) for a in argv]
    if "--out" not in argv and "BADID.csv" in " ".join(argv):
        argv += ["--out", str(out)]
    assert cli.main([argv[0], "--model", str(map_model), *argv[1:]]) == 2
    assert match in capsys.readouterr().err
    assert out.read_text() == "kept\n"
