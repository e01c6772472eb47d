# SPDX-License-Identifier: GPL-3.0-or-later
"""The add-on's operators: render, train, segment, import/export, prompts, cancel.

Long work never blocks Blender: rendering views is a modal operator (one view per timer
tick, Esc cancels) and the backend runs as a subprocess polled by a timer
(:mod:`backend_client`). Called without a UI (``execute``: background scripts, tests), the
rendering runs in one go and the backend job is left to :func:`backend_client.pump`.
Every check on the input happens before anything is written or changed.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, cast

import bpy
import numpy as np
from bpy.props import BoolProperty, StringProperty

from . import backend_client, import_export, preferences, scene_render
from .backend_client import BackendError
from .status import STATUS, popup_error

BLENDER_DIR = "blender"  # inside the run folder: what the add-on itself writes there
SOURCE_FILE = "source.json"
FACES_NPY = "faces.npy"
FACES_JSON = "faces.json"
SEGMENT_DIR = os.path.join("segments", "blender")
CURSOR_DIR = os.path.join("segments", "blender_cursor")


class UserError(Exception):
    """Bad input: the message tells the user what to do."""


# ----------------------------------------------------------------------------------------
# helpers


def mf(context) -> Any:
    return context.scene.maskfield


def abspath(path: str) -> str:
    path = (path or "").strip()
    if not path:
        return ""
    return os.path.normpath(bpy.path.abspath(path))


def run_dir_of(context) -> str:
    """The run folder as an absolute path. A '//' path of an unsaved file goes to the extension's
    own folder (runs/<scene>/...)."""
    raw = mf(context).run_dir.strip()
    if not raw or (raw.startswith("//") and not bpy.data.filepath):
        tail = raw[2:].strip("/\\") if raw.startswith("//") else ""
        base = os.path.join(preferences.extension_user_dir(), "runs", bpy.path.clean_name(context.scene.name))
        return os.path.normpath(os.path.join(base, tail) if tail else base)
    return abspath(raw)


def find_cameras(scene_dir: str) -> str | None:
    """Which camera file a scene folder has, or None."""
    for name in ("transforms.json", "transforms_train.json"):
        if os.path.isfile(os.path.join(scene_dir, name)):
            return name
    for sub in (os.path.join("sparse", "0"), "sparse"):
        for ext in (".bin", ".txt"):
            if os.path.isfile(os.path.join(scene_dir, sub, "cameras" + ext)):
                return os.path.join(sub, "cameras" + ext)
    return None


def source_objects(context) -> list:
    """The selected objects to render and segment, by name: the geometry objects, and the
    objects each selected collection instance shows (``scene_render.InstancePart``, named
    "<instance> / <object>"). An object that instances its children on its vertices or faces is
    refused by name rather than left out unseen."""
    refuse_instancers(context.selected_objects)
    objs: list = [ob for ob in context.selected_objects if ob.type in scene_render.GEOMETRY_TYPES]
    instancers = [ob for ob in context.selected_objects if scene_render.is_collection_instance(ob)]
    if instancers:
        objs += scene_render.instance_parts(instancers, scene_render.scene_depsgraph(context.scene))
    return sorted(objs, key=lambda o: o.name)


def refuse_instancers(objects) -> None:
    found = [ob.name for ob in objects if getattr(ob, "instance_type", "NONE") in ("VERTS", "FACES")
             and any(True for _ in getattr(ob, "children", ()))]
    if not found:
        return
    names = ", ".join(f"'{name}'" for name in found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
    raise UserError(f"{names}: an object that instances its children on its vertices or faces is not "
                    "rendered by MaskField. Make the instances real (Object > Apply > Make Instances Real), or "
                    "deselect it, then try again.")


def render_settings(context) -> scene_render.RenderSettings:
    s = mf(context)
    return scene_render.RenderSettings(views=s.views, resolution=s.resolution, samples=s.samples,
                                       engine=s.engine, layout=s.layout, walk_side=s.walk_side,
                                       points=s.seed_points, seed=0)


def _geometry_digest(ob, instancing: set[str] | None = None) -> str:
    """A hash of what a render of ``ob`` depends on: mesh vertices and faces, transform, materials.
    ``instancing``: the names of objects whose geometry nodes make instances (found for ``ob``
    alone when not given; ``source_signature`` finds them once for all)."""
    h = hashlib.sha256()
    h.update(np.array(ob.matrix_world, dtype=np.float32).tobytes())
    h.update(repr([s.material.name if s.material else None for s in ob.material_slots]).encode("utf-8"))
    if ob.type == "MESH":  # the mesh as shown: a changed modifier changes the render too
        depsgraph = scene_render.scene_depsgraph(bpy.context.scene)
        # with its geometry-nodes instances (a changed scatter changes the render)
        if instancing is None:
            instancing = scene_render.geometry_node_instancers([ob], depsgraph)
        with scene_render.shown_object(ob, depsgraph, scene_render.realizes(ob, instancing)) as ob_eval:
            me = ob_eval.to_mesh()
            try:
                co = np.empty(len(me.vertices) * 3, dtype=np.float32)
                me.vertices.foreach_get("co", co)
                h.update(co.tobytes())
                h.update(np.array([len(me.polygons), len(me.loops)], dtype=np.int64).tobytes())
            finally:
                ob_eval.to_mesh_clear()
    else:
        h.update(np.array([tuple(c) for c in ob.bound_box], dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


def source_signature(objects, settings: scene_render.RenderSettings) -> str:
    instancing = scene_render.geometry_node_instancers(objects, scene_render.scene_depsgraph(bpy.context.scene))
    key = json.dumps({"objects": [(o.name, _geometry_digest(o, instancing)) for o in objects],
                      "views": settings.views,
                      "resolution": settings.size, "layout": settings.layout, "samples": settings.samples,
                      **({"walk_side": settings.walk_side} if settings.layout == "WALK" else {}),
                      "points": settings.points, "seed": settings.seed}, sort_keys=True)
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def read_source(run: str) -> dict:
    try:
        with open(os.path.join(run, BLENDER_DIR, SOURCE_FILE), encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}


def write_source(run: str, info: dict) -> None:
    os.makedirs(os.path.join(run, BLENDER_DIR), exist_ok=True)
    with scene_render._replacing(os.path.join(run, BLENDER_DIR, SOURCE_FILE)) as tmp, \
            open(tmp, "w", encoding="utf-8") as fh:
        json.dump(info, fh, indent=1, ensure_ascii=False)


def ensure_writable(folder: str) -> None:
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, ".maskfield_write_test")
        with open(probe, "w", encoding="utf-8") as fh:
            fh.write("ok")
        os.remove(probe)
    except OSError as exc:
        raise UserError(f"Cannot write to the folder '{folder}': {exc.strerror or exc}. Choose another run folder.")


_LAST_SEGMENT: list[Any] = [None]


def busy_error() -> str | None:
    if STATUS.render is not None:
        return "MaskField is rendering views; wait or cancel it first."
    for kind in ("train", "segment", "serve", "setup"):
        job = backend_client.active_job(kind)
        if job is not None:
            return f"MaskField is busy ({job.label}); wait or cancel it first."
    return None


def fail(op: bpy.types.Operator, message: str) -> set[str]:
    STATUS.set_error(message)
    op.report({"ERROR"}, message)
    return {"CANCELLED"}


def prompt_granularities(context, prompts: list[str]) -> list[str]:
    """Each enabled prompt's granularity (the first entry of a repeated prompt wins)."""
    chosen: dict[str, str] = {}
    for item in mf(context).prompts:
        text = " ".join(item.text.split())
        if item.enabled and text and text not in chosen:
            chosen[text] = item.granularity
    return [chosen.get(p, "auto") for p in prompts]


