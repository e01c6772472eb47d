# SPDX-License-Identifier: GPL-3.0-or-later
"""SAM automatic masks with the real segment-anything ViT-B class and random weights.

The image encoder runs once for the whole module (about 10 s on two CPU cores): every test
uses the same image, and the generator keeps the last image's embedding.
"""
import numpy as np
import pytest
import torch

from maskfield.events import MaskFieldError
from maskfield.priors import compute_priors, load_priors
from maskfield.priors.embeddings import ClipEmbedder, build_clip
from maskfield.priors.masks import MaskSettings, SamMaskGenerator, build_sam, load_sam, pairwise_overlaps

OPEN = dict(pred_iou_thresh=0.0, stability_score_thresh=0.0, min_area=1, box_nms_thresh=1.0,
            dup_iou_thresh=1.0, contain_thresh=1.01)


@pytest.fixture(scope="module")
def sam():
    torch.manual_seed(0)
    return build_sam("vit_b")  # no checkpoint: random weights


@pytest.fixture(scope="module")
def generator(sam):
    return SamMaskGenerator(sam, MaskSettings(points_per_side=4, **OPEN))


@pytest.fixture(scope="module")
def image():
    img = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    img[16:48, 12:40] = (200, 40, 40)
    return img


@pytest.fixture(scope="module")
def unfiltered(generator, image):
    generator.settings = MaskSettings(points_per_side=4, **OPEN)
    return generator.generate(image)


def test_three_granularities_kept_apart(unfiltered, generator):
    result = unfiltered
    m = len(result)
    assert generator.name == "sam:vit_b"
    assert result.masks.dtype == bool and result.masks.shape[1:] == (64, 64)
    assert 0 < m <= 4 * 4 * 3
    assert result.granularity.dtype == np.int8 and set(result.granularity.tolist()) == {0, 1, 2}
    assert result.scores.dtype == np.float32 and result.scores.shape == (m,)
    assert result.stability.dtype == np.float32 and np.all((result.stability >= 0) & (result.stability <= 1))
    # every mask carries the grid point that prompted it (4 x 4 grid over 64 px)
    grid = (np.arange(4) + 0.5) / 4 * 64
    assert np.all(np.isin(result.points[:, 0], grid.astype(np.float32)))
    assert np.all(np.isin(result.points[:, 1], grid.astype(np.float32)))


def test_filters_hold_on_the_output(generator, image):
    s = MaskSettings(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, min_area=30)
    generator.settings = s
    result = generator.generate(image)
    assert len(result) > 1
    assert np.all(result.masks.sum(axis=(1, 2)) >= 30)
    inter, areas = pairwise_overlaps(result.masks)
    iou = inter / (areas[:, None] + areas[None, :] - inter)
    contained = inter / np.minimum(areas[:, None], areas[None, :])
    same = result.granularity[:, None] == result.granularity[None, :]
    off = ~np.eye(len(result), dtype=bool)
    assert not np.any((iou > s.dup_iou_thresh) & off)
    assert not np.any((contained > s.contain_thresh) & same & off)
    assert np.all(np.diff(result.scores) <= 0)  # most confident first
    # the paper's thresholds: what survives satisfies them (random weights may leave none)
    generator.settings = MaskSettings(points_per_side=4)
    strict = generator.generate(image)
    assert np.all(strict.scores >= 0.7) and np.all(strict.stability >= 0.85)
    assert np.all(strict.masks.sum(axis=(1, 2)) >= 100)


def test_large_images_are_computed_at_max_side(sam, image):
    gen = SamMaskGenerator(sam, MaskSettings(max_side=64))
    big = np.repeat(np.repeat(image, 2, axis=0), 3, axis=1)  # 128 x 192
    assert gen.prepare(big).shape == (43, 64, 3)
    assert gen.prepare(image).shape == (64, 64, 3)


def test_compute_priors_with_real_models_and_cache(generator, image, tmp_path):
    torch.manual_seed(0)
    clip = build_clip()
    embedder = ClipEmbedder(clip, mode="dense", dense_short_side=224)
    generator.settings = MaskSettings(points_per_side=4, **OPEN)
    before = generator.calls
    summary = compute_priors([("view0", image)], tmp_path, generator, embedder)
    assert summary["computed"] == 1 and generator.calls == before + 1
    p = load_priors(tmp_path / "view0.npz")
    m = p.count
    assert m > 0 and p.masks.shape == (m, 64, 64) and p.embeddings.shape == (m, 512)
    assert p.meta["mask_model"] == "sam:vit_b" and p.meta["embedding_model"] == "open_clip:ViT-B-16:openai"
    assert p.meta["settings"]["masks"]["points_per_side"] == 4
    assert p.meta["settings"]["embedding"] == {"mode": "dense", "dense_short_side": 224}

    # unchanged: loaded, neither model runs
    assert compute_priors([("view0", image)], tmp_path, generator, embedder)["cached"] == 1
    assert generator.calls == before + 1 and embedder.calls == 1
    # changed settings: recomputed
    generator.settings = MaskSettings(points_per_side=3, **OPEN)
    assert compute_priors([("view0", image)], tmp_path, generator, embedder)["computed"] == 1
    assert generator.calls == before + 2
    # another embedding mode: recomputed
    crop = ClipEmbedder(clip, mode="crop")
    assert compute_priors([("view0", image)], tmp_path, generator, crop)["computed"] == 1

    # a view where nothing passes the filters: an empty but valid file
    generator.settings = MaskSettings(points_per_side=3, pred_iou_thresh=1.01)
    summary = compute_priors([("view0", image)], tmp_path, generator, embedder)
    assert summary["empty"] == 1
    empty = load_priors(tmp_path / "view0.npz")
    assert empty.masks.shape == (0, 64, 64) and empty.embeddings.shape == (0, 512)


def test_image_encoder_ran_once(generator):
    assert generator.encoder_calls == 1  # one image, many settings: one image embedding


def test_wrong_weights_file_names_file_and_model(tmp_path):
    vit_l_like = {f"image_encoder.blocks.{i}.norm1.weight": torch.zeros(2) for i in range(24)}
    path = tmp_path / "sam_vit_l_0b3195.pth"
    torch.save(vit_l_like, path)
    with pytest.raises(MaskFieldError) as info:
        build_sam("vit_b", path)
    message = str(info.value)
    assert "sam_vit_l_0b3195.pth" in message and "vit_b" in message and "--sam-model vit_l" in message

    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00not torch")
    with pytest.raises(MaskFieldError, match="cannot read .*junk.pth"):
        build_sam("vit_b", junk)
    with pytest.raises(MaskFieldError, match="unknown SAM model"):
        build_sam("vit_x")


def test_missing_weights_offline(tmp_path):
    with pytest.raises(MaskFieldError) as info:
        load_sam("vit_b", weights_dir=tmp_path, allow_download=False)
    assert "sam_vit_b_01ec64.pth" in str(info.value)
