# SPDX-License-Identifier: GPL-3.0-or-later
"""The add-on's operators in real Blender (subprocess), against a fake backend that speaks the
event protocol: rendering, importing Gaussians, training, Faces/Points/Select segmentation,
re-runs, export, clear, and every error path. See tests/blender/drv_addon_ops.py."""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "blender"))
import harness  # noqa: E402
from harness import blender  # noqa: E402,F401  (the Blender-version matrix fixture)

pytestmark = pytest.mark.skipif(not harness.have_bpy(), reason="needs the bpy module (Blender as a Python module)")


@pytest.fixture(scope="module")
def ops(blender, tmp_path_factory):
    """One run of the driver per Blender version of the matrix."""
    home = tmp_path_factory.mktemp(f"addon ops {blender.version}")
    data = blender.run_driver("drv_addon_ops.py", harness.built_zip(), str(home), home=str(home), timeout=300)
    data["blender"] = blender.version
    return data


def _all(data, *prefixes):
    names = [k for k in data["results"] if k.startswith(prefixes)]
    assert names, f"no checks named {prefixes}; stderr:\n{data['stderr'][-3000:]}"
    for name in names:
        harness.assert_check(data, name)


def test_render_operator_writes_folder_and_leaves_scene_alone(ops):
    _all(ops, "render_")


def test_import_gaussians_as_points(ops):
    _all(ops, "import_")


def test_train_renders_objects_and_runs_backend(ops):
    _all(ops, "train_", "pump_train", "faces_world_space")


def test_faces_mode_and_rerun(ops):
    _all(ops, "faces_", "rerun_")


def test_points_mode(ops):
    _all(ops, "points_")


def test_select_mode(ops):
    _all(ops, "select_")


def test_export_and_clear(ops):
    _all(ops, "export_", "clear_")


def test_error_paths(ops):
    _all(ops, "err_", "errors", "garbage_output_tolerated", "busy_refused")


def test_cancel_and_kill(ops):
    _all(ops, "cancel", "kill_all")


def test_operators_never_block(ops):
    slow = {k: v for k, v in ops["times"].items() if k.endswith("_operator_returns") and v > 1.0}
    assert not slow, slow


def test_every_check_passed(ops):
    bad = {k: v["detail"][:500] for k, v in ops["results"].items() if not v["ok"]}
    assert not bad, bad


def test_preferences_detect_and_offline_setup(ops):
    _all(ops, "detect_backend", "online_access_off", "setup_", "preferences")


def test_panels_and_statusbar_draw(ops):
    _all(ops, "draw")


def test_intrinsics_agree_with_blender_projection(ops):
    _all(ops, "intrinsics")
