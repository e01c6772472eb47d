"""Relevancy and segmentation on constructed fields whose answer is known."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from maskfield.events import MaskFieldError
from maskfield.field.baseline import baseline_labels, pixel_embedding_targets
from maskfield.field.data import FieldView
from maskfield.priors.text import encode_texts
from maskfield.segment import CANONICAL_NEGATIVES, Segmenter, SegmentSettings, write_segments
from maskfield.splats.model import Gaussians

ENCODER = "names:hash-512"


def names(texts):
    return encode_texts(list(texts), ENCODER)


DIM = 5  # up to four named queries; the last feature component is a constant 1


def constructed(feature_rows, query_names, extra_queries=2):
    """A field whose query i (of ``query_names``) lights Gaussians with a positive component i,
    plus idle queries that light nothing (their mask direction is minus the constant)."""
    k = len(query_names) + extra_queries
    m = torch.zeros(k, DIM)
    for i in range(len(query_names)):
        m[i, i] = 8.0
    m[len(query_names):, DIM - 1] = -8.0
    c = torch.as_tensor(names(query_names + [f"idle {j}" for j in range(extra_queries)]))
    features = torch.as_tensor(np.asarray(feature_rows, dtype=np.float32))
    return Segmenter.from_field(None, features, lambda: (m, c), embedding_model=ENCODER, text_encoder=names)


def one_hot(index, strength=1.0):
    v = np.full(DIM, -1.0, dtype=np.float32)
    v[DIM - 1] = 1.0
    if index is not None:
        v[index] = strength
    return v


def test_prompts_select_their_gaussians_and_compete():
    # Gaussians 0-2 belong to "red mug", 3-5 to "blue box", 6-7 to neither
    rows = [one_hot(0)] * 3 + [one_hot(1)] * 3 + [one_hot(None)] * 2
    seg = constructed(rows, ["red mug", "blue box"])
    matches, label, score, _ = seg.segment(["blue box", "red mug"])
    assert [m.found for m in matches] == [True, True]
    assert list(matches[0].queries) == [1] and list(matches[1].queries) == [0]
    np.testing.assert_array_equal(label, [1, 1, 1, 0, 0, 0, -1, -1])
    assert (score[:6] > 0.99).all() and (score[6:] < 0.01).all()

    # a Gaussian lit by both queries goes to the stronger one
    rows = [np.array([1.0, 0.5, -1, -1, 1], np.float32), np.array([0.2, 1.0, -1, -1, 1], np.float32)]
    seg = constructed(rows, ["red mug", "blue box"])
    _, label, _, all_scores = seg.segment(["red mug", "blue box"])
    np.testing.assert_array_equal(label, [0, 1])
    assert all_scores[0, 0] > all_scores[0, 1] and all_scores[1, 1] > all_scores[1, 0]


def test_relevancy_follows_lerf_against_canonical_negatives():
    seg = constructed([one_hot(0)], ["red mug"])
    text = seg.encode(["red mug"])
    neg = seg.encode(list(CANONICAL_NEGATIVES))
    c = seg.query_embed.numpy()
    expected = 1 / (1 + np.exp(-10.0 * (c @ text[0] - (c @ neg.T).max(1))))
    matches = seg.match(["red mug"])
    np.testing.assert_allclose(matches[0].relevancy, expected[matches[0].queries], rtol=1e-5)
    assert matches[0].best_similarity == pytest.approx(1.0, abs=1e-5)


def test_unmatched_prompt_and_idle_queries_answer_nothing(tmp_path):
    rows = [one_hot(0)] * 4
    seg = constructed(rows, ["red mug", "blue box"])
    # "blue box" has a query but no Gaussian lights it: that query is inactive
    assert seg.active.tolist() == [True, False, False, False]
    matches, label, _, _ = seg.segment(["spaceship", "blue box"])
    assert not matches[0].found and not matches[1].found
    assert (label == -1).all()
    with pytest.raises(MaskFieldError, match="empty prompt"):
        seg.segment(["  "])


def test_points_take_the_label_of_their_nearest_gaussians():
    means = np.array([[0, 0, 0], [0.1, 0, 0], [5, 0, 0], [5.1, 0, 0]], np.float32)
    g = Gaussians.from_points(means, init_opacity=0.9)
    seg = constructed([one_hot(0), one_hot(0), one_hot(1), one_hot(1)], ["red mug", "blue box"])
    seg.gaussians = g
    seg.settings = SegmentSettings(point_neighbours=2)
    matches, label, _, all_scores = seg.segment(["red mug", "blue box"])
    plabels, pscores = seg.label_points(np.array([[0.05, 0.01, 0], [5.05, 0, 0.02]]), label, all_scores)
    np.testing.assert_array_equal(plabels, [0, 1])
    assert (pscores > 0.99).all()
    with pytest.raises(MaskFieldError, match="N x 3"):
        seg.label_points(np.zeros((3, 2)), label, all_scores)


def test_write_segments_writes_found_prompts_only(tmp_path):
    means = np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0]], np.float32)
    seg = constructed([one_hot(0), one_hot(1), one_hot(0)], ["red mug", "blue box"])
    seg.gaussians = Gaussians.from_points(means)
    (tmp_path / "spaceship.ply").write_text("stale")
    summary = write_segments(seg, ["red mug", "spaceship"], tmp_path)
    mug, ship = summary["prompts"]
    assert mug["found"] and mug["count"] == 2
    np.testing.assert_array_equal(np.load(tmp_path / "red-mug.npz")["indices"], [0, 2])
    assert (tmp_path / "red-mug.ply").exists()
    assert not ship["found"] and ship["ply"] is None and not (tmp_path / "spaceship.ply").exists()


def test_baseline_targets_take_the_smallest_covering_mask_and_labels_follow_text():
    # 4 pixels; a big mask covers all, a small one covers pixel 0; pixel 3 is unsupervised
    targets = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    emb = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    view = FieldView("v", torch.eye(4).to_sparse_csr(), torch.ones(4), targets, emb,
                     torch.tensor([True, True, True, False]), 2, 2)
    target, has = pixel_embedding_targets(view)
    np.testing.assert_allclose(target.numpy(), [[0, 1], [1, 0], [1, 0]])
    assert has.tolist() == [True, True, True]

    text = torch.as_tensor(names(["red mug", "blue box"]))
    negatives = torch.as_tensor(names(list(CANONICAL_NEGATIVES)))
    features = torch.stack([text[1], text[0], negatives[0]])
    np.testing.assert_array_equal(baseline_labels(features, text, negatives), [1, 0, -1])


def test_a_query_that_also_lights_a_neighbour_yields_to_the_neighbours_own_query():
    # Gaussians 0-3: the box; 4-7: the table beside it. Query 0 is the box's; query 1 was
    # trained on box+table masks (its meaning is mostly "box", its mask covers both, weakly
    # on the table); query 2 is the table's own.
    box, table = names(["blue box", "table"])
    mixed = box + 0.45 * table
    c = torch.as_tensor(np.stack([box, mixed / np.linalg.norm(mixed), table]))
    m = torch.tensor([[8.0, 0, 0], [0, 8.0, 0], [0, 0, 8.0]])
    f = np.zeros((8, 3), np.float32)
    f[:4] = [1.0, 1.0, -1.0]  # box: lit by queries 0 and 1
    f[4:] = [-1.0, 0.15, 1.0]  # table: lit strongly by query 2, weakly (p ~ 0.77) by query 1

    def labels(exclusive):
        seg = Segmenter.from_field(None, torch.as_tensor(f), lambda: (m, c), embedding_model=ENCODER,
                                   text_encoder=names, settings=SegmentSettings(exclusive=exclusive))
        matches, label, _, _ = seg.segment(["blue box"])
        assert sorted(matches[0].queries.tolist()) == [0, 1] and matches[0].competitors.tolist() == [2]
        return label

    np.testing.assert_array_equal(labels(False), [0] * 8)  # the mixed query leaks onto the table
    np.testing.assert_array_equal(labels(True), [0] * 4 + [-1] * 4)


def test_competitors_are_weighed_at_the_prompts_granularity():
    """A part query of another object (a rarely matched piece of the shelf behind a teapot)
    may light the teapot more strongly than the teapot's own object query: it does not take
    the teapot from the prompt. The shelf's object query still does where it is stronger."""
    teapot, shelf = names(["teapot", "shelf"])
    c = torch.as_tensor(np.stack([teapot, shelf, shelf]))  # 0 teapot, 1 shelf, 2 a shelf part
    m = torch.tensor([[8.0, 0, 0], [0, 8.0, 0], [0, 0, 8.0]])
    f = np.zeros((8, 3), np.float32)
    f[:4] = [1.0, -1.0, 1.5]  # teapot: its own query, and the shelf part's more strongly
    f[4:6] = [-1.0, 1.0, -1.0]  # shelf
    f[6:] = [0.5, 1.0, -1.0]  # shelf Gaussians that the teapot query also lights, less strongly
    # per query: matches at part / object / group (what field.pt records)
    stats = {"granularity_counts": np.array([[0, 40, 0], [0, 40, 0], [12, 0, 0]]),
             "mask_area": np.array([0.05, 0.3, 0.01], np.float32)}

    def segment(match_stats):
        seg = Segmenter.from_field(None, torch.as_tensor(f), lambda: (m, c), embedding_model=ENCODER,
                                   text_encoder=names, match_stats=match_stats)
        matches, label, _, _ = seg.segment(["teapot"])
        return matches[0], label

    match, label = segment(stats)
    assert match.granularity == "object" and match.queries.tolist() == [0] and match.competitors.tolist() == [1]
    np.testing.assert_array_equal(label, [0] * 4 + [-1] * 4)
    # a run without the record weighs every query: the part query takes the teapot away
    match, label = segment(None)
    assert match.competitors.tolist() == [1, 2]
    np.testing.assert_array_equal(label, [-1] * 8)


