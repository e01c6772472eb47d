# SPDX-License-Identifier: GPL-3.0-or-later
"""Segmentation metrics on small constructed label maps with answers worked out by hand."""
from __future__ import annotations

import json

import numpy as np
import pytest

from maskfield.evaluate import (
    EvaluationError,
    SegmentationMetrics,
    binary_iou,
    boundary_iou,
    boundary_width,
    evaluate_segmentation,
    gt_to_prompt_classes,
    mask_boundary,
    match_prompts_to_objects,
    mean_boundary_iou,
    mean_iou,
    normalize_name,
    pixel_accuracy,
    prompt_labels_to_classes,
)
from maskfield.events import MaskFieldError


def _square(shape, r0, r1, c0, c1, value=1, base=None):
    out = np.zeros(shape, dtype=np.int32) if base is None else base.copy()
    out[r0:r1, c0:c1] = value
    return out


def test_perfect_prediction_scores_one():
    gt = _square((40, 50), 5, 20, 5, 25, 1)
    gt[25:35, 30:45] = 2
    res = evaluate_segmentation(gt.copy(), gt)
    assert res["miou"] == 1.0 and res["accuracy"] == 1.0 and res["mbiou"] == 1.0
    assert res["classes"] == [1, 2]
    assert res["iou"] == {1: 1.0, 2: 1.0}
    json.dumps(res)  # JSON-ready


def test_half_overlap_by_hand():
    # GT: class 1 on rows 0-3, cols 0-3 (16 px); prediction shifted two columns right.
    gt = _square((10, 10), 0, 4, 0, 4)
    pred = _square((10, 10), 0, 4, 2, 6)
    res = evaluate_segmentation(pred, gt, boundary=False)
    # I = 4 rows x 2 cols = 8, U = 16 + 16 - 8 = 24
    assert res["iou"][1] == pytest.approx(8 / 24)
    assert res["miou"] == pytest.approx(1 / 3)
    # correct: 8 object pixels + 100 - 24 background pixels labelled background
    assert res["accuracy"] == pytest.approx(84 / 100)
    # with the background as a class: GT bg 84, pred bg 84, I 76, U 92
    res_bg = evaluate_segmentation(pred, gt, boundary=False, include_background=True)
    assert res_bg["classes"] == [0, 1]
    assert res_bg["iou"][0] == pytest.approx(76 / 92)
    assert res_bg["miou"] == pytest.approx((1 / 3 + 76 / 92) / 2)
    assert mean_iou(pred, gt) == pytest.approx(1 / 3)
    assert pixel_accuracy(pred, gt) == pytest.approx(0.84)


def test_missed_and_extra_classes():
    gt = _square((10, 10), 0, 5, 0, 5, 1)
    gt[6:10, 6:10] = 2
    pred = _square((10, 10), 0, 5, 0, 5, 1)
    pred[6:10, 6:10] = 3  # class 2 missed entirely, class 3 is not in the GT
    res = evaluate_segmentation(pred, gt, boundary=False)
    assert res["classes"] == [1, 2]
    assert res["iou"] == {1: 1.0, 2: 0.0}
    assert res["miou"] == pytest.approx(0.5)
    assert res["accuracy"] == pytest.approx((100 - 16) / 100)
    # an explicit class list scores class 3 too (predicted, absent from GT: 0), skips 7
    res = evaluate_segmentation(pred, gt, boundary=False, classes=[1, 2, 3, 7])
    assert res["classes"] == [1, 2, 3]
    assert res["iou"][3] == 0.0
    assert res["miou"] == pytest.approx(1 / 3)


def test_empty_ground_truth_has_no_miou():
    gt = np.zeros((8, 8), dtype=np.uint8)
    res = evaluate_segmentation(gt.copy(), gt)
    assert res["miou"] is None and res["mbiou"] is None and res["classes"] == []
    assert res["accuracy"] == 1.0
    pred = _square((8, 8), 0, 2, 0, 2, 4)
    res = evaluate_segmentation(pred, gt)
    assert res["miou"] is None and res["accuracy"] == pytest.approx(60 / 64)
    assert binary_iou(np.zeros((3, 3), bool), np.zeros((3, 3), bool)) is None
    assert boundary_iou(np.zeros((3, 3), bool), np.zeros((3, 3), bool)) is None


