# SPDX-License-Identifier: GPL-3.0-or-later
"""The priors .npz format: round trip, validation, cache decisions, image conversion."""
import json

import numpy as np
import pytest

from maskfield.events import MaskFieldError
from maskfield.priors.store import (
    Priors,
    PriorsCache,
    as_rgb_uint8,
    image_sha256,
    list_priors,
    load_priors,
    make_meta,
    save_priors,
    validate_priors,
)
from maskfield.priors.text import hash_embed

SETTINGS = {"masks": {"points_per_side": 8}, "embedding": {"mode": "dense"}}


def make_priors(m=3, h=12, w=16, name="img0", sha="abc", **meta_extra):
    rng = np.random.default_rng(0)
    masks = rng.random((m, h, w)) > 0.5
    emb = hash_embed([f"object {i}" for i in range(m)])
    meta = make_meta(name, sha, "sam:vit_b", "names:hash-512", SETTINGS, **meta_extra)
    return Priors(masks=masks, embeddings=emb, granularity=np.arange(m, dtype=np.int8) % 3,
                  scores=np.linspace(0.7, 1.0, m).astype(np.float32), image_size=(h * 2, w * 2), meta=meta)


def test_round_trip(tmp_path):
    p = make_priors()
    path = save_priors(tmp_path / "priors" / "img0.npz", p)
    q = load_priors(path)
    np.testing.assert_array_equal(q.masks, p.masks)
    np.testing.assert_array_equal(q.embeddings, p.embeddings)
    np.testing.assert_array_equal(q.granularity, p.granularity)
    np.testing.assert_array_equal(q.scores, p.scores)
    assert q.image_size == (24, 32)
    assert q.meta == json.loads(json.dumps(p.meta))
    assert q.masks.dtype == bool and q.embeddings.dtype == np.float32
    assert q.granularity.dtype == np.int8 and q.scores.dtype == np.float32
    # the raw file follows docs/contracts.md exactly
    with np.load(path) as raw:
        assert set(raw.files) == {"masks", "embeddings", "granularity", "scores", "image_size", "meta"}
        assert raw["meta"].shape == () and raw["image_size"].shape == (2,)
        meta = json.loads(str(raw["meta"]))
        assert {"image", "image_sha256", "mask_model", "embedding_model", "settings", "format"} <= set(meta)
    assert list_priors(tmp_path / "priors") == [path]  # no temporary files left behind


def test_empty_priors_are_valid(tmp_path):
    p = Priors.empty(10, 20, 512, meta=make_meta("e", "s", "sam:vit_b", "names:hash-512", {}))
    q = load_priors(save_priors(tmp_path / "e.npz", p))
    assert q.masks.shape == (0, 10, 20) and q.embeddings.shape == (0, 512) and q.count == 0


def _write_raw(path, **overrides):
    p = make_priors()
    arrays = dict(masks=p.masks, embeddings=p.embeddings, granularity=p.granularity, scores=p.scores,
                  image_size=np.array(p.image_size), meta=np.array(json.dumps(p.meta)))
    arrays.update(overrides)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("overrides, message", [
    (dict(embeddings=None), "lacks embeddings"),
    (dict(masks=np.zeros((3, 12, 16), np.uint8)), "'masks' must be bool"),
    (dict(masks=np.zeros((12, 16), bool)), "M x H x W"),
    (dict(embeddings=np.ones((3, 512), np.float32)), "L2-normalised"),
    (dict(embeddings=hash_embed(["a", "b"])), "M = 3"),
    (dict(embeddings=hash_embed(["a", "b", "c"]).astype(np.float64)), "float32"),
    (dict(granularity=np.array([0, 1, 5], np.int8)), "-1, 0, 1 or 2"),
    (dict(scores=np.ones(3, np.float64)), "'scores' must be"),
    (dict(meta=np.array("not json")), "not a JSON string"),
    (dict(meta=np.array(json.dumps({"image": "x"}))), "lacks image_sha256"),
    (dict(meta=np.array(json.dumps({**make_priors().meta, "format": 99}))), "format 99"),
    (dict(meta=np.array(json.dumps({**make_priors().meta, "embedding_model": "open_clip:bert"}))), "unknown embedding_model"),
    (dict(embeddings=hash_embed(["a", "b", "c"], dim=64)), "512-d"),
])
def test_validation_errors_name_the_file_and_the_problem(tmp_path, overrides, message):
    path = _write_raw(tmp_path / "bad.npz", **overrides)
    with pytest.raises(MaskFieldError) as info:
        load_priors(path)
    assert message in str(info.value)
    assert "bad.npz" in str(info.value)