def enabled_prompts(context) -> list[str]:
    seen: list[str] = []
    for item in mf(context).prompts:
        text = " ".join(item.text.split())
        if item.enabled and text and text not in seen:
            seen.append(text)
    return seen


# ----------------------------------------------------------------------------------------
# training


def _common_args(context) -> list[str]:
    s = mf(context)
    return ["--events", "jsonl", "--device", s.device]


def train_command(context, python: str, scene_dir: str, run: str, from_labels: str | None = None,
                  gaussians: str | None = None, overwrite: bool = False, full_size: bool = False) -> list[str]:
    """``full_size``: fit the images at their own size (views this add-on rendered at the
    panel's Resolution); otherwise the backend picks a size for the device (photos)."""
    s = mf(context)
    args = ["train", scene_dir, "--out", run] + _common_args(context)
    if full_size:
        args += ["--downscale", "1"]
    elif s.photo_size > 0:
        args += ["--max-size", str(max(32, s.photo_size))]
    if from_labels:
        args += ["--from-labels", from_labels]
    if gaussians:
        args += ["--ply", gaussians]
    if s.iterations > 0:
        args += ["--iterations", str(s.iterations)]
    if s.field_iterations > 0:
        args += ["--field-iterations", str(s.field_iterations)]
    weights = preferences.weights_dir(context)
    if weights and not from_labels:
        args += ["--weights-dir", weights]
    if not preferences.online_allowed():
        args += ["--offline"]
    if overwrite:
        args += ["--overwrite"]
    return backend_client.backend_command(python, *args)


def segment_options(context) -> list[str]:
    """Options shared by `segment` and `serve`."""
    s = mf(context)
    args = _common_args(context)
    if s.use_threshold:
        args += ["--threshold", f"{s.threshold:g}"]
    weights = preferences.weights_dir(context)
    if weights:
        args += ["--weights-dir", weights]
    if not preferences.online_allowed():
        args += ["--offline"]
    return args


def start_training(context, python: str, scene_dir: str, run: str, **kwargs) -> backend_client.Job:
    scene_name = context.scene.name
    argv = train_command(context, python, scene_dir, run, **kwargs)
    import_after = mf(context).import_after_train

    def done(job: backend_client.Job) -> None:
        if job.state == "finished":
            msg = f"Training finished in {job.elapsed:.0f} s: {run}"
            fit = job.result("fit")
            if fit and fit.get("test_psnr") is not None:
                msg += f" (test PSNR {float(fit['test_psnr']):.1f} dB)"
            STATUS.set_info(msg, job.warnings)
            scene = bpy.data.scenes.get(scene_name)
            if import_after and scene is not None:
                try:
                    import_export.import_run(scene, run)
                except import_export.DataError as exc:
                    STATUS.set_error(str(exc))
        elif job.state == "cancelled":
            STATUS.set_info("Training cancelled; Train again to resume.")
        else:
            STATUS.set_error(f"Training failed: {job.error}")
            popup_error(job.error or "training failed")

    backend_client.stop_server()
    job = backend_client.Job([argv], kind="train", label="Training", env=preferences.backend_env(context),
                             on_done=done)
    return backend_client.start(job)


