# SPDX-License-Identifier: GPL-3.0-or-later
"""CLIP mask embeddings with the real open_clip ViT-B-16 class and random weights."""
import numpy as np
import pytest
import torch

from maskfield.events import MaskFieldError
from maskfield.priors.embeddings import ClipEmbedder, _read_state_dict, build_clip, encode_clip_texts
from maskfield.priors.text import encode_texts


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return build_clip("ViT-B-16", "openai")  # no checkpoint: random weights, never downloads


def picture(h, w, seed=0):
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    img[h // 4: h // 2, w // 4: w // 2] = (220, 30, 30)
    return img


def test_model_structure_is_what_dense_features_expect(clip):
    visual = clip.visual
    assert visual.attn_pool is None and visual.proj.shape == (768, 512)
    attn = visual.transformer.resblocks[-1].attn
    assert isinstance(attn, torch.nn.MultiheadAttention) and attn.in_proj_weight.shape == (3 * 768, 768)


def test_dense_features_shape_and_norm(clip):
    emb = ClipEmbedder(clip, mode="dense", dense_short_side=224)
    feats = emb.dense_features(picture(64, 96))
    assert feats.shape == (14, 21, 512)
    np.testing.assert_allclose(feats.norm(dim=-1).numpy(), 1.0, atol=1e-5)


def test_dense_features_match_maskclip_reference(clip):
    """At 224 x 224 (no positional interpolation), compare with an independent computation:
    the last block's attention with an identity attention pattern (each token attends only
    to itself) is exactly out_proj(value(x)), MaskCLIP's value path."""
    visual = clip.visual
    image = picture(224, 224, seed=3)
    emb = ClipEmbedder(clip, mode="dense", dense_short_side=224)
    ours = emb.dense_features(image)
    captured = {}
    last = visual.transformer.resblocks[-1]
    hook = last.register_forward_pre_hook(lambda mod, args: captured.setdefault("x", args[0]))
    with torch.inference_mode():
        x = emb._normalise(image)
        clip.encode_image(x)
        hook.remove()
        tokens = captured["x"]
        y = last.ln_1(tokens)
        n = y.shape[1]
        identity = torch.full((n, n), float("-inf"))
        identity.fill_diagonal_(0.0)
        v = last.attn(y, y, y, attn_mask=identity, need_weights=False)[0]
        ref = visual.ln_post(v[:, 1:]) @ visual.proj
        ref = torch.nn.functional.normalize(ref, dim=-1).reshape(14, 14, 512)
    torch.testing.assert_close(ours, ref, atol=2e-4, rtol=1e-3)


def test_mask_pooling(clip):
    emb = ClipEmbedder(clip, mode="dense", dense_short_side=224)
    image = picture(224, 224, seed=4)
    feats = emb.dense_features(image)
    masks = np.zeros((3, 224, 224), bool)
    masks[0, 16:32, 32:48] = True  # exactly patch (row 1, column 2)
    masks[1, :, :112] = True  # the left half
    masks[2] = True  # everything
    out = emb.embed(image, masks)
    assert out.shape == (3, 512) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(out[0], feats[1, 2].numpy(), atol=1e-5)
    left = torch.nn.functional.normalize(feats[:, :7].reshape(-1, 512).mean(0), dim=0)
    np.testing.assert_allclose(out[1], left.numpy(), atol=1e-5)
    # masks at another resolution than the image are pooled the same way
    half = emb.embed(image, masks[:, ::2, ::2])
    np.testing.assert_allclose(half, out, atol=1e-5)
    assert emb.embed(image, np.zeros((0, 224, 224), bool)).shape == (0, 512)


def test_crop_mode(clip):
    emb = ClipEmbedder(clip, mode="crop")
    image = picture(64, 64, seed=5)
    masks = np.zeros((2, 64, 64), bool)
    masks[0, 16:32, 16:32] = True
    masks[1, 40:60, 5:60] = True
    out = emb.embed(image, masks)
    assert out.shape == (2, 512) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(out[0], out[1])
    assert emb.settings == {"mode": "crop", "crop_padding": 0.1}
    with pytest.raises(MaskFieldError, match="embedding mode"):
        ClipEmbedder(clip, mode="sparse")


def test_text_encoding_with_injected_model(clip):
    out = encode_texts(["red mug", "table"], "open_clip:ViT-B-16:openai", clip_model=clip)
    assert out.shape == (2, 512) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(out, encode_clip_texts(clip, ["red mug", "table"]), atol=1e-6)
    assert not np.allclose(out[0], out[1])


def test_bad_clip_files(tmp_path):
    bad = tmp_path / "other.pt"
    torch.save({"foo": torch.zeros(3)}, bad)
    with pytest.raises(MaskFieldError) as info:
        build_clip(checkpoint=bad)
    assert "other.pt" in str(info.value) and "ViT-B-16" in str(info.value)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(MaskFieldError, match="cannot read"):
        build_clip(checkpoint=junk)
    with pytest.raises(MaskFieldError, match="not found"):
        build_clip(checkpoint=tmp_path / "absent.pt")


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_archives_are_read(tmp_path):
    """OpenAI's ViT-B-16.pt is a TorchScript archive; its state dict is read from it."""
    module = torch.jit.script(torch.nn.Linear(3, 2))
    path = tmp_path / "scripted.pt"
    module.save(str(path))
    state = _read_state_dict(path)
    assert set(state) == {"weight", "bias"}
