# SPDX-License-Identifier: GPL-3.0-or-later
"""nerfstudio's test_filenames in transforms.json decide the held-out views."""
from __future__ import annotations

from maskfield.scene import load_scene


def test_test_filenames_pick_the_held_out_views(make_transforms_scene):
    folder, frames = make_transforms_scene(n=6, extra={"test_filenames": ["images/001.png", "images/004.png"]})
    scene = load_scene(folder, holdout_every=8)
    assert [scene.cameras[i].name for i in scene.test_indices] == ["001", "004"]
    assert [scene.cameras[i].name for i in scene.train_indices] == ["000", "002", "003", "005"]


def test_without_test_filenames_every_eighth_is_held_out(make_transforms_scene):
    folder, _ = make_transforms_scene(n=9)
    scene = load_scene(folder, holdout_every=8)
    assert scene.test_indices == [0, 8]
