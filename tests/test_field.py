"""Mask field: query codes, matching, losses, training on constructed views, segmentation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from maskfield.events import MaskFieldError
from maskfield.field.data import FieldView
from maskfield.field.losses import (dice_loss, foreign_penalty, hungarian_match, maskfield_loss, matching_cost,
                                    pairwise_dice_cost, pairwise_focal_cost, sigmoid_focal_loss, unmatched_penalty)
from maskfield.field.queries import QueryNetworks, sinusoidal_codes
from maskfield.field.train import FieldSettings, train_field
from maskfield.run import RunFolder


def test_sinusoidal_codes_are_fixed_distinct_and_bounded():
    codes = sinusoidal_codes(240, 10)
    assert codes.shape == (240, 20)
    assert torch.equal(codes, sinusoidal_codes(240, 10))
    assert codes.abs().max() <= 1
    d = torch.cdist(codes, codes) + torch.eye(240) * 10
    assert d.min() > 1e-3
    q = QueryNetworks(240, 16, 512)
    m, c = q()
    assert m.shape == (240, 16) and c.shape == (240, 512)
    assert not any(p.requires_grad for p in q.buffers())


def test_pairwise_costs_equal_the_per_pair_losses():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 30, generator=gen) * 3
    targets = (torch.rand(4, 30, generator=gen) > 0.5).float()
    focal = pairwise_focal_cost(logits, targets)
    dice = pairwise_dice_cost(logits, targets)
    for i in range(5):
        for j in range(4):
            assert focal[i, j] == pytest.approx(float(sigmoid_focal_loss(logits[i:i + 1], targets[j:j + 1])), abs=1e-6)
            assert dice[i, j] == pytest.approx(float(dice_loss(logits[i:i + 1], targets[j:j + 1])), abs=1e-6)


def test_hungarian_matching_recovers_a_permutation():
    gen = torch.Generator().manual_seed(1)
    targets = (torch.rand(4, 50, generator=gen) > 0.5).float()
    emb = torch.nn.functional.normalize(torch.randn(4, 8, generator=gen), dim=-1)
    perm = [2, 0, 3, 1]
    logits = torch.full((6, 50), -8.0)
    q_emb = torch.randn(6, 8, generator=gen)
    for q, j in enumerate(perm):
        logits[q] = (targets[j] * 2 - 1) * 8
        q_emb[q] = emb[j]
    rows, cols = hungarian_match(matching_cost(logits, targets, q_emb, emb))
    assert dict(zip(rows.tolist(), cols.tolist())) == {q: j for q, j in enumerate(perm)}
    losses = maskfield_loss(logits, targets, q_emb, emb, rows, cols)
    assert losses["cos"] < 1e-5 and losses["focal"] < 1e-3 and losses["dice"] < 0.05
    assert losses["unmatched"] < 1e-6  # queries 4 and 5 predict empty masks


def test_unmatched_penalty_is_the_mean_square_probability_of_the_unmatched_rows_only():
    gen = torch.Generator().manual_seed(3)
    logits = (torch.randn(7, 40, generator=gen) * 2).requires_grad_()
    rows = np.array([5, 1, 3])
    penalty = unmatched_penalty(logits, rows)
    keep = [0, 2, 4, 6]
    expected = torch.sigmoid(logits.detach()[keep]).square().mean()
    torch.testing.assert_close(penalty, expected)
    penalty.backward()
    assert torch.count_nonzero(logits.grad[rows]) == 0  # matched queries are not pushed to empty
    assert bool((logits.grad[keep] > 0).all())  # every unmatched probability is pushed down
    everything = torch.zeros(3, 40, requires_grad=True)
    assert float(unmatched_penalty(everything, np.arange(3))) == 0.0  # all matched: nothing to push


def test_foreign_penalty_keeps_unmatched_queries_off_masks_of_other_meanings():
    """A query that means the sofa, unmatched in a view of the lamp, is pushed off the lamp's
    mask with a matched query's weight; a query of the lamp's own meaning (a second lamp query)
    is not, nor is any query off the masks, nor the matched ones."""
    emb = torch.eye(3, 8)  # sofa, lamp, floor
    query_embed = torch.stack([emb[0], emb[1], emb[1] * 0.9 + emb[2] * 0.1, emb[2]])  # q0 sofa, q1/q2 lamp, q3 floor
    targets = torch.zeros(2, 10)
    targets[0, :4] = 1.0  # the lamp's mask
    targets[1, 4:8] = 1.0  # the floor's
    mask_embed = torch.stack([emb[1], emb[2]])
    logits = torch.full((4, 10), -6.0)
    logits[0, :4] = 3.0  # the sofa's query lights the lamp
    logits[2, :4] = 3.0  # so does the lamp's second query
    logits[0, 8:] = 3.0  # and the sofa's lights pixels no mask covers
    logits.requires_grad_()
    rows, cols = np.array([1, 3]), np.array([0, 1])  # lamp -> q1, floor -> q3
    penalty = foreign_penalty(logits, targets, query_embed, mask_embed, rows, cols, max_cos=0.5)
    p = torch.sigmoid(torch.tensor(3.0))
    dark = torch.sigmoid(torch.tensor(-6.0)) ** 2 * torch.nn.functional.softplus(torch.tensor(-6.0))
    # the focal loss at 0: q0 on the lamp's 4 pixels and the floor's 4 (dark), q2 on the floor's
    expected = 0.75 * (p ** 2 * torch.nn.functional.softplus(torch.tensor(3.0)) * 4 + dark * 8) / 10 / 2
    assert float(penalty) == pytest.approx(float(expected), rel=1e-4)
    penalty.backward()
    grad = logits.grad
    assert bool((grad[0, :4] > 0).all())  # pushed down where the lamp is
    assert torch.count_nonzero(grad[0, 8:]) == 0  # not off every mask, though it lights them
    assert bool((grad[0, 4:8] < 1e-6 * grad[0, 0]).all())  # the floor is foreign too, but dark already
    assert torch.count_nonzero(grad[2, :4]) == 0  # the lamp's own meaning may light the lamp
    assert torch.count_nonzero(grad[[1, 3]]) == 0  # matched queries have their own loss
    assert float(foreign_penalty(logits, targets, query_embed, mask_embed, np.array([], int), np.array([], int),
                                 0.5)) == 0.0


def test_the_foreign_term_is_on_where_the_views_do_not_share_their_objects():
    from maskfield.field.train import MaskField, field_loss, resolved_foreign_weight

    auto = FieldSettings()
    assert auto.foreign_weight is None
    assert resolved_foreign_weight(auto, 0.06) == 1.0  # a room filmed from inside
    assert resolved_foreign_weight(auto, 0.9) == 0.0  # an orbit
    assert resolved_foreign_weight(FieldSettings(foreign_weight=0.3), 0.9) == 0.3  # asked for
    views, _, _ = _constructed_views()
    losses = {}
    for weight in (0.0, 1.0):
        settings = FieldSettings(iterations=1, num_queries=12, feature_dim=8, foreign_weight=weight, sample_pixels=0)
        field = MaskField(60, 8, settings)
        losses[weight] = float(field_loss(field, views[0], settings.dice_weight, 0.0, None, 0, None,
                                          (settings.foreign_weight, settings.foreign_max_cos, 0)))
    assert losses[1.0] > losses[0.0]  # fresh queries light everything, other meanings' masks too


def test_mask_cores_leave_out_the_jittered_edge_but_not_the_image_border():
    targets = torch.zeros(1, 8 * 10)
    mask = torch.zeros(8, 10)
    mask[2:7, 0:6] = 1.0  # touches the left border
    targets[0] = mask.reshape(-1)
    view = FieldView(name="v", weights=None, alpha=torch.ones(80), targets=targets, embeddings=torch.ones(1, 4),
                     supervised=torch.ones(80, dtype=torch.bool), width=10, height=8)
    core = view.supervised_cores(1).reshape(8, 10)
    assert core.dtype == torch.bool
    assert bool(core[3:6, 0:5].all()) and int(core.sum()) == 15  # one pixel off the edge, none off the border
    assert int(view.supervised_cores(0).sum()) == 30


def _constructed_views(num_gaussians=60, seed=0):
    """Three groups of Gaussians (objects); each view sees all of them through a random
    sparse weight matrix and carries one mask per object with a distinct embedding."""
    rng = np.random.default_rng(seed)
    group = np.repeat(np.arange(3), num_gaussians // 3)
    emb = np.eye(3, 8, dtype=np.float32)
    views = []
    for v in range(4):
        pixels = 80
        owner = rng.integers(0, num_gaussians, pixels)  # each pixel mostly one Gaussian
        rows, cols, vals = [], [], []
        for p, g in enumerate(owner):
            rows += [p, p]
            cols += [g, rng.integers(0, num_gaussians)]
            vals += [0.9, 0.05]
        W = torch.sparse_coo_tensor(torch.tensor([rows, cols]), torch.tensor(vals), (pixels, num_gaussians))
        targets = torch.tensor(np.stack([(group[owner] == k) for k in range(3)]).astype(np.float32))
        views.append(FieldView(f"v{v}", W.coalesce().to_sparse_csr(), torch.ones(pixels), targets,
                               torch.tensor(emb), torch.ones(pixels, dtype=torch.bool), pixels, 1))
    return views, group, emb


def test_training_separates_the_objects_and_segmentation_finds_them(tmp_path):
    views, group, emb = _constructed_views()
    settings = FieldSettings(iterations=300, num_queries=12, checkpoint_every=100)
    run = RunFolder(tmp_path / "run")
    field, result = train_field(views, 60, 8, run, settings)
    assert (tmp_path / "run" / "field.pt").exists()
    with torch.no_grad():
        m, c = field.queries()
        probs = torch.sigmoid(field.features @ m.T)  # per-Gaussian, per-query
        c = torch.nn.functional.normalize(c, dim=-1)
    for k in range(3):
        q = int(torch.argmax(c @ torch.tensor(emb[k])))  # the query whose meaning is object k
        selected = probs[:, q].numpy() >= 0.5
        iou = (selected & (group == k)).sum() / (selected | (group == k)).sum()
        assert iou > 0.9, f"object {k}: IoU {iou:.2f}"


    # A segmenter asked for CUDA keeps the field on the CPU, where its numpy work runs (on the
    # GPU check's H200, mixing the two devices crashed `maskfield segment`); here, without a
    # GPU, loading the field onto CUDA would fail outright.
    from maskfield.segment import Segmenter
    from maskfield.splats.model import Gaussians
    from maskfield.splats.ply import write_ply

    write_ply(run.gaussians_ply, Gaussians.from_points(np.random.default_rng(0).normal(size=(60, 3)), init_opacity=0.9))
    seg = Segmenter(run, device="cuda", text_encoder=lambda texts: emb[: len(texts)])
    assert seg.features.device.type == "cpu" and seg.mask_embed.device.type == "cpu"
    direct = (probs >= 0.5).numpy()
    labels = seg.features @ seg.mask_embed.T
    np.testing.assert_array_equal((torch.sigmoid(labels) >= 0.5).numpy(), direct)
    # the queries' calibrated offsets come with the field and enter every logit it gives
    from maskfield.field.train import load_field

    offset = load_field(run.field_checkpoint)[2]["query_offset"]
    torch.testing.assert_close(seg.query_offset, offset)
    torch.testing.assert_close(seg.query_logits(seg.features), labels + offset)


def test_embedding_size_mismatch_is_refused(tmp_path):
    views, _, _ = _constructed_views()
    with pytest.raises(MaskFieldError, match="dimensions"):
        train_field(views, 60, 512, RunFolder(tmp_path / "r"), FieldSettings(iterations=5, num_queries=4))


def test_training_on_the_apple_gpu_is_refused_with_what_to_do(tmp_path):
    """A direct caller asking for MPS is told to train on the CPU, before anything is written
    (the CLI moves the field to the CPU by itself)."""
    views, _, _ = _constructed_views()
    with pytest.raises(MaskFieldError, match="device='cpu'"):
        train_field(views, 60, 8, RunFolder(tmp_path / "r"), FieldSettings(iterations=5, num_queries=4), device="mps")
    assert not (tmp_path / "r").exists()


def test_nan_stops_training_and_keeps_the_last_good_state(tmp_path):
    views, _, _ = _constructed_views()
    bad = views[0]
    views = [FieldView(bad.name, bad.weights, bad.alpha, bad.targets * float("nan"), bad.embeddings, bad.supervised,
                       bad.width, bad.height)]
    with pytest.raises(MaskFieldError, match="step 0, view v0"):
        train_field(views, 60, 8, RunFolder(tmp_path / "r"), FieldSettings(iterations=5, num_queries=4))
    assert not (tmp_path / "r" / "field.pt").exists()


def test_a_nan_after_a_checkpoint_keeps_that_checkpoint_with_its_average_and_matches(tmp_path, monkeypatch):
    """The loss turning NaN leaves the progress file at the last checkpoint, whole: its running
    average and match statistics too, so a resumed run averages every step of its window."""
    import maskfield.field.train as train_module

    real_loss = train_module.field_loss
    calls = []

    def nan_at_step_10(field, view, *args, **kwargs):
        calls.append(view.name)
        loss = real_loss(field, view, *args, **kwargs)
        return loss * float("nan") if len(calls) == 11 else loss

    monkeypatch.setattr(train_module, "field_loss", nan_at_step_10)
    views, _, _ = _constructed_views()
    # steps 6.. are averaged and their matches recorded; a checkpoint after step 7
    settings = FieldSettings(iterations=12, num_queries=12, average_last=0.5, checkpoint_every=8)
    run = RunFolder(tmp_path / "r")
    with pytest.raises(MaskFieldError, match=r"at step 10, view v\d; the last good state \(step 8\) is kept"):
        train_field(views, 60, 8, run, settings)
    kept = torch.load(run.field_progress, weights_only=False)
    assert kept["step"] == 8 and not run.field_checkpoint.exists()
    assert int(kept["average"]["n_averaged"]) == 2  # steps 6 and 7
    assert not torch.equal(kept["average"]["module.features"], kept["field"]["features"])
    assert kept["match_stats"]["matched"].sum() == 2 * 3  # two steps, three masks a view

    monkeypatch.setattr(train_module, "field_loss", real_loss)
    _, result = train_field(views, 60, 8, run, settings)  # resumes at step 8
    assert result["steps"] == 4 and run.field_checkpoint.exists()
    final = torch.load(run.field_progress, weights_only=False)
    assert int(final["average"]["n_averaged"]) == 6  # steps 6 to 11
    assert final["match_stats"]["matched"].sum() == 6 * 3


def test_frozen_blend_matches_a_dense_product_in_value_and_gradient():
    views, _, _ = _constructed_views()
    view = views[0]
    view.supervised = torch.arange(80) % 3 != 0  # some pixels unsupervised
    dense = view.weights.to_dense()[view.supervised]
    f = torch.randn(60, 5, dtype=torch.float32, requires_grad=True)
    f_dense = f.detach().clone().requires_grad_()
    g = torch.randn(int(view.supervised.sum()), 5)
    out = view.blend(f)
    torch.testing.assert_close(out, dense @ f_dense)
    (out * g).sum().backward()
    (dense @ f_dense * g).sum().backward()
    torch.testing.assert_close(f.grad, f_dense.grad)
    torch.testing.assert_close(view.supervised_targets(), view.targets[:, view.supervised])


def test_gaussian_shares_and_the_per_gaussian_loss_by_hand():
    from maskfield.field.data import gaussian_shares
    from maskfield.field.train import gaussian_mask_loss

    # pixel 0: Gaussian 0 (0.6) over Gaussian 2 (0.3); pixel 1: Gaussian 2 (1.0); pixel 2 unsupervised
    W = torch.sparse_coo_tensor(torch.tensor([[0, 0, 1, 2], [0, 2, 2, 1]]), torch.tensor([0.6, 0.3, 1.0, 1.0]),
                                (3, 3)).coalesce().to_sparse_csr()
    targets = torch.tensor([[1.0, 0.0, 1.0]])  # one mask: pixel 0 (and unsupervised pixel 2)
    supervised = torch.tensor([True, True, False])
    view = FieldView("v", W, torch.ones(3), targets, torch.ones(1, 4), supervised, 3, 1)
    index, share, weight = gaussian_shares(view.supervised_weights()[1], view.supervised_targets())
    assert index.tolist() == [0, 2]  # Gaussian 1 paints only the unsupervised pixel
    torch.testing.assert_close(share, torch.tensor([[0.6], [0.3]]))
    torch.testing.assert_close(weight, torch.tensor([0.6, 1.3]))

    view.with_gaussian_shares()
    assert view.gaussian_index.tolist() == [0, 2]
    features = torch.tensor([[2.0], [0.0], [-1.0]])
    m = torch.tensor([[1.5]])
    l0, l2 = 3.0, -1.5  # each Gaussian's own logit
    sp = torch.nn.functional.softplus
    expected = (0.6 * sp(torch.tensor(-l0)) + 0.3 * sp(torch.tensor(-l2)) + 1.0 * sp(torch.tensor(l2))) / 1.9
    torch.testing.assert_close(gaussian_mask_loss(features, m, view, np.array([0]), np.array([0])), expected)


def test_edge_band_weights_spare_the_inside_the_outside_and_thin_parts():
    from maskfield.field.data import edge_band_weights

    mask = np.zeros((12, 16), bool)
    mask[2:8, 2:8] = True  # a 6x6 square
    mask[4, 8:15] = True  # a stem one pixel thin leaving its right side
    w = edge_band_weights(mask[None], 0.25)[0]
    assert w.shape == mask.shape and w.dtype == np.float32
    assert (w[3:7, 3:7] == 1).all()  # the square's inside
    assert (w[2, 3:7] == 0.25).all() and (w[3:7, 2] == 0.25).all() and (w[7, 3:7] == 0.25).all()  # its edge
    assert (w[1, 3:7] == 0.25).all() and (w[3:7, 1] == 0.25).all() and (w[8, 3:7] == 0.25).all()  # beside it
    assert w[2, 2] == 1 and w[1, 1] == 1 and w[10, 10] == 1  # a corner pixel is thin to a cross; far away
    assert (w[3:6, 9:15] == 1).all() and w[4, 15] == 1  # the stem and the pixels beside it
    assert w[4, 8] == 0.25  # where the stem meets the square: the square's edge
    assert (edge_band_weights(np.zeros((2, 5, 5), bool), 0.5) == 1).all()


def test_pixel_weights_take_the_band_out_of_the_matched_losses():
    from maskfield.field.losses import loss_terms

    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(3, 40, generator=gen, requires_grad=True)
    targets = (torch.rand(3, 40, generator=gen) > 0.5).float()
    weights = torch.ones(3, 40)
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets, weights), sigmoid_focal_loss(logits, targets))
    torch.testing.assert_close(dice_loss(logits, targets, weights), dice_loss(logits, targets))
    weights[:, :10] = 0.0  # pixels 0-9 out: what the field predicts there no longer matters
    emb = torch.randn(3, 8, generator=gen)
    rows, cols = np.arange(3), np.arange(3)
    loss = loss_terms(logits, targets, emb, emb, rows, cols, logits.sum() * 0, pixel_weights=weights)
    loss["total"].backward()
    assert logits.grad[:, :10].abs().max() == 0 and logits.grad[:, 10:].abs().min() > 0
    torch.testing.assert_close(dice_loss(logits, targets, weights), dice_loss(logits[:, 10:], targets[:, 10:]))
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets, weights),
                               sigmoid_focal_loss(logits[:, 10:], targets[:, 10:]) * 30 / 40)


def test_the_per_gaussian_loss_counts_each_pixel_by_its_weight():
    from maskfield.field.train import gaussian_mask_loss

    # pixels 0-2 in a row; Gaussian 0 paints pixels 0 and 1, Gaussian 1 pixels 1 and 2; one mask over pixel 0 and 1
    W = torch.sparse_coo_tensor(torch.tensor([[0, 1, 1, 2], [0, 0, 1, 1]]), torch.tensor([1.0, 0.5, 0.5, 1.0]),
                                (3, 2)).coalesce().to_sparse_csr()
    targets = torch.tensor([[1.0, 1.0, 0.0]])
    view = FieldView("v", W, torch.ones(3), targets, torch.ones(1, 4), torch.ones(3, dtype=torch.bool), 3, 1)
    view.mask_pixel_weights = torch.tensor([[1.0, 0.2, 1.0]])  # pixel 1 on the mask's edge
    view.with_gaussian_shares()
    torch.testing.assert_close(view.gaussian_share, torch.tensor([[1.1], [0.1]]))
    torch.testing.assert_close(view.gaussian_mask_weight, torch.tensor([[1.1], [1.1]]))
    features = torch.tensor([[1.0], [-2.0]])
    sp = torch.nn.functional.softplus
    l0, l1 = torch.tensor(1.0), torch.tensor(-2.0)
    # by pixel: w_pg * c_p * BCE(l_g, t_p), over the unweighted blending weight (3.0)
    expected = (1.0 * sp(-l0) + 0.5 * 0.2 * sp(-l0) + 0.5 * 0.2 * sp(-l1) + 1.0 * sp(l1)) / 3.0
    torch.testing.assert_close(gaussian_mask_loss(features, torch.tensor([[1.0]]), view, np.array([0]), np.array([0])),
                               expected)
    view.set_edge_weight(1.0)  # every pixel alike again: the shares are recomputed without weights
    assert view.mask_pixel_weights is None and view.gaussian_index is None
    view.with_gaussian_shares()
    assert view.gaussian_mask_weight is None
    torch.testing.assert_close(view.gaussian_share, torch.tensor([[1.5], [0.5]]))


def test_training_weighs_the_edge_band_as_its_setting_says(tmp_path):
    # one 12x12 view, a Gaussian per pixel; mask 0 a 6x6 square, mask 1 the rest
    side = 12
    eye = torch.eye(side * side).to_sparse_csr()
    square = np.zeros((side, side), bool)
    square[3:9, 3:9] = True
    targets = torch.tensor(np.stack([square, ~square]).reshape(2, -1).astype(np.float32))

    def view():
        return FieldView("v", eye, torch.ones(side * side), targets.clone(), torch.eye(2, 8),
                         torch.ones(side * side, dtype=torch.bool), side, side)

    banded = view()
    train_field([banded], side * side, 8, RunFolder(tmp_path / "banded"),
                FieldSettings(iterations=3, num_queries=4, edge_weight=0.25))
    weights = banded.mask_pixel_weights.float().reshape(2, side, side)
    assert weights[0, 3, 4] == 0.25 and weights[0, 2, 4] == 0.25 and weights[0, 5, 5] == 1  # edge, beside, inside
    assert weights[1, 3, 4] == 0.25 and weights[1, 0, 0] == 1  # the other side's mask: the same edge
    assert banded.gaussian_mask_weight is not None  # the per-Gaussian loss took the weights too
    plain = view()
    train_field([plain], side * side, 8, RunFolder(tmp_path / "plain"),
                FieldSettings(iterations=3, num_queries=4, edge_weight=1.0))
    assert plain.mask_pixel_weights is None and plain.gaussian_mask_weight is None


def test_field_sample_pixels_option_reaches_the_settings():
    from maskfield import cli

    parser = cli.build_parser()
    args = parser.parse_args(["train-field", "run", "--field-sample-pixels", "1024"])
    assert cli._field_settings(args, "cpu").sample_pixels == 1024
    args = parser.parse_args(["train-field", "run", "--field-sample-pixels", "0"])  # 0: every pixel
    assert cli._field_settings(args, "cpu").sample_pixels == 0
    args = parser.parse_args(["train-field", "run"])
    assert cli._field_settings(args, "cpu").sample_pixels == FieldSettings().sample_pixels
    with pytest.raises(SystemExit):
        parser.parse_args(["train-field", "run", "--field-sample-pixels", "-5"])
    assert not cli._field_settings(parser.parse_args(["train-field", "run", "--mixed-queries"]), "cpu").query_levels
    assert cli._field_settings(parser.parse_args(["train", "scene", "--out", "run"]), "cpu").query_levels
    assert not cli._field_settings(parser.parse_args(["train-field", "run", "--uncalibrated-queries"]),
                                   "cpu").calibrate_queries
    assert cli._field_settings(parser.parse_args(["train-field", "run"]), "cpu").calibrate_queries
    assert cli._field_settings(parser.parse_args(["train-field", "run", "--field-average-last", "0"]),
                               "cpu").average_last == 0.0
    assert cli._field_settings(parser.parse_args(["train", "scene", "--out", "run"]), "cpu").average_last == \
        FieldSettings().average_last
    with pytest.raises(SystemExit):
        parser.parse_args(["train-field", "run", "--field-average-last", "1.5"])
    # `train` hands each of them to its mask-field stage
    train = parser.parse_args(["train", "scene", "--out", "run", "--mixed-queries", "--field-average-last", "0.5",
                               "--field-sample-pixels", "512", "--dice-weight", "0.2", "--field-edge-weight", "0.5",
                               "--uncalibrated-queries", "--field-lr-final", "0.5"])
    through = cli._field_settings(cli._train_field_args(train, "cpu"), "cpu")
    assert (through.query_levels, through.average_last, through.sample_pixels, through.dice_weight,
            through.edge_weight, through.calibrate_queries, through.lr_final_fraction) == \
        (False, 0.5, 512, 0.2, 0.5, False, 0.5)
    assert cli._field_settings(parser.parse_args(["train-field", "run"]), "cpu").lr_final_fraction == \
        FieldSettings().lr_final_fraction
    for bad in ("0", "1.5"):  # a rate that falls to nothing, or grows, is refused
        with pytest.raises(SystemExit):
            parser.parse_args(["train-field", "run", "--field-lr-final", bad])
    assert cli._field_settings(parser.parse_args(["train-field", "run"]), "cpu").edge_weight == \
        FieldSettings().edge_weight
    with pytest.raises(SystemExit):
        parser.parse_args(["train-field", "run", "--field-edge-weight", "-0.1"])
    assert cli._train_field_args(train, "cpu").run == "run"


def _same_csr(a, b):
    return (torch.equal(a.crow_indices(), b.crow_indices()) and torch.equal(a.col_indices(), b.col_indices())
            and torch.equal(a.values(), b.values()) and a.shape == b.shape)


def test_counting_sort_csr_matches_pytorchs_coalesce():
    """The CPU path (field/sparse_cpu.py) builds the very matrices the COO reference does:
    the blending matrix from pairs in any order, its supervised rows and their transpose."""
    from maskfield.field import data

    gen = torch.Generator().manual_seed(3)
    n_pix, n_gauss = 300, 500
    key = torch.randperm(n_pix * n_gauss, generator=gen)[:4000]  # unique pairs, shuffled
    rows, cols, vals = key // n_gauss, key % n_gauss, torch.rand(4000, generator=gen)
    w_cpu = data._pairs_csr_cpu(rows, cols, vals, (n_pix, n_gauss))
    w_ref = data._pairs_csr_torch(rows, cols, vals, (n_pix, n_gauss))
    assert _same_csr(w_cpu, w_ref)
    supervised = torch.rand(n_pix, generator=gen) > 0.3
    supervised[:5] = False  # leading and trailing rows left out
    supervised[-5:] = False
    for got, want in zip(data._supervised_csr_cpu(w_ref, supervised), data._supervised_csr_torch(w_ref, supervised)):
        assert _same_csr(got, want)
    dense = w_ref.to_dense()[supervised]
    w_sup, wt_sup = data._supervised_csr_cpu(w_ref, supervised)
    assert torch.equal(w_sup.to_dense(), dense) and torch.equal(wt_sup.to_dense(), dense.T)


class _IndexOnSameDevice(torch.overrides.TorchFunctionMode):
    """Fails any index_select whose index lives on another device than its input: on CUDA that is
    a crash, on the CPU it would pass unseen, so the test runs on the 'meta' device."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.Tensor.index_select, torch.index_select):
            source, index = args[0], args[2] if len(args) > 2 else kwargs["index"]
            assert index.device == source.device, f"index on {index.device}, input on {source.device}"
        return func(*args, **kwargs)