def _render_complete(scene_dir: str) -> bool:
    try:
        with open(os.path.join(scene_dir, "transforms.json"), encoding="utf-8") as fh:
            frames = json.load(fh).get("frames", [])
    except (OSError, ValueError):
        return False
    return bool(frames) and all(os.path.isfile(os.path.join(scene_dir, f.get("file_path", ""))) for f in frames) \
        and os.path.isfile(os.path.join(scene_dir, "labels", "objects.json"))


class _TrainPlan:
    """Everything checked and decided before a training starts."""

    def __init__(self, context):
        s = mf(context)
        self.python = preferences.resolve_python(context)
        self.run = run_dir_of(context)
        self.source = s.source
        self.objects: list[bpy.types.Object] = []
        self.scene_dir = ""
        self.gaussians: str | None = None
        self.overwrite = False
        self.reuse_render = False
        self.replace_unfinished = False
        self.settings = render_settings(context)
        if self.source == "OBJECTS":
            self.objects = source_objects(context)
            if not self.objects:
                raise UserError("No objects selected: select the mesh objects to segment, then press Train.")
            self.scene_dir = os.path.join(self.run, "scene")
            prev = read_source(self.run)
            sig = source_signature(self.objects, self.settings)
            if prev and prev.get("signature") not in (None, sig) and os.path.exists(
                    os.path.join(self.run, "gaussians.ply")):
                raise UserError(f"The run folder '{self.run}' holds a run of other objects, changed objects or "
                                "other render settings. Choose an empty run folder (or delete that one) to train "
                                "on this selection.")
            self.signature = sig
            # an unfinished run of other objects (no Gaussians yet) is the add-on's own: replace it
            self.replace_unfinished = bool(prev) and prev.get("signature") != sig
            # the same objects and settings were rendered already (e.g. training was cancelled): resume
            self.reuse_render = prev.get("signature") == sig and _render_complete(self.scene_dir)
        else:
            self.scene_dir = abspath(s.scene_dir)
            if not self.scene_dir or not os.path.isdir(self.scene_dir):
                raise UserError(f"The scene folder '{s.scene_dir}' does not exist: choose the folder with your "
                                "photos and cameras.")
            if find_cameras(self.scene_dir) is None:
                raise UserError(f"No cameras found in '{self.scene_dir}': it needs a transforms.json "
                                "(nerfstudio / Instant-NGP), transforms_train.json (NeRF synthetic) or a COLMAP "
                                "model in sparse/0 with the photos in images/. Run COLMAP on the photos first.")
            if self.source == "SPLAT":
                self.gaussians = abspath(s.splat_path)
                if not self.gaussians or not os.path.isfile(self.gaussians):
                    raise UserError(f"The Gaussian file '{s.splat_path}' does not exist: choose a 3DGS .ply.")
            self.signature = ""
            if os.path.abspath(self.run).startswith(os.path.abspath(self.scene_dir) + os.sep) or \
                    os.path.abspath(self.run) == os.path.abspath(self.scene_dir):
                raise UserError("The run folder must not be the scene folder or inside it; choose another run folder.")
        ensure_writable(self.run)

    def before_render(self, context) -> None:
        info = {"source": self.source, "blend": bpy.data.filepath, "scene": context.scene.name,
                "signature": self.signature, "scene_dir": self.scene_dir,
                "objects": [o.name for o in self.objects], "blender": bpy.app.version_string}
        if self.source == "OBJECTS":
            meshes = [o for o in self.objects if o.type == "MESH"]
            faces = scene_render.export_face_centres(
                meshes, os.path.join(self.run, BLENDER_DIR, FACES_NPY),
                os.path.join(self.run, BLENDER_DIR, FACES_JSON), scene_name=context.scene.name)
            info["faces"] = {"npy": f"{BLENDER_DIR}/{FACES_NPY}", "json": f"{BLENDER_DIR}/{FACES_JSON}",
                             "total": faces["total"]}
        write_source(self.run, info)

    def start(self, context) -> backend_client.Job:
        labels = os.path.join(self.scene_dir, "labels") if self.source == "OBJECTS" else None
        # the backend claims only an empty folder (or its own run); a new run folder that holds
        # nothing but the add-on's own render and face table is the add-on's to claim
        try:
            entries = set(os.listdir(self.run))
        except OSError:
            entries = set()
        entries = {e for e in entries if e not in (".maskfield.lock", "logs")}  # the backend's bookkeeping
        self.overwrite = ("run.json" not in entries and entries <= {"scene", BLENDER_DIR}) or self.replace_unfinished
        return start_training(context, self.python, self.scene_dir, self.run, from_labels=labels,
                              gaussians=self.gaussians, overwrite=self.overwrite, full_size=self.source == "OBJECTS")


