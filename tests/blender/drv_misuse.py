# SPDX-License-Identifier: GPL-3.0-or-later
"""Driver: the add-on under misuse, in real Blender (issue 11, item 10).

    python tests/blender/drv_misuse.py ZIP WORKDIR            # the checks below, fake backend
    python tests/blender/drv_misuse.py ZIP WORKDIR quit        # real backend, then this process dies

Checks: Train pressed twice; Segment before any training; a prompt whose collection name the
user already uses; source objects with modifiers and unapplied scale/rotation (faces and render
as shown); a linked (library) object as source; a backend Python without torch (Check backend
and Train); the extension disabled and enabled while a run is in progress (no process left).
In ``quit`` mode a training runs on the real backend until it has saved a checkpoint, then
this Blender process kills itself (no atexit, as in a crash); the pytest side checks that the
backend stops by itself and that the run resumes.
"""
from __future__ import annotations

import glob
import json
import math
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import check, expect_error, section  # noqa: E402

import bpy  # noqa: E402  (first: bmesh needs it)
import bmesh  # noqa: E402,I001
import numpy as np  # noqa: E402
from mathutils import Matrix, Vector  # noqa: E402


def material(name, color):
    mat = bpy.data.materials.new(name)
    if mat.node_tree is None:
        mat.use_nodes = True
    bsdf = next(n for n in mat.node_tree.nodes if n.bl_idname == "ShaderNodeBsdfPrincipled")
    bsdf.inputs["Base Color"].default_value = (*color, 1.0)
    return mat


def mesh_object(name, fill, mat, loc=(0, 0, 0), link=True):
    me = bpy.data.meshes.new(name + " mesh")
    bm = bmesh.new()
    fill(bm)
    bm.to_mesh(me)
    bm.free()
    me.materials.append(mat)
    ob = bpy.data.objects.new(name, me)
    ob.location = loc
    if link:
        bpy.context.scene.collection.objects.link(ob)
    return ob


def build_scene(work):
    bpy.ops.wm.read_homefile(use_empty=True)
    bpy.context.scene.name = "Misuse"
    # a library file with a cone, linked into this file (read-only data)
    lib_path = os.path.join(work, "library ü.blend")
    cone = mesh_object("Lib Cone", lambda bm: bmesh.ops.create_cone(bm, cap_ends=True, segments=12, radius1=0.3,
                                                                      radius2=0.0, depth=0.6),
                       material("Yellow", (0.8, 0.7, 0.05)), link=False)
    bpy.data.libraries.write(lib_path, {cone}, fake_user=True)
    bpy.data.objects.remove(cone)
    with bpy.data.libraries.load(lib_path, link=True) as (_src, dst):
        dst.objects = ["Lib Cone"]
    linked = dst.objects[0]
    bpy.context.scene.collection.objects.link(linked)
    # a cube with a Subdivision modifier, unapplied scale and rotation: shown rounder than its mesh
    red = mesh_object("Red Cube Mod", lambda bm: bmesh.ops.create_cube(bm, size=0.8), material("Red", (0.8, 0.02, 0.02)),
                      loc=(0.7, 0.1, 0.4))
    red.scale = (1.6, 0.7, 1.0)
    red.rotation_euler = (0.3, 0.0, math.radians(35))
    sub = red.modifiers.new("Subdivision", "SUBSURF")
    sub.levels, sub.render_levels = 2, 3  # the viewport shows 2 levels; a plain render would use 3
    ball = mesh_object("Blue Ball", lambda bm: bmesh.ops.create_uvsphere(bm, u_segments=12, v_segments=6, radius=0.3),
                       material("Blue", (0.02, 0.05, 0.8)), loc=(-0.6, 0.0, 0.3))
    # the user's own collection, named as the add-on would name the prompt "red"
    theirs = bpy.data.collections.new("MaskField: red")
    bpy.context.scene.collection.children.link(theirs)
    mine = bpy.data.objects.new("My Red Things", None)
    theirs.objects.link(mine)
    bpy.context.view_layer.update()
    return red, ball, linked, theirs


