"""The Gram layouts compute the same per-row Gram matrices and right-hand
sides (against a NumPy loop), and ``"auto"`` chooses by size, design width
and the memory of every row's statistics."""

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bayesmf.layout import BucketLayout, DenseLayout, SegmentLayout, build_layout, gram_and_rhs, map_rows, row_sums
from bayesmf.layout_plan import DENSE_MAX_CELLS, DENSE_MAX_WORK, bucket_plan, peak_working_bytes


def reference(rows, cols, num_rows, design, response):
    d = design.shape[1]
    gram = np.zeros((num_rows, d, d))
    rhs = np.zeros((num_rows, d))
    for r, c, y in zip(rows, cols, response):
        gram[r] += np.outer(design[c], design[c])
        rhs[r] += y * design[c]
    return gram, rhs


@settings(max_examples=25, deadline=None)
@given(
    num_rows=st.integers(1, 12),
    num_cols=st.integers(1, 9),
    fill=st.floats(0.0, 1.0),
    d=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1),
)
def test_layouts_match_a_numpy_loop(num_rows, num_cols, fill, d, seed):
    rng = np.random.default_rng(seed)
    cells = rng.permutation(num_rows * num_cols)[: max(1, int(fill * num_rows * num_cols))]
    rows, cols = np.divmod(cells, num_cols)  # unsorted, rows of every degree (0 included)
    design = rng.normal(size=(num_cols, d))
    response = rng.normal(size=rows.size)
    want_gram, want_rhs = reference(rows, cols, num_rows, design, response)
    for kind in ("dense", "bucket", "segment"):
        layout = build_layout(rows, cols, num_rows, num_cols, kind, width=d)
        gram, rhs = gram_and_rhs(layout, jnp.asarray(design, jnp.float32), jnp.asarray(response, jnp.float32))
        # float32 sums of at most 9 products of O(1) normals: round-off ~1e-6.
        np.testing.assert_allclose(gram, want_gram, atol=1e-4, err_msg=kind)
        np.testing.assert_allclose(rhs, want_rhs, atol=1e-4, err_msg=kind)


def test_auto_weighs_size_and_width():
    rows, cols = np.array([0, 1]), np.array([1, 0])
    assert isinstance(build_layout(rows, cols, 2, 2, "auto"), DenseLayout)
    # MovieLens-100K's shape: dense at rank 10 (width 11), bucketed from rank ~12.
    n, m = 943, 1682
    assert n * m * 11**2 <= DENSE_MAX_WORK < n * m * 13**2
    assert isinstance(build_layout(rows, cols, n, m, "auto", width=11), DenseLayout)
    # Beyond: segments, in one block while every row's (w + 1)^2 statistics fit, in blocks of rows when not.
    assert isinstance(build_layout(rows, cols, n, m, "auto", width=51), SegmentLayout)
    need = (n + 1) * 52**2 * 4
    assert build_layout(rows, cols, n, m, "auto", width=51, stats_bytes=need).rows.shape[0] == 1
    assert build_layout(rows, cols, n, m, "auto", width=51, stats_bytes=need - 1).rows.shape[0] == 2
    # Too many cells is never dense, whatever the width; without the width, bucketed.
    big = DENSE_MAX_CELLS // 1000 + 1
    assert isinstance(build_layout(rows, cols, 1000, big, "auto", width=1), SegmentLayout)
    assert isinstance(build_layout(rows, cols, 1000, big, "auto"), BucketLayout)


def test_auto_takes_blocks_of_segments_on_an_accelerator_too(monkeypatch):
    """On an H200, segments compiled and swept faster than buckets at Netflix
    shape and compiled 4x faster in blocks at rank 512 (bayesmf.layout_plan.resolve_kind)."""
    rows, cols, n, m = np.array([0, 1]), np.array([1, 0]), 943, 1682
    need = (n + 1) * 52**2 * 4
    monkeypatch.setattr("bayesmf.layout_plan.device_limit", lambda device=None: 80 * 2**30)
    assert build_layout(rows, cols, n, m, "auto", width=51, stats_bytes=need).rows.shape[0] == 1
    assert build_layout(rows, cols, n, m, "auto", width=51, stats_bytes=need - 1).rows.shape[0] == 2