class MASKFIELD_OT_train(bpy.types.Operator):
    """Train MaskField on the chosen source (renders the selected objects first)"""

    bl_idname = "maskfield.train"
    bl_label = "Train MaskField"

    def _plan(self, context) -> _TrainPlan | None:
        busy = busy_error()
        if busy:
            fail(self, busy)
            return None
        try:
            return _TrainPlan(context)
        except (UserError, BackendError) as exc:
            fail(self, str(exc))
            return None

    def execute(self, context):
        plan = self._plan(context)
        if plan is None:
            return {"CANCELLED"}
        try:
            plan.before_render(context)
            if plan.source == "OBJECTS" and not plan.reuse_render:
                job = scene_render.RenderJob(plan.objects, plan.scene_dir, plan.settings, scene=context.scene)
                job.run()
            plan.start(context)
        except (UserError, BackendError, scene_render.RenderError, OSError) as exc:
            return fail(self, str(exc))
        STATUS.set_info(f"Training started: {plan.run}")
        return {"FINISHED"}

    def invoke(self, context, event):
        plan = self._plan(context)
        if plan is None:
            return {"CANCELLED"}
        if plan.source != "OBJECTS" or plan.reuse_render:
            try:
                plan.before_render(context)
                plan.start(context)
            except (UserError, BackendError, OSError) as exc:
                return fail(self, str(exc))
            STATUS.set_info(f"Training started: {plan.run}")
            return {"FINISHED"}
        try:
            plan.before_render(context)
        except OSError as exc:
            return fail(self, str(exc))
        _PENDING_PLAN[0] = plan
        render_op = getattr(bpy.ops, "maskfield").render_scene  # registered by this add-on
        result = render_op("INVOKE_DEFAULT", then_train=True, directory=plan.scene_dir)
        return {"FINISHED"} if ({"RUNNING_MODAL", "FINISHED"} & set(result)) else {"CANCELLED"}


_PENDING_PLAN: list[_TrainPlan | None] = [None]


class MASKFIELD_OT_render_scene(bpy.types.Operator):
    """Render the selected objects into a scene folder (images, cameras, labels, points)"""

    bl_idname = "maskfield.render_scene"
    bl_label = "Render Scene Folder"

    directory: StringProperty(subtype="DIR_PATH", options={"SKIP_SAVE"})  # type: ignore[valid-type]
    then_train: BoolProperty(default=False, options={"HIDDEN", "SKIP_SAVE"})  # type: ignore[valid-type]

    _job: scene_render.RenderJob | None = None
    _timer = None

    def _prepare(self, context) -> scene_render.RenderJob | None:
        if not self.then_train:
            busy = busy_error()
            if busy:
                fail(self, busy)
                return None
        try:
            objects = source_objects(context)
        except UserError as exc:
            fail(self, str(exc))
            return None
        if not objects:
            fail(self, "No objects selected: select the mesh objects to render.")
            return None
        folder = abspath(self.directory) if self.directory else os.path.join(run_dir_of(context), "scene")
        try:
            ensure_writable(folder)
            return scene_render.RenderJob(objects, folder, render_settings(context), scene=context.scene)
        except (UserError, scene_render.RenderError) as exc:
            fail(self, str(exc))
            return None

    def execute(self, context):
        job = self._prepare(context)
        if job is None:
            return {"CANCELLED"}
        try:
            summary = job.run()
        except (scene_render.RenderError, OSError, RuntimeError) as exc:
            return fail(self, f"Rendering failed: {exc}")
        STATUS.set_info(f"Rendered {summary.get('views')} views into {summary.get('folder')}")
        return self._after(context)

    def _after(self, context):
        if self.then_train:
            plan = _PENDING_PLAN[0]
            _PENDING_PLAN[0] = None
            if plan is not None:
                try:
                    plan.start(context)
                except (UserError, BackendError, OSError) as exc:
                    return fail(self, str(exc))
                STATUS.set_info(f"Training started: {plan.run}")
        return {"FINISHED"}

    def invoke(self, context, event):
        job = self._prepare(context)
        if job is None:
            _PENDING_PLAN[0] = None
            return {"CANCELLED"}
        try:
            job.start()
        except (scene_render.RenderError, OSError) as exc:
            _PENDING_PLAN[0] = None
            return fail(self, f"Rendering failed: {exc}")
        self._job = job
        STATUS.render = (0, job.total)
        STATUS.render_cancel = False
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.01, window=context.window)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def _end(self, context) -> None:
        if self._timer is not None:
            context.window_manager.event_timer_remove(self._timer)
            self._timer = None
        STATUS.render = None
        if self._job is not None:
            self._job.cleanup()

    def modal(self, context, event):
        job = self._job
        if job is None:
            return {"CANCELLED"}
        if event.type == "ESC" or STATUS.render_cancel:
            self._end(context)
            _PENDING_PLAN[0] = None
            STATUS.set_info("Rendering cancelled.")
            return {"CANCELLED"}
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        try:
            more = job.step()
        except (scene_render.RenderError, OSError, RuntimeError) as exc:
            self._end(context)
            _PENDING_PLAN[0] = None
            return fail(self, f"Rendering failed: {exc}")
        STATUS.render = (job.done, job.total)
        from .status import redraw

        redraw()
        if more:
            return {"RUNNING_MODAL"}
        self._end(context)
        STATUS.set_info(f"Rendered {job.done} views into {job.out_dir}")
        return self._after(context)