def test_accumulation_over_views_dataset_vs_view():
    gt = _square((10, 10), 0, 4, 0, 4)
    pred_shift = _square((10, 10), 0, 4, 2, 6)  # I 8, U 24
    views_p = [pred_shift, gt.copy()]  # second view perfect: I 16, U 16
    views_g = [gt, gt]
    res = evaluate_segmentation(views_p, views_g, boundary=False)
    assert res["views"] == 2 and res["pixels"] == 200
    assert res["iou"][1] == pytest.approx((8 + 16) / (24 + 16))
    assert res["accuracy"] == pytest.approx((84 + 100) / 200)
    res_v = evaluate_segmentation(views_p, views_g, boundary=False, average="view")
    assert res_v["miou"] == pytest.approx((1 / 3 + 1) / 2)
    assert res_v["iou"][1] == pytest.approx((1 / 3 + 1) / 2)
    # a V x H x W array is the same as a list of views, and the accumulator agrees
    res_arr = evaluate_segmentation(np.stack(views_p), np.stack(views_g), boundary=False)
    assert res_arr["miou"] == pytest.approx(res["miou"])
    m = SegmentationMetrics(boundary=False)
    for p, g in zip(views_p, views_g):
        m.update(p, g)
    assert len(m) == 2 and m.compute()["miou"] == pytest.approx(0.6)


def test_views_of_different_sizes():
    a = _square((10, 10), 0, 4, 0, 4)
    b = _square((6, 20), 0, 3, 0, 5)
    res = evaluate_segmentation([a, b], [a, b])
    assert res["miou"] == 1.0 and res["pixels"] == 220


def test_ignore_index_excludes_pixels():
    gt = _square((10, 10), 0, 4, 0, 4)
    gt[:, 8:] = 255  # unlabelled columns
    pred = _square((10, 10), 0, 4, 0, 4)
    pred[:, 8:] = 1  # predictions there do not count
    res = evaluate_segmentation(pred, gt, ignore_index=255)
    assert res["miou"] == 1.0 and res["accuracy"] == 1.0 and res["pixels"] == 80
    assert res["mbiou"] == 1.0
    res_no_ignore = evaluate_segmentation(pred, gt, boundary=False)
    assert res_no_ignore["classes"] == [1, 255]
    assert res_no_ignore["iou"][1] == pytest.approx(16 / 36)


def test_boundary_width():
    assert boundary_width((100, 100)) == 3  # round(0.02 * 141.42) = round(2.83)
    assert boundary_width((10, 10)) == 1  # at least 1
    assert boundary_width((1080, 1920)) == 44  # round(0.02 * 2202.9)


def test_mask_boundary_band():
    m = np.zeros((20, 20), bool)
    m[5:15, 5:15] = True  # 10 x 10
    band = mask_boundary(m, 2)
    assert band.sum() == 100 - 36  # everything but the inner 6 x 6
    assert not band[7:13, 7:13].any() and band[5:15, 5:7].all()
    # the frame counts as outside: a full image has a band along its edges
    full = np.ones((10, 10), bool)
    assert mask_boundary(full, 1).sum() == 36
    # equals the iterated 3x3 erosion of the reference definition
    from scipy import ndimage

    rng = np.random.default_rng(0)
    blob = ndimage.binary_opening(rng.random((40, 50)) > 0.4, iterations=1)
    for d in (1, 2, 4):
        eroded = ndimage.binary_erosion(blob, structure=np.ones((3, 3)), iterations=d, border_value=0)
        assert np.array_equal(mask_boundary(blob, d), blob & ~eroded)


def test_boundary_iou_of_shifted_square_by_hand():
    # 100 x 100 image: d = 3. GT square rows/cols 40-59 (20 x 20): band = 400 - 14^2 = 204.
    # Prediction shifted right by 2 (cols 42-61). Band overlap: the 6 top/bottom band rows
    # share 18 columns each (108), the 14 middle rows share columns 42 and 59 (28): 136.
    # BIoU = 136 / (204 + 204 - 136) = 0.5. Region IoU = 360 / 440.
    gt = _square((100, 100), 40, 60, 40, 60)
    pred = _square((100, 100), 40, 60, 42, 62)
    assert boundary_iou(pred == 1, gt == 1) == pytest.approx(0.5)
    assert binary_iou(pred == 1, gt == 1) == pytest.approx(360 / 440)
    res = evaluate_segmentation(pred, gt)
    assert res["biou"][1] == pytest.approx(0.5)
    assert res["iou"][1] == pytest.approx(360 / 440)
    assert mean_boundary_iou(pred, gt) == pytest.approx(0.5)
    # boundary IoU punishes the same shift more on a large object than region IoU does
    big_gt = _square((100, 100), 10, 90, 10, 90)
    big_pred = _square((100, 100), 10, 90, 12, 92)
    assert boundary_iou(big_pred == 1, big_gt == 1) < binary_iou(big_pred == 1, big_gt == 1) - 0.3
    # an explicit width overrides the ratio
    assert evaluate_segmentation(pred, gt, boundary_width=3)["mbiou"] == pytest.approx(0.5)