def label_ids(path):
    """The object ids in an 8-bit label image (read with Blender: its Python has no PIL)."""
    img = bpy.data.images.load(path, check_existing=False)
    img.colorspace_settings.name = "Non-Color"
    px = np.empty(img.size[0] * img.size[1] * 4, np.float32)
    img.pixels.foreach_get(px)
    bpy.data.images.remove(img)
    return set(np.unique(np.rint(px[0::4] * 255).astype(int)).tolist())


def select(objs):
    for ob in bpy.context.view_layer.objects:
        ob.select_set(ob in objs)
    bpy.context.view_layer.objects.active = objs[0] if objs else None


def world_face_centres(ob):
    """What the user sees: the evaluated mesh's face centres in world space."""
    dg = bpy.context.evaluated_depsgraph_get()
    ob_eval = ob.evaluated_get(dg)
    me = ob_eval.to_mesh()
    c = np.empty(len(me.polygons) * 3, np.float64)
    me.polygons.foreach_get("center", c)
    ob_eval.to_mesh_clear()
    mw = np.array(ob_eval.matrix_world)
    return c.reshape(-1, 3) @ mw[:3, :3].T + mw[:3, 3]


def train_and_read_face_table(client, s, status, check_name):
    """Train on the selected objects (checked as ``check_name``); the run's face table and face centres."""
    res = bpy.ops.maskfield.train()
    client.pump(60)
    job = client.last_finished("train")
    check(check_name, res == {"FINISHED"} and job is not None and job.state == "finished",
          (res, job and (job.state, job.error), status.error))
    faces = json.load(open(os.path.join(s.run_dir, "blender", "faces.json"), encoding="utf-8"))
    return faces, np.load(os.path.join(s.run_dir, "blender", "faces.npy"))


def segment_as_faces(mf, client, s, prompt):
    """Segment one prompt in Faces mode (new objects, originals kept); the objects made, by name."""
    s.prompts.clear()
    bpy.ops.maskfield.prompt_add(text=prompt)
    s.mode, s.split_in_place = "FACES", False
    last = mf.operators._LAST_SEGMENT
    last[0] = None
    bpy.ops.maskfield.segment()
    client.pump(60, until=lambda: last[0] is not None)
    coll = [c for c in bpy.data.collections if c.get("maskfield_prompt") == prompt]
    return sorted(coll[0].objects, key=lambda o: o.name) if coll else []