def test_segment_layout_needs_the_width():
    with pytest.raises(ValueError, match="design width"):
        build_layout([0], [0], 1, 1, "segment")


def test_unknown_layout_is_rejected():
    with pytest.raises(ValueError, match="unknown layout"):
        build_layout([0], [0], 1, 1, "sparse")


@settings(max_examples=20, deadline=None)
@given(
    num_rows=st.integers(1, 40),
    num_cols=st.integers(1, 9),
    fill=st.floats(0.0, 1.0),
    d=st.integers(1, 4),
    chunk_bytes=st.sampled_from([1, 200, 2_000, 10**9]),
    stats_bytes=st.sampled_from([0, 10**9]),
    seed=st.integers(0, 2**31 - 1),
)
def test_map_rows_matches_the_whole_gram_in_every_chunking(num_rows, num_cols, fill, d, chunk_bytes, stats_bytes,
                                                            seed):
    """map_rows hands fn each row's own Gram and rhs whatever the chunks (one
    row per chunk at chunk_bytes=1, one chunk per bucket at 1e9) and in one
    or two stages (stats_bytes), and the residual sums from the statistics
    equal the residuals' squares."""
    rng = np.random.default_rng(seed)
    cells = rng.permutation(num_rows * num_cols)[: max(1, int(fill * num_rows * num_cols))]
    rows, cols = np.divmod(cells, num_cols)
    design = jnp.asarray(rng.normal(size=(num_cols, d)), jnp.float32)
    response = jnp.asarray(rng.normal(size=rows.size), jnp.float32)
    z = jnp.asarray(rng.normal(size=(num_rows, d)), jnp.float32)

    def fn(gram, rhs, z):  # row-wise: a solve per row plus that row's own input
        return jnp.linalg.solve(gram + jnp.eye(d), rhs[..., None])[..., 0] + z

    for kind in ("dense", "bucket", "segment"):
        layout = build_layout(rows, cols, num_rows, num_cols, kind, width=d, chunk_bytes=chunk_bytes,
                              stats_bytes=stats_bytes)
        if kind == "bucket" and stats_bytes == 0:
            assert layout.stage_index is None  # no room for every row's statistics: one stage
        if kind == "segment":  # no room for any row's statistics: a block per row
            assert layout.rows.shape[0] == (num_rows if stats_bytes == 0 else 1)
        if kind == "bucket" and chunk_bytes == 1:
            assert all(b.rows.shape[1] == 1 for group in layout.buckets for b in group)  # one row per chunk
        x, sse = map_rows(layout, design, response, fn, (z,), residuals=True)
        gram, rhs = gram_and_rhs(layout, design, response)
        # float32 solves of 4 x 4 systems with unit prior: round-off ~1e-6.
        np.testing.assert_allclose(x, fn(gram, rhs, z), atol=1e-4, err_msg=kind)
        residual = np.asarray(response) - np.sum(np.asarray(design)[cols] * np.asarray(x)[rows], axis=1)
        want = np.bincount(rows, residual**2, minlength=num_rows)
        # y^T y - 2 x.h + x^T G x in float32 over <= 9 O(1) terms per row.
        np.testing.assert_allclose(sse, want, atol=1e-3, err_msg=kind)