def test_the_per_gaussian_loss_indexes_on_its_tensors_device():
    # Found by the GPU check: the matched rows and columns were indexed from CPU tensors.
    from maskfield.field.train import gaussian_mask_loss

    view = FieldView("v", None, torch.ones(3), torch.zeros(1, 3), torch.ones(1, 4), torch.ones(3, dtype=torch.bool),
                     3, 1)
    view.gaussian_index = torch.tensor([0, 2], device="meta")
    view.gaussian_share = torch.ones(2, 1, device="meta")
    view.gaussian_weight = torch.ones(2, device="meta")
    features, m = torch.zeros(3, 1, device="meta"), torch.zeros(1, 1, device="meta")
    with _IndexOnSameDevice():
        loss = gaussian_mask_loss(features, m, view, np.array([0]), np.array([0]))
    assert loss.device.type == "meta" and loss.shape == ()


def _level_view(levels, pixels=6):
    """A view whose masks have the given SAM granularities (targets and embeddings arbitrary)."""
    m = len(levels)
    gen = torch.Generator().manual_seed(m)
    return FieldView("v", torch.eye(pixels).to_sparse_csr(), torch.ones(pixels), (torch.rand(m, pixels, generator=gen) > 0.5).float(),
                     torch.nn.functional.normalize(torch.randn(m, 8, generator=gen), dim=-1),
                     torch.ones(pixels, dtype=torch.bool), pixels, 1,
                     granularity=torch.tensor(levels, dtype=torch.int8), mask_area=torch.full((m,), 0.5))


