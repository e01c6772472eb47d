# SPDX-License-Identifier: GPL-3.0-or-later
"""The cross-mask pass (pure function) and the view subset, on constructed masks."""
import numpy as np
import pytest

from maskfield.priors.command import spread_subset
from maskfield.priors.masks import filter_overlapping, pairwise_overlaps


def box(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_pairwise_overlaps_exact_and_subsampled():
    rng = np.random.default_rng(1)
    masks = rng.random((6, 40, 60)) > 0.4
    flat = masks.reshape(6, -1).astype(np.int64)
    inter, areas = pairwise_overlaps(masks)
    np.testing.assert_array_equal(inter, flat @ flat.T)
    np.testing.assert_array_equal(areas, flat.sum(1))
    # under a tiny cost budget it subsamples and scales back: close, not exact
    big = np.stack([box(200, 200, 0, 100, 0, 200), box(200, 200, 50, 200, 0, 200)])
    approx, a_areas = pairwise_overlaps(big, max_cost=1e3)
    exact, _ = pairwise_overlaps(big)
    np.testing.assert_allclose(approx, exact, rtol=0.1)
    assert pairwise_overlaps(np.zeros((0, 5, 5), bool))[0].shape == (0, 0)


def test_near_duplicates_dropped_across_granularities():
    a = box(50, 50, 10, 40, 10, 40)  # 900 px
    b = box(50, 50, 10, 40, 11, 40)  # IoU 870/900 = 0.967 with a
    c = box(50, 50, 0, 10, 0, 10)
    keep = filter_overlapping(np.stack([a, b, c]), scores=[0.8, 0.9, 0.75], granularity=[1, 2, 0])
    assert sorted(keep.tolist()) == [1, 2]  # the more confident duplicate stays, whatever its granularity
    assert keep.tolist() == [1, 2]  # in order of decreasing score


def test_iou_at_threshold_is_kept():
    a = box(10, 10, 0, 10, 0, 10)  # 100 px
    b = box(10, 10, 0, 8, 0, 10)  # IoU 0.8 exactly: not > 0.8
    keep = filter_overlapping(np.stack([a, b]), [0.9, 0.8], [0, 2])
    assert sorted(keep.tolist()) == [0, 1]


def test_containment_same_granularity_dropped_other_granularity_kept():
    whole = box(60, 60, 0, 60, 0, 60)  # 3600 px
    part = box(60, 60, 10, 30, 10, 30)  # 400 px, inside whole, IoU 0.11
    # same granularity: one of the nested pair goes (the less confident)
    keep = filter_overlapping(np.stack([whole, part]), [0.9, 0.95], [1, 1])
    assert keep.tolist() == [1]
    # different granularities: the hierarchy stays
    keep = filter_overlapping(np.stack([whole, part]), [0.9, 0.95], [2, 0])
    assert sorted(keep.tolist()) == [0, 1]


def test_partial_overlap_kept():
    a = box(40, 40, 0, 20, 0, 20)  # 400
    b = box(40, 40, 0, 20, 10, 30)  # overlap 200 = 50% of the smaller, IoU 1/3
    assert sorted(filter_overlapping(np.stack([a, b]), [0.9, 0.8], [1, 1]).tolist()) == [0, 1]
    # 96% of the smaller one inside the other, same granularity: dropped
    c = box(40, 40, 0, 25, 0, 40)  # 1000
    d = box(40, 40, 1, 26, 0, 20)  # 500, 480 inside c
    assert filter_overlapping(np.stack([c, d]), [0.9, 0.8], [0, 0]).tolist() == [0]


def test_empty_masks_and_inputs():
    a = box(20, 20, 0, 10, 0, 10)
    empty = np.zeros((20, 20), bool)
    assert filter_overlapping(np.stack([empty, a]), [1.0, 0.5], [0, 0]).tolist() == [1]
    assert filter_overlapping(np.zeros((0, 4, 4), bool), [], []).shape == (0,)
    with pytest.raises(ValueError):
        filter_overlapping(np.stack([a]), [1.0, 0.5], [0])


def test_greedy_chain():
    # a ~ b (dup), b ~ c (dup), a and c not: greedy by score keeps a and c when a is best
    a = box(10, 30, 0, 10, 0, 10)
    b = box(10, 30, 0, 10, 1, 11)  # IoU(a,b) = 90/110 = 0.82
    c = box(10, 30, 0, 10, 2, 12)  # IoU(b,c) = 0.82, IoU(a,c) = 80/120 = 0.67
    assert filter_overlapping(np.stack([a, b, c]), [0.9, 0.8, 0.7], [0, 1, 2]).tolist() == [0, 2]


def test_spread_subset():
    views = list(range(10, 20))
    assert spread_subset(views, None) == views
    assert spread_subset(views, 50) == views
    assert spread_subset(views, 2) == [10, 19]
    assert spread_subset(views, 4) == [10, 13, 16, 19]
    assert spread_subset(views, 1) == [15]
    assert len(spread_subset(views, 7)) == 7
