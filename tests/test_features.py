"""Side features (bayesmf.data.features): encoding by hand, centring, imperfect data, storage, ml-100k and ml-1m."""

from __future__ import annotations

import doctest
import json
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bayesmf.data import features as features_module
from bayesmf.data import (
    AGE_BUCKETS,
    GENRES,
    FeatureEncoder,
    FeatureWarning,
    IdTypeWarning,
    Vocabulary,
    encode_features,
    encoder_from_dict,
    encoder_to_dict,
    fit_features,
    load_movielens_features,
    read_item_features,
    read_user_features,
)

# Encoded values are float32: agreement with float64 arithmetic to a few ulps of values of order 1.
FLOAT32_TOL = 1e-6


@pytest.fixture
def frame():
    """Five users: gender (2 levels), job (3 levels), age (numeric) and one NaN age."""
    return pd.DataFrame(
        {"gender": ["F", "M", "M", "F", "M"], "job": ["a", "b", "c", "a", "a"],
         "age": [20.0, 30.0, np.nan, 40.0, 50.0]},
        index=pd.Index([10, 20, 30, 40, 50], name="user"),
    )


def test_module_doctests():
    assert doctest.testmod(features_module).failed == 0


def test_encoding_by_hand(frame):
    encoder = fit_features(frame, categorical=["gender", "job"], numeric=["age"])
    assert encoder.names == ("gender=F", "gender=M", "job=a", "job=b", "job=c", "age")
    assert encoder.num_features == 6
    x = encode_features(encoder, frame)
    assert x.dtype == np.float32 and x.shape == (5, 6)
    # Training shares: F 2/5, M 3/5; a 3/5, b 1/5, c 1/5. Ages 20, 30, 40, 50: mean 35, sd sqrt(125).
    sd = np.sqrt(125.0)
    expected = np.array([
        [1 - 0.4, -0.6, 1 - 0.6, -0.2, -0.2, (20 - 35) / sd],
        [-0.4, 1 - 0.6, -0.6, 1 - 0.2, -0.2, (30 - 35) / sd],
        [-0.4, 1 - 0.6, -0.6, -0.2, 1 - 0.2, 0.0],  # NaN age: the training mean
        [1 - 0.4, -0.6, 1 - 0.6, -0.2, -0.2, (40 - 35) / sd],
        [-0.4, 1 - 0.6, 1 - 0.6, -0.2, -0.2, (50 - 35) / sd],
    ])
    np.testing.assert_allclose(x, expected, atol=FLOAT32_TOL)
    np.testing.assert_allclose(encoder.means, [35.0])
    np.testing.assert_allclose(encoder.scales, [sd])


def test_columns_are_inferred_from_dtypes(frame):
    encoder = fit_features(frame)
    assert encoder.categorical == ("gender", "job") and encoder.numeric == ("age",)
    only = fit_features(frame, categorical=["job"])
    assert only.categorical == ("job",) and only.numeric == ()


def test_training_rows_are_centred(frame):
    train = [10, 20, 30]
    encoder = fit_features(frame, train)
    np.testing.assert_allclose(encode_features(encoder, frame, train).mean(axis=0), 0.0, atol=FLOAT32_TOL)
    # Other rows are not centred: the centres come from the training rows only.
    assert np.abs(encode_features(encoder, frame).mean(axis=0)).max() > 0.1


def test_an_average_row_encodes_as_zero(frame):
    encoder = fit_features(frame, categorical=[], numeric=["age"])
    average = pd.DataFrame({"age": [35.0]}, index=[99])
    np.testing.assert_allclose(encode_features(encoder, average), 0.0, atol=FLOAT32_TOL)


def test_nan_values_are_imputed_at_the_training_mean(frame):
    frame.loc[40, "job"] = np.nan
    encoder = fit_features(frame)
    x = encode_features(encoder, frame)
    job = [i for i, n in enumerate(encoder.names) if n.startswith("job=")]
    np.testing.assert_array_equal(x[3, job], 0.0)
    assert x[2, encoder.names.index("age")] == 0.0
    # Shares are over rows with a value (a: 2 of 4), and the training mean stays 0.
    np.testing.assert_allclose(encoder.frequencies[1], [0.5, 0.25, 0.25])
    np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=FLOAT32_TOL)