def python_without_torch(folder):
    """A real Python that has the backend, numpy and Pillow, but not torch (nor the rest of the stack)."""
    import numpy
    import PIL

    env = os.path.join(folder, "env without torch")
    subprocess.run([os.path.join(sys.base_prefix, "bin", "python3"), "-m", "venv", "--without-pip", env], check=True)
    site = subprocess.run([os.path.join(env, "bin", "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    packages = os.path.join(folder, "numpy only")
    os.makedirs(packages, exist_ok=True)
    site_packages = os.path.dirname(os.path.dirname(numpy.__file__))
    assert site_packages == os.path.dirname(os.path.dirname(PIL.__file__))
    for name in os.listdir(site_packages):
        if name.split(".")[0].split("-")[0].lower() in ("numpy", "pil", "pillow"):
            os.symlink(os.path.join(site_packages, name), os.path.join(packages, name))
    with open(os.path.join(site, "maskfield_test.pth"), "w", encoding="utf-8") as fh:
        fh.write(os.path.join(common.ROOT, "backend") + "\n" + packages + "\n")
    return os.path.join(env, "bin", "python")


def real_backend_python(folder):
    """This checkout's backend in this environment's Python (the add-on clears PYTHONPATH)."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "python with backend")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(f"#!/bin/sh\nPYTHONPATH='{os.path.join(common.ROOT, 'backend')}' exec '{sys.executable}' \"$@\"\n")
    os.chmod(path, 0o755)
    return path


def quit_mode(zip_path, work):
    """Train on the real backend until the fit is under way, then die like a crashed Blender."""
    mf = common.install(zip_path)
    client = mf.backend_client
    red, ball, linked, _ = build_scene(work)
    prefs = bpy.context.preferences.addons[common.MODULE].preferences
    prefs.python_path = real_backend_python(os.path.join(work, "bin"))
    s = bpy.context.scene.maskfield
    s.views, s.resolution, s.samples, s.seed_points = 5, 24, 1, 1000
    s.iterations, s.field_iterations = 3000, 10
    s.run_dir = os.path.join(work, "run quit")
    select([red, ball])
    bpy.ops.maskfield.train()
    job = client.active_job("train")
    run = s.run_dir
    # mid-fit, before any periodic checkpoint (every 250 steps): what is saved, the backend saves
    # by itself when it sees Blender gone
    ok = client.pump(240, until=lambda: (job.stage == "fit" and job.done >= 5) or not job.running)
    ok = ok and not os.path.isfile(os.path.join(run, "fit_checkpoint.pt"))
    sys.stdout.write("MASKFIELD_QUIT " + json.dumps({"pid": job.proc.pid, "argv": job.steps[0], "run": run,
                                                     "mid_fit": bool(ok and job.running), "state": job.state,
                                                     "error": job.error, "logs": list(job.logs)[-8:]}) + "\n")
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)  # no atexit, no unregister: as if Blender crashed


def main() -> None:
    zip_path, work = sys.argv[1], sys.argv[2]
    work = os.path.join(work, "misuse ü")
    os.makedirs(work, exist_ok=True)
    if sys.argv[3:] == ["quit"]:
        return quit_mode(zip_path, work)
    mf = common.install(zip_path)
    client = mf.backend_client
    STATUS = mf.status.STATUS
    prefs = bpy.context.preferences.addons[common.MODULE].preferences
    fake_python = common.make_fake_python(os.path.join(work, "bin"))
    log_path = os.path.join(work, "backend calls.jsonl")
    os.environ["FAKE_BACKEND_LOG"] = log_path
    prefs.python_path = fake_python
    red, ball, linked, theirs = build_scene(work)
    s = bpy.context.scene.maskfield
    s.views, s.resolution, s.samples, s.seed_points = 4, 32, 1, 3000

    def calls(cmd):
        if not os.path.isfile(log_path):
            return []
        return [c for c in (json.loads(ln) for ln in open(log_path, encoding="utf-8")) if c[0] == cmd]

    # -- Segment before any training -------------------------------------------------------
    with section("segment_before_training"):
        s.prompts.clear()
        bpy.ops.maskfield.prompt_add(text="red")
        s.run_dir = os.path.join(work, "never trained")
        ok, msg = expect_error(lambda: bpy.ops.maskfield.segment(), "does not exist", "train first")
        check("segment_before_training_no_folder", ok and not os.path.exists(s.run_dir), msg)
        os.makedirs(s.run_dir)
        ok, msg = expect_error(lambda: bpy.ops.maskfield.segment(), "No trained MaskField", "train first")
        check("segment_before_training_empty_folder", ok and os.listdir(s.run_dir) == [] and not calls("segment")
              and not calls("serve"), (msg, os.listdir(s.run_dir)))

    # -- Train pressed twice ----------------------------------------------------------------
    run = os.path.join(work, "run")
    s.run_dir = run
    select([red, ball, linked])
    with section("train_twice"):
        os.environ["FAKE_BACKEND_MODE"] = "slow"
        res = bpy.ops.maskfield.train()
        job = client.active_job("train")
        client.pump(10, until=lambda: job.done > 1)  # the process has started and logged its call
        ok, msg = expect_error(lambda: bpy.ops.maskfield.train(), "busy", "wait or cancel")
        ok2, msg2 = expect_error(lambda: bpy.ops.maskfield.segment(), "busy")
        check("train_twice_refused", res == {"FINISHED"} and ok and ok2 and len(calls("train")) == 1
              and job is not None and job.running, (res, msg, msg2, calls("train")))
        bpy.ops.maskfield.cancel()
        client.pump(10)
        os.environ.pop("FAKE_BACKEND_MODE")
        check("train_twice_one_process_left_none", job.proc.poll() is not None and not client.jobs(),
              (job.proc.poll(), client.jobs()))

    # -- modifiers, unapplied transforms and a linked object as the source ------------------
    with section("train_modifiers_linked"):
        before_red = (len(red.data.polygons), [m.name for m in red.modifiers], tuple(red.scale))
        res = bpy.ops.maskfield.train()
        client.pump(60)
        job = client.last_finished("train")
        check("train_with_modifiers_and_linked", res == {"FINISHED"} and job.state == "finished",
              (res, job and (job.state, job.error), STATUS.error))
        faces = json.load(open(os.path.join(run, "blender", "faces.json"), encoding="utf-8"))
        centres = np.load(os.path.join(run, "blender", "faces.npy"))
        by_name = {e["name"]: e for e in faces["objects"]}
        e = by_name["Red Cube Mod"]
        shown = world_face_centres(red)
        check("faces_as_shown_count", e["count"] == len(shown) == 6 * 16 and e["faces"] == 6 and e["evaluated"], e)
        check("faces_as_shown_positions", np.allclose(centres[e["start"]: e["start"] + e["count"]], shown, atol=1e-4),
              np.abs(centres[e["start"]: e["start"] + e["count"]] - shown).max())
        le = by_name["Lib Cone"]
        check("faces_linked_object", le["count"] == len(linked.data.polygons)
              and np.allclose(centres[le["start"]: le["start"] + le["count"]], world_face_centres(linked), atol=1e-4), le)
        # the render shows the modified cube as the viewport does: its surface samples lie in
        # the evaluated (rounder, smaller) box, not in the box of the mesh's own cube
        pts = mf.import_export.read_ply_vertices(os.path.join(run, "scene", "points.ply"))
        xyz = np.stack([pts["x"], pts["y"], pts["z"]], 1)
        rgb = np.stack([pts["red"], pts["green"], pts["blue"]], 1).astype(int)
        reds = xyz[(rgb[:, 0] > 150) & (rgb[:, 1] < 80) & (rgb[:, 2] < 80)]
        inv = np.linalg.inv(np.array(red.matrix_world))
        local = reds @ inv[:3, :3].T + inv[:3, 3]
        half = np.abs(local).max(0)
        check("render_as_shown", len(reds) > 50 and half.max() < 0.4 * 0.93, (len(reds), half))
        check("originals_untouched_by_training", (len(red.data.polygons), [m.name for m in red.modifiers],
                                                  tuple(red.scale)) == before_red)

    # -- a prompt whose collection name the user already uses --------------------------------
    with section("collection_clash"):
        s.prompts.clear()
        bpy.ops.maskfield.prompt_add(text="red")
        bpy.ops.maskfield.prompt_add(text="cone")
        s.mode = "FACES"
        last = mf.operators._LAST_SEGMENT
        last[0] = None
        res = bpy.ops.maskfield.segment()
        client.pump(60, until=lambda: last[0] is not None)
        job = last[0]
        check("clash_segment_finished", job is not None and job.state == "finished", job and job.error)
        check("clash_theirs_untouched", theirs.name == "MaskField: red" and [o.name for o in theirs.objects]
              == ["My Red Things"] and not theirs.get("maskfield_owned"), [o.name for o in theirs.objects])
        ours = [c for c in bpy.data.collections if c.get("maskfield_owned") and c.get("maskfield_prompt") == "red"]
        check("clash_ours_separate", len(ours) == 1 and ours[0] is not theirs and ours[0].name.startswith("MaskField: red")
              and len(ours[0].objects) == 1, [c.name for c in ours])
        made = ours[0].objects[0]
        got = np.array([made.matrix_world @ p.center for p in made.data.polygons])
        check("faces_object_as_shown", len(made.data.polygons) == 96 and len(made.modifiers) == 0
              and np.allclose(np.sort(got, 0), np.sort(world_face_centres(red), 0), atol=1e-4),
              (len(made.data.polygons), [m.type for m in made.modifiers]))
        cone = [c for c in bpy.data.collections if c.get("maskfield_prompt") == "cone"]
        cone_obj = cone[0].objects[0] if cone and cone[0].objects else None
        check("faces_from_linked_object", cone_obj is not None and cone_obj.library is None
              and cone_obj.data.library is None and len(cone_obj.data.polygons) == len(linked.data.polygons),
              cone_obj and cone_obj.name)
        bpy.ops.maskfield.clear_results()
        check("clear_keeps_theirs", "MaskField: red" in bpy.data.collections and
              [o.name for o in bpy.data.collections["MaskField: red"].objects] == ["My Red Things"])
        # split in place is refused for the linked object and for faces made by modifiers,
        # before anything changes
        s.split_in_place = True
        for prompts, needle in ((["cone"], "linked from a library"), (["red"], "Apply the modifiers")):
            s.prompts.clear()
            for p in prompts:
                bpy.ops.maskfield.prompt_add(text=p)
            n_objects = len(bpy.data.objects)
            last[0] = None
            bpy.ops.maskfield.segment()
            client.pump(60, until=lambda: last[0] is not None)
            check(f"split_refused_{prompts[0]}", needle in STATUS.error and len(bpy.data.objects) == n_objects
                  and len(red.data.polygons) == 6 and len(linked.data.polygons) == le["count"], STATUS.error)
        s.split_in_place = False
        # Select mode: the linked mesh is not written to, the object is selected
        s.mode = "SELECT"
        s.prompts.clear()
        bpy.ops.maskfield.prompt_add(text="cone")
        last[0] = None
        bpy.ops.maskfield.segment()
        client.pump(60, until=lambda: last[0] is not None)
        check("select_linked_object", last[0].state == "finished" and linked.select_get() and "selected" in STATUS.info,
              (STATUS.info, STATUS.error))
        client.stop_server()
        client.pump(5)

    # -- collection instances (as the asset browser makes them) in the selection -------------
    with section("collection_instances"):
        chairs = bpy.data.collections.new("Chairs")  # not in the scene: shown only by its instances
        chair = mesh_object("Chair", lambda bm: bmesh.ops.create_cube(bm, size=0.3), material("Wood", (0.4, 0.2, 0.1)),
                            loc=(0.2, 0.0, 0.0), link=False)
        chair.rotation_euler = (0.0, 0.0, 0.4)
        chairs.objects.link(chair)
        chairs.instance_offset = (0.1, 0.0, 0.0)
        insts = []
        for name, loc, turn in (("Chairs A", (0.0, 1.2, 0.2), 0.0), ("Chairs B", (1.1, -1.0, 0.2), 0.7)):
            inst = bpy.data.objects.new(name, None)
            inst.instance_type, inst.instance_collection = "COLLECTION", chairs
            inst.location, inst.rotation_euler = loc, (0.0, 0.0, turn)
            bpy.context.scene.collection.objects.link(inst)
            insts.append(inst)
        # a set: a collection that itself holds an instance of the chairs, instanced once
        room_set = bpy.data.collections.new("Set")
        inner = bpy.data.objects.new("Set chairs", None)
        inner.instance_type, inner.instance_collection = "COLLECTION", chairs
        inner.location = (0.0, 0.3, 0.0)
        room_set.objects.link(inner)
        set_a = bpy.data.objects.new("Set A", None)
        set_a.instance_type, set_a.instance_collection = "COLLECTION", room_set
        set_a.location, set_a.rotation_euler = (-1.0, -0.4, 0.2), (0.0, 0.0, -0.5)
        bpy.context.scene.collection.objects.link(set_a)
        insts.append(set_a)
        bpy.context.view_layer.update()

        def shown(inst):  # the chair's world face centres as that instance shows them
            offset = np.array(Matrix.Translation(-Vector(chairs.instance_offset)))
            m = np.array(inst.matrix_world) @ offset @ np.array(chair.matrix_world)
            if inst is set_a:  # through the set's own instance of the chairs
                m = np.array(set_a.matrix_world) @ np.array(inner.matrix_world) @ offset @ np.array(chair.matrix_world)
            local = np.array([tuple(p.center) for p in chair.data.polygons])
            return local @ m[:3, :3].T + m[:3, 3]

        saved_run = s.run_dir
        s.run_dir = os.path.join(work, "run of instances")
        select([red] + insts)
        n_chair_faces = len(chair.data.polygons)
        faces, centres = train_and_read_face_table(client, s, STATUS, "instances_trained")
        by_name = {e["name"]: e for e in faces["objects"]}
        ok = sorted(by_name) == ["Chairs A / Chair", "Chairs B / Chair", "Red Cube Mod", "Set A / Chair"]
        for inst in insts:
            e = by_name.get(f"{inst.name} / Chair")
            ok = ok and e is not None and e["count"] == n_chair_faces and e["instance"]["member"] == "Chair" \
                and np.allclose(centres[e["start"]: e["start"] + e["count"]], shown(inst), atol=1e-4)
        check("instances_faces_placed", ok, sorted(by_name))
        names = json.load(open(os.path.join(s.run_dir, "scene", "labels", "objects.json"), encoding="utf-8"))
        ids = {v: int(k) for k, v in names.items()}
        seen = set()
        for lab in glob.glob(os.path.join(s.run_dir, "scene", "labels", "*.png")):
            seen |= label_ids(lab)
        check("instances_rendered_and_labelled", {ids.get(f"{i.name} / Chair") for i in insts} <= seen,
              (names, sorted(seen)))
        # Faces: the chair's faces, once per instance, where each instance shows them
        made = segment_as_faces(mf, client, s, "chair")
        last = mf.operators._LAST_SEGMENT
        placed = [np.array([tuple(o.matrix_world @ p.center) for p in o.data.polygons]) for o in made]
        check("instances_faces_made", len(made) == 3 and all(
            np.allclose(np.sort(got, 0), np.sort(shown(inst), 0), atol=1e-4) for got, inst in zip(placed, insts))
            and all(o.parent is None and o.data is not chair.data for o in made),
            ([o.name for o in made], STATUS.error))
        check("instances_originals_untouched", len(chair.data.polygons) == n_chair_faces and chair.users_collection
              == (chairs,) and all(i.instance_collection == chairs for i in insts[:2])
              and set_a.instance_collection == room_set, chair.users_collection)
        # Select: an instance's faces are every copy's, so the instances are selected
        s.mode = "SELECT"
        last[0] = None
        bpy.ops.maskfield.segment()
        client.pump(60, until=lambda: last[0] is not None)
        check("instances_selected", all(i.select_get() for i in insts) and not red.select_get()
              and "selected 18 faces" in STATUS.info, (STATUS.info, STATUS.error))
        # Split originals cannot split faces every copy shares: refused before anything changes
        s.mode, s.split_in_place = "FACES", True
        n_objects = len(bpy.data.objects)
        last[0] = None
        bpy.ops.maskfield.segment()
        client.pump(60, until=lambda: last[0] is not None)
        check("instances_split_refused", "collection instance" in STATUS.error and len(bpy.data.objects) == n_objects
              and len(chair.data.polygons) == n_chair_faces, STATUS.error)
        s.split_in_place = False
        # an object instancing its children on its vertices is refused by name
        holder = mesh_object("Scatter", lambda bm: bmesh.ops.create_cube(bm, size=0.2), material("Grey", (0.5, 0.5, 0.5)))
        pebble = mesh_object("Pebble", lambda bm: bmesh.ops.create_cube(bm, size=0.05), material("Grey", (0.5, 0.5, 0.5)))
        pebble.parent = holder
        holder.instance_type = "VERTS"
        select([red, holder])
        ok, msg = expect_error(lambda: bpy.ops.maskfield.train(), "'Scatter'", "Make Instances Real")
        check("verts_instancer_refused", ok, msg)
        client.stop_server()
        client.pump(5)
        for ob in (pebble, holder, *insts, inner):
            bpy.data.objects.remove(ob)
        s.run_dir = saved_run
        s.mode = "FACES"

    # -- geometry-nodes instances (rocks scattered on a field) -------------------------------
    with section("geometry_nodes_instances"):
        rock = mesh_object("Pebble shape", lambda bm: bmesh.ops.create_icosphere(bm, subdivisions=1, radius=0.08),
                           material("Stone", (0.3, 0.3, 0.32)), loc=(6.0, 0.0, 0.0))
        field = mesh_object("Rock Field", lambda bm: bmesh.ops.create_grid(bm, x_segments=2, y_segments=2, size=0.6),
                            material("Grass", (0.1, 0.5, 0.1)), loc=(0.0, -1.5, 0.1))
        field.rotation_euler = (0.0, 0.0, 0.3)
        tree = bpy.data.node_groups.new("Scatter rocks", "GeometryNodeTree")
        tree.interface.new_socket("Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
        tree.interface.new_socket("Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")
        given, result = tree.nodes.new("NodeGroupInput"), tree.nodes.new("NodeGroupOutput")
        info, scatter = tree.nodes.new("GeometryNodeObjectInfo"), tree.nodes.new("GeometryNodeInstanceOnPoints")
        join = tree.nodes.new("GeometryNodeJoinGeometry")
        info.inputs["Object"].default_value = rock
        tree.links.new(given.outputs[0], scatter.inputs["Points"])
        tree.links.new(info.outputs["Geometry"], scatter.inputs["Instance"])
        tree.links.new(given.outputs[0], join.inputs[0])
        tree.links.new(scatter.outputs[0], join.inputs[0])
        tree.links.new(join.outputs[0], result.inputs[0])
        field.modifiers.new("Scatter", "NODES").node_group = tree
        bpy.context.view_layer.update()
        n_field_faces, n_rock_faces = len(field.data.polygons), len(rock.data.polygons)
        mw = np.array(field.matrix_world)
        rock_local = np.array([tuple(p.center) for p in rock.data.polygons])
        local = [np.array([tuple(p.center) for p in field.data.polygons])] + \
            [rock_local + np.array(tuple(v.co)) for v in field.data.vertices]  # a rock on every vertex
        expected = np.concatenate(local) @ mw[:3, :3].T + mw[:3, 3]
        digest = mf.operators._geometry_digest(field)
        saved_run = s.run_dir
        s.run_dir = os.path.join(work, "run of a scatter")
        select([red, field])
        faces, centres = train_and_read_face_table(client, s, STATUS, "gn_instances_trained")
        e = next((e for e in faces["objects"] if e["name"] == "Rock Field"), {})
        got = centres[e.get("start", 0): e.get("start", 0) + e.get("count", 0)]
        check("gn_instances_in_face_table", e.get("realized") is True and e.get("count") == len(expected)
              and e.get("faces") == n_field_faces and np.allclose(np.sort(got, 0), np.sort(expected, 0), atol=1e-4),
              ({k: v for k, v in e.items()}, len(expected)))
        leftovers = [x.name for x in (*bpy.data.objects, *bpy.data.node_groups) if "MaskField realize" in x.name]
        check("gn_instances_no_temporaries_left", not leftovers and len(field.modifiers) == 1, leftovers)
        # Faces: the field's faces and its rocks', as one new object where the field stands
        made = segment_as_faces(mf, client, s, "rock field")
        placed = np.array([tuple(made[0].matrix_world @ p.center) for p in made[0].data.polygons]) if made else None
        check("gn_instances_faces_made", len(made) == 1 and placed is not None and len(placed) == len(expected)
              and np.allclose(np.sort(placed, 0), np.sort(expected, 0), atol=1e-4) and not made[0].modifiers
              and "Stone" in [m.name for m in made[0].data.materials if m],
              ([o.name for o in made], STATUS.error, placed is not None and len(placed)))
        check("gn_instances_original_untouched", len(field.data.polygons) == n_field_faces and len(field.modifiers) == 1
              and field.modifiers[0].node_group == tree and not [x for x in bpy.data.objects if "MaskField realize"
                                                                 in x.name], [m.name for m in field.modifiers])
        # another rock is another render, though the field's own mesh is the same
        rock.data.vertices[0].co.x += 0.02
        rock.data.update()
        bpy.context.view_layer.update()
        check("gn_instances_in_signature", mf.operators._geometry_digest(field) != digest, digest)
        client.stop_server()
        client.pump(5)
        for ob in made + [field, rock]:
            bpy.data.objects.remove(ob)
        s.run_dir = saved_run

    # -- what the backend warned of is shown when training ends -----------------------------
    with section("backend_warnings"):
        said = "6 image path(s) in transforms.json do not exist as written; each was found by its folder and name"
        os.environ["FAKE_BACKEND_WARN"] = said
        saved_run = s.run_dir
        s.run_dir = os.path.join(work, "run with warnings")
        select([red])
        try:
            train_and_read_face_table(client, s, STATUS, "warnings_trained")
        finally:
            os.environ.pop("FAKE_BACKEND_WARN")
        check("warnings_shown_once", STATUS.warnings == [said] and "Training finished" in STATUS.info,
              (STATUS.warnings, STATUS.info))
        s.run_dir = saved_run

    # -- a backend Python without torch ----------------------------------------------------
    with section("python_without_torch"):
        prefs.python_path = python_without_torch(work)
        bpy.ops.maskfield.detect_backend()
        client.pump(60)
        info = json.loads(prefs.backend_info or "{}")
        check("check_backend_names_torch", "lacks 'torch'" in (info.get("error") or "") and "Set up backend"
              in STATUS.error, (info, STATUS.error))
        s.run_dir = os.path.join(work, "run no torch")
        s.source = "PHOTOS"
        s.scene_dir = os.path.join(run, "scene")
        bpy.ops.maskfield.train()
        client.pump(60)
        job = client.last_finished("train")
        check("train_names_torch", job.state == "failed" and "'torch'" in job.error and "lacks" in job.error
              and "Set up backend" in job.error and "Training failed" in STATUS.error and "Traceback" not in job.error,
              job.error)
        s.source = "OBJECTS"
        prefs.python_path = fake_python

    # -- the extension disabled and enabled while a run is in progress -----------------------
    with section("disable_enable"):
        import addon_utils

        os.environ["FAKE_BACKEND_MODE"] = "slow"
        s.run_dir = os.path.join(work, "run disable")
        select([ball])
        bpy.ops.maskfield.train()
        job = client.active_job("train")
        client.pump(5, until=lambda: job.done > 2)
        pid = job.proc.pid
        rendered = os.path.join(s.run_dir, "scene", "transforms.json")
        mtime = os.path.getmtime(rendered)
        addon_utils.disable(common.MODULE, default_set=True)
        time.sleep(0.2)
        gone = job.proc.poll() is not None
        check("disable_stops_the_process", gone and "cancelled" in "".join(job.stdout_text), (job.proc.poll(), pid))
        addon_utils.enable(common.MODULE, default_set=True)
        import importlib

        mf2 = importlib.import_module(common.MODULE)
        os.environ.pop("FAKE_BACKEND_MODE")
        bpy.context.preferences.addons[common.MODULE].preferences.python_path = fake_python
        res = bpy.ops.maskfield.train()
        mf2.backend_client.pump(60)
        job2 = mf2.backend_client.last_finished("train")
        # the interrupted run goes on: its render is reused, not made again
        check("enable_again_resumes", res == {"FINISHED"} and job2 is not None and job2.state == "finished"
              and os.path.getmtime(rendered) == mtime, job2 and (job2.state, job2.error, job2.steps))
    common.finish()


if __name__ == "__main__":
    main()
