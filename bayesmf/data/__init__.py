"""Ratings data: the data model, file readers and the MovieLens data sets.

Imports flow vocabulary <- ratings <- readers <- movielens <- features.

* :mod:`bayesmf.data.vocabulary`: :class:`Vocabulary` (external ids and
  their indices);
* :mod:`bayesmf.data.ratings`: :class:`Ratings`, :class:`RatingScale` (the
  data model);
* :mod:`bayesmf.data.readers`: :func:`read_ratings`,
  :func:`read_item_ratings` and :func:`read_ids` (delimited files, the
  MovieLens layouts);
* :mod:`bayesmf.data.movielens`: :func:`load_movielens`,
  :func:`find_dataset` (cache and download), :func:`verify_checksums`,
  :func:`load_titles`;
* :mod:`bayesmf.data.features`: :func:`fit_features`,
  :func:`encode_features` and :class:`FeatureEncoder` (side features of
  users or movies, centred on the training rows), :func:`load_movielens_features`.

Every name is re-exported here, so ``from bayesmf.data import Ratings`` and
``bayesmf.data.load_movielens`` work as before.

>>> from bayesmf.data import Ratings
>>> Ratings.from_arrays([10, 10, 20], ["a", "b", "a"], [4.0, 3.0, 5.0]).nnz
3
"""

from bayesmf.data.features import (
    AGE_BUCKETS,
    ENCODER_FORMAT,
    GENRES,
    FeatureEncoder,
    FeatureWarning,
    encode_features,
    encoder_from_dict,
    encoder_to_dict,
    fit_features,
    load_movielens_features,
    read_item_features,
    read_features,
    read_user_features,
)
from bayesmf.data.movielens import (
    ARCHIVE_CHECKSUMS,
    CHECKSUMS,
    DATASETS,
    DOWNLOAD_URL,
    SCALES,
    data_home,
    find_dataset,
    load_movielens,
    load_titles,
    read_dataset_dir,
    verify_checksums,
)
from bayesmf.data.ratings import DUPLICATE_POLICIES, RatingScale, Ratings
from bayesmf.data.readers import (
    FORMATS,
    ITEM_COLUMNS,
    RATING_COLUMNS,
    ROLES,
    SEPARATORS,
    TIMESTAMP_COLUMNS,
    USER_COLUMNS,
    as_pairs,
    as_ratings,
    read_ids,
    read_item_ratings,
    read_ratings,
)
from bayesmf.data.vocabulary import IdTypeWarning, Vocabulary

__all__ = [
    "AGE_BUCKETS",
    "ARCHIVE_CHECKSUMS",
    "CHECKSUMS",
    "DATASETS",
    "DOWNLOAD_URL",
    "DUPLICATE_POLICIES",
    "ENCODER_FORMAT",
    "FORMATS",
    "GENRES",
    "ITEM_COLUMNS",
    "RATING_COLUMNS",
    "ROLES",
    "SCALES",
    "SEPARATORS",
    "TIMESTAMP_COLUMNS",
    "USER_COLUMNS",
    "FeatureEncoder",
    "FeatureWarning",
    "IdTypeWarning",
    "RatingScale",
    "Ratings",
    "Vocabulary",
    "as_pairs",
    "as_ratings",
    "data_home",
    "encode_features",
    "encoder_from_dict",
    "encoder_to_dict",
    "find_dataset",
    "fit_features",
    "load_movielens",
    "load_movielens_features",
    "load_titles",
    "read_dataset_dir",
    "read_item_features",
    "read_ids",
    "read_item_ratings",
    "read_ratings",
    "read_features",
    "read_user_features",
    "verify_checksums",
]
