# SPDX-License-Identifier: GPL-3.0-or-later
"""The mask field's training views as ``build_views`` makes them: compacted (the products and
totals of the full matrix, a third less memory, 32-bit indices) and held to a memory budget
(an evenly spread subset of a capture's views, said in the log)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from maskfield.events import Reporter
from maskfield.field.data import MIN_FIELD_VIEWS, FieldView, build_views, supervised_share, view_memory_budget
from maskfield.scene import load_scene
from maskfield.splats.model import Gaussians


class Log(Reporter):
    def __init__(self):
        super().__init__("none")
        self.lines = []

    def log(self, message, level="info", **_):
        self.lines.append((level, message))


def _setup(make_transforms_scene, n_views):
    folder, _ = make_transforms_scene(n=n_views, w=40, h=30)
    scene = load_scene(folder, holdout_every=0)
    rng = np.random.default_rng(0)
    gaussians = Gaussians.from_points(rng.uniform(-0.6, 0.6, (400, 3)).astype(np.float32))
    priors = {}
    for cam in scene.cameras:
        masks = np.zeros((2, 30, 40), bool)
        masks[0, 5:20, 8:25] = True
        masks[1, 12:28, 20:38] = True
        priors[cam.name] = SimpleNamespace(masks=masks, embeddings=rng.normal(size=(2, 8)).astype(np.float32),
                                           granularity=np.array([1, 1], np.int8))
    return scene, gaussians, priors


def test_a_compacted_view_gives_the_same_products_and_totals_in_less_memory(make_transforms_scene):
    scene, gaussians, priors = _setup(make_transforms_scene, 4)
    built = build_views(scene, gaussians, priors, range(4), 40, "cpu", memory_bytes=0)
    assert [v.name for v in built] == [c.name for c in scene.cameras]
    view = built[0]
    assert view.weights is None  # the matrix over all pixels is let go
    w, wt = view.supervised_weights()
    assert w.col_indices().dtype == wt.col_indices().dtype == torch.int32
    # the same view kept whole, as FieldView holds it before compact()
    from maskfield.field.data import supervision_camera, weights_matrix

    g = {k: v.detach() for k, v in gaussians.activated().items()}
    W, alpha = weights_matrix(g, supervision_camera(scene.camera(0), 40), "cpu")
    whole = FieldView(view.name, W, alpha, view.targets, view.embeddings, alpha > 0.5, view.width, view.height)
    features = torch.randn(len(gaussians), 16)
    assert torch.allclose(whole.blend(features), view.blend(features), atol=1e-6)
    totals_whole = whole.weight_totals(len(gaussians))
    for a, b in zip(totals_whole, view.weight_totals(len(gaussians))):
        assert torch.allclose(a, b, atol=1e-6)
    assert float(totals_whole[0].sum()) > 0 and float(totals_whole[0].sum()) >= float(totals_whole[1].sum())
    share = supervised_share(built, len(gaussians))
    assert share.shape == (len(gaussians),) and float(share.max()) <= 1.0
    whole.supervised_weights()
    assert view.nbytes() < 0.75 * whole.nbytes()


def test_views_past_the_memory_budget_are_an_even_subset_said_in_the_log(make_transforms_scene):
    n = 24
    scene, gaussians, priors = _setup(make_transforms_scene, n)
    every = build_views(scene, gaussians, priors, range(n), 40, "cpu", memory_bytes=0)
    per_view = max(v.with_gaussian_shares().nbytes() for v in every)
    log = Log()
    some = build_views(scene, gaussians, priors, range(n), 40, "cpu", log, memory_bytes=per_view * 12.5)
    names = [v.name for v in some]
    assert MIN_FIELD_VIEWS <= len(names) < n and len(names) in (11, 12)
    picked = [i for i, c in enumerate(scene.cameras) if c.name in names]
    assert picked[0] == 0 and picked[-1] == n - 1  # spread over the capture, its ends included
    assert max(np.diff(picked)) <= 3
    warnings = [m for level, m in log.lines if level == "warning"]
    assert len(warnings) == 1 and f"{len(names)} of the {n} training views" in warnings[0]
    assert "--field-memory-gb" in warnings[0]
    # a budget too small for even the fewest views still leaves MIN_FIELD_VIEWS
    assert len(build_views(scene, gaussians, priors, range(n), 40, "cpu", memory_bytes=1)) == MIN_FIELD_VIEWS
    # the same views, trained on, are the same objects' products
    first = next(v for v in every if v.name == names[1])
    other = next(v for v in some if v.name == names[1])
    features = torch.randn(len(gaussians), 16)
    assert torch.allclose(first.blend(features), other.blend(features))


def test_the_default_budget_is_half_of_the_free_memory():
    budget = view_memory_budget("cpu")
    with open("/proc/meminfo", encoding="ascii") as fh:
        available = next(float(line.split()[1]) * 1024 for line in fh if line.startswith("MemAvailable:"))
    assert budget == pytest.approx(0.5 * available, rel=0.2)


def test_priors_files_keep_their_small_arrays_and_read_masks_when_used(tmp_path, make_transforms_scene):
    # every view's masks at once would not fit for a large capture: the field's loader keeps the
    # embeddings and sizes, and reads a view's masks only while that view is built
    from maskfield.checks import check_priors_fit_cameras
    from maskfield.events import MaskFieldError
    from maskfield.field.data import PriorsFile, load_priors_folder
    from maskfield.priors.store import Priors, make_meta, save_priors

    rng = np.random.default_rng(1)
    masks = rng.random((3, 30, 40)) > 0.5
    emb = rng.normal(size=(3, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    meta = make_meta("000", "sha", "labels", "names:hash-16", {})
    save_priors(tmp_path / "priors" / "000.npz", Priors(masks, emb, np.array([0, 1, 2], np.int8),
                                                          np.ones(3, np.float32), (30, 40), meta))
    loaded = load_priors_folder(tmp_path / "priors")
    stored = loaded["000"]
    assert isinstance(stored, PriorsFile) and "masks" not in vars(stored)
    assert stored.mask_shape == (3, 30, 40) and stored.count == 3 and stored.embedding_model == "names:hash-16"
    assert np.array_equal(stored.masks, masks) and np.array_equal(stored.embeddings, emb)
    folder, _ = make_transforms_scene(n=2, w=40, h=30)
    scene = load_scene(folder)
    check_priors_fit_cameras(loaded, scene, tmp_path / "priors")  # 40x30 masks for 40x30 images
    save_priors(tmp_path / "tall" / "000.npz", Priors(np.zeros((1, 40, 30), bool), emb[:1], np.array([1], np.int8),
                                                        np.ones(1, np.float32), (40, 30), meta))
    with pytest.raises(MaskFieldError, match="aspect ratio"):
        check_priors_fit_cameras(load_priors_folder(tmp_path / "tall"), scene, tmp_path / "tall")