def test_queries_are_dealt_to_levels_by_the_busiest_view_of_each():
    from maskfield.field.train import allot_query_levels

    # one-object masks (parts 0 and objects 1) against groups (2): the busiest views have 5 and
    # 1 (6 needed); 24 queries: 18 spare in 5:1
    views = [_level_view([0, 0, 0, 1, 1]), _level_view([1, 1, 1, 1, 2]), _level_view([0, 1])]
    levels = allot_query_levels(views, 24)
    counts = np.bincount(levels, minlength=2)
    assert counts.tolist() == [5 + 15, 1 + 3]
    assert np.all(np.diff(levels) >= 0)  # one block per level
    # a level no mask has gets no query; unknown granularity (-1) is ignored in the count
    assert np.bincount(allot_query_levels([_level_view([1, 0, -1])], 10), minlength=2).tolist() == [10, 0]
    # no recorded granularity, or too few queries for the busiest views: every query serves any
    assert (allot_query_levels([_level_view([-1, -1])], 10) == -1).all()
    assert (allot_query_levels(views, 5) == -1).all()


def test_level_mismatch_is_priced_out_of_the_matching():
    from maskfield.field.losses import LEVEL_MISMATCH_COST, forbid_other_levels, match_levels

    granularity = torch.tensor([0, 1, 2, -1], dtype=torch.int8)
    assert match_levels(granularity).tolist() == [0, 0, 1, -1]  # a part is one object's
    cost = torch.zeros(3, 4)
    query_level = torch.tensor([0, 1, -1], dtype=torch.int8)
    priced = forbid_other_levels(cost, query_level, granularity)
    expected = torch.tensor([[0, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.float32) * LEVEL_MISMATCH_COST
    assert torch.equal(priced, expected)
    assert forbid_other_levels(cost, torch.full((3,), -1, dtype=torch.int8), granularity) is cost
    assert forbid_other_levels(cost, query_level, None) is cost
    # the cheapest assignment without levels gives query 0 the group mask; with them it cannot
    cost = torch.tensor([[0.0, 5.0], [5.0, 5.0]])
    rows, cols = hungarian_match(forbid_other_levels(cost, torch.tensor([0, 1], dtype=torch.int8),
                                                     torch.tensor([2, 1], dtype=torch.int8)))
    assert dict(zip(rows.tolist(), cols.tolist())) == {0: 1, 1: 0}


def test_training_keeps_every_query_to_its_level(tmp_path):
    """Parts, objects and groups of the constructed scene: with levels, no query is ever
    matched to both a group mask and a one-object mask, and the field still separates the objects."""
    views, group, emb = _constructed_views()
    for k, view in enumerate(views):  # alternate views call the same masks parts / objects / groups
        view.granularity = torch.tensor([(k + j) % 3 for j in range(view.targets.shape[0])], dtype=torch.int8)
        view.mask_area = view.targets.mean(1)
    settings = FieldSettings(iterations=300, num_queries=12, checkpoint_every=100, query_levels=True)
    field, _ = train_field(views, 60, 8, RunFolder(tmp_path / "run"), settings)
    levels = field.query_level.numpy()
    assert (levels >= 0).all() and set(levels.tolist()) == {0, 1}
    saved = torch.load(tmp_path / "run" / "field.pt", weights_only=False)
    counts = np.asarray(saved["match_stats"]["granularity_counts"])  # (K, 3): part, object, group
    assert counts.sum() > 0
    for q in np.nonzero(counts.sum(1))[0]:
        one_object, groups = counts[q, :2].sum(), counts[q, 2]
        assert (groups if levels[q] == 0 else one_object) == 0, (q, counts[q], levels[q])
    np.testing.assert_array_equal(saved["query_level"].numpy(), levels)
    with torch.no_grad():
        m, _ = field.queries()
        probs = torch.sigmoid(field.features @ m.T).numpy() >= 0.5
    for k in range(3):  # some query still selects object k alone
        takers = [q for q in range(12) if probs[group == k, q].mean() > 0.5]
        best = max(((probs[:, q] & (group == k)).sum() / (probs[:, q] | (group == k)).sum() for q in takers), default=0)
        assert best > 0.9, f"object {k}: IoU {best:.2f}"
    # without levels (the setting off) a query takes both groups and one-object masks
    loose = FieldSettings(iterations=300, num_queries=12, checkpoint_every=100, query_levels=False)
    field, _ = train_field(views, 60, 8, RunFolder(tmp_path / "loose"), loose)
    assert (field.query_level.numpy() == -1).all()
    counts = np.asarray(torch.load(tmp_path / "loose" / "field.pt", weights_only=False)["match_stats"]["granularity_counts"])
    assert ((counts[:, :2].sum(1) > 0) & (counts[:, 2] > 0)).any()


def test_the_field_is_the_mean_of_its_last_iterates_across_a_cancel_and_resume(tmp_path, monkeypatch):
    """With ``average_last`` the saved field is the mean of the last steps' iterates, and a run
    cancelled inside that window and resumed still averages every one of them."""
    import maskfield.field.train as train_module
    from maskfield.events import Cancelled, Reporter
    from maskfield.field.train import load_field

    iterates = []

    class RecordingAdam(train_module.Adam):  # the features after every optimiser step
        def step(self, *args, **kwargs):
            out = super().step(*args, **kwargs)
            iterates.append(self.param_groups[0]["params"][0].detach().clone())
            return out

    class CancelAfter(Reporter):
        def __init__(self, steps: int):
            super().__init__("none")
            self.steps, self.calls = steps, 0

        def check_cancel(self):
            self.calls += 1
            if self.calls > self.steps:
                raise Cancelled("cancelled by the test")

    monkeypatch.setattr(train_module, "Adam", RecordingAdam)
    views, _, _ = _constructed_views()
    settings = FieldSettings(iterations=20, num_queries=12, average_last=0.25, checkpoint_every=100)
    run = RunFolder(tmp_path / "run")
    with pytest.raises(Cancelled):
        train_field(views, 60, 8, run, settings, reporter=CancelAfter(17))  # steps 15 and 16 averaged
    assert len(iterates) == 17 and not run.field_checkpoint.exists()
    field, _ = train_field(views, 60, 8, run, settings)  # resumes at step 17
    assert len(iterates) == 20
    expected = torch.stack(iterates[15:]).mean(0)
    assert not torch.allclose(expected, iterates[-1], atol=1e-4)  # the steps still move the features
    torch.testing.assert_close(field.features.detach(), expected)
    saved, _, _ = load_field(run.field_checkpoint)
    torch.testing.assert_close(saved, expected)

    iterates.clear()
    last_only, _ = train_field(views, 60, 8, RunFolder(tmp_path / "plain"),
                               FieldSettings(iterations=20, num_queries=12, average_last=0.0, checkpoint_every=100))
    torch.testing.assert_close(last_only.features.detach(), iterates[-1])
