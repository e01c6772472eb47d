"""The README's main job, reduced: tools/demo.py --quick end to end in real Blender."""
from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT


def test_reduced_demo_writes_blend_plys_picture_and_figures(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "demo.py"), "--out", str(out), "--quick"],
                          capture_output=True, text=True, timeout=900, env={**__import__("os").environ,
                                                                           "MASKFIELD_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "object-index pass with SAM-like noise" in proc.stdout  # no silent fallback
    assert (out / "maskfield_demo.blend").stat().st_size > 10_000
    assert (out / "segments.png").exists()
    summary = json.loads((out / "segments" / "segments.json").read_text())
    found = [p for p in summary["prompts"] if p["found"]]
    assert len(found) >= 2 and all((out / "segments" / p["ply"]).exists() for p in found)
    figures = json.loads((out / "figures.json").read_text())
    assert 0 <= figures["evaluate"]["miou"] <= 1 and figures["evaluate"]["miou"] > 0.4
    assert "mIoU" in proc.stdout and "maskfield_demo.blend" in proc.stdout
    # the faces of the tabletop's own meshes, not of anything else in the file
    faces = json.loads((out / "faces.json").read_text())
    assert sorted(o["name"] for o in faces["objects"]) == sorted(
        ["table", "red mug", "blue box", "green ball", "yellow cone", "purple torus"])
    # each found prompt's collection holds faces split from its own object
    right = [p for p, objs in figures["collections"].items() if f"{p} ({p})" in objs]
    assert len(right) >= 2, figures["collections"]
