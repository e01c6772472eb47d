# SPDX-License-Identifier: GPL-3.0-or-later
"""Train and segment through the add-on's buttons with the real backend (`maskfield train` /
`segment` / `serve`), offline: the synthetic tabletop is rendered by the add-on and trained
with --from-labels (no SAM/CLIP weights: label priors, a hashed name embedding). Asserts what
a user would check: "red mug" in Faces mode gives the mug's faces (recall and precision >= 0.9)
and no face of the table; Points mode gives points on the mug (tests/blender/drv_e2e.py).
Runs in the newest Blender of the matrix."""
from __future__ import annotations

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "blender"))
import harness  # noqa: E402

pytestmark = pytest.mark.skipif(not harness.have_bpy(), reason="needs the bpy module (Blender as a Python module)")


def backend_python(folder) -> str:
    """This Python running this checkout's backend (an editable install may point elsewhere)."""
    if os.name == "nt":  # pragma: no cover - the tests run on Linux
        return sys.executable
    path = os.path.join(folder, "backend python")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(f"#!/bin/sh\nPYTHONPATH='{os.path.join(harness.ROOT, 'backend')}' exec '{sys.executable}' \"$@\"\n")
    os.chmod(path, 0o755)
    return path


def test_train_and_segment_through_the_addon(tmp_path):
    # the Blender side of these steps runs in every version with a stand-in backend
    # (test_addon_ops.py); the real training runs once, in the newest (the set-up test trains
    # in the oldest)
    blender = harness.one_blender("newest")
    data = blender.run_driver("drv_e2e.py", harness.built_zip(), str(tmp_path), home=str(tmp_path), timeout=1500,
                              extra_env={"MASKFIELD_BACKEND_PYTHON": backend_python(str(tmp_path))})
    figures = {k: json.loads(data["results"][k]["detail"]) for k in ("quality_faces", "quality_points")
               if k in data["results"]}
    print(f"\nBlender {blender.version}: times {({k: round(v, 1) for k, v in data['times'].items()})}; {figures}")
    bad = {k: v["detail"][:800] for k, v in data["results"].items() if not v["ok"]}
    assert not bad, f"{bad}\nstderr:\n{data['stderr'][-3000:]}"
    for name in ("train_finished", "run_has_gaussians.ply", "run_has_field.pt", "faces_finished",
                 "faces_labels_shape", "quality_faces_mug_recall", "quality_faces_mug_precision",
                 "quality_faces_no_table", "points_finished", "points_object", "points_found",
                 "quality_points_on_the_mug"):
        harness.assert_check(data, name)