def test_ids_without_a_row(frame):
    encoder = fit_features(frame)
    with pytest.raises(KeyError, match=r"1 of 3 ids have no feature row, e\.g\. \[77\]"):
        encode_features(encoder, frame, [10, 77, 20])
    with pytest.warns(FeatureWarning, match=r"\[77\].*x = 0"):
        x = encode_features(encoder, frame, [10, 77, 20], missing="mean")
    np.testing.assert_array_equal(x[1], 0.0)
    np.testing.assert_array_equal(x[[0, 2]], encode_features(encoder, frame, [10, 20]))
    # At fit time: the same policy, and the training rows (the absent one at 0) still average 0.
    with pytest.raises(KeyError, match="77"):
        fit_features(frame, [10, 20, 77])
    with pytest.warns(FeatureWarning):
        partial = fit_features(frame, [10, 20, 40, 77], missing="mean")
    with pytest.warns(FeatureWarning):
        x = encode_features(partial, frame, [10, 20, 40, 77], missing="mean")
    np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=FLOAT32_TOL)


def test_unseen_categories(frame):
    encoder = fit_features(frame, [10, 20, 30, 40])
    new = pd.DataFrame({"gender": ["F", "X"], "job": ["zz", "b"], "age": [20.0, 30.0]}, index=[1, 2])
    with pytest.raises(ValueError, match=r"column 'gender' has 1 values not seen in training, e\.g\. \['X'\]"):
        encode_features(encoder, new)
    with pytest.warns(FeatureWarning, match="not seen in training"):
        x = encode_features(encoder, new, unseen="mean")
    names = encoder.names
    gender = [i for i, n in enumerate(names) if n.startswith("gender=")]
    job = [i for i, n in enumerate(names) if n.startswith("job=")]
    np.testing.assert_array_equal(x[1, gender], 0.0)  # X: the block's training mean
    np.testing.assert_array_equal(x[0, job], 0.0)  # zz: likewise
    assert x[0, gender[0]] == pytest.approx(0.5) and x[1, job[1]] == pytest.approx(0.75)


def test_constant_columns_are_dropped():
    frame = pd.DataFrame({"country": ["x", "x", "x"], "one": [1.0, 1.0, np.nan], "age": [1.0, 2.0, 3.0]},
                         index=["a", "b", "c"])
    encoder = fit_features(frame)
    assert encoder.dropped == ("country", "one")
    assert encoder.names == ("age",)
    with pytest.raises(ValueError, match="no value on the training rows"):
        fit_features(frame.assign(one=np.nan))


def test_unscaled_columns_are_only_centred(frame):
    encoder = fit_features(frame, categorical=[], numeric=["age"], unscaled=["age"])
    np.testing.assert_allclose(encode_features(encoder, frame)[:, 0], [-15, -5, 0, 5, 15])
    with pytest.raises(ValueError, match="not numeric columns"):
        fit_features(frame, unscaled=["job"])


def test_duplicated_ids_are_named(frame):
    doubled = pd.concat([frame, frame.loc[[20, 40]]])
    with pytest.raises(ValueError, match=r"2 ids on more than one row, e\.g\. \[20, 40\]"):
        fit_features(doubled)
    encoder = fit_features(frame)
    with pytest.raises(ValueError, match=r"more than one row"):
        encode_features(encoder, doubled)
    with pytest.raises(ValueError, match=r"training ids are repeated, e\.g\. \[10\]"):
        fit_features(frame, [10, 20, 10])
    # Encoding may repeat ids (a lookup).
    assert encode_features(encoder, frame, [10, 10]).shape == (2, encoder.num_features)


def test_id_types(frame):
    encoder = fit_features(frame)
    # Vocabulary rules: strings that are plain integers match with a warning, others are a TypeError.
    with pytest.warns(IdTypeWarning):
        x = encode_features(encoder, frame, ["10", "20"])
    np.testing.assert_array_equal(x, encode_features(encoder, frame, [10, 20]))
    with pytest.raises(TypeError, match="integers"):
        encode_features(encoder, frame, ["u10"])
    with pytest.raises(ValueError, match="missing"):
        encode_features(encoder, frame, [10.0, np.nan])
    np.testing.assert_array_equal(encode_features(encoder, frame, Vocabulary([20, 10])),
                                  encode_features(encoder, frame, [20, 10]))
    with pytest.raises(TypeError, match="DataFrame"):
        fit_features(frame.to_numpy())


def test_bad_columns(frame):
    with pytest.raises(KeyError, match="no columns"):
        fit_features(frame, numeric=["height"])
    with pytest.raises(TypeError, match="do not hold numbers"):
        fit_features(frame, numeric=["job"])
    with pytest.raises(ValueError, match="infinite"):
        fit_features(frame.assign(age=[1.0, np.inf, 2.0, 3.0, 4.0]))
    encoder = fit_features(frame)
    with pytest.raises(KeyError, match="lacks the encoder's columns"):
        encode_features(encoder, frame.drop(columns="job"))
    with pytest.raises(ValueError, match="missing="):
        encode_features(encoder, frame, missing="zero")


