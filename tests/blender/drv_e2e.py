# SPDX-License-Identifier: GPL-3.0-or-later
"""Driver: train and segment through the add-on with the real backend (``maskfield`` CLI).

    python tests/blender/drv_e2e.py ZIP WORKDIR

Builds the synthetic tabletop (tools/make_tabletop.py) in the open file, selects its objects,
presses Train (renders the views, then ``maskfield train ... --from-labels``: offline, no
weights: label priors with a hashed name embedding), then Segment in Faces and Points modes,
and checks what a user would: "red mug" in Faces mode gives the mug's faces (recall and
precision >= 0.9) and no face of the table, Points mode gives points on the mug; and the
contract between the add-on and the backend (files, events, results brought into the scene
exactly as the backend wrote them). Settings from the environment: MASKFIELD_E2E_VIEWS (16),
MASKFIELD_E2E_RES (64), MASKFIELD_E2E_POINTS (4000), MASKFIELD_E2E_FIT_ITERS (300),
MASKFIELD_E2E_FIELD_ITERS (600), MASKFIELD_E2E_TIMEOUT (seconds for training, 900);
MASKFIELD_BACKEND_PYTHON: the Python with the backend (default: this one).
"""
from __future__ import annotations

import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402
from common import check, section  # noqa: E402

import bpy  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(common.ROOT, "tools"))
import make_tabletop  # noqa: E402