def test_shape_mismatch_and_bad_inputs():
    a = np.zeros((10, 10), np.int32)
    with pytest.raises(EvaluationError, match="shape"):
        evaluate_segmentation(a, np.zeros((10, 11), np.int32))
    with pytest.raises(ValueError):  # EvaluationError is a ValueError ...
        evaluate_segmentation([a, a], [a])
    with pytest.raises(MaskFieldError):  # ... and a MaskFieldError for the CLI
        evaluate_segmentation(a.astype(np.float32), a)
    with pytest.raises(EvaluationError, match="view 1"):
        evaluate_segmentation([a, a], [a, np.zeros((5, 5), np.int32)])
    with pytest.raises(EvaluationError):
        evaluate_segmentation([], [])


def test_prompt_matching_and_relabelling():
    assert normalize_name("The Red_Mug.001") == "red mug"
    objects = {"1": "red_mug", "2": "Table.001", "3": "chair", "4": "table", "5": "coffee mug"}
    matches = match_prompts_to_objects(["Red mug", "table", "lamp"], objects)
    assert matches == [[1], [2, 4], []]
    assert match_prompts_to_objects(["mug"], objects) == [[]]
    assert match_prompts_to_objects(["mug"], objects, partial=True) == [[1, 5]]

    gt = np.array([[0, 1, 2], [3, 4, 5]], dtype=np.uint16)
    assert gt_to_prompt_classes(gt, matches).tolist() == [[0, 1, 2], [0, 2, 0]]
    assert gt_to_prompt_classes(gt, matches, unmatched=255).tolist() == [[0, 1, 2], [255, 2, 255]]
    pred = np.array([[-1, 0, 1], [2, 1, -1]])
    assert prompt_labels_to_classes(pred).tolist() == [[0, 1, 2], [3, 2, 0]]

    # end to end: prompts vs named objects, object 3/5 not asked about -> ignored
    res = evaluate_segmentation(prompt_labels_to_classes(pred), gt_to_prompt_classes(gt, matches, unmatched=255),
                                ignore_index=255, boundary=False)
    assert res["classes"] == [1, 2]
    assert res["iou"] == {1: 1.0, 2: 1.0}
    assert res["accuracy"] == 1.0


def test_prior_mask_iou_is_the_best_mask_per_object_and_view(tmp_path):
    """The priors' own quality (what the mask field is taught): per object and labelled view the
    best IoU of any mask, 0 where none touches it; label images at another size are resized to
    the masks'; views without a label image are skipped."""
    from PIL import Image

    from maskfield.evaluate import prior_mask_iou
    from maskfield.priors.store import Priors, make_meta, save_priors
    from maskfield.priors.text import hash_embed

    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "objects.json").write_text(json.dumps({"1": "red mug", "2": "blue box"}))
    gt = np.zeros((8, 10), np.uint8)
    gt[0:4, 0:4] = 1  # 16 px
    gt[4:8, 5:10] = 2  # 20 px
    Image.fromarray(gt).save(labels / "a.png")
    Image.fromarray(np.kron(gt, np.ones((2, 2), np.uint8))).save(labels / "b.png")  # twice the masks' size

    def priors(name, masks):
        masks = np.asarray(masks, bool)
        meta = make_meta(name, "sha", "labels", "names:hash-512", {})
        return Priors(masks=masks, embeddings=hash_embed([f"m{i}" for i in range(len(masks))]),
                      granularity=np.ones(len(masks), np.int8), scores=np.ones(len(masks), np.float32),
                      image_size=(10, 8), meta=meta)

    exact_mug = gt == 1
    wide_box = np.zeros((8, 10), bool)
    wide_box[4:8, 4:10] = True  # one column too many: 20 / 24
    half_mug = np.zeros((8, 10), bool)
    half_mug[0:2, 0:4] = True  # 8 of its 16 px
    save_priors(tmp_path / "priors" / "a.npz", priors("a", [wide_box, exact_mug]))
    save_priors(tmp_path / "priors" / "b.npz", priors("b", [half_mug]))  # nothing on the box: 0
    save_priors(tmp_path / "priors" / "c.npz", priors("c", [exact_mug]))  # no label image: skipped
    out = prior_mask_iou(tmp_path / "priors", labels)
    assert out["views"] == 2
    assert out["names"] == {1: "red mug", 2: "blue box"}
    assert out["iou"][1] == pytest.approx((1.0 + 0.5) / 2)
    assert out["iou"][2] == pytest.approx((20 / 24 + 0.0) / 2)
    assert out["miou"] == pytest.approx((0.75 + 10 / 24) / 2)