def test_round_trip_through_json(frame):
    frame["level"] = pd.Series([1, 2, 2, 3, 1], index=frame.index).astype(object)  # integer levels
    encoder = fit_features(frame, categorical=["gender", "job", "level"], numeric=["age"])
    restored = encoder_from_dict(json.loads(json.dumps(encoder_to_dict(encoder))))
    assert isinstance(restored, FeatureEncoder)
    assert restored.names == encoder.names and restored.levels == encoder.levels
    new = pd.DataFrame({"gender": ["M"], "job": ["c"], "level": [3], "age": [np.nan]}, index=[7])
    for rows, ids in ((frame, None), (new, None)):
        np.testing.assert_array_equal(encode_features(restored, rows, ids), encode_features(encoder, rows, ids))
    with pytest.raises(ValueError, match="not a feature encoder"):
        encoder_from_dict({"format": "other"})


def test_public_names_at_the_top():
    import bayesmf

    assert bayesmf.fit_features is fit_features and bayesmf.FeatureEncoder is FeatureEncoder


# --- ml-100k ----------------------------------------------------------------------------

USER_LINES = ["1|24|M|technician|85711", "2|53|F|other|94043", "3|17|M|student|32067", "4|56|M|writer|T8H1N",
              "5|18|F|writer|15213"]


def item_line(item, title, date, genres):
    flags = ["1" if g in genres else "0" for g in GENRES]
    return "|".join([str(item), title, date, "", "http://x"] + flags)


ITEM_LINES = [
    item_line(1, "Toy Story (1995)", "01-Jan-1995", {"Animation", "Children's", "Comedy"}),
    item_line(267, "unknown", "", {"unknown"}),
    item_line(1373, "Good Morning (1971)", "4-Feb-1971", {"Drama"}),
    item_line(5, "Café (1990)", "12-Dec-1990", set()),
]


@pytest.fixture
def small_ml100k(tmp_path):
    directory = tmp_path / "small"  # not named ml-100k: no checksums
    directory.mkdir()
    (directory / "u.user").write_text("\n".join(USER_LINES) + "\n", encoding="latin-1")
    (directory / "u.item").write_text("\n".join(ITEM_LINES) + "\n", encoding="latin-1")
    return directory


def test_reads_small_files_in_the_ml100k_formats(small_ml100k):
    users, items = load_movielens_features(small_ml100k)
    assert users.index.tolist() == [1, 2, 3, 4, 5] and users.index.name == "user"
    assert users["age"].astype(str).tolist() == ["18-24", "50-55", "under 18", "56+", "18-24"]
    assert list(users["age"].cat.categories) == list(AGE_BUCKETS)
    assert users["gender"].tolist() == ["M", "F", "M", "M", "F"]
    assert users["occupation"].tolist()[:2] == ["technician", "other"]
    assert list(items.columns) == [*GENRES, "year"] and items.index.name == "item"
    np.testing.assert_allclose(items.loc[1, ["Animation", "Children's", "Comedy"]], 1 / 3)
    np.testing.assert_allclose(items[list(GENRES)].sum(axis=1), [1, 1, 1, 0])  # movie 5: no flag, all zeros
    assert items.loc[267, "unknown"] == 1.0 and np.isnan(items.loc[267, "year"])
    assert items["year"].tolist()[::2] == [1995.0, 1971.0]
    assert read_user_features(small_ml100k / "u.user").equals(users)
    assert read_item_features(small_ml100k / "u.item").equals(items)


def test_reads_small_files_in_the_ml1m_formats(tmp_path):
    (tmp_path / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::0::55117\n")
    (tmp_path / "movies.dat").write_text(
        "1::Toy Story (1995)::Animation|Children's|Comedy\n2::Misérables, Les (1935)::Drama\n"
        "3::Untitled::Western\n", encoding="latin-1")
    users, items = load_movielens_features(tmp_path)
    assert users.index.tolist() == [1, 2, 3]
    assert users["age"].astype(str).tolist() == ["under 18", "56+", "25-34"]
    assert users["occupation"].tolist() == ["K-12 student", "self-employed", "other"]
    assert list(items.columns) == [*GENRES[1:], "year"]
    np.testing.assert_allclose(items.loc[1, ["Animation", "Children's", "Comedy"]], 1 / 3)
    assert items.loc[2, "Drama"] == 1.0 and items["year"].tolist()[:2] == [1995.0, 1935.0]
    assert np.isnan(items.loc[3, "year"])  # no year in the title
    (tmp_path / "users.dat").write_text("1::F::3::10::48067\n")
    with pytest.raises(ValueError, match="outside ML-1M's"):
        read_user_features(tmp_path / "users.dat")
    (tmp_path / "movies.dat").write_text("1::A (1990)::Noir\n")
    with pytest.raises(ValueError, match="not ML-1M's"):
        read_item_features(tmp_path / "movies.dat")


def test_loader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="u.user"):
        load_movielens_features(tmp_path)
    with pytest.raises(FileNotFoundError, match="no features files"):
        load_movielens_features("ml-1m", tmp_path)
    with pytest.raises(ValueError, match="ml-100k and ml-1m only"):
        load_movielens_features("ml-10m", tmp_path)