def test_auto_granularity_follows_the_queries_closest_to_the_prompt():
    """Group queries (the blue book merged with a neighbour; their embedding a mix of the two)
    are less like "blue book" than its object query, but their masks are larger and more
    often matched: the prompt still answers with the object query, so the green book, which
    the group queries also light, stays out. Parts share their object's meaning: between
    those the masks' area decides, as before."""
    blue, green, red = names(["blue book", "green book", "red book"])
    mix_b = 2 * blue + green + red
    mix_b = mix_b / np.linalg.norm(mix_b)  # matched to blue+green and blue+red: cosine ~0.82
    c = torch.as_tensor(np.stack([blue, mix_b, mix_b, blue]))  # 0 object, 1-2 groups, 3 a part
    m = torch.eye(4) * 8.0
    f = np.full((6, 4), -1.0, np.float32)
    f[:2, [0, 1, 2]] = 1.0  # blue book: its object query and the groups
    f[2:4, [1, 2]] = 1.0  # green book: the groups only
    f[4:, 3] = 1.0  # a piece of the blue book only its part query lights
    stats = {"granularity_counts": np.array([[0, 40, 0], [0, 0, 60], [0, 0, 60], [30, 0, 0]]),
             "granularity_area": np.array([[0, 4.0, 0], [0, 0, 12.0], [0, 0, 12.0], [2.0, 0, 0]], np.float32),
             "mask_area": np.array([0.1, 0.2, 0.2, 0.07], np.float32)}

    def segment(settings):
        seg = Segmenter.from_field(None, torch.as_tensor(f), lambda: (m, c), embedding_model=ENCODER,
                                   text_encoder=names, match_stats=stats, settings=settings)
        sim = float(seg.query_embed[1] @ torch.as_tensor(blue))
        matches, label, _, _ = seg.segment(["blue book"])
        return sim, matches[0], label

    sim, match, label = segment(SegmentSettings(query_margin=0.2))  # the groups are within the margin
    assert 0.8 < sim < 0.95
    assert match.granularity == "object" and match.queries.tolist() == [0]
    np.testing.assert_array_equal(label, [0, 0, -1, -1, -1, -1])
    # voting among every query within query_margin, as before: the groups' area wins
    _, match, label = segment(SegmentSettings(query_margin=0.2, granularity_margin=0.2))
    assert match.granularity == "group" and match.queries.tolist() == [1, 2]
    np.testing.assert_array_equal(label, [0, 0, 0, 0, -1, -1])
    # object and part queries tie (the same meaning): the larger area decides, here the object;
    # with the part's masks larger, the part
    stats["granularity_area"][3, 0] = 9.0
    _, match, _ = segment(SegmentSettings(query_margin=0.2))
    assert match.granularity == "part" and match.queries.tolist() == [3]


