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


def test_test_filenames_spelled_otherwise_still_match(make_transforms_scene):
    # the split written with ./ or backslashes names the same frames
    folder, _ = make_transforms_scene(n=6, extra={"test_filenames": ["./images/001.png", "images\\004.png"]})
    scene = load_scene(folder, holdout_every=8)
    assert [scene.cameras[i].name for i in scene.test_indices] == ["001", "004"]
    assert not scene.notes


def test_test_filenames_naming_no_frame_fall_back_to_every_nth_with_a_note(make_transforms_scene):
    # frames moved or renamed after the split was written: rather than holding out nothing
    # (and scoring no view), every Nth view is held out, and the run says why
    folder, _ = make_transforms_scene(n=9, extra={"test_filenames": ["old/frame_1.png", "old/frame_5.png"]})
    scene = load_scene(folder, holdout_every=4)
    assert scene.test_indices == [0, 4, 8]
    assert scene.train_indices == [1, 2, 3, 5, 6, 7]
    assert any("none of the 2 'test_filenames'" in note and "every 4th" in note for note in scene.notes)
