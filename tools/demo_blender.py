# SPDX-License-Identifier: GPL-3.0-or-later
"""Blender side of the demo, run with the bpy module (the add-on's own code, headless).

    python tools/demo_blender.py export-faces BLEND OUT_DIR
    python tools/demo_blender.py collections BLEND FACES_JSON SEGMENTS_DIR OUT_BLEND
"""
from __future__ import annotations

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import bpy  # noqa: E402
import numpy as np  # noqa: E402

from addon import import_export, scene_render  # noqa: E402


def export_faces(blend: str, out_dir: str) -> None:
    bpy.ops.wm.open_mainfile(filepath=blend)
    meshes = [ob for ob in bpy.context.scene.objects if ob.type == "MESH"]
    info = scene_render.export_face_centres(meshes, os.path.join(out_dir, "faces.npy"),
                                            os.path.join(out_dir, "faces.json"), bpy.context.scene.name)
    print(json.dumps({"faces": info["total"], "objects": len(meshes)}))


def collections(blend: str, faces_json: str, segments_dir: str, out_blend: str) -> None:
    bpy.ops.wm.open_mainfile(filepath=blend)
    summary = json.load(open(os.path.join(segments_dir, "segments.json"), encoding="utf-8"))
    prompts = [p["prompt"] for p in summary["prompts"]]
    labels = np.load(os.path.join(segments_dir, summary["point_labels"]))
    faces = import_export.FacesMap.load(faces_json)
    made = import_export.separate_faces(bpy.context.scene, faces, labels, prompts, run=segments_dir)
    for p in summary["prompts"]:
        if p.get("ply"):
            coll = import_export.prompt_collection(bpy.context.scene, p["prompt"])
            import_export.import_ply_points(os.path.join(segments_dir, p["ply"]), f"{p['prompt']} (Gaussians)",
                                            coll, prompt=p["prompt"])
    tmp = out_blend + ".tmp.blend"
    bpy.ops.wm.save_as_mainfile(filepath=tmp, copy=True)
    os.replace(tmp, out_blend)
    print(json.dumps({k: [o.name for o in v] for k, v in made.items()}))


if __name__ == "__main__":
    cmd, *rest = sys.argv[1:]
    {"export-faces": export_faces, "collections": collections}[cmd](*rest)
