# SPDX-License-Identifier: GPL-3.0-or-later
"""Train and segment through the add-on with the real backend (`maskfield train` / `segment`
/ `serve`), offline: the synthetic tabletop is rendered by the add-on and trained with
--from-labels. Skipped until the backend's CLI has these commands."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "blender"))
import harness  # noqa: E402


def _backend_ready() -> bool:
    for cmd in ("train", "segment", "serve"):
        try:
            proc = subprocess.run([sys.executable, "-m", "maskfield.cli", cmd, "--help"], capture_output=True,
                                  timeout=120)
        except (OSError, subprocess.TimeoutExpired):
            return False
        if proc.returncode != 0:
            return False
    return True


pytestmark = [
    pytest.mark.skipif(not harness.have_bpy(), reason="needs the bpy module (Blender as a Python module)"),
    pytest.mark.skipif(not _backend_ready(), reason="the backend CLI has no train/segment/serve yet"),
]


def test_train_and_segment_through_the_addon(tmp_path):
    data = harness.run_driver("drv_e2e.py", harness.built_zip(), str(tmp_path), home=str(tmp_path), timeout=900)
    print(data["times"])
    bad = {k: v["detail"][:800] for k, v in data["results"].items() if not v["ok"]}
    assert not bad, f"{bad}\nstderr:\n{data['stderr'][-3000:]}"
    for name in ("train_finished", "run_has_gaussians.ply", "run_has_field.pt", "faces_finished",
                 "faces_labels_shape", "points_finished", "points_object"):
        harness.assert_check(data, name)
