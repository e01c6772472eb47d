# SPDX-License-Identifier: GPL-3.0-or-later
"""Fisheye captures against Blender's own fisheye: Cycles renders one view through its
equidistant fisheye and through a pinhole from the same pose (tests/blender/render_lenses.py);
the loader, given the fisheye photo as nerfstudio writes such a capture (OPENCV_FISHEYE, all
k 0), must give back the pinhole render."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "blender"))
import harness  # noqa: E402

from maskfield.scene import load_scene  # noqa: E402

pytestmark = pytest.mark.skipif(not harness.have_bpy(), reason="needs the bpy module (Blender as a Python module)")
Image = pytest.importorskip("PIL.Image")


def _psnr(a, b):
    return float(-10 * np.log10(np.mean((a - b) ** 2)))


@pytest.mark.parametrize("fov_degrees", [160, 120])
def test_cycles_fisheye_render_undistorts_to_the_pinhole_render(tmp_path, fov_degrees):
    size = 96
    out = tmp_path / "capture"
    proc = subprocess.run([sys.executable, os.path.join(harness.ROOT, "tests", "blender", "render_lenses.py"),
                           str(out), str(size), str(fov_degrees)], capture_output=True, text=True, timeout=300,
                          env=harness.blender_env(str(tmp_path / "home")))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    lenses = json.loads((out / "lenses.json").read_text())
    # Cycles' equidistant fisheye: the angle from the axis grows linearly to fov / 2 at the
    # image's side, so f = (size / 2) / (fov / 2) pixels per radian, with no further terms
    f = size / 2 / (lenses["fisheye_fov"] / 2)
    assert lenses["pinhole_focal_px"] == pytest.approx(f)
    (out / "transforms.json").write_text(json.dumps({
        "camera_model": "OPENCV_FISHEYE", "fl_x": f, "fl_y": f, "cx": size / 2, "cy": size / 2, "w": size, "h": size,
        "k1": 0.0, "k2": 0.0, "k3": 0.0, "k4": 0.0,
        "frames": [{"file_path": "images/fisheye.png", "transform_matrix": lenses["transform_matrix"]}]}))
    scene = load_scene(out)
    got = scene.load_image(0)
    pinhole = np.asarray(Image.open(out / "images" / "pinhole.png").convert("RGB"), np.float32) / 255
    fisheye = np.asarray(Image.open(out / "images" / "fisheye.png").convert("RGB"), np.float32) / 255
    assert got.shape == pinhole.shape
    # the same picture, up to resampling and Cycles' sampling noise at the objects' edges;
    # the fisheye photo taken as it is would be another picture
    assert _psnr(got, pinhole) > 32, _psnr(got, pinhole)
    assert _psnr(fisheye, pinhole) < 20
    assert f"about {fov_degrees} degrees" in " ".join(scene.notes)
