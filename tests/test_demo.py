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


BLOCK_BPY = '''import sys
class _NoBlender:
    def find_spec(self, name, path=None, target=None):
        if name == "bpy":
            raise ModuleNotFoundError("No module named 'bpy' (blocked by the test)")
sys.meta_path.insert(0, _NoBlender())
'''


def test_demo_trains_on_a_scene_rendered_beforehand_where_python_has_no_blender(tmp_path):
    # The GPU check's machine has a Python without bpy: the scene is rendered where Blender runs
    # (--render-only), then trained on there (--scene-from); only the .blend output is left out.
    env = {**__import__("os").environ, "MASKFIELD_OFFLINE": "1"}
    rendered, out = tmp_path / "rendered", tmp_path / "demo"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "demo.py"), "--out", str(rendered), "--quick",
                           "--render-only"], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (rendered / "scene" / "transforms.json").exists() and (rendered / "faces.npy").exists()
    assert not (rendered / "run").exists()  # nothing trained

    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCK_BPY)
    env["PYTHONPATH"] = f"{blocker}:{env.get('PYTHONPATH', '')}"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "demo.py"), "--out", str(out), "--quick",
                           "--scene-from", str(rendered)], capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "no Blender (bpy) in this Python" in proc.stdout
    assert not (out / "maskfield_demo.blend").exists() and not (out / "scene").exists()
    assert (out / "segments.png").exists()
    figures = json.loads((out / "figures.json").read_text())
    assert figures["collections"] is None and "render in Blender" not in figures["times_s"]
    assert figures["evaluate"]["miou"] > 0.4

    # a folder without a rendered scene is refused with what to do
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "demo.py"), "--out", str(tmp_path / "x"),
                           "--scene-from", str(tmp_path / "block")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--render-only" in proc.stderr