# ----------------------------------------------------------------------------------------
# segmentation


def _faces_map(run: str) -> tuple[import_export.FacesMap, str] | None:
    path = os.path.join(run, BLENDER_DIR, FACES_JSON)
    npy = os.path.join(run, BLENDER_DIR, FACES_NPY)
    if not (os.path.isfile(path) and os.path.isfile(npy)):
        return None
    return import_export.FacesMap.load(path), npy


def check_run(run: str) -> None:
    if not os.path.isdir(run):
        raise UserError(f"The run folder '{run}' does not exist: train first, or choose a run folder.")
    missing = [n for n in ("gaussians.ply", "field.pt") if not os.path.isfile(os.path.join(run, n))]
    if missing:
        raise UserError(f"No trained MaskField in '{run}' (missing {', '.join(missing)}): train first, or choose "
                        "the run folder of a finished training.")


def _points_of_entry(entry: dict, prompt: str, coll, run: str) -> list:
    """A prompt's point objects: one, or one per part for a part-granularity prompt."""
    parts = [p for p in entry.get("parts") or [] if p.get("ply") and os.path.isfile(p["ply"])]
    if len(parts) > 1:
        return [import_export.import_ply_points(p["ply"], f"{prompt} part {p['part']}", coll, prompt=prompt, run=run)
                for p in parts]
    ply = entry.get("ply")
    if ply and os.path.isfile(ply):
        return [import_export.import_ply_points(ply, prompt, coll, prompt=prompt, run=run)]
    npz = entry.get("npz")
    idx = np.load(npz)["indices"] if npz and os.path.isfile(npz) else np.zeros(0, np.int64)
    data = import_export.read_ply_vertices(os.path.join(run, "gaussians.ply"))
    return [import_export.points_object(prompt, import_export.gaussian_arrays(data[idx]), coll, prompt=prompt, run=run)]


def _segment_indices(entries: list[dict]) -> np.ndarray:
    idx = [np.load(e["npz"])["indices"] for e in entries if e.get("found") and e.get("npz") and os.path.isfile(e["npz"])]
    return np.concatenate(idx) if idx else np.zeros(0, np.int64)


def split_run_points(scene, entries: list[dict], run: str) -> str:
    """Points mode's Split originals: the segmented Gaussians leave the run's point object."""
    ob = import_export.run_points_object(scene)
    if ob is None:
        ob = import_export.import_run(scene, run)
    n = import_export.remove_gaussians(ob, _segment_indices(entries))
    try:  # one undo step (there is no undo stack in background mode)
        bpy.ops.ed.undo_push(message="MaskField: split Gaussians")
    except RuntimeError:
        pass
    return f"removed {n} Gaussians from '{ob.name}'"


def apply_meshes(scene, entries: dict, order: list[str], run: str) -> list[str]:
    """Faces mode for photo sources: each prompt's closed, vertex-coloured mesh, made from its
    Gaussians with Blender's geometry nodes (points to volume to mesh; measured against the
    backend's marching cubes by benchmarks/bench_mesh.py, and a little closer to the truth)."""
    parts = []
    for p in order:
        entry = entries.get(p, {})
        import_export.clear_prompt(scene, p)
        ply = entry.get("ply")
        if not entry.get("found") or not ply or not os.path.isfile(ply):
            continue
        coll = import_export.prompt_collection(scene, p, run)
        points = import_export.points_object(f"{p} points", import_export.gaussian_arrays(
            import_export.read_ply_vertices(ply)), coll, prompt=p, run=run, display=False)
        data = points.data
        try:
            ob = import_export.mesh_from_gaussians(points, f"{p} mesh", coll, prompt=p, run=run)
        finally:
            bpy.data.objects.remove(points, do_unlink=True)
            if data is not None and data.users == 0:
                bpy.data.meshes.remove(cast(bpy.types.Mesh, data))
        parts.append(f"{p}: mesh of {len(ob.data.polygons)} faces")
    return parts


