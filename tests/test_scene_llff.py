"""LLFF scenes (poses_bounds.npy + images/ + images_<factor>/): the same cameras as the same
capture written as transforms.json, downscaled folders, and clear refusals of bad files."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from maskfield.events import MaskFieldError
from maskfield.scene import load_scene
from maskfield.scene.cameras import llff_to_opencv, opencv_to_llff, opengl_to_opencv


def write_llff_twin(src, dst, near=1.0, far=6.0, factors=()):
    """The transforms.json scene ``src`` written again as LLFF: poses_bounds.npy and images/."""
    meta = json.loads((src / "transforms.json").read_text())
    rows = []
    (dst / "images").mkdir(parents=True)
    for frame in meta["frames"]:
        c2w_cv = opengl_to_opencv(np.asarray(frame["transform_matrix"]))
        pose = np.concatenate([opencv_to_llff(c2w_cv), [[meta["h"]], [meta["w"]], [meta["fl_x"]]]], axis=1)
        rows.append(np.concatenate([pose.reshape(-1), [near, far]]))
        name = frame["file_path"].split("/")[-1]
        shutil.copy(src / frame["file_path"], dst / "images" / name)
        for f in factors:
            folder = dst / f"images_{f}"
            folder.mkdir(exist_ok=True)
            image = Image.open(src / frame["file_path"])
            image.resize((meta["w"] // f, meta["h"] // f)).save(folder / name)
    np.save(dst / "poses_bounds.npy", np.asarray(rows))
    return dst


def test_llff_conversion_round_trips():
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    c2w = np.eye(4)
    c2w[:3, :3], c2w[:3, 3] = q, rng.normal(size=3)
    assert np.allclose(llff_to_opencv(opencv_to_llff(c2w)), c2w)
    # LLFF's first column points down the image: OpenCV's +y
    assert np.allclose(opencv_to_llff(c2w)[:, 0], c2w[:3, 1])


def test_llff_equals_transforms_json(make_transforms_scene, tmp_path):
    src, _ = make_transforms_scene(n=6, w=40, h=30, fl=35.0)
    llff = write_llff_twin(src, tmp_path / "llff")
    a, b = load_scene(src), load_scene(llff)
    assert b.source == "llff" and len(a) == len(b) == 6
    for ca, cb in zip(a.cameras, b.cameras):
        assert ca.name == cb.name
        assert np.allclose(ca.camtoworld, cb.camtoworld, atol=1e-9)
        assert np.allclose(ca.K, cb.K)
    assert np.array_equal(a.load_image(2), b.load_image(2))
    assert a.test_indices == b.test_indices
    # the near/far bounds place the region the cameras look at in front of them
    focus, radius = b.bounds()
    depth = (focus - b.cameras[0].center) @ b.cameras[0].camtoworld[:3, 2]
    assert depth > 0 and radius > 0


def test_llff_downscaled_folder(make_transforms_scene, tmp_path):
    src, _ = make_transforms_scene(n=4, w=40, h=32, fl=35.0)
    llff = write_llff_twin(src, tmp_path / "llff", factors=(4,))
    full, quarter = load_scene(llff), load_scene(llff, images="images_4")
    assert (quarter.cameras[0].width, quarter.cameras[0].height) == (10, 8)
    assert np.isclose(quarter.cameras[0].fx, full.cameras[0].fx / 4)
    assert np.allclose(quarter.cameras[1].camtoworld, full.cameras[1].camtoworld)
    with pytest.raises(MaskFieldError, match="images_2 does not exist"):
        load_scene(llff, images="images_2")


def test_llff_refuses_mismatched_files(make_transforms_scene, tmp_path):
    src, _ = make_transforms_scene(n=4)
    llff = write_llff_twin(src, tmp_path / "llff")
    (llff / "images" / "000.png").rename(llff / "images" / "extra.txt")  # one image fewer
    with pytest.raises(MaskFieldError, match="3 images but poses_bounds.npy has 4 poses"):
        load_scene(llff)
    np.save(llff / "poses_bounds.npy", np.zeros((4, 15)))
    with pytest.raises(MaskFieldError, match="N x 17"):
        load_scene(llff)