def test_unreadable_and_missing_files(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"this is no zip")
    with pytest.raises(MaskFieldError, match="cannot read priors file"):
        load_priors(tmp_path / "junk.npz")
    with pytest.raises(MaskFieldError, match="not found"):
        load_priors(tmp_path / "none.npz")
    with pytest.raises(MaskFieldError):  # save refuses invalid priors too
        p = make_priors()
        p.embeddings = p.embeddings * 2
        save_priors(tmp_path / "x.npz", p)
    assert not (tmp_path / "x.npz").exists()


def test_cache_lookup_decisions(tmp_path):
    cache = PriorsCache(tmp_path)
    assert cache.lookup("img0", "abc", "sam:vit_b", "names:hash-512", SETTINGS) == (None, "not computed yet")
    cache.store("img0", make_priors(sha="abc"))
    hit, reason = cache.lookup("img0", "abc", "sam:vit_b", "names:hash-512", SETTINGS)
    assert hit is not None and reason == "cached"
    assert cache.lookup("img0", "other", "sam:vit_b", "names:hash-512", SETTINGS)[1] == "image changed"
    assert "mask model" in cache.lookup("img0", "abc", "sam:vit_h", "names:hash-512", SETTINGS)[1]
    assert "embedding model" in cache.lookup("img0", "abc", "sam:vit_b", "open_clip:ViT-B-16:openai", SETTINGS)[1]
    changed = {**SETTINGS, "masks": {"points_per_side": 16}}
    assert cache.lookup("img0", "abc", "sam:vit_b", "names:hash-512", changed)[1] == "settings changed"
    (tmp_path / "img1.npz").write_bytes(b"damaged")
    assert cache.lookup("img1", "abc", "sam:vit_b", "names:hash-512", SETTINGS) == (None, "unreadable file")


def test_user_priors_are_kept(tmp_path):
    cache = PriorsCache(tmp_path)
    save_priors(cache.path_for("img0"), make_priors(sha="whatever", locked=True))
    hit, reason = cache.lookup("img0", "abc", "sam:vit_b", "names:hash-512", SETTINGS)
    assert hit is not None and "user" in reason


def test_image_sha256():
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 1
    assert image_sha256(a) == image_sha256(a.copy()) != image_sha256(b)
    assert image_sha256(a) != image_sha256(a.reshape(4, 12))  # shape is part of the hash


def test_as_rgb_uint8_conversions():
    rgb = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    assert as_rgb_uint8(rgb) is not None and np.array_equal(as_rgb_uint8(rgb), rgb)
    np.testing.assert_array_equal(as_rgb_uint8(rgb.astype(np.float32) / 255), rgb)
    np.testing.assert_array_equal(as_rgb_uint8(rgb.astype(np.uint16) * 257), rgb)
    grey = as_rgb_uint8(rgb[..., 0])
    assert grey.shape == (40, 50, 3) and np.array_equal(grey[..., 2], rgb[..., 0])
    rgba = np.concatenate([rgb, np.zeros((40, 50, 1), np.uint8)], axis=2)
    assert np.all(as_rgb_uint8(rgba) == 255)  # fully transparent -> white background
    rgba[..., 3] = 255
    np.testing.assert_array_equal(as_rgb_uint8(rgba), rgb)
    with pytest.raises(MaskFieldError, match="at least 32"):
        as_rgb_uint8(np.zeros((16, 64, 3), np.uint8), name="tiny.png")
    with pytest.raises(MaskFieldError, match="H x W x 3"):
        as_rgb_uint8(np.zeros((40, 40, 5), np.uint8))
    with pytest.raises(MaskFieldError, match="NaN"):
        as_rgb_uint8(np.full((40, 40, 3), np.nan, np.float32))


def test_validate_returns_priors():
    p = make_priors()
    assert validate_priors(p) is p