def test_faint_gaussians_away_from_their_segments_surface_leave_it():
    """Haze the fit left in the air carries an object's features but is not the object: a
    faint Gaussian stays in a segment only near one of its solid Gaussians (within
    ``attach_scales`` x the two largest scales); solid ones and a segment without any solid
    Gaussian keep their labels; 0 switches the rule off."""
    means = np.array([[0, 0, 0], [0.1, 0, 0],  # the mug's solid surface
                      [0.25, 0, 0],  # faint, 0.15 from it: within 3 x (0.05 + 0.05)
                      [2.0, 0, 0],  # faint, 1.9 from it: haze
                      [0, 0, 5.0], [0.1, 0, 5.0]], np.float32)  # the plate: faint only
    opacity = np.array([0.9, 0.5, 0.02, 0.02, 0.05, 0.05], np.float32)
    params = {"means": torch.as_tensor(means), "scales": torch.full((6, 3), float(np.log(0.05))),
              "quats": torch.tensor([[1.0, 0, 0, 0]]).repeat(6, 1),
              "opacities": torch.logit(torch.as_tensor(opacity)),
              "sh0": torch.zeros(6, 1, 3), "shN": torch.zeros(6, 0, 3)}
    seg = constructed([one_hot(0)] * 4 + [one_hot(1)] * 2, ["red mug", "plate"])
    seg.gaussians = Gaussians(params, sh_degree=0)
    _, label, score, _ = seg.segment(["red mug", "plate"])
    np.testing.assert_array_equal(label, [0, 0, 0, -1, 1, 1])
    assert score[3] > seg.settings.mask_threshold  # lit by the mug's query, left out for where it is
    seg.settings.attach_scales = 1.0  # 0.15 > 1 x 0.1: now too far
    np.testing.assert_array_equal(seg.segment(["red mug", "plate"])[1], [0, 0, -1, -1, 1, 1])
    seg.settings.attach_scales = 0.0
    np.testing.assert_array_equal(seg.segment(["red mug", "plate"])[1], [0, 0, 0, 0, 1, 1])


