"""Per-query logit offsets: fitted on the training views' masks, kept in field.pt, applied by segmentation."""
from __future__ import annotations

import numpy as np
import torch

from maskfield.field.calibration import OFFSET_GRID, lit_counts, matched_overlaps, query_offsets
from maskfield.field.data import FieldView
from maskfield.field.train import FieldSettings, load_field, train_field
from maskfield.priors.text import encode_texts
from maskfield.run import RunFolder
from maskfield.segment import Segmenter

ENCODER = "names:hash-512"


def _ramp_view(values, masks, embeddings, name="v"):
    """A view whose pixel p is Gaussian p alone (weight 1): the blended feature is the
    Gaussian's own, so a query's logits are known exactly."""
    n = len(values)
    weights = torch.eye(n).to_sparse_csr()
    return FieldView(name, weights, torch.ones(n), torch.as_tensor(np.asarray(masks, np.float32)),
                     torch.as_tensor(np.asarray(embeddings, np.float32)), torch.ones(n, dtype=torch.bool), n, 1)


def test_offsets_move_each_query_to_its_masks_edge():
    # one feature channel: logit = value for query 0 ("ramp"), -value for query 1 ("other"),
    # pixel values 0.5 apart; query 2 is never matched (its embedding matches no mask)
    values = np.arange(-3.0, 3.01, 0.5, dtype=np.float32)
    features = torch.as_tensor(values)[:, None]
    mask_embed = torch.tensor([[1.0], [-1.0], [1.0]])
    emb = np.eye(3, 4, dtype=np.float32)
    query_embed = torch.as_tensor(np.eye(3, 4, dtype=np.float32))
    query_embed[2] = torch.tensor([0.0, 0.0, 0.0, 1.0])
    # query 0's masks put the edge at value 1 in one view and 1.5 in the other: its own 0.5 level
    # (value 0) is short by about 1.25 logits; query 1's masks sit where its logits already say
    views = [_ramp_view(values, [values > 1.0, values < 0.0], emb[:2], "a"),
             _ramp_view(values, [values > 1.5, values < 0.0], emb[:2], "b")]
    offsets = query_offsets(features, mask_embed, query_embed, views)
    assert offsets.dtype == torch.float32 and offsets.shape == (3,)
    # the masks are the 4 and 3 values above 1 and 1.5; lit are the values above -b: -1 and
    # -1.25 both light the 4 (intersections 4 + 3 over unions 4 + 4, the best), -1.5 the 3
    # (3 + 3 over 4 + 3); of the two best the one nearer 0
    assert float(offsets[0]) == -1.0
    assert float(offsets[1]) == 0.0  # already right: of equal IoUs the offset nearest 0
    assert float(offsets[2]) == 0.0  # never matched
    inter, union = matched_overlaps(features, mask_embed, query_embed, views)
    assert inter.shape == union.shape == (3, len(OFFSET_GRID))
    assert float(union[2].sum()) == 0.0
    zero = int(torch.nonzero(OFFSET_GRID == 0))
    # at offset 0 query 0 lights the 6 values above 0, against masks of 4 and 3 of them
    assert float(inter[0, zero]) == 7.0 and float(union[0, zero]) == 12.0


def test_lit_counts_equal_comparing_every_pixel_at_every_offset():
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(5, 300, generator=gen) * 3
    logits[0, :10] = -OFFSET_GRID[:10]  # exactly on an offset: lit only above it (logit + offset > 0)
    masks = torch.rand(5, 300, generator=gen) > 0.6
    lit, both = lit_counts(logits, masks, OFFSET_GRID)
    direct = (logits[:, None, :] + OFFSET_GRID[None, :, None]) > 0  # (R, grid, P)
    torch.testing.assert_close(lit, direct.sum(2).float())
    torch.testing.assert_close(both, (direct & masks[:, None, :]).sum(2).float())


def test_segmentation_adds_each_querys_offset():
    names = lambda texts: encode_texts(list(texts), ENCODER)  # noqa: E731
    m = torch.tensor([[4.0, 0.0], [0.0, 4.0]])
    c = torch.as_tensor(names(["red mug", "blue box"]))
    # Gaussian 0 is a little "red mug" (logit -0.4), Gaussian 1 clearly "blue box"
    features = torch.tensor([[-0.1, -2.0], [-2.0, 1.0]])
    plain = Segmenter.from_field(None, features, lambda: (m, c), embedding_model=ENCODER, text_encoder=names)
    _, label, score, _ = plain.segment(["red mug", "blue box"])
    np.testing.assert_array_equal(label, [-1, 1])
    shifted = Segmenter.from_field(None, features, lambda: (m, c), embedding_model=ENCODER, text_encoder=names,
                                   query_offset=torch.tensor([1.0, 0.0]))
    _, label, score, _ = shifted.segment(["red mug", "blue box"])
    np.testing.assert_array_equal(label, [0, 1])
    assert abs(float(score[0]) - float(torch.sigmoid(torch.tensor(0.6)))) < 1e-6
    torch.testing.assert_close(shifted.query_logits(features, [0]), features @ m[[0]].T + 1.0)


def _two_object_views(num_gaussians=40, seed=0):
    """Two objects of 20 Gaussians; each view's masks are the objects', one pixel per Gaussian."""
    rng = np.random.default_rng(seed)
    group = np.repeat([0, 1], num_gaussians // 2)
    emb = np.eye(2, 8, dtype=np.float32)
    views = []
    for v in range(3):
        order = rng.permutation(num_gaussians)
        weights = torch.sparse_coo_tensor(torch.as_tensor(np.stack([np.arange(num_gaussians), order])),
                                          torch.ones(num_gaussians), (num_gaussians, num_gaussians))
        targets = torch.tensor(np.stack([group[order] == k for k in range(2)]).astype(np.float32))
        views.append(FieldView(f"v{v}", weights.coalesce().to_sparse_csr(), torch.ones(num_gaussians), targets,
                               torch.tensor(emb), torch.ones(num_gaussians, dtype=torch.bool), num_gaussians, 1))
    return views


def test_training_keeps_the_offsets_in_the_field_unless_told_not_to(tmp_path):
    views = _two_object_views()
    settings = FieldSettings(iterations=60, num_queries=6, checkpoint_every=100)
    run = RunFolder(tmp_path / "run")
    field, result = train_field(views, 40, 8, run, settings)
    _, _, ckpt = load_field(run.field_checkpoint)
    offset = ckpt["query_offset"]
    assert offset.shape == (6,) and offset.dtype == torch.float32
    with torch.no_grad():
        m, c = field.queries()
    torch.testing.assert_close(offset, query_offsets(field.features.detach(), m, c, views, field.query_level))
    assert result["query_offsets"]["queries"] == int((offset != 0).sum())

    off = RunFolder(tmp_path / "off")
    train_field(views, 40, 8, off, FieldSettings(iterations=60, num_queries=6, checkpoint_every=100,
                                                 calibrate_queries=False))
    assert "query_offset" not in load_field(off.field_checkpoint)[2]
