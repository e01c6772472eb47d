# SPDX-License-Identifier: GPL-3.0-or-later
"""tools/bench_scenes.py: scene names with a layout ending build that layout, and a mistyped
variant is refused before anything is built."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import bench_scenes  # noqa: E402


@pytest.mark.parametrize("name, scene, layout", [("kitchen-walk", "kitchen", ["--layout", "walk"]),
                                                 ("room-inside", "room", ["--layout", "inside"]),
                                                 ("desk", "desk", [])])
def test_a_scene_name_picks_its_layout(tmp_path, monkeypatch, name, scene, layout):
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, check: calls.append(cmd))
    args = argparse.Namespace(views=8, resolution="64x48", holdout_views=2, seed=0, points=100)
    bench_scenes.build_scene(name, tmp_path / "scene", args, points=False)
    (cmd,) = calls
    assert cmd[cmd.index("--scene") + 1] == scene and "--no-points" in cmd
    assert (cmd[cmd.index("--layout"): cmd.index("--layout") + 2] if "--layout" in cmd else []) == layout


def test_a_mistyped_variant_is_refused_before_any_build(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_scenes, "build_scene", lambda *a, **k: pytest.fail("built a scene"))
    with pytest.raises(SystemExit, match="unknown variant 'aftre'"):
        bench_scenes.main(["--out", str(tmp_path), "--scenes", "kitchen-walk", "--variants", "after,aftre"])
    assert not any(tmp_path.iterdir())


def test_the_background_column_gives_the_counts_beside_the_share():
    assert bench_scenes.background_taken({"background_labelled": 9 / 61, "background_visible": 61}) == "14.8% (9 of 61)"
    assert bench_scenes.background_taken({"background_labelled": None, "background_visible": 0}) == "-"
    assert bench_scenes.background_taken({"background_labelled": 0.25}) == "25.0%"  # rows written before the count