def test_a_solid_gaussian_away_from_the_rest_of_its_segment_leaves_it():
    """A solid floater a prompt caught (or a never-seen Gaussian whose untrained features the
    prompt lit) is not the object: with at least ``min_solid_for_outliers`` solid Gaussians in
    a segment, one with no other solid Gaussian within reach leaves it, and the faint ones
    that only it anchored go too. A small segment keeps its scattered solid Gaussians."""
    mug = [[0.1 * i, 0, 0] for i in range(25)]  # the mug's surface: solid, 0.1 apart
    means = np.array(mug + [[1.5, 2.0, 0],  # solid, 2 from the surface: a floater
                            [1.55, 2.0, 0],  # faint, anchored by the floater alone
                            [0, 0, 5.0], [0, 3.0, 5.0], [0, 6.0, 5.0]], np.float32)  # the plate: 3 solid, apart
    n = len(means)
    opacity = np.array([0.8] * 25 + [0.6, 0.02, 0.7, 0.7, 0.7], np.float32)
    params = {"means": torch.as_tensor(means), "scales": torch.full((n, 3), float(np.log(0.05))),
              "quats": torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
              "opacities": torch.logit(torch.as_tensor(opacity)),
              "sh0": torch.zeros(n, 1, 3), "shN": torch.zeros(n, 0, 3)}
    seg = constructed([one_hot(0)] * 27 + [one_hot(1)] * 3, ["red mug", "plate"])
    seg.gaussians = Gaussians(params, sh_degree=0)
    _, label, _, _ = seg.segment(["red mug", "plate"])
    np.testing.assert_array_equal(label, [0] * 25 + [-1, -1] + [1, 1, 1])
    seg.settings.min_solid_for_outliers = 0  # off: the floater and its haze stay
    np.testing.assert_array_equal(seg.segment(["red mug", "plate"])[1], [0] * 27 + [1, 1, 1])
    seg.settings.min_solid_for_outliers = 3  # the plate's three, 3 apart, now count as floaters
    np.testing.assert_array_equal(seg.segment(["red mug", "plate"])[1], [0] * 25 + [-1, -1] + [-1, -1, -1])


