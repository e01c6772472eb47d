# SPDX-License-Identifier: GPL-3.0-or-later
"""Driver: the add-on's operators in real Blender, with a fake backend (tests/blender/fake_backend.py).

    python tests/blender/drv_addon_ops.py ZIP WORKDIR

Installs the extension zip, builds a small user scene and checks: rendering through the
operator (files + the user's scene unchanged), importing Gaussians as points, training and
segmenting through the backend protocol (Faces / Points / Select modes, re-runs replace only
the add-on's own objects), export, clear, and the error paths.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import check, expect_error, section  # noqa: E402

import bpy  # noqa: E402  (first: bmesh needs it)
import bmesh  # noqa: E402,I001
import numpy as np  # noqa: E402
from mathutils import Vector  # noqa: E402


def material(name, color):
    mat = bpy.data.materials.new(name)
    tree = mat.node_tree
    if tree is None:
        mat.use_nodes = True
        tree = mat.node_tree
    bsdf = next(n for n in tree.nodes if n.bl_idname == "ShaderNodeBsdfPrincipled")
    bsdf.inputs["Base Color"].default_value = (*color, 1.0)
    return mat


def build_user_scene():
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    scene.name = "User Scene"
    coll = scene.collection

    def add(name, fill, mats, loc=(0, 0, 0)):
        me = bpy.data.meshes.new(name + " mesh")
        bm = bmesh.new()
        fill(bm)
        bm.to_mesh(me)
        bm.free()
        for m in mats:
            me.materials.append(m)
        ob = bpy.data.objects.new(name, me)
        ob.location = loc
        coll.objects.link(ob)
        return ob

    red = material("Red", (0.8, 0.02, 0.02))
    blue = material("Blue", (0.02, 0.05, 0.8))
    grey = material("Grey", (0.5, 0.5, 0.5))
    green = material("Green", (0.05, 0.6, 0.05))
    cube = add("Red Cube", lambda bm: bmesh.ops.create_cube(bm, size=0.6), [red], (0.5, 0.2, 0.3))
    cube.pass_index = 7
    cube.rotation_euler = (0.1, 0.2, 0.7)
    holder = bpy.data.objects.new("Holder", None)
    holder.location = (-0.6, -0.2, 0.1)
    holder.rotation_euler = (0, 0, math.radians(30))
    coll.objects.link(holder)
    ball = add("Blue Ball", lambda bm: bmesh.ops.create_uvsphere(bm, u_segments=16, v_segments=8, radius=0.3),
               [blue], (0.2, 0.0, 0.2))
    ball.parent = holder
    floor = add("Plane floor", lambda bm: bmesh.ops.create_grid(bm, x_segments=4, y_segments=4, size=1.2),
                [grey, green])
    floor.data.polygons.foreach_set("material_index", np.array([i % 2 for i in range(len(floor.data.polygons))]))
    floor.data.update()
    light = bpy.data.lights.new("Lamp", "POINT")
    light.energy = 500
    lamp = bpy.data.objects.new("Lamp", light)
    lamp.location = (1, -1, 2)
    coll.objects.link(lamp)
    cam = bpy.data.objects.new("User Camera", bpy.data.cameras.new("User Camera"))
    coll.objects.link(cam)
    scene.camera = cam
    r = scene.render
    r.resolution_x, r.resolution_y, r.resolution_percentage = 1920, 1080, 50
    r.image_settings.file_format = "JPEG"
    r.filepath = "//user_renders/"
    bpy.context.view_layer.update()
    return cube, ball, floor


def select(objs):
    for ob in bpy.context.view_layer.objects:
        ob.select_set(ob in objs)
    if objs:
        bpy.context.view_layer.objects.active = objs[0]


def owned_objects():
    return sorted(ob.name for ob in bpy.data.objects if ob.get("maskfield_owned"))


def main() -> None:
    zip_path, work = sys.argv[1], sys.argv[2]
    work = os.path.join(work, "wörk dir ü")  # spaces and non-ASCII in every path
    os.makedirs(work, exist_ok=True)
    mf = common.install(zip_path)
    STATUS = mf.status.STATUS
    client = mf.backend_client
    prefs = bpy.context.preferences.addons[common.MODULE].preferences
    fake_python = common.make_fake_python(os.path.join(work, "bin dir"))
    log_path = os.path.join(work, "backend calls.jsonl")
    os.environ["FAKE_BACKEND_LOG"] = log_path

    cube, ball, floor = build_user_scene()
    s = bpy.context.scene.maskfield
    s.views, s.resolution, s.samples = 6, 48, 2
    select([cube, ball, floor])
    before = common.snapshot()

    # -- 1. render through the operator --------------------------------------------------
    scene_dir = os.path.join(work, "scène folder")
    with section("render_operator"):
        t0 = time.perf_counter()
        res = bpy.ops.maskfield.render_scene(directory=scene_dir)
        common.TIMES["render_6_views_48px"] = time.perf_counter() - t0
        check("render_finished", res == {"FINISHED"}, res)
        tj = json.load(open(os.path.join(scene_dir, "transforms.json"), encoding="utf-8"))
        check("render_frames", len(tj["frames"]) == 6 and tj["w"] == 48 and tj["h"] == 48, {k: tj[k] for k in ("w", "h")})
        files_ok = all(os.path.isfile(os.path.join(scene_dir, f["file_path"])) for f in tj["frames"])
        labels_ok = all(os.path.isfile(os.path.join(scene_dir, "labels", os.path.basename(f["file_path"])))
                        for f in tj["frames"])
        check("render_files", files_ok and labels_ok, os.listdir(scene_dir))
        objects = json.load(open(os.path.join(scene_dir, "labels", "objects.json"), encoding="utf-8"))
        check("render_objects_json", objects == {"1": "Blue Ball", "2": "Plane floor", "3": "Red Cube"}, objects)
        check("render_ply_path", tj.get("ply_file_path") == "points.ply"
              and os.path.isfile(os.path.join(scene_dir, "points.ply")), tj.get("ply_file_path"))
        # intrinsics of a 35 mm lens on a 36 mm sensor
        fl = 35.0 / 36.0 * 48
        check("render_intrinsics", abs(tj["fl_x"] - fl) < 1e-6 and abs(tj["fl_y"] - fl) < 1e-6
              and tj["cx"] == 24 and tj["cy"] == 24, {k: tj[k] for k in ("fl_x", "fl_y", "cx", "cy")})
        pts = mf.import_export.read_ply_vertices(os.path.join(scene_dir, "points.ply"))
        rgb = np.stack([pts["red"], pts["green"], pts["blue"]], 1).astype(int)
        reddish = np.mean((rgb[:, 0] > 200) & (rgb[:, 1] < 80))
        check("render_points", len(pts) == 20000 and reddish > 0.02, (len(pts), reddish))
        after = common.snapshot()
        d = common.diff(before, after)
        check("render_scene_unchanged", not d, d)

    # -- 2. import Gaussians as points ---------------------------------------------------
    run_a = os.path.join(work, "run ä")
    os.makedirs(run_a, exist_ok=True)
    with section("import_points"):
        n = 5000
        arr = common.write_gaussians_ply(os.path.join(run_a, "gaussians.ply"), n, seed=3)
        s.run_dir = run_a
        res = bpy.ops.maskfield.import_run()
        coll = next((c for c in bpy.data.collections if c.get("maskfield_owned") and c.get("maskfield_prompt") == mf.import_export.RUN_KEY),
                    None)
        check("import_collection", coll is not None and coll.name == "MaskField: run", coll)
        ob = coll.objects[0]
        me = ob.data
        check("import_count", len(me.vertices) == n and len(me.polygons) == 0, len(me.vertices))
        co = np.empty(n * 3, np.float32)
        me.vertices.foreach_get("co", co)
        xyz = np.stack([arr["x"], arr["y"], arr["z"]], 1).ravel()
        check("import_positions", np.allclose(co, xyz, atol=1e-6))
        op = np.empty(n, np.float32)
        me.attributes["opacity"].data.foreach_get("value", op)
        check("import_opacity", np.allclose(op, 1 / (1 + np.exp(-arr["opacity"])), atol=1e-5))
        sc = np.empty(n * 3, np.float32)
        me.attributes["scale"].data.foreach_get("vector", sc)
        ref = np.exp(np.stack([arr["scale_0"], arr["scale_1"], arr["scale_2"]], 1)).ravel()
        check("import_scale", np.allclose(sc, ref, rtol=1e-5))
        rot = np.empty(n * 4, np.float32)
        me.attributes["rotation"].data.foreach_get("value", rot)
        q = np.stack([arr[f"rot_{i}"] for i in range(4)], 1)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        check("import_rotation", me.attributes["rotation"].data_type == "QUATERNION"
              and np.allclose(rot.reshape(-1, 4), q, atol=1e-5))
        col = np.empty(n * 4, np.float32)
        me.attributes["color"].data.foreach_get("color", col)
        srgb = np.clip(np.stack([arr[f"f_dc_{i}"] for i in range(3)], 1) * 0.28209479177387814 + 0.5, 0, 1)
        lin = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
        check("import_color", np.allclose(col.reshape(-1, 4)[:, :3], lin, atol=1e-4))
        check("import_owned", ob.get("maskfield_owned") and me.get("maskfield_owned"))
        check("import_display_modifier", any(m.type == "NODES" and m.node_group for m in ob.modifiers),
              [m.type for m in ob.modifiers])
        # re-import replaces, never duplicates
        bpy.ops.maskfield.import_run()
        runs = [o for o in bpy.data.objects if o.get("maskfield_prompt") == mf.import_export.RUN_KEY]
        check("import_rerun_replaces", len(runs) == 1, [o.name for o in runs])
        # a recentred (geo-referenced) capture: the offset travels with the object, every digit
        # kept (a float32 would hold 4012345.123456 as 4012345.0), and the import says so
        origin = [512345.678901, 4012345.123456, 101.5]
        with open(os.path.join(run_a, "run.json"), "w", encoding="utf-8") as fh:
            json.dump({"origin": origin}, fh)
        bpy.ops.maskfield.import_run()
        ob = next(o for o in bpy.data.objects if o.get("maskfield_prompt") == mf.import_export.RUN_KEY)
        got = list(ob.get("maskfield_origin", []))
        check("import_origin_kept", got == origin, got)
        check("import_origin_said", "512345.6789" in STATUS.info and "maskfield_origin" in STATUS.info, STATUS.info)
        os.remove(os.path.join(run_a, "run.json"))
        bpy.ops.maskfield.import_run()
        ob = next(o for o in bpy.data.objects if o.get("maskfield_prompt") == mf.import_export.RUN_KEY)
        check("import_no_origin", ob.get("maskfield_origin") is None and "recentred" not in STATUS.info, STATUS.info)

    def calls(cmd):
        return [c for c in (json.loads(ln) for ln in open(log_path, encoding="utf-8")) if c[0] == cmd]

    # -- 3. train through the operator (selected objects -> render -> fake backend) -------
    prefs.python_path = fake_python
    run_b = os.path.join(work, "run ß")
    s.run_dir = run_b
    s.views, s.resolution = 4, 32
    select([cube, ball, floor])
    with section("train_objects"):
        t0 = time.perf_counter()
        res = bpy.ops.maskfield.train()
        common.TIMES["train_operator_returns"] = time.perf_counter() - t0
        check("train_started", res == {"FINISHED"} and client.active_job("train") is not None, res)
        check("pump_train", client.pump(60))
        job = client.last_finished("train")
        check("train_finished", job is not None and job.state == "finished", job and (job.state, job.error))
        argv = calls("train")[-1]
        scene_b = os.path.join(run_b, "scene")
        check("train_argv", argv[1] == scene_b and argv[argv.index("--out") + 1] == run_b
              and argv[argv.index("--from-labels") + 1] == os.path.join(scene_b, "labels")
              and argv[argv.index("--events") + 1] == "jsonl" and "--device" in argv
              and "--downscale" in argv and argv[argv.index("--downscale") + 1] == "1", argv)  # the panel's size
        tj = json.load(open(os.path.join(scene_b, "transforms.json"), encoding="utf-8"))
        check("train_rendered", len(tj["frames"]) == 4, len(tj["frames"]))
        faces = json.load(open(os.path.join(run_b, "blender", "faces.json"), encoding="utf-8"))
        want = {o.name: len(o.data.polygons) for o in (cube, ball, floor)}
        got = {e["name"]: e["count"] for e in faces["objects"]}
        centres = np.load(os.path.join(run_b, "blender", "faces.npy"))
        check("train_faces_exported", got == want and centres.shape == (sum(want.values()), 3), (got, want))
        # a face centre of the parented ball is in world space
        e = next(e for e in faces["objects"] if e["name"] == "Blue Ball")
        c0 = ball.matrix_world @ ball.data.polygons[0].center
        check("faces_world_space", np.allclose(centres[e["start"]], tuple(c0), atol=1e-5), (centres[e["start"]], c0))
        check("train_status", "Training finished" in STATUS.info, STATUS.info)
        d = common.diff(before, common.snapshot())
        d = [x for x in d if "MaskField" not in x and "/counts/" not in x]
        check("train_scene_unchanged", not d, d)
        check("train_first_claims_folder", "--overwrite" in argv, argv)
        # train again: same objects and settings -> the render is reused and the run resumed
        mtime = os.path.getmtime(os.path.join(scene_b, "transforms.json"))
        bpy.ops.maskfield.train()
        client.pump(60)
        argv2 = calls("train")[-1]
        check("train_again_resumes", os.path.getmtime(os.path.join(scene_b, "transforms.json")) == mtime
              and "--overwrite" not in argv2 and client.last_finished("train").state == "finished", argv2)
        # other settings into a finished run: refused, nothing rendered
        s.views = 5
        ok, msg = expect_error(lambda: bpy.ops.maskfield.train(), "holds a run of other objects")
        check("train_other_settings_refused", ok and os.path.getmtime(os.path.join(scene_b, "transforms.json"))
              == mtime, msg)
        s.views = 4
        # a second render into the same folder with fewer views leaves no stale frames
        stale_dir = os.path.join(work, "stale test")
        s.views = 6
        bpy.ops.maskfield.render_scene(directory=stale_dir)
        s.views = 4
        bpy.ops.maskfield.render_scene(directory=stale_dir)
        check("render_no_stale_frames", sorted(os.listdir(os.path.join(stale_dir, "images"))) ==
              [f"frame_{i:05d}.png" for i in range(1, 5)]
              and len([n for n in os.listdir(os.path.join(stale_dir, "labels")) if n.endswith(".png")]) == 4,
              os.listdir(os.path.join(stale_dir, "images")))
        # the Inside camera layout: in the middle of the selected objects, each camera looking
        # away from it (a room's walls and furnishings filmed from within)
        s.layout = "INSIDE"
        inside_dir = os.path.join(work, "inside render")
        bpy.ops.maskfield.render_scene(directory=inside_dir)
        s.layout = "HEMISPHERE"
        tj = json.load(open(os.path.join(inside_dir, "transforms.json"), encoding="utf-8"))
        lo = np.min([np.min([tuple(o.matrix_world @ Vector(c)) for c in o.bound_box], 0) for o in (cube, ball, floor)], 0)
        hi = np.max([np.max([tuple(o.matrix_world @ Vector(c)) for c in o.bound_box], 0) for o in (cube, ball, floor)], 0)
        mid = (lo + hi) / 2
        poses = [np.array(f["transform_matrix"]) for f in tj["frames"]]
        check("render_inside", tj["blender"]["settings"]["layout"] == "INSIDE" and len(poses) == 4
              and all(np.all(m[:3, 3] > lo) and np.all(m[:3, 3] < hi) for m in poses)
              and all(float(-m[:2, 2] @ (m[:2, 3] - mid[:2])) > 0 for m in poses),
              [m[:3, 3].round(2).tolist() for m in poses])
        # the Walk layout: passes in front of the objects (their -Y side), each camera facing +Y;
        # on the right (+X) side, facing -X
        s.layout = "WALK"
        walk = {}
        for side in ("FRONT", "RIGHT"):
            s.walk_side = side
            walk_dir = os.path.join(work, f"walk render {side}")
            bpy.ops.maskfield.render_scene(directory=walk_dir)
            tj = json.load(open(os.path.join(walk_dir, "transforms.json"), encoding="utf-8"))
            walk[side] = (tj["blender"]["settings"], [np.array(f["transform_matrix"]) for f in tj["frames"]])
        s.layout, s.walk_side = "HEMISPHERE", "FRONT"
        (front_settings, front), (right_settings, right) = walk["FRONT"], walk["RIGHT"]
        check("render_walk", front_settings["layout"] == "WALK" and front_settings["walk_side"] == "FRONT"
              and len(front) == 4
              and all(m[1, 3] < lo[1] and -m[1, 2] > 0.5 and lo[0] <= m[0, 3] <= hi[0] for m in front)
              and len({round(float(m[2, 3]), 4) for m in front}) == 2,
              [m[:3, 3].round(2).tolist() for m in front])
        check("render_walk_right_side", right_settings["walk_side"] == "RIGHT" and len(right) == 4
              and all(m[0, 3] > hi[0] and -m[0, 2] < -0.5 and lo[1] <= m[1, 3] <= hi[1] for m in right),
              [m[:3, 3].round(2).tolist() for m in right])

    # -- 4. segment: Faces mode ----------------------------------------------------------
    def set_prompts(*texts, disabled=()):
        s.prompts.clear()
        for t in texts:
            bpy.ops.maskfield.prompt_add(text=t)
        for t in disabled:
            bpy.ops.maskfield.prompt_add(text=t)
            s.prompts[len(s.prompts) - 1].enabled = False

    def originals_unchanged(tag):
        d = common.diff({k: v for k, v in before["objects"].items()},
                        {k: v for k, v in common.snapshot()["objects"].items() if k in before["objects"]})
        check(tag, not d, d)

    last = mf.operators._LAST_SEGMENT

    def run_segment(tag, timeout=60):
        last[0] = None
        t0 = time.perf_counter()
        res = bpy.ops.maskfield.segment()
        common.TIMES[f"{tag}_operator_returns"] = time.perf_counter() - t0
        ok = client.pump(timeout, until=lambda: last[0] is not None)
        return res, ok, last[0]



    with open(os.path.join(run_b, "fake_truth.json"), "w", encoding="utf-8") as fh:
        json.dump({"red": list(range(100))}, fh)
    user_thing = None
    with section("faces_mode"):
        set_prompts("red", "ball", "  ", "floor", disabled=("cube",))
        s.mode = "FACES"
        res, ok, job = run_segment("faces")
        check("faces_job", res == {"FINISHED"} and ok and job.state == "finished", job and (job.state, job.error))
        req = job.payload  # kept-alive server (the default)
        check("faces_prompts_sent", req["prompts"] == ["red", "ball", "floor"] and req["points"].endswith("faces.npy"),
              req)
        serve_calls = calls("serve")
        check("faces_served", len(serve_calls) == 1 and not calls("segment")
              and serve_calls[0][1] == run_b and "--events" in serve_calls[0], serve_calls)
        colls = {c.name: c for c in bpy.data.collections if c.get("maskfield_owned")}
        check("faces_collections", {"MaskField: red", "MaskField: ball", "MaskField: floor"} <= set(colls), list(colls))
        red_objs = list(colls["MaskField: red"].objects)
        check("faces_red_object", len(red_objs) == 1 and red_objs[0].name == "red (Red Cube)"
              and len(red_objs[0].data.polygons) == len(cube.data.polygons), [o.name for o in red_objs])
        check("faces_material_kept", red_objs[0].material_slots[0].material == cube.material_slots[0].material)
        fl = list(colls["MaskField: floor"].objects)[0]
        check("faces_two_materials", [m.name for m in fl.data.materials] == ["Grey", "Green"]
              and len(fl.data.polygons) == len(floor.data.polygons), [m.name for m in fl.data.materials])
        bo = list(colls["MaskField: ball"].objects)[0]
        check("faces_parented_same_place", np.allclose(np.array(bo.matrix_world), np.array(ball.matrix_world)))
        check("faces_offline_note", "object names" in STATUS.info, STATUS.info)
        originals_unchanged("faces_originals_unchanged")
        # the user puts an object of their own into the add-on's collection
        user_thing = bpy.data.objects.new("My Own Empty", None)
        colls["MaskField: red"].objects.link(user_thing)

    with section("faces_rerun"):
        os.environ["FAKE_BACKEND_HALF"] = "1"
        prefs.use_serve = False  # one-shot `maskfield segment` (the server has the old environment)
        set_prompts("red")
        res, ok, job = run_segment("faces_rerun")
        os.environ.pop("FAKE_BACKEND_HALF")
        argv = calls("segment")[-1] if calls("segment") else []
        prompts_sent = [argv[i + 1] for i, a in enumerate(argv) if a == "--prompt"]
        check("rerun_oneshot_argv", prompts_sent == ["red"] and "--points" in argv
              and argv[argv.index("--out") + 1].startswith(run_b) and argv[argv.index("--events") + 1] == "jsonl", argv)
        prefs.use_serve = True
        check("rerun_job", ok and job.state == "finished", job and job.error)
        red_coll = next(c for c in bpy.data.collections if c.get("maskfield_prompt") == "red")
        objs = [o for o in red_coll.objects if o.get("maskfield_owned")]
        half = len(cube.data.polygons) - len(cube.data.polygons) // 2
        check("rerun_replaced", len(objs) == 1 and len(objs[0].data.polygons) == half,
              [(o.name, len(o.data.polygons)) for o in objs])
        check("rerun_kept_user_object", user_thing is not None and user_thing.name in red_coll.objects)
        check("rerun_other_prompts_kept", any(c.get("maskfield_prompt") == "ball" for c in bpy.data.collections))
        stale = [m.name for m in bpy.data.meshes if m.get("maskfield_owned") and m.users == 0]
        check("rerun_no_orphans", not stale, stale)
        originals_unchanged("rerun_originals_unchanged")

    # -- 5. Points mode ------------------------------------------------------------------
    with section("points_mode"):
        set_prompts("red", "nothing here")
        s.mode = "POINTS"
        res, ok, job = run_segment("points")
        check("points_job", ok and job.state == "finished", job and job.error)
        red_coll = next(c for c in bpy.data.collections if c.get("maskfield_prompt") == "red")
        objs = [o for o in red_coll.objects if o.get("maskfield_owned")]
        check("points_object", len(objs) == 1 and objs[0].name == "red" and len(objs[0].data.vertices) == 100
              and len(objs[0].data.polygons) == 0, [(o.name, len(o.data.vertices)) for o in objs])
        check("points_not_found_reported", "No match for: nothing here" in STATUS.info, STATUS.info)
        check("points_no_empty_collection", not any(c.get("maskfield_prompt") == "nothing here"
                                                     for c in bpy.data.collections))

    # -- 6. Select mode ------------------------------------------------------------------
    with section("select_mode"):
        set_prompts("ball")
        s.mode = "SELECT"
        n_before = len(bpy.data.objects)
        res, ok, job = run_segment("select")
        check("select_job", ok and job.state == "finished", job and job.error)
        check("select_same_server", len(calls("serve")) == 1, calls("serve"))
        sel = sorted(o.name for o in bpy.context.selected_objects)
        check("select_objects", sel == ["Blue Ball"], sel)
        mask = np.zeros(len(ball.data.polygons), bool)
        ball.data.polygons.foreach_get("select", mask)
        check("select_faces", mask.all(), int(mask.sum()))
        check("select_made_nothing", len(bpy.data.objects) == n_before)

    # -- 7. export and clear -------------------------------------------------------------
    with section("export_clear"):
        set_prompts("red")
        s.mode = "POINTS"
        run_segment("points2")
        dest = os.path.join(work, "exported ü")
        res = bpy.ops.maskfield.export_segments(directory=dest)
        check("export_files", res == {"FINISHED"} and os.listdir(dest) == ["red.ply"], os.listdir(dest))
        bpy.ops.maskfield.clear_results()
        left = owned_objects()
        check("clear_all", not left, left)
        check("clear_keeps_user_object", "My Own Empty" in bpy.data.objects
              and bpy.data.objects["My Own Empty"].users_collection, "user object lost")
        originals_unchanged("clear_originals_unchanged")

    # -- 8. error paths ------------------------------------------------------------------
    select([cube, ball, floor])
    s.run_dir = run_b
    base = common.snapshot()

    def same_scene(tag):
        d = common.diff(base, common.snapshot())
        check(tag, not d, d)

    with section("errors"):
        prefs.python_path = ""
        ok, msg = expect_error(lambda: bpy.ops.maskfield.train(), "No MaskField backend", "Set up backend")
        check("err_no_backend", ok and "No MaskField backend" in STATUS.error, msg)
        prefs.python_path = os.path.join(work, "no such dir", "python")
        ok, msg = expect_error(lambda: bpy.ops.maskfield.segment(), "does not exist")
        check("err_python_missing", ok, msg)
        prefs.python_path = fake_python

        set_prompts("  ", "")
        ok, msg = expect_error(lambda: bpy.ops.maskfield.segment(), "Type a prompt first")
        check("err_empty_prompt", ok, msg)
        set_prompts("red")

        select([])
        ok, msg = expect_error(lambda: bpy.ops.maskfield.train(), "No objects selected")
        check("err_no_objects", ok, msg)
        ok, msg = expect_error(lambda: bpy.ops.maskfield.render_scene(), "No objects selected")
        check("err_no_objects_render", ok, msg)
        select([cube, ball, floor])

        s.source = "PHOTOS"
        empty = os.path.join(work, "photos without cameras")
        os.makedirs(empty, exist_ok=True)
        open(os.path.join(empty, "IMG_0001.jpg"), "wb").close()
        s.scene_dir = empty
        ok, msg = expect_error(lambda: bpy.ops.maskfield.train(), "No cameras found", "COLMAP")
        check("err_no_cameras", ok, msg)
        s.scene_dir = os.path.join(work, "missing folder")
        ok, msg = expect_error(lambda: bpy.ops.maskfield.train(), "does not exist")
        check("err_scene_missing", ok, msg)
        s.source = "OBJECTS"

        s.run_dir = os.path.join(work, "never trained")
        os.makedirs(s.run_dir, exist_ok=True)
        ok, msg = expect_error(lambda: bpy.ops.maskfield.segment(), "No trained MaskField")
        check("err_untrained_run", ok, msg)

        other = os.path.join(work, "run of another file")
        os.makedirs(os.path.join(other, "blender"), exist_ok=True)
        for name in ("gaussians.ply", "field.pt"):
            open(os.path.join(other, name), "wb").close()
        np.save(os.path.join(other, "blender", "faces.npy"), np.zeros((6, 3), np.float32))
        with open(os.path.join(other, "blender", "faces.json"), "w", encoding="utf-8") as fh:
            json.dump({"objects": [{"name": "Ghost Chair", "mesh": "x", "start": 0, "count": 6}], "total": 6}, fh)
        s.run_dir = other
        s.mode = "FACES"
        ok, msg = expect_error(lambda: bpy.ops.maskfield.segment(), "other objects", "Ghost Chair")
        check("err_other_scene", ok, msg)
        # (a run without faces in Faces mode makes meshes from the Gaussians: tests/blender/drv_select.py)

        # the backend dies in the middle
        s.run_dir = run_b
        s.mode = "FACES"
        for serve in (False, True):
            prefs.use_serve = serve
            tag = "serve" if serve else "oneshot"
            client.stop_server()
            os.environ["FAKE_BACKEND_MODE"] = "die"
            res, ok, job = run_segment("die")
            check(f"err_backend_dies_{tag}", ok and job.state == "failed" and "exit code 3" in job.error
                  and "boom" in job.error and "Segmentation failed" in STATUS.error, job and job.error)
            client.stop_server()
            os.environ["FAKE_BACKEND_MODE"] = "error"
            res, ok, job = run_segment("error_event")
            check(f"err_backend_error_event_{tag}", ok and job.state == "failed"
                  and "fix transforms.json" in STATUS.error, STATUS.error)
            if serve:
                check("err_server_survives_error", client.server() is not None)
            client.stop_server()
            os.environ["FAKE_BACKEND_MODE"] = "garbage"
            res, ok, job = run_segment("garbage")
            check(f"garbage_output_tolerated_{tag}", ok and job.state == "finished", job and job.error)
            client.stop_server()
        os.environ.pop("FAKE_BACKEND_MODE")
        bpy.ops.maskfield.clear_results()

        # cancel a slow run: the operator returns at once, cancel stops the process
        os.environ["FAKE_BACKEND_MODE"] = "slow"
        photos = os.path.join(work, "photos ok")
        os.makedirs(photos, exist_ok=True)
        with open(os.path.join(photos, "transforms.json"), "w", encoding="utf-8") as fh:
            json.dump({"frames": []}, fh)
        s.source = "PHOTOS"
        s.scene_dir = photos
        s.run_dir = os.path.join(work, "run slow")
        t0 = time.perf_counter()
        res = bpy.ops.maskfield.train()
        returned = time.perf_counter() - t0
        job = client.active_job("train")
        client.pump(1.0, until=lambda: job.stage == "fit" and job.done > 2)
        busy_ok, busy_msg = expect_error(lambda: bpy.ops.maskfield.segment(), "busy")
        bpy.ops.maskfield.cancel()
        t1 = time.perf_counter()
        stopped = client.pump(10)
        check("cancel", res == {"FINISHED"} and returned < 1.0 and stopped and job.state == "cancelled"
              and job.proc.poll() is not None and time.perf_counter() - t1 < 6,
              (res, returned, job.state, job.proc.poll()))
        check("busy_refused", busy_ok, busy_msg)
        # photos: the backend picks the fit's size for the device (no --downscale from the add-on)
        check("train_photos_size_by_backend", "--downscale" not in calls("train")[-1]
              and "--max-size" not in calls("train")[-1], calls("train")[-1])
        common.TIMES["train_slow_operator_returns"] = returned
        os.environ.pop("FAKE_BACKEND_MODE")
        s.source = "OBJECTS"

        python3 = "/usr/bin/python3"
        if os.path.isfile(python3) and os.path.realpath(python3) != os.path.realpath(sys.executable):
            prefs.python_path = python3
            s.run_dir = run_b
            s.mode = "POINTS"
            prefs.use_serve = False
            res, ok, job = run_segment("no_module")
            prefs.use_serve = True
            check("err_backend_not_installed", ok and job.state == "failed" and "Set up backend" in job.error,
                  job and job.error)
            prefs.python_path = fake_python
        same_scene("errors_scene_unchanged")

    # -- 9. preferences: check backend, set-up offline, drawing ----------------------------
    with section("preferences"):
        prefs.python_path = fake_python
        res = bpy.ops.maskfield.detect_backend()
        client.pump(20)
        info = json.loads(prefs.backend_info or "{}")
        check("detect_backend", res == {"FINISHED"} and info.get("python") == fake_python
              and "maskfield 0.0-fake" in mf.preferences.describe_info(info), (prefs.backend_info, STATUS.error))
        check("online_access_off_in_background", not bpy.app.online_access)
        ok, msg = expect_error(lambda: bpy.ops.maskfield.setup_backend(), "offline", "Allow Online Access")
        check("setup_refused_offline", ok, msg)
        steps = None
        try:
            mf.preferences.setup_steps(bpy.context)
        except mf.backend_client.BackendError:
            pass
        src = mf.preferences.backend_source_dir()
        check("setup_source_bundled", src and os.path.isfile(os.path.join(src, "pyproject.toml")), (src, steps))
        # the whole set-up chain (venv, pip, check) with a stand-in Python and online access
        real_online = mf.preferences.online_allowed
        mf.preferences.online_allowed = lambda: True
        try:
            prefs.setup_python = fake_python
            prefs.torch_variant = "CPU"
            res = bpy.ops.maskfield.setup_backend()
            job = client.active_job("setup")
            client.pump(30)
            env_python = mf.preferences.venv_python(mf.preferences.managed_env_dir())
            labels = job.step_labels if job else []
            check("setup_chain", res == {"FINISHED"} and job.state == "finished" and len(job.steps) == 4
                  and job.steps[0][1:3] == ["-m", "venv"]
                  and job.steps[1][1:3] == [mf.preferences.SETUP_SCRIPT, "torch"] and "--variant" in job.steps[1]
                  and src + "[priors]" in job.steps[2] and job.steps[3][-1] == "info"
                  and os.path.isfile(env_python),
                  (job and (job.state, job.error, job.steps), labels))
            check("setup_uses_new_env", prefs.python_path == "" and mf.preferences.resolve_python() == env_python
                  and "Backend ready" in STATUS.info, (prefs.python_path, STATUS.info))
        finally:
            mf.preferences.online_allowed = real_online
            prefs.python_path = fake_python

    class Anything:
        """Stands for a UILayout: accepts every call and attribute."""

        def __getattr__(self, name):
            return self

        def __call__(self, *args, **kwargs):
            return self

        def __setattr__(self, name, value):
            pass

    class FakeSelf:
        def __init__(self, real=None):
            object.__setattr__(self, "_real", real)
            object.__setattr__(self, "layout", Anything())

        def __getattr__(self, name):
            return getattr(self._real, name)

    with section("draw"):
        os.environ["FAKE_BACKEND_MODE"] = "slow"
        s.source, s.scene_dir, s.run_dir = "PHOTOS", photos, os.path.join(work, "run slow 3")
        bpy.ops.maskfield.train()
        STATUS.set_error("a long error message " * 10)
        for busy in (True, False):
            for source in ("OBJECTS", "PHOTOS", "SPLAT"):
                s.source = source
                for name in ("MASKFIELD_PT_main", "MASKFIELD_PT_settings", "MASKFIELD_PT_segment"):
                    getattr(bpy.types, name).draw(FakeSelf(), bpy.context)
            type(prefs).draw(FakeSelf(prefs), bpy.context)
            mf.status.draw_statusbar(FakeSelf(), bpy.context)
            item = s.prompts.add()
            mf.panels.MASKFIELD_UL_prompts.draw_item(FakeSelf(), bpy.context, Anything(), s, item, 0, s,
                                                     "prompt_index", 0)
            if busy:
                client.cancel_all()
                client.pump(10)
        check("draw_ok", True)
        os.environ.pop("FAKE_BACKEND_MODE")

    # -- 10. intrinsics agree with Blender's own projection ------------------------------
    with section("intrinsics"):
        from bpy_extras.object_utils import world_to_camera_view

        scene = bpy.context.scene
        cam_data = bpy.data.cameras.new("Intrinsics test")
        cam = bpy.data.objects.new("Intrinsics test", cam_data)
        scene.collection.objects.link(cam)
        cam.location = (0.3, -4.0, 1.0)
        cam.rotation_euler = (math.radians(80), 0, math.radians(5))
        rng = np.random.default_rng(0)
        pts = rng.uniform(-1, 1, (50, 3))
        saved = (scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage)
        worst = 0.0
        for fit, w, h, sx, sy, lens in (("AUTO", 80, 50, 0, 0, 35), ("AUTO", 50, 80, 0.1, -0.05, 50),
                                        ("HORIZONTAL", 64, 40, 0.0, 0.2, 28), ("VERTICAL", 64, 40, 0.15, 0, 40),
                                        ("VERTICAL", 40, 64, -0.1, 0.1, 30)):
            cam_data.sensor_fit, cam_data.lens, cam_data.shift_x, cam_data.shift_y = fit, lens, sx, sy
            cam_data.sensor_height = 20.0
            scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = w, h, 100
            bpy.context.view_layer.update()
            K = mf.scene_render.camera_intrinsics(cam_data, w, h)
            w2c = np.linalg.inv(np.array(cam.matrix_world))
            for p in pts:
                ref = world_to_camera_view(scene, cam, mf.scene_render.Vector(p))
                c = w2c[:3, :3] @ p + w2c[:3, 3]
                u = K["fl_x"] * c[0] / -c[2] + K["cx"]
                v = -K["fl_y"] * c[1] / -c[2] + K["cy"]
                worst = max(worst, abs(u - ref.x * w), abs(v - (1 - ref.y) * h))
        scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = saved
        bpy.data.objects.remove(cam)
        bpy.data.cameras.remove(cam_data)
        check("intrinsics_match_blender", worst < 1e-3, worst)

    # -- 10b. split in place (last: it changes the user's meshes, as asked) ---------------
    with section("split_in_place"):
        os.environ["FAKE_BACKEND_HALF"] = "1"  # the first half of the cube's faces are "red"
        set_prompts("red")
        s.mode, s.run_dir, s.split_in_place = "FACES", run_b, True
        n_cube = len(cube.data.polygons)
        other_user = bpy.data.objects.new("Cube twin", cube.data)  # a linked duplicate shares the mesh
        bpy.context.scene.collection.objects.link(other_user)
        res, ok, job = run_segment("split")
        check("split_job", ok and job.state == "finished", job and job.error)
        red = [o for o in next(c for c in bpy.data.collections if c.get("maskfield_prompt") == "red").objects
               if o.get("maskfield_owned")]
        half = n_cube - n_cube // 2
        check("split_new_object", len(red) == 1 and len(red[0].data.polygons) == half,
              [(o.name, len(o.data.polygons)) for o in red])
        check("split_original_keeps_the_rest", len(cube.data.polygons) == n_cube - half, len(cube.data.polygons))
        check("split_twin_untouched", len(other_user.data.polygons) == n_cube and other_user.data != cube.data)
        check("split_reported", "originals split" in STATUS.info, STATUS.info)
        # the face table no longer fits the split mesh: a re-run is refused, nothing changes
        before_split = len(cube.data.polygons)
        n_objects = len(bpy.data.objects)
        ok, msg = expect_error(lambda: bpy.ops.maskfield.segment(), "Red Cube", "train again")
        check("split_rerun_refused", ok and len(cube.data.polygons) == before_split, msg)
        # and if the mesh changes while a segmentation runs, applying its result is refused too
        faces = mf.import_export.FacesMap.load(os.path.join(run_b, "blender", "faces.json"))
        try:
            mf.import_export.separate_faces(bpy.context.scene, faces, np.zeros(faces.total, np.int32), ["red"])
            refused = "no error"
        except mf.import_export.DataError as exc:
            refused = str(exc)
        check("split_apply_refused", "meshes changed" in refused and len(bpy.data.objects) == n_objects
              and len(cube.data.polygons) == before_split, refused)
        os.environ.pop("FAKE_BACKEND_HALF")
        s.split_in_place = False

    # -- 11. kill on exit ----------------------------------------------------------------
    with section("kill_all"):
        os.environ["FAKE_BACKEND_MODE"] = "slow"
        s.source = "PHOTOS"
        s.run_dir = os.path.join(work, "run slow 2")
        s.photo_size = 640
        bpy.ops.maskfield.train()
        job = client.active_job("train")
        argv = list(job.steps[0])  # the command the job runs (the fake backend logs it only once it starts)
        check("train_photo_size", "--max-size" in argv and argv[argv.index("--max-size") + 1] == "640"
              and "--downscale" not in argv, argv)
        s.photo_size = 0
        set_prompts("red")
        s.source, s.mode, s.run_dir = "OBJECTS", "POINTS", run_b
        os.environ.pop("FAKE_BACKEND_MODE")
        last[0] = None
        client.serve_request(mf.backend_client.backend_command(fake_python, "serve", run_b), "k",
                             {"cmd": "segment", "prompts": ["red"], "points": None,
                              "out": os.path.join(work, "seg out")})
        server = client.server()
        client.pump(5, until=lambda: server.ready)
        client.kill_all()
        check("kill_all", job.proc.poll() is not None and server.job.proc.poll() is not None,
              (job.proc.poll(), server.job.proc.poll()))
    common.finish()


if __name__ == "__main__":
    main()