def apply_segments(scene_name: str, out: str, prompts: list[str], mode: str, run: str,
                   split_in_place: bool = False) -> str:
    """Bring a finished segmentation into the scene; returns a summary message."""
    scene = bpy.data.scenes.get(scene_name)
    if scene is None:
        raise UserError(f"the scene '{scene_name}' is gone")
    seg = import_export.load_segments(out)
    entries = {e.get("prompt"): e for e in seg.get("prompts", [])}
    order = [e.get("prompt") for e in seg.get("prompts", [])] or prompts
    found = [p for p in order if entries.get(p, {}).get("found")]
    missing = [p for p in order if p not in found]
    parts: list[str] = []
    if mode == "POINTS":
        for p in order:
            entry = entries.get(p, {})
            import_export.clear_prompt(scene, p)
            if not entry.get("found"):
                continue
            coll = import_export.prompt_collection(scene, p, run)
            obs = _points_of_entry(entry, p, coll, run)
            count = sum(len(ob.data.vertices) for ob in obs)
            parts.append(f"{p}: {count} points" + (f" in {len(obs)} parts" if len(obs) > 1 else ""))
        if split_in_place:
            parts.append(split_run_points(scene, [entries[p] for p in order if p in entries], run))
    elif mode == "MESH":
        parts += apply_meshes(scene, entries, order, run)
        missing = [p for p in order if p not in found]
    else:
        labels_path = seg.get("point_labels")
        fm = _faces_map(run)
        if mode in ("FACES", "SELECT") and fm is not None and labels_path:
            faces, _npy = fm
            labels = np.load(labels_path)
            if mode == "FACES":
                made = import_export.separate_faces(scene, faces, labels, order, run=run, in_place=split_in_place)
                if split_in_place:
                    parts.append("originals split")
                    try:  # make the split one undo step (there is no undo stack in background mode)
                        bpy.ops.ed.undo_push(message="MaskField: split faces")
                    except RuntimeError:
                        pass
                for p in order:
                    n = sum(len(o.data.polygons) for o in made.get(p, []))
                    if made.get(p):
                        parts.append(f"{p}: {n} faces in {len(made[p])} object(s)")
                no_faces = [p for p in order if not made.get(p)]
                missing = [p for p in no_faces if p not in found]
                weak = [p for p in no_faces if p in found]
                if weak:
                    parts.append("Gaussians but no faces for: " + ", ".join(weak)
                                 + " (try Points mode, a lower threshold, or longer training)")
            else:
                view_layer = scene.view_layers[0]
                if bpy.context.scene == scene and bpy.context.view_layer is not None:
                    view_layer = bpy.context.view_layer
                ids = list(range(len(order)))
                n = import_export.select_faces(scene, view_layer, faces, labels, ids)
                parts.append(f"selected {n} faces")
                found = [p for k, p in enumerate(order) if np.any(labels == k)]
                missing = [p for p in order if p not in found]
        else:  # select points of the run's Gaussians
            ob = import_export.run_points_object(scene)
            if ob is None:
                ob = import_export.import_run(scene, run)
            all_idx = []
            for p in found:
                npz = entries[p].get("npz")
                if npz and os.path.isfile(npz):
                    all_idx.append(np.load(npz)["indices"])
            idx = np.concatenate(all_idx) if all_idx else np.zeros(0, np.int64)
            n = import_export.select_points(ob, idx)
            for other in scene.objects:
                try:
                    other.select_set(other == ob)
                except RuntimeError:
                    pass
            parts.append(f"selected {n} points of '{ob.name}' (Edit Mode shows them)")
    msg = "Segmented: " + ("; ".join(parts) if parts else "nothing found")
    if missing:
        msg += ". No match for: " + ", ".join(missing)
    enc = str(seg.get("text_encoder") or "")
    if enc.startswith("names:"):
        msg += ". (Offline run: prompts were matched to object names, not CLIP.)"
    return msg


class MASKFIELD_OT_segment(bpy.types.Operator):
    """Find the prompts in the trained run and bring the result into the scene"""

    bl_idname = "maskfield.segment"
    bl_label = "Segment"

    def execute(self, context):
        busy = busy_error()
        if busy:
            return fail(self, busy)
        s = mf(context)
        prompts = enabled_prompts(context)
        if not prompts:
            return fail(self, "Type a prompt first: add one with + and write what to find (e.g. 'chair').")
        try:
            python = preferences.resolve_python(context)
            run = run_dir_of(context)
            check_run(run)
            mode = s.mode
            fm = _faces_map(run)
            if mode == "FACES" and fm is None:
                mode = "MESH"  # a photo source has no meshes to split: a mesh from the Gaussians
            if mode == "FACES" and fm is not None:
                problems = fm[0].check()
                if problems:
                    raise UserError("This run was made from other objects: " + "; ".join(problems[:4])
                                    + ". Choose this scene's run folder, or train again.")
            if mode == "SELECT" and fm is not None and fm[0].check():
                fm = None  # faces of another file: select the Gaussians instead
            out = os.path.join(run, SEGMENT_DIR)
            ensure_writable(out)
            for name in ("segments.json", "point_labels.npy"):
                try:
                    os.remove(os.path.join(out, name))
                except OSError:
                    pass
            points = fm[1] if (fm is not None and mode in ("FACES", "SELECT")) else None
            granularity = prompt_granularities(context, prompts)
            args = ["segment", run]
            for p in prompts:
                args += ["--prompt", p]
            if any(g != "auto" for g in granularity):
                for g in granularity:
                    args += ["--granularity", g]
            if points:
                args += ["--points", points]
            if s.export_supersplat:
                args += ["--supersplat"]
            args += ["--out", out] + segment_options(context)
            argv = backend_client.backend_command(python, *args)
        except (UserError, BackendError, import_export.DataError) as exc:
            return fail(self, str(exc))

        scene_name = context.scene.name
        split_in_place = bool(mf(context).split_in_place)
        use_faces = fm is not None
        eff_mode = mode if (mode in ("POINTS", "MESH") or use_faces) else "SELECT_POINTS"

        def done(job) -> None:  # a Job, or a Request to the kept-alive server
            _LAST_SEGMENT[0] = job
            if job.state == "finished":
                try:
                    msg = apply_segments(scene_name, out, prompts, "SELECT" if eff_mode == "SELECT_POINTS" else mode,
                                         run, split_in_place=split_in_place)
                except (UserError, import_export.DataError, OSError, ValueError, KeyError) as exc:
                    STATUS.set_error(f"Could not use the segmentation: {exc}")
                    return
                STATUS.set_info(msg)
            elif job.state == "cancelled":
                STATUS.set_info("Segmentation cancelled.")
            else:
                STATUS.set_error(f"Segmentation failed: {job.error}")
                popup_error(job.error or "segmentation failed")

        payload = {"cmd": "segment", "prompts": prompts, "points": points, "out": out,
                   "granularity": granularity, "supersplat": bool(s.export_supersplat)}
        try:
            dispatch_segment(context, python, run, argv, payload, "Segmenting", done)
        except BackendError as exc:
            return fail(self, str(exc))
        STATUS.set_info("Segmenting: " + ", ".join(prompts))
        return {"FINISHED"}