def test_gaussians_painting_unsupervised_pixels_are_in_no_segment():
    """A Gaussian whose weight falls mostly on pixels no mask supervised (a veil over the
    backdrop) learned nothing from the masks: it is left out of every segment, whatever its
    features; one no training view shows keeps its label."""
    from maskfield.field.data import FieldView, supervised_share

    # 4 pixels, the first two supervised; Gaussian 0 paints those, 1 paints the others
    # (and 0.1 of a supervised one), 2 both halves equally, 3 no pixel
    pixel = torch.tensor([0, 1, 2, 3, 0, 1, 2])
    gaussian = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    weight = torch.tensor([0.9, 0.8, 0.7, 0.9, 0.1, 0.5, 0.5])
    w = torch.sparse_coo_tensor(torch.stack([pixel, gaussian]), weight, (4, 4)).coalesce().to_sparse_csr()
    view = FieldView("v", w, torch.ones(4), torch.ones(1, 4), torch.ones(1, 8),
                     torch.tensor([True, True, False, False]), 2, 2)
    share = supervised_share([view, view], 4)
    assert torch.allclose(share, torch.tensor([1.0, 0.1 / 1.7, 0.5, -1.0]))

    seg = constructed([one_hot(0)] * 4, ["red mug"])
    _, label, score, _ = seg.segment(["red mug"])
    np.testing.assert_array_equal(label, [0, 0, 0, 0])  # no share known: every lit Gaussian
    seg.supervised_share = share
    _, label, score2, _ = seg.segment(["red mug"])
    np.testing.assert_array_equal(label, [0, -1, 0, 0])
    np.testing.assert_allclose(score, score2)  # scores are kept; only the label goes
    seg.settings.min_supervised_share = 0.0
    np.testing.assert_array_equal(seg.segment(["red mug"])[1], [0, 0, 0, 0])


def test_faint_gaussians_need_more_of_their_weight_supervised():
    """A faint Gaussian (opacity under SOLID_OPACITY) stays in a segment only with at least
    ``faint_min_supervised_share`` of its weight on supervised pixels; a solid one needs
    ``min_supervised_share``. The stricter rule never loosens the general one."""
    from maskfield.segment import SOLID_OPACITY

    # all five at one spot (nothing is haze by distance); shares 0.6, 0.6, 0.8, 0.4, unseen
    n = 5
    opacity = np.array([0.02, 0.9, 0.02, 0.9, 0.02], np.float32)
    assert (opacity[[0, 2, 4]] < SOLID_OPACITY).all() and (opacity[[1, 3]] >= SOLID_OPACITY).all()
    params = {"means": torch.zeros(n, 3), "scales": torch.full((n, 3), float(np.log(0.05))),
              "quats": torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
              "opacities": torch.logit(torch.as_tensor(opacity)),
              "sh0": torch.zeros(n, 1, 3), "shN": torch.zeros(n, 0, 3)}
    seg = constructed([one_hot(0)] * n, ["red mug"])
    seg.gaussians = Gaussians(params, sh_degree=0)
    seg.settings.min_solid_for_outliers = 0
    seg.supervised_share = torch.tensor([0.6, 0.6, 0.8, 0.4, -1.0])
    np.testing.assert_array_equal(seg.segment(["red mug"])[1], [-1, 0, 0, -1, 0])
    seg.settings.faint_min_supervised_share = 0.5  # as strict as the solid ones
    np.testing.assert_array_equal(seg.segment(["red mug"])[1], [0, 0, 0, -1, 0])
    seg.settings.faint_min_supervised_share = 0.3  # below the general rule: that still holds
    seg.settings.min_supervised_share = 0.7
    np.testing.assert_array_equal(seg.segment(["red mug"])[1], [-1, -1, 0, -1, 0])
