# SPDX-License-Identifier: GPL-3.0-or-later
"""Driver: the selection actions of the panel in real Blender, with the real backend on a
constructed run (tests/select_scene.py: a chair of two parts beside a table).

    python tests/blender/drv_select.py ZIP WORKDIR RUN

Checks: Select at 3D Cursor (a collection named after the thing; another thing adds another;
a part; nothing), per-prompt granularity (a chair's parts as objects), Points mode's Split
originals (Gaussians leave the imported run object, also after an earlier split), Import run
coloured by the labels, Faces mode for a photo source (a closed, vertex-coloured mesh from
the Gaussians), Export (the labelled scene .ply and its legend), and the panel's drawing.
"""
from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import check, section  # noqa: E402

import bpy  # noqa: E402
import numpy as np  # noqa: E402

SEAT, TABLE, BACKGROUND = (0.0, 0.0, 0.0), (3.0, 0.0, 0.0), (6.0, 0.0, 0.0)


def backend_python(folder: str) -> str:
    """This checkout's backend, run by the test's Python (MASKFIELD_TEST_BACKEND_PYTHON: the one with
    torch; a Blender of the matrix has only bpy and numpy) or else this one (the add-on drops
    PYTHONPATH for its child)."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "python")
    python = os.environ.get("MASKFIELD_TEST_BACKEND_PYTHON") or sys.executable
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(f"#!/bin/sh\nPYTHONPATH='{os.path.join(common.ROOT, 'backend')}' exec '{python}' \"$@\"\n")
    os.chmod(path, 0o755)
    return path


def collection(prompt):
    return next((c for c in bpy.data.collections if c.get("maskfield_prompt") == prompt), None)


def vertex_counts(coll):
    return sorted(len(o.data.vertices) for o in coll.objects) if coll else None


def int_attr(me, name):
    attr = me.attributes.get(name)
    if attr is None:
        return None
    out = np.empty(len(me.vertices), np.int32)
    attr.data.foreach_get("value", out)
    return out


class CheckingLayout:
    """A stand-in layout that fails on a property or operator that does not exist."""

    def __init__(self, seen):
        self.seen = seen

    def prop(self, data, name, **kwargs):
        if name not in data.bl_rna.properties:
            raise AssertionError(f"no property {name!r} on {data}")
        self.seen.add(name)
        return self

    def operator(self, idname, **kwargs):
        group, name = idname.split(".")
        if not hasattr(getattr(bpy.ops, group), name):
            raise AssertionError(f"no operator {idname}")
        self.seen.add(idname)
        return self

    def __getattr__(self, name):
        return lambda *a, **k: self

    def __setattr__(self, name, value):
        if name == "seen":
            object.__setattr__(self, name, value)


class Panel:
    def __init__(self, layout):
        self.layout = layout


def main() -> None:
    zip_path, work, run = sys.argv[1], os.path.join(sys.argv[2], "select wörk"), sys.argv[3]
    os.makedirs(work, exist_ok=True)
    mf = common.install(zip_path)
    client, STATUS = mf.backend_client, mf.status.STATUS
    prefs = bpy.context.preferences.addons[common.MODULE].preferences
    prefs.python_path = backend_python(os.path.join(work, "bin"))
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    s = scene.maskfield
    s.source, s.run_dir, s.device = "PHOTOS", run, "cpu"
    last = mf.operators._LAST_SEGMENT
    out = os.path.join(run, "segments", "blender")

    def wait(name):
        t0 = time.perf_counter()
        ok = client.pump(240, until=lambda: last[0] is not None)
        common.TIMES[name] = time.perf_counter() - t0
        job = last[0]
        return ok and job is not None and job.state == "finished", job

    def at_cursor(position, granularity="object"):
        scene.cursor.location = position
        s.cursor_granularity = granularity
        last[0] = None
        t0 = time.perf_counter()
        res = bpy.ops.maskfield.select_at_cursor()
        common.TIMES[f"cursor_operator_returns_{granularity}"] = time.perf_counter() - t0
        return res, *wait(f"cursor_{granularity}_s")

    def segment(mode, prompts, split=False):
        s.prompts.clear()
        for text, granularity in prompts:
            bpy.ops.maskfield.prompt_add(text=text)
            s.prompts[-1].granularity = granularity
        s.mode, s.split_in_place = mode, split
        last[0] = None
        res = bpy.ops.maskfield.segment()
        return res, *wait(f"segment_{mode.lower()}_s")

    with section("cursor"):
        res, ok, job = at_cursor(SEAT)
        check("cursor_finished", res == {"FINISHED"} and ok, job and (job.state, job.error, STATUS.error))
        chair = bpy.data.collections.get("MaskField: chair")
        check("cursor_names_the_object", chair is not None and vertex_counts(chair) == [8],
              (sorted(c.name for c in bpy.data.collections), vertex_counts(chair), STATUS.info))
        res, ok, job = at_cursor(TABLE)
        table = bpy.data.collections.get("MaskField: table")
        check("cursor_adds_another", ok and table is not None and vertex_counts(table) == [4]
              and vertex_counts(bpy.data.collections.get("MaskField: chair")) == [8],
              sorted(c.name for c in bpy.data.collections))
        res, ok, job = at_cursor(SEAT)  # the same thing again replaces its own collection
        check("cursor_same_thing_replaces", ok and sum(1 for c in bpy.data.collections
                                                       if c.name.startswith("MaskField: chair")) == 1
              and vertex_counts(bpy.data.collections.get("MaskField: chair")) == [8],
              sorted(c.name for c in bpy.data.collections))
        res, ok, job = at_cursor(SEAT, "part")
        part = bpy.data.collections.get("MaskField: chair (part)")
        check("cursor_part", ok and part is not None and vertex_counts(part) == [4],
              (sorted(c.name for c in bpy.data.collections), STATUS.info))
        before = len(bpy.data.collections)
        res, ok, job = at_cursor(BACKGROUND)
        check("cursor_nothing_there", ok and len(bpy.data.collections) == before and "Nothing" in STATUS.info,
              STATUS.info)

    with section("granularity"):
        res, ok, job = segment("POINTS", [("chair", "part")])
        coll = collection("chair")
        check("granularity_parts_as_objects", ok and coll is not None and vertex_counts(coll) == [4, 4]
              and sorted(o.name for o in coll.objects) == ["chair part 1", "chair part 2"],
              (vertex_counts(coll), coll and [o.name for o in coll.objects], STATUS.error))
        res, ok, job = segment("POINTS", [("chair", "object")])
        check("granularity_object_whole", ok and vertex_counts(collection("chair")) == [8],
              vertex_counts(collection("chair")))

    with section("split_points"):
        bpy.ops.maskfield.import_run()
        ob = mf.import_export.run_points_object(scene)
        check("split_run_imported", ob is not None and len(ob.data.vertices) == 16
              and int_attr(ob.data, "gaussian_index").tolist() == list(range(16)), ob)
        res, ok, job = segment("POINTS", [("table", "auto")], split=True)
        kept = int_attr(ob.data, "gaussian_index")
        check("split_removes_the_segment", ok and kept.tolist() == list(range(8)) + list(range(12, 16))
              and vertex_counts(collection("table")) == [4], (kept, STATUS.info, STATUS.error))
        res, ok, job = segment("POINTS", [("chair", "auto")], split=True)
        kept = int_attr(ob.data, "gaussian_index")
        check("split_again_by_gaussian_index", ok and kept.tolist() == list(range(12, 16)), kept)

    with section("labels"):
        res, ok, job = segment("POINTS", [("chair", "auto"), ("table", "auto")])
        bpy.ops.maskfield.import_run()
        ob = mf.import_export.run_points_object(scene)
        labels = np.load(os.path.join(out, "labels.npz"))["label"]
        got = int_attr(ob.data, "label")
        check("labels_as_attribute", ok and got is not None and got.tolist() == labels.tolist()
              and labels.tolist() == [0] * 8 + [1] * 4 + [-1] * 4, (got, labels))
        colours = np.empty(len(ob.data.vertices) * 4, np.float32)
        ob.data.attributes["label_color"].data.foreach_get("color", colours)
        colours = colours.reshape(-1, 4)
        check("labels_coloured", len({tuple(np.round(c, 4)) for c in colours}) == 3
              and np.allclose(colours[:8], colours[0]) and not np.allclose(colours[0], colours[8]), colours[[0, 8, 12]])
        mods = [m.node_group.name for m in ob.modifiers if m.type == "NODES" and m.node_group]
        check("labels_displayed", mods == [mf.import_export.LABELS_GROUP], mods)

    with section("mesh"):
        res, ok, job = segment("FACES", [("chair", "auto")])
        coll = collection("chair")
        obs = [o for o in coll.objects] if coll else []
        me = obs[0].data if len(obs) == 1 else None
        check("mesh_made", ok and me is not None and len(me.polygons) > 50, (obs, STATUS.info, STATUS.error))
        if me is not None:
            edge_faces = np.zeros(len(me.edges), np.int64)
            loop_edges = np.empty(len(me.loops), np.int32)
            me.loops.foreach_get("edge_index", loop_edges)
            np.add.at(edge_faces, loop_edges, 1)
            check("mesh_closed", (edge_faces == 2).all(), np.bincount(edge_faces))
            col = me.color_attributes.get("color")
            check("mesh_vertex_colours", col is not None and col.domain == "POINT", col)
            co = np.empty(len(me.vertices) * 3, np.float32)
            me.vertices.foreach_get("co", co)
            co = co.reshape(-1, 3)
            check("mesh_around_the_chair", co[:, 0].min() > -0.6 and co[:, 0].max() < 1.1, (co.min(0), co.max(0)))

    with section("export"):
        segment("POINTS", [("chair", "auto"), ("table", "auto")])
        dest = os.path.join(work, "exported")
        res = bpy.ops.maskfield.export_segments(directory=dest)
        data = mf.import_export.read_ply_vertices(os.path.join(dest, "labels.ply"))
        legend = json.load(open(os.path.join(dest, "labels.json"), encoding="utf-8"))
        check("export_labelled_scene", res == {"FINISHED"} and len(data) == 16
              and data["label"].tolist() == [0] * 8 + [1] * 4 + [-1] * 4
              and {"chair.ply", "table.ply", "labels.ply", "labels.json"} <= set(os.listdir(dest)), os.listdir(dest))
        check("export_legend", [e["prompt"] for e in legend["labels"]] == ["chair", "table"], legend)

    with section("draw"):
        seen: set = set()
        for source in ("OBJECTS", "PHOTOS"):
            for mode in ("POINTS", "FACES", "SELECT"):
                s.source, s.mode = source, mode
                bpy.types.MASKFIELD_PT_segment.draw(Panel(CheckingLayout(seen)), bpy.context)
        item = s.prompts.add()
        mf.panels.MASKFIELD_UL_prompts.draw_item(Panel(CheckingLayout(seen)), bpy.context, CheckingLayout(seen),
                                                 s, item, 0, s, "prompt_index", 0)
        check("draw_new_actions", {"maskfield.select_at_cursor", "cursor_granularity", "granularity",
                                   "split_in_place", "export_supersplat"} <= seen, seen)
    client.kill_all()
    common.finish()


if __name__ == "__main__":
    main()