def dispatch_segment(context, python: str, run: str, argv: list[str], payload: dict, label: str, on_done) -> None:
    """A segmentation request to the kept-alive server when the preferences allow it, else the
    one-shot command ``argv`` as a job. The server is keyed by its command and the field's time,
    so a retrained run starts a fresh one."""
    serve_argv = backend_client.backend_command(python, "serve", run, *segment_options(context))
    field = os.path.join(run, "field.pt")
    serve_key = (tuple(serve_argv), os.path.getmtime(field) if os.path.exists(field) else 0)
    prefs = preferences.get_prefs(context)
    env = preferences.backend_env(context)
    if prefs is not None and prefs.use_serve:
        backend_client.serve_request(serve_argv, serve_key, payload, env=env, on_done=on_done)
    else:
        backend_client.start(backend_client.Job([argv], kind="segment", label=label, env=env, on_done=on_done))


def cursor_position(context) -> list[float]:
    """The 3D cursor in the run's coordinates (the imported run object may have been moved)."""
    pos = context.scene.cursor.location.copy()
    ob = import_export.run_points_object(context.scene)
    if ob is not None:
        pos = ob.matrix_world.inverted() @ pos
    return [float(v) for v in pos]


def apply_cursor_selection(scene_name: str, out: str, run: str, granularity: str) -> str:
    """The thing at the cursor as a collection "MaskField: <name>"; another thing adds another
    collection, the same thing again replaces its own."""
    scene = bpy.data.scenes.get(scene_name)
    if scene is None:
        raise UserError(f"the scene '{scene_name}' is gone")
    seg = import_export.load_segments(out)
    entry = (seg.get("prompts") or [{}])[0]
    if not entry.get("found"):
        far = entry.get("nearest_gaussian_distance")
        return ("Nothing lights up at the 3D cursor at the " + granularity + " granularity"
                + (f" (the nearest Gaussian is {far:.3g} away)" if far is not None else "")
                + ". Place the cursor on the capture (Shift+right-click) and try again, or another granularity.")
    name = entry["prompt"] if granularity == "object" else f"{entry['prompt']} ({granularity})"
    import_export.clear_prompt(scene, name)
    coll = import_export.prompt_collection(scene, name, run)
    obs = _points_of_entry(entry, name, coll, run)
    return f"Selected at the 3D cursor: '{coll.name}', {sum(len(o.data.vertices) for o in obs)} points"


class MASKFIELD_OT_select_at_cursor(bpy.types.Operator):
    """Select what is at the 3D cursor, with no text: a collection named after the nearest prompt,
    or "MaskField: object N". Place the cursor on the capture with Shift+right-click; repeat to add"""

    bl_idname = "maskfield.select_at_cursor"
    bl_label = "Select at 3D Cursor"

    def execute(self, context):
        busy = busy_error()
        if busy:
            return fail(self, busy)
        s = mf(context)
        try:
            python = preferences.resolve_python(context)
            run = run_dir_of(context)
            check_run(run)
            out = os.path.join(run, CURSOR_DIR)
            ensure_writable(out)
            try:
                os.remove(os.path.join(out, "segments.json"))
            except OSError:
                pass
            pos = cursor_position(context)
            names = enabled_prompts(context)
            gran = s.cursor_granularity
            args = ["segment", run, "--at", *(f"{v:.9g}" for v in pos), "--granularity", gran]
            for n in names:
                args += ["--name", n]
            args += ["--out", out] + segment_options(context)
            argv = backend_client.backend_command(python, *args)
        except (UserError, BackendError, import_export.DataError) as exc:
            return fail(self, str(exc))
        scene_name = context.scene.name

        def done(job) -> None:
            _LAST_SEGMENT[0] = job
            if job.state == "finished":
                try:
                    STATUS.set_info(apply_cursor_selection(scene_name, out, run, gran))
                except (UserError, import_export.DataError, OSError, ValueError, KeyError) as exc:
                    STATUS.set_error(f"Could not use the selection: {exc}")
            elif job.state == "cancelled":
                STATUS.set_info("Selection cancelled.")
            else:
                STATUS.set_error(f"Selection failed: {job.error}")
                popup_error(job.error or "selection failed")

        payload = {"cmd": "segment", "at": [pos], "at_granularity": gran, "names": names, "out": out}
        try:
            dispatch_segment(context, python, run, argv, payload, "Selecting at the cursor", done)
        except BackendError as exc:
            return fail(self, str(exc))
        STATUS.set_info("Selecting at the 3D cursor ({:.2f}, {:.2f}, {:.2f})".format(*pos))
        return {"FINISHED"}