@pytest.mark.parametrize("chunk_bytes", [1, 3_000, 10**9])
def test_segments_split_long_rows_and_sum_back(monkeypatch, chunk_bytes):
    """Rows longer than a segment are cut into several (here of 3 ratings),
    in one or many chunks of segments and of rows; their statistics sum back
    to each row's Gram and rhs, and map_rows hands fn each row's own."""
    monkeypatch.setattr("bayesmf.layout_plan.SEGMENT_WIDTH", 3)
    rng = np.random.default_rng(2)
    num_rows, num_cols, d = 30, 12, 3
    cells = rng.permutation(num_rows * num_cols)[:200]
    rows, cols = np.divmod(cells, num_cols)
    design = rng.normal(size=(num_cols, d))
    response = rng.normal(size=rows.size)
    layout = build_layout(rows, cols, num_rows, num_cols, "segment", width=d, chunk_bytes=chunk_bytes)
    assert layout.cols.shape[-1] == 3
    assert layout.rows.size >= int(np.sum(-(-np.bincount(rows, minlength=num_rows) // 3)))
    if chunk_bytes == 1:
        assert layout.rows.shape[2] == 1 and layout.row_chunks.shape[1] == 1  # one segment, one row per chunk
    want_gram, want_rhs = reference(rows, cols, num_rows, design, response)
    gram, rhs = gram_and_rhs(layout, jnp.asarray(design, jnp.float32), jnp.asarray(response, jnp.float32))
    # float32 sums of at most 12 products of O(1) normals.
    np.testing.assert_allclose(gram, want_gram, atol=1e-4)
    np.testing.assert_allclose(rhs, want_rhs, atol=1e-4)
    x = map_rows(layout, jnp.asarray(design, jnp.float32), jnp.asarray(response, jnp.float32),
                 lambda g, h, z: jnp.linalg.solve(g + jnp.eye(d), h[..., None])[..., 0] + z,
                 (jnp.arange(num_rows, dtype=jnp.float32)[:, None] * jnp.ones(d),))
    want = np.linalg.solve(want_gram + np.eye(d), want_rhs[..., None])[..., 0] + np.arange(num_rows)[:, None]
    np.testing.assert_allclose(x, want, atol=1e-3)


@pytest.mark.parametrize("stats_rows", [1, 7, 40])
def test_blocks_of_rows_hold_every_row_once_with_about_equal_segments(monkeypatch, stats_rows):
    """With room for only ``stats_rows`` rows' statistics, the segment layout
    takes the rows in blocks, one after another: every row in one block at
    one position, blocks of ceil or floor n / B rows whose segment counts
    differ by at most one row's (dealt in a snake by decreasing segments, here
    with the ids in decreasing degree, where blocks of consecutive ids would
    be lopsided), and map_rows, gram_and_rhs and row_sums give what one
    block gives."""
    monkeypatch.setattr("bayesmf.layout_plan.SEGMENT_WIDTH", 4)
    rng = np.random.default_rng(3)
    num_rows, num_cols, d = 60, 25, 3
    degree = np.sort(np.minimum(rng.zipf(1.6, num_rows), num_cols))[::-1]
    rows = np.repeat(np.arange(num_rows), degree)
    cols = np.concatenate([rng.choice(num_cols, k, replace=False) for k in degree])
    design = jnp.asarray(rng.normal(size=(num_cols, d)), jnp.float32)
    response = jnp.asarray(rng.normal(size=rows.size), jnp.float32)
    z = jnp.asarray(rng.normal(size=(num_rows, d)), jnp.float32)
    one = build_layout(rows, cols, num_rows, num_cols, "segment", width=d, stats_bytes=10**9)
    blocked = build_layout(rows, cols, num_rows, num_cols, "segment", width=d, chunk_bytes=2_000,
                           stats_bytes=(stats_rows + 1) * (d + 1) ** 2 * 4)
    blocks = -(-num_rows // stats_rows)
    size = blocked.block_rows.shape[1] - 1
    assert one.rows.shape[0] == 1 and blocked.rows.shape[0] == blocks and size == -(-num_rows // blocks)
    members = np.asarray(blocked.block_rows)[:, :size].ravel()
    assert np.array_equal(members[np.asarray(blocked.order)], np.arange(num_rows))
    assert np.unique(np.asarray(blocked.order)).size == num_rows
    segments = (np.asarray(blocked.rows) < size).sum(axis=(1, 2))  # real segments point inside the block
    assert segments.sum() == np.sum(-(-degree // 4))
    assert segments.max() - segments.min() <= -(-degree.max() // 4)

    def fn(gram, rhs, z):
        return jnp.linalg.solve(gram + jnp.eye(d), rhs[..., None])[..., 0] + z

    # The same float32 sums in another order: round-off ~1e-6 on O(1)-O(10) values.
    for got, want in ((gram_and_rhs(blocked, design, response), gram_and_rhs(one, design, response)),
                      (map_rows(blocked, design, response, fn, (z,), residuals=True),
                       map_rows(one, design, response, fn, (z,), residuals=True)),
                      ((row_sums(blocked, design, response),), (row_sums(one, design, response),))):
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def test_segment_width_weighs_padding_against_segments():
    """The width minimises segments x (width + overhead): short rows get short
    segments (little padding), rows of thousands of ratings long ones."""
    from bayesmf.layout_plan import SEGMENT_OVERHEAD, SEGMENT_WIDTHS, segment_width

    short, long = np.full(1000, 20), np.full(100, 5000)
    assert segment_width(short) < segment_width(long)
    for degree in (short, long, np.random.default_rng(0).zipf(1.5, 2000).clip(1, 10**4)):
        costs = {w: int(np.sum(-(-degree // w))) * (w + SEGMENT_OVERHEAD) for w in SEGMENT_WIDTHS}
        assert costs[segment_width(degree)] == min(costs.values())


def test_bucket_plan_bounds_each_group_by_the_chunk():
    rng = np.random.default_rng(0)
    degree = np.concatenate([rng.integers(1, 300, 2000), [0, 0, 5000]])
    for chunk_bytes in (2**14, 2**18, 2**22):
        plan = bucket_plan(degree, 8, chunk_bytes)
        shapes = [b for group in plan for b in group]
        assert [b.width for b in shapes] == sorted(b.width for b in shapes)  # increasing width, each once
        assert sum(b.rows for b in shapes) == degree.size
        for group in plan:
            assert len(group) == 1 or all(b.chunks == 1 for b in group)  # several chunks: a group of its own
            # Only a single row wider than the chunk may exceed it.
            assert sum(b.working_bytes for b in group) <= chunk_bytes or group[0].chunk_rows == 1
        # One stage (no room for the statistics): the largest group; two: the statistics on top.
        assert peak_working_bytes(degree, 8, chunk_bytes, stats_bytes=0) == max(
            sum(b.working_bytes for b in g) for g in plan)
        if len(plan) > 1:
            assert peak_working_bytes(degree, 8, chunk_bytes, stats_bytes=10**12) > degree.size * 9**2 * 4


def test_two_stages_when_the_statistics_fit_and_there_are_several_groups():
    rng = np.random.default_rng(1)
    rows = rng.integers(0, 300, 5000)
    cols = rng.integers(0, 50, 5000)
    two = build_layout(rows, cols, 300, 50, "bucket", width=3, chunk_bytes=2_000, stats_bytes=10**9)
    one = build_layout(rows, cols, 300, 50, "bucket", width=3, chunk_bytes=2_000, stats_bytes=10)
    assert len(two.buckets) > 1 and two.stage_index is not None and one.stage_index is None
    # Every row once in the second stage, padding one past the statistics.
    index = np.asarray(two.stage_index).ravel()
    total = sum(b.rows.size for group in two.buckets for b in group)
    assert np.array_equal(np.sort(index[index < total]), np.sort(np.asarray(two.order)))
    assert np.all(index[index >= total] == total)
    assert np.array_equal(index[np.asarray(two.stage_order)], np.asarray(two.order))