def test_ml100k_features(ml100k_dir):
    users, items = load_movielens_features("ml-100k", ml100k_dir.parent)
    assert users.shape == (943, 3) and items.shape == (1682, 20)
    assert set(users["age"].astype(str)) == set(AGE_BUCKETS)
    assert users["gender"].nunique() == 2 and users["occupation"].nunique() == 21
    assert items.index[items["year"].isna()].tolist() == [267]
    np.testing.assert_allclose(items[list(GENRES)].sum(axis=1), 1.0)  # every movie has at least one flag

    encoder = fit_features(users)
    assert encoder.num_features == 7 + 2 + 21 and encoder.dropped == ()
    x = encode_features(encoder, users)
    assert x.shape == (943, 30)
    np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=FLOAT32_TOL)

    item_encoder = fit_features(items, unscaled=GENRES)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the missing year is imputed silently
        x = encode_features(item_encoder, items)
    assert x.shape == (1682, 20) and x[items.index.get_loc(267), -1] == 0.0
    np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=FLOAT32_TOL)


def test_ml1m_features(data_dir):
    if not (data_dir / "ml-1m" / "users.dat").is_file():
        pytest.skip(f"MovieLens 1M's users.dat not found under {data_dir} (set BAYESMF_DATA to the data directory)")
    users, items = load_movielens_features("ml-1m", data_dir)
    assert users.shape == (6040, 3) and items.shape == (3883, 19)
    # ML-1M's README age groups: 222, 1103, 2096, 1193, 550, 496 and 380 users.
    assert users["age"].value_counts(sort=False).tolist() == [222, 1103, 2096, 1193, 550, 496, 380]
    assert not items["year"].isna().any()
    x = encode_features(fit_features(users), users)
    assert x.shape == (6040, 30)
    np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=FLOAT32_TOL)


# --- properties -------------------------------------------------------------------------


@st.composite
def feature_tables(draw):
    """A table of 2-12 rows: a categorical and a numeric column, either with NaNs, and a training subset."""
    n = draw(st.integers(2, 12))
    levels = st.one_of(st.none(), st.sampled_from(["a", "b", "c"]))
    numbers = st.one_of(st.none(), st.floats(-1e3, 1e3, allow_nan=False))
    frame = pd.DataFrame(
        {"cat": pd.Series(draw(st.lists(levels, min_size=n, max_size=n)), dtype=object),
         "num": pd.Series(draw(st.lists(numbers, min_size=n, max_size=n)), dtype=np.float64)},
        index=pd.Index(draw(st.permutations(range(100, 100 + n))), name="user"),
    )
    train = draw(st.lists(st.sampled_from(frame.index.tolist()), min_size=1, max_size=n, unique=True))
    return frame, train


@settings(max_examples=60, deadline=None)
@given(feature_tables())
def test_any_table_is_centred_on_its_training_rows_and_round_trips(table):
    frame, train = table
    try:
        encoder = fit_features(frame, train, categorical=["cat"], numeric=["num"])
    except ValueError as error:  # a numeric column with no training value is refused
        assert "no value on the training rows" in str(error) and frame.loc[train, "num"].isna().all()
        return
    x = encode_features(encoder, frame, train)
    assert x.shape == (len(train), encoder.num_features) and np.isfinite(x).all()
    # Standardised values are within sqrt(n) of 0, so float32 rounding of each is a few ulps of sqrt(12).
    np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=10 * FLOAT32_TOL)
    # A row whose every value is missing gets exactly x = 0: the mean-based prior.
    empty = pd.DataFrame({"cat": [None], "num": [np.nan]}, index=[1])
    np.testing.assert_array_equal(encode_features(encoder, empty), 0.0)
    restored = encoder_from_dict(json.loads(json.dumps(encoder_to_dict(encoder))))
    np.testing.assert_array_equal(encode_features(restored, frame, train), x)