# ----------------------------------------------------------------------------------------
# prompts, results, import/export, cancel


class MASKFIELD_OT_prompt_add(bpy.types.Operator):
    """Add a prompt"""

    bl_idname = "maskfield.prompt_add"
    bl_label = "Add Prompt"
    bl_options = {"REGISTER", "UNDO"}

    text: StringProperty(name="Prompt", default="", options={"SKIP_SAVE"})  # type: ignore[valid-type]

    def execute(self, context):
        s = mf(context)
        item = s.prompts.add()
        item.text = self.text
        s.prompt_index = len(s.prompts) - 1
        return {"FINISHED"}


class MASKFIELD_OT_prompt_remove(bpy.types.Operator):
    """Remove the active prompt"""

    bl_idname = "maskfield.prompt_remove"
    bl_label = "Remove Prompt"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return len(mf(context).prompts) > 0

    def execute(self, context):
        s = mf(context)
        i = min(max(s.prompt_index, 0), len(s.prompts) - 1)
        s.prompts.remove(i)
        s.prompt_index = min(i, len(s.prompts) - 1) if len(s.prompts) else 0
        return {"FINISHED"}


class MASKFIELD_OT_clear_results(bpy.types.Operator):
    """Remove every object and collection MaskField made in this scene (nothing else)"""

    bl_idname = "maskfield.clear_results"
    bl_label = "Clear Results"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        n = import_export.clear_all(context.scene)
        self.report({"INFO"}, f"Removed {n} MaskField object(s)")
        return {"FINISHED"}


class MASKFIELD_OT_import_run(bpy.types.Operator):
    """Import all Gaussians of the run as a point object"""

    bl_idname = "maskfield.import_run"
    bl_label = "Import Gaussians"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        run = run_dir_of(context)
        try:
            ob = import_export.import_run(context.scene, run, labels_dir=os.path.join(run, SEGMENT_DIR))
        except import_export.DataError as exc:
            return fail(self, str(exc))
        msg = f"Imported {len(ob.data.vertices)} Gaussians from {run}"
        if ob.data.attributes.get("label") is not None:
            msg += " (coloured by the last segmentation's labels)"
        origin = ob.get(import_export.ORIGIN_KEY)  # set from run.json by the import
        if origin is not None:
            msg += (f"; the capture was recentred: add ({import_export.origin_text(origin)}) to these positions for "
                    f"the camera file's coordinates (the object's '{import_export.ORIGIN_KEY}' property)")
        STATUS.set_info(msg)
        self.report({"INFO"}, msg)
        return {"FINISHED"}


class MASKFIELD_OT_export_segments(bpy.types.Operator):
    """Copy the last segmentation's .ply files (one per prompt, standard 3DGS) into a folder"""

    bl_idname = "maskfield.export_segments"
    bl_label = "Export Segments"

    directory: StringProperty(subtype="DIR_PATH")  # type: ignore[valid-type]

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        run = run_dir_of(context)
        out = os.path.join(run, SEGMENT_DIR)
        dest = abspath(self.directory)
        if not dest:
            return fail(self, "Choose a folder to export to.")
        try:
            seg = import_export.load_segments(out)
            written = import_export.export_segments(seg, dest)
        except (import_export.DataError, OSError) as exc:
            return fail(self, f"Nothing to export: {exc}. Run Segment first.")
        if not written:
            return fail(self, "The last segmentation found nothing to export.")
        warnings = []
        try:  # the whole scene with its labels, and the legend
            written.append(import_export.write_labels_ply(os.path.join(run, "gaussians.ply"), out, dest))
        except (import_export.DataError, OSError) as exc:
            warnings.append(f"No labelled scene .ply: {exc}")
        msg = f"Exported {len(written)} segment(s) to {dest}"
        STATUS.set_info(msg, warnings)
        self.report({"INFO"}, msg)
        return {"FINISHED"}


class MASKFIELD_OT_cancel(bpy.types.Operator):
    """Cancel what MaskField is doing (rendering, training, segmenting, setting up)"""

    bl_idname = "maskfield.cancel"
    bl_label = "Cancel"

    def execute(self, context):
        if STATUS.render is not None:
            STATUS.render_cancel = True
        backend_client.cancel_all()
        return {"FINISHED"}


classes = (
    MASKFIELD_OT_train,
    MASKFIELD_OT_render_scene,
    MASKFIELD_OT_segment,
    MASKFIELD_OT_select_at_cursor,
    MASKFIELD_OT_prompt_add,
    MASKFIELD_OT_prompt_remove,
    MASKFIELD_OT_clear_results,
    MASKFIELD_OT_import_run,
    MASKFIELD_OT_export_segments,
    MASKFIELD_OT_cancel,
)