def main() -> None:
    zip_path, work = sys.argv[1], os.path.join(sys.argv[2], "e2e wörk")
    os.makedirs(work, exist_ok=True)
    mf = common.install(zip_path)
    client, STATUS = mf.backend_client, mf.status.STATUS
    prefs = bpy.context.preferences.addons[common.MODULE].preferences
    # the venv with the backend installed (this one, or the project's when Blender runs in its own)
    prefs.python_path = os.environ.get("MASKFIELD_BACKEND_PYTHON") or sys.executable
    env = os.environ.get
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    objs = make_tabletop.build_tabletop(seed=0, scene=scene)
    bpy.context.view_layer.update()
    for ob in bpy.context.view_layer.objects:
        ob.select_set(ob in objs)
    s = scene.maskfield
    # the fewest views and steps at which the mask field learns the names (tens of steps leave
    # every query's text embedding below the segmenter's similarity floor: "nothing found")
    s.views = int(env("MASKFIELD_E2E_VIEWS", "16"))
    s.resolution = int(env("MASKFIELD_E2E_RES", "64"))
    s.seed_points = int(env("MASKFIELD_E2E_POINTS", "4000"))
    s.samples = 4
    s.iterations = int(env("MASKFIELD_E2E_FIT_ITERS", "300"))
    s.field_iterations = int(env("MASKFIELD_E2E_FIELD_ITERS", "600"))
    s.device = "cpu"
    s.run_dir = os.path.join(work, "run ü")
    before = common.snapshot()
    with section("train"):
        t0 = time.perf_counter()
        res = bpy.ops.maskfield.train()
        check("train_started", res == {"FINISHED"}, res)
        job = client.active_job("train")
        ok = client.pump(float(env("MASKFIELD_E2E_TIMEOUT", "900")))
        common.TIMES["train_s"] = time.perf_counter() - t0
        check("train_finished", ok and job is not None and job.state == "finished",
              job and (job.state, job.error, list(job.logs)[-10:]))
        for name in ("gaussians.ply", "field.pt", "run.json"):
            check(f"run_has_{name}", os.path.isfile(os.path.join(s.run_dir, name)))
        stages = [e.get("stage") for e in job.results] if job else []
        check("train_events", "train" in stages or "field" in stages, stages)
    last = mf.operators._LAST_SEGMENT

    def segment(mode, *prompts):
        s.prompts.clear()
        for p in prompts:
            bpy.ops.maskfield.prompt_add(text=p)
        s.mode = mode
        last[0] = None
        t0 = time.perf_counter()
        res = bpy.ops.maskfield.segment()
        ok = client.pump(180, until=lambda: last[0] is not None)
        common.TIMES[f"segment_{mode.lower()}_s"] = time.perf_counter() - t0
        return res, ok, last[0]

    mug = bpy.data.objects["red mug"]
    out = os.path.join(s.run_dir, "segments", "blender")
    with section("faces"):
        res, ok, job = segment("FACES", "red mug", "green ball")
        check("faces_finished", ok and job is not None and job.state == "finished", job and job.error)
        seg = mf.import_export.load_segments(out)
        check("faces_segments_json", [e["prompt"] for e in seg["prompts"]] == ["red mug", "green ball"]
              and seg.get("point_labels"), seg)
        labels = np.load(seg["point_labels"])
        faces = mf.import_export.FacesMap.load(os.path.join(s.run_dir, "blender", "faces.json"))
        check("faces_labels_shape", labels.shape == (faces.total,) and labels.dtype.kind == "i", labels.shape)
        # every labelled face is in a new object of its prompt's collection, and nothing else is
        for k, prompt in enumerate(("red mug", "green ball")):
            coll = next((c for c in bpy.data.collections if c.get("maskfield_prompt") == prompt), None)
            made = {o.get("maskfield_source"): len(o.data.polygons) for o in coll.objects} if coll else {}
            want = {}
            for e in faces.objects:
                n = int((labels[e["start"]: e["start"] + e["count"]] == k).sum())
                if n:
                    want[e["name"]] = n
            check(f"faces_objects_match_labels_{k}", made == want, (prompt, made, want))
        d = common.diff(before["objects"], {k: v for k, v in common.snapshot()["objects"].items()
                                            if k in before["objects"]})
        check("faces_originals_unchanged", not d, d)
        # what the user looks at: the "red mug" collection holds the mug's faces, and no table
        coll = next((c for c in bpy.data.collections if c.get("maskfield_prompt") == "red mug"), None)
        counts = {o.get("maskfield_source"): len(o.data.polygons) for o in coll.objects} if coll else {}
        own, total, n_mug = counts.get("red mug", 0), sum(counts.values()), len(mug.data.polygons)
        common.RESULTS["quality_faces"] = {"ok": True, "detail": json.dumps(
            {"mug_faces": n_mug, "found": counts, "recall": own / n_mug, "precision": own / max(total, 1)})}
        check("quality_faces_mug_recall", own >= 0.9 * n_mug, (counts, n_mug))
        check("quality_faces_mug_precision", total > 0 and own / total >= 0.9, counts)
        check("quality_faces_no_table", counts.get("table", 0) == 0, counts)
    with section("points"):
        res, ok, job = segment("POINTS", "red mug")
        check("points_finished", ok and job is not None and job.state == "finished", job and job.error)
        seg = mf.import_export.load_segments(out)
        entry = seg["prompts"][0]
        ob = next((o for o in bpy.data.objects if o.get("maskfield_prompt") == "red mug" and o.type == "MESH"
                   and len(o.data.polygons) == 0), None)
        if entry.get("found"):
            check("points_object", ob is not None and len(ob.data.vertices) == entry["count"],
                  (entry, ob and len(ob.data.vertices)))
        else:
            check("points_object", ob is None, STATUS.info)
        check("points_found", entry.get("found") and ob is not None, (entry, STATUS.info))
        if ob is not None:
            n = len(ob.data.vertices)
            co = np.empty(n * 3, np.float32)
            ob.data.vertices.foreach_get("co", co)
            co = co.reshape(-1, 3) @ np.array(ob.matrix_world)[:3, :3].T + np.array(ob.matrix_world)[:3, 3]
            mw = np.array(mug.matrix_world)
            bb = np.array([tuple(c) for c in mug.bound_box]) @ mw[:3, :3].T + mw[:3, 3]
            lo, hi = bb.min(0) - 0.02, bb.max(0) + 0.02  # Gaussians sit on the surface, a little off
            inside = float(np.all((co >= lo) & (co <= hi), axis=1).mean())
            common.RESULTS["quality_points"] = {"ok": True, "detail": json.dumps({"points": n, "on_mug": inside})}
            check("quality_points_on_the_mug", n >= 50 and inside >= 0.9, (n, inside))
    client.kill_all()
    common.finish()


if __name__ == "__main__":
    main()
