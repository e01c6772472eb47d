# SPDX-License-Identifier: GPL-3.0-or-later
"""The panel's selection actions in real Blender (subprocess), with the real backend on a
constructed run: Select at 3D Cursor, per-prompt granularity, Points mode's Split originals,
Import run coloured by labels, Mesh from Gaussians, Export with labels. See
tests/blender/drv_select.py."""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "blender"))
import harness  # noqa: E402
from harness import blender  # noqa: E402,F401  (the Blender-version matrix fixture)

pytestmark = pytest.mark.skipif(not harness.have_bpy(), reason="needs the bpy module (Blender as a Python module)")


@pytest.fixture(scope="module")
def select(blender, tmp_path_factory):
    """One run of the driver per Blender version of the matrix; the backend runs in this Python."""
    from select_scene import write_chair_run

    home = tmp_path_factory.mktemp(f"addon select {blender.version}")
    run = write_chair_run(home / "chair run")
    return blender.run_driver("drv_select.py", harness.built_zip(), str(home), str(run), home=str(home), timeout=600,
                              extra_env={"MASKFIELD_TEST_BACKEND_PYTHON": sys.executable})


def _all(data, *prefixes):
    names = [k for k in data["results"] if k.startswith(prefixes)]
    assert names, f"no checks named {prefixes}; stderr:\n{data['stderr'][-3000:]}"
    for name in names:
        harness.assert_check(data, name)


def test_select_at_3d_cursor(select):
    _all(select, "cursor")


def test_granularity_per_prompt(select):
    _all(select, "granularity")


def test_points_mode_splits_the_run_object(select):
    _all(select, "split")


def test_import_run_shows_labels(select):
    _all(select, "labels")


def test_mesh_from_gaussians_for_photo_sources(select):
    _all(select, "mesh")


def test_export_writes_the_labelled_scene(select):
    _all(select, "export")


def test_panel_draws_the_new_actions(select):
    _all(select, "draw")


def test_operators_never_block(select):
    slow = {k: v for k, v in select["times"].items() if k.endswith("_operator_returns_object") and v > 1.0}
    assert not slow, slow


def test_every_check_passed(select):
    bad = {k: v["detail"][:500] for k, v in select["results"].items() if not v["ok"]}
    assert not bad, bad
