# SPDX-License-Identifier: GPL-3.0-or-later
"""compute_priors with stand-in models: cache reuse and invalidation, odd images, empty views."""
import numpy as np
import pytest

from maskfield.events import Cancelled, MaskFieldError, Reporter
from maskfield.priors import compute_priors, load_priors
from maskfield.priors.masks import MaskSet, MaskSettings
from maskfield.priors.store import save_priors
from maskfield.priors.text import hash_embed


class FakeGenerator:
    """Two masks (left / right half) or none; counts its calls."""

    def __init__(self, empty=False):
        self.name = "fake:masks"
        self.settings = MaskSettings(points_per_side=4)
        self.calls = 0
        self.empty = empty
        self.seen = []

    def generate(self, image, check_cancel=None):
        self.calls += 1
        self.seen.append(image)
        h, w = image.shape[:2]
        if self.empty:
            return MaskSet(np.zeros((0, h, w), bool), np.zeros(0), np.zeros(0))
        masks = np.zeros((2, h, w), bool)
        masks[0, :, : w // 2] = True
        masks[1, :, w // 2:] = True
        return MaskSet(masks, [0, 2], [0.9, 0.8])


class FakeEmbedder:
    def __init__(self):
        self.name = "names:hash-512"
        self.settings = {"mode": "fake"}
        self.dim = 512
        self.calls = 0

    def embed(self, image, masks):
        self.calls += 1
        return hash_embed([f"mask {i}" for i in range(masks.shape[0])])


def image(seed=0, h=40, w=48):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_writes_files_and_reuses_them(tmp_path):
    gen, emb = FakeGenerator(), FakeEmbedder()
    images = [("a", image(0)), ("b", image(1))]
    summary = compute_priors(images, tmp_path, gen, emb)
    assert summary["computed"] == 2 and summary["cached"] == 0 and summary["masks"] == 4
    p = load_priors(tmp_path / "a.npz")
    assert p.masks.shape == (2, 40, 48) and p.embeddings.shape == (2, 512)
    assert p.granularity.tolist() == [0, 2] and p.image_size == (40, 48)
    assert p.meta["mask_model"] == "fake:masks" and p.meta["image"] == "a"
    assert p.meta["settings"]["masks"]["points_per_side"] == 4

    again = compute_priors(images, tmp_path, gen, emb)  # unchanged: loaded, models not called
    assert again["cached"] == 2 and gen.calls == 2 and emb.calls == 2

    images[1] = ("b", image(2))  # image b changed
    assert compute_priors(images, tmp_path, gen, emb)["computed"] == 1 and gen.calls == 3

    gen.settings = MaskSettings(points_per_side=8)  # settings changed: all recomputed
    assert compute_priors(images, tmp_path, gen, emb)["computed"] == 2

    gen.name = "fake:other-model"  # another model
    assert compute_priors(images, tmp_path, gen, emb)["computed"] == 2

    assert compute_priors(images, tmp_path, gen, emb, use_cache=False)["computed"] == 2
    assert compute_priors(images, tmp_path, gen, emb, extra_settings={"downscale": 2})["computed"] == 2


def test_lazy_images_and_conversions(tmp_path):
    gen, emb = FakeGenerator(), FakeEmbedder()
    rgb = image(3)
    variants = [
        ("float", lambda: rgb.astype(np.float32) / 255.0),
        ("u16", rgb.astype(np.uint16) * 257),
        ("rgba", np.concatenate([rgb, np.full((40, 48, 1), 255, np.uint8)], axis=2)),
        ("grey", rgb[..., 0]),
    ]
    compute_priors(variants, tmp_path, gen, emb)
    for seen in gen.seen:
        assert seen.dtype == np.uint8 and seen.shape == (40, 48, 3)
    np.testing.assert_array_equal(gen.seen[0], rgb)
    np.testing.assert_array_equal(gen.seen[1], rgb)
    np.testing.assert_array_equal(gen.seen[2], rgb)
    # same pixels -> same hash, whatever form they came in
    shas = {load_priors(tmp_path / f"{n}.npz").meta["image_sha256"] for n in ("float", "u16", "rgba")}
    assert len(shas) == 1


def test_too_small_image(tmp_path):
    with pytest.raises(MaskFieldError, match="tiny"):
        compute_priors([("tiny", image(0, 8, 8))], tmp_path, FakeGenerator(), FakeEmbedder())


def test_empty_view_writes_valid_file_and_logs(tmp_path, capsys):
    import io
    import json

    stream = io.StringIO()
    reporter = Reporter("jsonl", stream=stream)
    summary = compute_priors([("v", image(0))], tmp_path, FakeGenerator(empty=True), FakeEmbedder(), reporter=reporter)
    assert summary["empty"] == 1
    p = load_priors(tmp_path / "v.npz")
    assert p.count == 0 and p.masks.shape == (0, 40, 48) and p.embeddings.shape == (0, 512)
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert any(e["event"] == "log" and "no masks" in e["message"] for e in events)
    assert any(e["event"] == "progress" and e["stage"] == "priors" for e in events)


def test_user_priors_not_overwritten(tmp_path):
    gen, emb = FakeGenerator(), FakeEmbedder()
    compute_priors([("a", image(0))], tmp_path, gen, emb)
    p = load_priors(tmp_path / "a.npz")
    p.meta["locked"] = True
    p.meta["image_sha256"] = "from-elsewhere"
    save_priors(tmp_path / "a.npz", p)
    summary = compute_priors([("a", image(5))], tmp_path, gen, emb)
    assert summary["cached"] == 1 and gen.calls == 1


def test_cancel(tmp_path):
    reporter = Reporter("none")
    reporter.cancel()
    with pytest.raises(Cancelled):
        compute_priors([("a", image(0))], tmp_path, FakeGenerator(), FakeEmbedder(), reporter=reporter)
    assert not list(tmp_path.glob("*.npz"))


def test_command_sam_path_wiring(tmp_path, monkeypatch):
    """`maskfield priors` without labels: models come from load_sam / load_clip (stubbed
    here: no weights in tests), images from the scene at the downscale, a subset of views."""
    import argparse
    import json

    from PIL import Image

    import maskfield.priors.embeddings as embeddings
    import maskfield.priors.masks as masks
    from maskfield.priors.command import register, run

    root = tmp_path / "scene"
    (root / "images").mkdir(parents=True)
    frames = []
    for i in range(5):
        Image.fromarray(image(i, 64, 80)).save(root / "images" / f"v{i}.png")
        c2w = np.eye(4)
        c2w[:3, 3] = (i, 0.0, 3.0)
        frames.append({"file_path": f"images/v{i}.png", "transform_matrix": c2w.tolist()})
    (root / "transforms.json").write_text(json.dumps(
        {"fl_x": 60.0, "fl_y": 60.0, "cx": 40, "cy": 32, "w": 80, "h": 64, "frames": frames}))

    loaded = {}

    def fake_load_sam(model_type, weights_dir=None, device="cpu", allow_download=True, reporter=None):
        loaded["sam"] = (model_type, device, allow_download)
        return "sam-model"

    def fake_load_clip(model_name="ViT-B-16", pretrained="openai", weights_dir=None, device="cpu",
                       allow_download=True, reporter=None):
        loaded["clip"] = (model_name, pretrained, device)
        return "clip-model"

    class Gen(FakeGenerator):
        def __init__(self, model, settings, name):
            super().__init__()
            assert model == "sam-model"
            self.settings, self.name = settings, name

    class Emb(FakeEmbedder):
        def __init__(self, model, mode, name):
            super().__init__()
            self.settings, self.name = {"mode": mode}, name

    monkeypatch.setattr(masks, "load_sam", fake_load_sam)
    monkeypatch.setattr(masks, "SamMaskGenerator", Gen)
    monkeypatch.setattr(embeddings, "load_clip", fake_load_clip)
    monkeypatch.setattr(embeddings, "ClipEmbedder", Emb)

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["priors", str(root), "--out", str(tmp_path / "run"), "--prior-views", "2",
                              "--downscale", "2", "--points-per-side", "8", "--embedding", "crop",
                              "--device", "cpu", "--offline"])
    summary = run(args, Reporter("none"))
    assert loaded == {"sam": ("vit_b", "cpu", False), "clip": ("ViT-B-16", "openai", "cpu")}
    assert summary["views"] == 2 and summary["computed"] == 2
    assert summary["mask_model"] == "sam:vit_b" and summary["embedding_model"] == "open_clip:ViT-B-16:openai"
    files = sorted((tmp_path / "run" / "priors").glob("*.npz"))
    assert len(files) == 2
    p = load_priors(files[0])
    assert p.masks.shape == (2, 32, 40) and p.image_size == (32, 40)  # downscale 2
    assert p.meta["settings"]["masks"]["points_per_side"] == 8
    assert p.meta["settings"]["embedding"] == {"mode": "crop"} and p.meta["settings"]["downscale"] == 2.0
